"""Quantized copies of a model for steering (`ServeConfig.steer_weights` float16 and int8), and
where a TransformerLens hook sits in the transformers model that the bridge wraps.

A `QuantizedModel` is the plain transformers model (no TransformerLens in the loop) with its
linear weights dynamically quantized by torch; a `PlainForward` runs it with saedex's edit
(`saedex.indexer.steering.Intervention`) on the output (or input) of the transformers module
that the SAE's hook is (`hook_site`), so `PairGeneration` runs on it as on the bridge. What
each mode changes against float32 is measured in docs/steering.md (Speed).
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from saedex.errors import SaedexError
from saedex.indexer.model import LoadedModel


class PlainForward:
    """A plain transformers model (a `QuantizedModel`'s copy), the edit on the output (or
    input) of the transformers module that the SAE's hook is (`hook_site`). No TransformerLens
    in the loop: its per-module Python costs 1.5-2.3 s over a 32-token generation
    (docs/steering.md, Speed)."""

    def __init__(self, hf, module: torch.nn.Module, side: str, weights: str):
        self.hf, self.module, self.side, self.weights = hf, module, side, weights

    @contextmanager
    def edited(self, fn):
        handle = attach(self.module, self.side, fn)
        try:
            yield
        finally:
            handle.remove()

    def __call__(self, inputs: torch.Tensor, cache):
        out = self.hf(inputs, past_key_values=cache, use_cache=True)
        return out.logits, out.past_key_values


# steer_weights -> the dtype `quantize_dynamic` stores linear weights in
QUANTIZED = {"int8": torch.qint8, "float16": torch.float16}


class QuantizedModel:
    """A plain transformers copy of a loaded model with its linear layers dynamically
    quantized (torch's `quantize_dynamic`, CPU only; the embedding stays float32). A decode
    step is memory-bound, so fewer weight bytes is most of the speed-up:
    - float16: float16 weights, float32 activations (fbgemm's fp16 GEMM): half the bytes,
      answers within ~0.02 nats of float32's;
    - int8: int8 weights, activations quantized per matrix product to 7 bits with ONE scale
      for the whole input (all rows and positions): a quarter of the bytes, but this model's
      activations span ~100x between their median and their max, so most round to a few
      levels; its answers are far from float32's, and a row's depend on the other rows."""

    def __init__(self, model: LoadedModel, weights: str):
        if torch.device(model.device).type != "cpu":
            raise SaedexError(
                f"{weights} steering weights run on the CPU only (torch dynamic quantization); "
                f"the model is on {model.device}: use float32 there"
            )
        from torch.ao.quantization import quantize_dynamic
        from transformers import AutoModelForCausalLM

        source = model.bridge.original_model.name_or_path  # what load_model loaded
        hf = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32).eval()
        with warnings.catch_warnings():  # torch.ao's notice that this API moves to torchao
            warnings.simplefilter("ignore")
            dtype = QUANTIZED[weights]
            self.hf = quantize_dynamic(hf, {torch.nn.Linear}, dtype=dtype, inplace=True)
        self.model, self.weights = model, weights
        self._sites: dict[str, HookSite] = {}

    def forward(self, hook_name: str) -> PlainForward:
        if hook_name not in self._sites:
            self._sites[hook_name] = hook_site(self.model, hook_name)
        site = self._sites[hook_name]
        module = self.hf.get_submodule(site.module)
        return PlainForward(self.hf, module, site.side, self.weights)


@dataclass(frozen=True)
class HookSite:
    """Where a TransformerLens hook sits in the transformers model that the bridge wraps."""

    module: str  # the module's path in the transformers model, e.g. model.layers.6
    side: str  # "output" (the component's hook_out) or "input" (its hook_in)


def hook_site(model: LoadedModel, hook_name: str) -> HookSite:
    """The transformers module whose output (hook_out) or input (hook_in) the bridge's hook
    is: for SmolLM2, blocks.6.hook_resid_post is blocks.6.hook_out, the output of
    model.layers.6. Checked by running the bridge once on a few tokens (the hook's activation
    must equal the wrapped module's, bit for bit); any other hook is refused."""
    bridge = model.bridge
    point = bridge.hook_dict.get(hook_name)
    if point is None:
        raise SaedexError(f"unknown hook {hook_name!r} for model {model.name}")
    owner, _, attr = point.name.rpartition(".")
    component = bridge.get_submodule(owner) if owner else bridge
    wrapped = getattr(component, "original_component", None)
    path = _module_path(bridge, owner)
    sides = {"hook_out": "output", "hook_in": "input"}
    if attr not in sides or wrapped is None or not path:
        raise _unmapped(model, hook_name, f"it is {point.name}, not a wrapped module's in/out")
    try:  # the bridge sits in the transformers tree where the plain module sits in a copy
        placed = bridge.original_model.get_submodule(path) is component
    except AttributeError:
        placed = False
    if not placed:
        raise _unmapped(model, hook_name, f"{owner} is not at {path} in the transformers model")
    site = HookSite(path, sides[attr])
    if not _same_activation(model, hook_name, wrapped, site.side):
        raise _unmapped(model, hook_name, f"{point.name} differs from {path}'s {site.side}")
    return site


def _module_path(bridge, owner: str) -> str | None:
    """The transformers path of the bridge component at `owner`: a top-level component's
    `name` is its full path (model.layers.6), a nested one's is relative to its parent's
    (mlp), so the names along the way are joined (model.layers.6.mlp)."""
    parts = owner.split(".") if owner else []
    path = None
    for i in range(1, len(parts) + 1):
        module = bridge.get_submodule(".".join(parts[:i]))
        name = getattr(module, "name", None)
        if hasattr(module, "original_component") and name:
            path = name if path is None else f"{path}.{name}"
    return path


def _unmapped(model: LoadedModel, hook_name: str, why: str) -> SaedexError:
    return SaedexError(
        f"hook {hook_name!r} of {model.name} cannot be steered with quantized weights ({why}); "
        "use float32"
    )


def _same_activation(model: LoadedModel, hook_name: str, wrapped, side: str) -> bool:
    """Whether the bridge's hook sees exactly what the wrapped module's torch hook sees."""
    seen: dict[str, torch.Tensor] = {}

    def grab(key: str):
        def fn(act: torch.Tensor, hook=None) -> torch.Tensor:
            seen[key] = act.detach().clone()
            return act

        return fn

    text = model.tokenizer("The quick brown fox", add_special_tokens=False)["input_ids"]
    ids = torch.tensor([[model.bos_token_id, *text]], device=model.device)
    handle = attach(wrapped, side, grab("module"))
    try:
        with torch.inference_mode(), model.bridge.hooks(fwd_hooks=[(hook_name, grab("hook"))]):
            model.bridge(ids, return_type="logits")
    except (KeyError, TypeError):  # the module takes its input otherwise
        return False
    finally:
        handle.remove()
    hook, module = seen.get("hook"), seen.get("module")
    return hook is not None and module is not None and torch.equal(hook, module)


def attach(module: torch.nn.Module, side: str, fn):
    """`fn` on a module's output (its first element, when a tuple) or on its input (its first
    argument, or `hidden_states`); the torch hook's handle."""
    if side == "output":

        def on_output(mod, args, output):
            if isinstance(output, tuple):
                return (fn(output[0]), *output[1:])
            return fn(output)

        return module.register_forward_hook(on_output)

    def on_input(mod, args, kwargs):
        if args:
            return (fn(args[0]), *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": fn(kwargs["hidden_states"])}

    return module.register_forward_pre_hook(on_input, with_kwargs=True)
