"""A document window in the terminal: tokens shaded by a feature's activation (rich)."""

from __future__ import annotations

from rich.text import Text

from saedex.data import DocumentWindow

# Shading steps from faint to strong (a 256-colour terminal shows them; others fall back).
_SHADES = ("grey15", "dark_orange3", "orange3", "dark_orange", "orange1", "gold1")


def shade(value: float, peak: float) -> str | None:
    """The background of a token whose activation is `value` (None: inactive)."""
    if value <= 0 or peak <= 0:
        return None
    step = min(len(_SHADES) - 1, int(value / peak * (len(_SHADES) - 1) + 0.5))
    return f"black on {_SHADES[max(step, 1)]}"


def window_text(window: DocumentWindow, feature: int = 0) -> Text:
    """The window's text with feature `feature` (a position in window.features) shaded, its
    focus token underlined, sinks struck through, context boundaries as a thin bar."""
    values = window.features[feature].activations
    peak = max(values, default=0.0)
    starts = set(window.context_starts)
    text = Text()
    for i, token in enumerate(window.tokens):
        offset = window.start + i
        if offset in starts and i:
            text.append("¦", style="dim")
        style = shade(values[i], peak) or ("dim strike" if window.excluded[i] else "")
        if offset == window.focus:
            style = f"{style} underline bold".strip()
        text.append(token, style=style)
    return text


def header(window: DocumentWindow, feature: int = 0) -> str:
    wf = window.features[feature]
    source = "live run over the window" if window.live else "stored, context by context"
    cut = (
        ""
        if window.indexed_tokens == window.document_tokens
        else f"; the index holds only its first {window.indexed_tokens:,} tokens"
    )
    return (
        f"{wf.sae_id} feature {wf.index} on document {window.document_id!r} ({window.source}), "
        f"tokens {window.start}-{window.end - 1} of {window.document_tokens:,}{cut}; "
        f"max {max(wf.activations, default=0):.3g}; {source}"
    )
