"""Explanations of features: import/export (transfer), generation (explainer), scoring (scorers)."""
