"""What the explainer and the scorers read: example windows, delphi-style marks, chat prompts.

Where the examples come from (kept apart, so a score is measured on examples the explainer
never saw): a feature's stored activating examples (its top examples and its interval samples,
which span the activation range like delphi's quantile sampling) are pooled, de-duplicated by
context and sorted by peak activation; the explainer takes every other one from the top (ranks
1, 3, 5, ...) and the scorers the rest (ranks 2, 4, 6, ...). Non-activating examples are
contexts of the index where the feature is zero on every token (`IndexReader.inactive_examples`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from saedex.data import Example, LogitEntry

MARK_FRACTION = 0.3  # tokens above this x the max activation are marked (delphi's threshold)

EXPLAINER_SYSTEM = (
    "You are a meticulous researcher studying the features of a language model. You see "
    "short texts where a feature fires. Tokens where it fires strongly are marked <<like "
    "this>>, and after each text its activations are listed as (token: value), on a scale "
    "from 0 to 10. You may also see the tokens the feature makes the model predict next.\n"
    "Describe in one short phrase what the feature detects: the common pattern in the marked "
    "tokens and what comes just before them. Do not list the examples. Answer with the phrase "
    "only."
)

DETECTION_SYSTEM = (
    "You check explanations of a language-model feature. You get the explanation and one "
    "text. Answer Yes if, going by the explanation, the feature fires somewhere in the text, "
    "and No otherwise. Answer with one word: Yes or No."
)

FUZZING_SYSTEM = (
    "You check explanations of a language-model feature. You get the explanation and one "
    "text in which some tokens are marked <<like this>>. Answer Yes if, going by the "
    "explanation, the marked tokens are the ones the feature fires on, and No otherwise. "
    "Answer with one word: Yes or No."
)


@dataclass(frozen=True)
class Window:
    """Tokens around an example's peak and the feature's activation on each."""

    tokens: list[str]
    activations: list[float]


def window(example: Example, before: int, after: int) -> Window:
    peak = example.max_token_index
    start = max(0, peak - before)
    end = min(len(example.tokens), peak + after + 1)
    return Window(example.tokens[start:end], example.activations[start:end])


def split_examples(top: list[Example], intervals: list[list[Example]]) -> tuple[list, list]:
    """(the explainer's examples, the scorers' held-out activating examples); see above."""
    seen, pool = set(), []
    for example in [*top, *(e for group in intervals for e in group)]:
        if example.context_id not in seen and example.max_activation > 0:
            seen.add(example.context_id)
            pool.append(example)
    pool.sort(key=lambda e: (-e.max_activation, e.context_id))
    return pool[0::2], pool[1::2]


def marked(tokens: list[str], flags: list[bool]) -> str:
    """Text with each run of flagged tokens between << and >>."""
    out, inside = [], False
    for token, flag in zip(tokens, flags, strict=True):
        if flag and not inside:
            out.append("<<")
        elif not flag and inside:
            out.append(">>")
        inside = flag
        out.append(token)
    if inside:
        out.append(">>")
    return "".join(out)


def scaled(value: float, top: float) -> int:
    """delphi's 0-10 scale: ceil(10 * a / max)."""
    return 0 if top <= 0 or value <= 0 else min(10, math.ceil(10 * value / top))


def explainer_example(w: Window, top: float) -> str:
    flags = [a > MARK_FRACTION * top for a in w.activations]
    values = ", ".join(
        f"{t.strip() or repr(t)}: {scaled(a, top)}"
        for t, a in zip(w.tokens, w.activations, strict=True)
        if scaled(a, top) > 0
    )
    return f"{marked(w.tokens, flags).strip()}\n({values})"


def explainer_prompt(windows: list[Window], logits: list[LogitEntry]) -> list[dict[str, str]]:
    top = max((max(w.activations, default=0.0) for w in windows), default=0.0)
    parts = [f"Example {i}: {explainer_example(w, top)}" for i, w in enumerate(windows, 1)]
    if logits:
        promoted = ", ".join(repr(e.token) for e in logits)
        parts.append(f"Tokens the feature makes more likely next: {promoted}")
    user = "\n\n".join(parts) + "\n\nWhat does this feature detect? One short phrase."
    return [{"role": "system", "content": EXPLAINER_SYSTEM}, {"role": "user", "content": user}]


def detection_prompt(explanation: str, w: Window) -> list[dict[str, str]]:
    text = "".join(w.tokens).strip()
    user = f"Explanation: {explanation}\n\nText: {text}\n\nDoes the feature fire on this text?"
    return [{"role": "system", "content": DETECTION_SYSTEM}, {"role": "user", "content": user}]


def fuzzing_prompt(explanation: str, w: Window, flags: list[bool]) -> list[dict[str, str]]:
    text = marked(w.tokens, flags).strip()
    user = (
        f"Explanation: {explanation}\n\nText: {text}\n\n"
        "Are the marked tokens the ones this feature fires on?"
    )
    return [{"role": "system", "content": FUZZING_SYSTEM}, {"role": "user", "content": user}]


def clean_explanation(raw: str, limit: int = 200) -> str:
    """The first non-empty line, without a leading label, quotes or trailing period."""
    for line in raw.splitlines():
        text = line.replace("**", "").strip()
        for label in ("[EXPLANATION]:", "Explanation:", "Answer:", "Phrase:"):
            if text.lower().startswith(label.lower()):
                text = text[len(label) :].strip()
        text = text.rstrip(".").strip().strip("\"'`").strip()
        if text:
            return text[:limit]
    return ""


def baseline_explanation(logits: list[LogitEntry], top_tokens: list[str], n: int = 5) -> str:
    """The trivial baseline: the feature's most frequent peak tokens and top logit tokens."""
    words = list(dict.fromkeys(t.strip() for t in top_tokens if t.strip()))[:n]
    promoted = [e.token.strip() for e in logits if e.token.strip()][:3]
    text = "the tokens " + ", ".join(repr(w) for w in words) if words else "text"
    if promoted:
        text += "; followed by " + ", ".join(repr(p) for p in promoted)
    return text
