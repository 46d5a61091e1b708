"""saedex."""
