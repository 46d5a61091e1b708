"""The language models that explain and score features: pluggable, local or behind an endpoint.

- `"default"`: the embedded SmolLM2-135M-Instruct (offline; weak, fine for a demo).
- a local Hugging Face causal LM (a directory, or a name already in the HF cache);
- `http://host:port/v1`: any OpenAI-compatible server (llama.cpp's llama-server, vLLM,
  Ollama), the usual way auto-interpretability runs a big model; `--model-name` names the model
  the server should use.

Prompts are chat messages; instruct models get their chat template, others a plain transcript.
Scorers need a yes/no verdict: `yes_probability` reads it from the next-token logits (local
models) or from the completion's log-probabilities, else its text (endpoints).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

from saedex.errors import SaedexError

Messages = list[dict[str, str]]
DEFAULT_MODEL = "default"


class LanguageModel(Protocol):
    name: str
    context_length: int

    def generate(self, prompts: list[Messages], max_new_tokens: int) -> list[str]: ...

    def yes_probability(self, prompts: list[Messages]) -> list[float]: ...

    def count_tokens(self, messages: Messages) -> int: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class ModelSpec:
    """Which model, from the CLI: `model` is "default", an HF directory/name or an endpoint URL."""

    model: str = DEFAULT_MODEL
    model_name: str | None = None  # the endpoint's model (OpenAI-compatible servers)
    api_key_env: str = "OPENAI_API_KEY"  # read for endpoints that want a key
    context_length: int | None = None  # override what the model reports
    device: str | None = None
    threads: int | None = None


def load_language_model(spec: ModelSpec) -> LanguageModel:
    if spec.model.startswith(("http://", "https://")):
        return OpenAICompatible(spec)
    return HFCausalLM(spec)


# -- local Hugging Face models ---------------------------------------------------------------


class HFCausalLM:
    """A transformers causal LM, run greedily in batches (left padding)."""

    def __init__(self, spec: ModelSpec):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from saedex.indexer.model import default_model_dir, resolve_device

        source = str(default_model_dir()) if spec.model == DEFAULT_MODEL else spec.model
        self.name = (
            "SmolLM2-135M-Instruct" if spec.model == DEFAULT_MODEL else spec.model.rstrip("/")
        )
        if spec.threads:
            torch.set_num_threads(spec.threads)
        self.device = resolve_device(spec.device)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(source)
            self.model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
        except (OSError, ValueError) as exc:
            raise SaedexError(
                f"cannot load model {spec.model!r}: {str(exc).splitlines()[0]}"
            ) from exc
        self.model.to(self.device).eval()
        tok = self.tokenizer
        tok.padding_side = "left"
        if tok.pad_token_id is None:
            tok.pad_token = tok.eos_token or tok.bos_token
        reported = getattr(self.model.config, "max_position_embeddings", None) or 2048
        self.context_length = spec.context_length or int(reported)
        self._yes_no = self._answer_ids()

    def render(self, messages: Messages, answer_prefix: str = "") -> str:
        """The text the model reads: its chat template if it has one, else a transcript."""
        if getattr(self.tokenizer, "chat_template", None):
            text = self.tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=True
            )
        else:
            text = "\n\n".join(m["content"] for m in messages) + "\n\n"
        return text + answer_prefix

    def count_tokens(self, messages: Messages) -> int:
        return len(self.tokenizer(self.render(messages), add_special_tokens=False).input_ids)

    def _batch(self, prompts: list[Messages]):
        texts = [self.render(m) for m in prompts]
        return self.tokenizer(
            texts, return_tensors="pt", padding=True, add_special_tokens=False
        ).to(self.device)

    def generate(self, prompts: list[Messages], max_new_tokens: int) -> list[str]:
        import torch

        batch = self._batch(prompts)
        with torch.inference_mode():
            out = self.model.generate(
                **batch,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=self.tokenizer.pad_token_id,
            )
        new = out[:, batch.input_ids.shape[1] :]
        return self.tokenizer.batch_decode(new, skip_special_tokens=True)

    def yes_probability(self, prompts: list[Messages]) -> list[float]:
        """P(yes) / (P(yes) + P(no)) for the first answer token."""
        import torch

        batch = self._batch(prompts)
        with torch.inference_mode():
            logits = self.model(**batch).logits[:, -1, :].float()
        yes_ids, no_ids = self._yes_no
        yes = torch.logsumexp(logits[:, yes_ids], dim=-1)
        no = torch.logsumexp(logits[:, no_ids], dim=-1)
        return torch.sigmoid(yes - no).tolist()

    def _answer_ids(self) -> tuple[list[int], list[int]]:
        """First tokens of the ways a model starts "Yes" or "No"."""

        def first_ids(words: list[str]) -> list[int]:
            ids = {self.tokenizer(w, add_special_tokens=False).input_ids[0] for w in words}
            return sorted(ids)

        yes = first_ids(["Yes", " Yes", "yes", " yes", "YES"])
        no = first_ids(["No", " No", "no", " no", "NO"])
        both = set(yes) & set(no)  # e.g. a lone space token starting " yes" and " no"
        yes, no = [i for i in yes if i not in both], [i for i in no if i not in both]
        if not yes or not no:
            raise SaedexError(f"{self.name}: its tokenizer cannot tell 'Yes' from 'No' apart")
        return yes, no

    def close(self) -> None:
        pass


# -- OpenAI-compatible endpoints -------------------------------------------------------------


class OpenAICompatible:
    """POST {base}/chat/completions, temperature 0; one request per prompt."""

    def __init__(self, spec: ModelSpec, timeout_s: float = 120.0):
        import os

        import httpx

        self.base = spec.model.rstrip("/")
        self.name = spec.model_name or "default"
        self.context_length = spec.context_length or 4096
        key = os.environ.get(spec.api_key_env)
        headers = {"authorization": f"Bearer {key}"} if key else {}
        self.client = httpx.Client(timeout=timeout_s, headers=headers)

    def _chat(self, messages: Messages, max_tokens: int, logprobs: bool = False) -> dict:
        import httpx

        body: dict = {"model": self.name, "messages": messages, "max_tokens": max_tokens,
                      "temperature": 0}  # fmt: skip
        if logprobs:
            body |= {"logprobs": True, "top_logprobs": 10}
        url = f"{self.base}/chat/completions"
        try:
            response = self.client.post(url, json=body)
        except httpx.TransportError as exc:
            raise SaedexError(
                f"cannot reach the model endpoint {url} ({type(exc).__name__}: {exc}); is the "
                "server (llama-server, vLLM, Ollama) running there?"
            ) from exc
        if response.status_code != 200:
            raise SaedexError(
                f"the model endpoint {url} answered {response.status_code}: {response.text[:200]}"
            )
        try:
            return response.json()["choices"][0]
        except (ValueError, KeyError, IndexError) as exc:
            raise SaedexError(f"the model endpoint {url} sent no completion: {exc}") from exc

    def generate(self, prompts: list[Messages], max_new_tokens: int) -> list[str]:
        return [self._chat(m, max_new_tokens)["message"]["content"] or "" for m in prompts]

    def yes_probability(self, prompts: list[Messages]) -> list[float]:
        return [_yes_from_choice(self._chat(m, 2, logprobs=True)) for m in prompts]

    def count_tokens(self, messages: Messages) -> int:
        """An upper estimate (no tokenizer here): about 3 characters a token, plus framing."""
        return sum(len(m["content"]) // 3 + 8 for m in messages)

    def close(self) -> None:
        self.client.close()


def _yes_from_choice(choice: dict) -> float:
    """P(yes) from the first token's top log-probabilities if sent, else from the text."""
    content = ((choice.get("logprobs") or {}).get("content")) or []
    if content:
        yes = no = 0.0
        for alt in content[0].get("top_logprobs") or []:
            word = alt.get("token", "").strip().lower()
            if word.startswith("yes"):
                yes += math.exp(alt["logprob"])
            elif word.startswith("no"):
                no += math.exp(alt["logprob"])
        if yes + no > 0:
            return yes / (yes + no)
    text = (choice.get("message") or {}).get("content", "").strip().lower()
    return 1.0 if text.startswith("yes") else 0.0
