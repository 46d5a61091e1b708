"""Sparse autoencoders in the SAELens on-disk format (cfg.json + sae_weights.safetensors).

Read with safetensors alone, no SAELens dependency. Both cfg generations in the wild are read:
SAELens >= 6 (hook_name etc. under "metadata") and older files (hook_name or hook_point at the
top, TopK's k under activation_fn_kwargs). We always write the 6.x form.
"""

from __future__ import annotations

import json
import re
import reprlib
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from saedex.errors import SaedexError

CFG_FILE = "cfg.json"
WEIGHTS_FILE = "sae_weights.safetensors"
ARCHITECTURES = ("standard", "topk", "jumprelu")
DEFAULT_SAE = "default"
DEFAULT_SAE_DIR = Path(__file__).parent / "assets" / "smollm2-135m-res6"
# The shipped widths of the default SAE (same hook, corpus and recipe; issue 17), by the name
# `--sae` takes: "default" is the 4,608-latent one, the others are named by their width.
SHIPPED_SAES = {
    DEFAULT_SAE: DEFAULT_SAE_DIR,
    "default-1152": DEFAULT_SAE_DIR.parent / "smollm2-135m-res6-1152",
    "default-9216": DEFAULT_SAE_DIR.parent / "smollm2-135m-res6-9216",
}
_HOOK_RE = re.compile(r"^blocks\.(\d+)\.")
# Hooks whose activations are not d_model-wide residual-stream vectors: attention's per-head
# queries, keys, values, z and patterns, and the MLP's hidden layer. An SAE there has decoder
# directions the logit lens cannot read (they are not in the residual stream).
_NOT_RESIDUAL_RE = re.compile(
    r"\.(attn\.)?hook_(z|q|k|v|rot_q|rot_k|pattern|attn_scores|result)$"
    r"|\.mlp\.hook_(pre|post|pre_linear)$"
)
RESIDUAL_HOOKS = "hook_resid_pre/mid/post, hook_attn_out, hook_mlp_out"


@dataclass(frozen=True)
class SaeConfig:
    """The parts of an SAE's cfg that indexing depends on."""

    architecture: str
    d_in: int
    d_sae: int
    hook_name: str
    model_name: str | None = None
    k: int | None = None
    apply_b_dec_to_input: bool = False
    prepend_bos: bool | None = None
    context_size: int | None = None
    metadata: dict = field(default_factory=dict)

    @property
    def hook_layer(self) -> int:
        return hook_layer(self.hook_name)


def check_indexable(cfg: SaeConfig) -> None:
    """Refuse an SAE on a hook the indexer cannot read as the residual stream, naming the hook
    (else it fails later with a width mismatch that blames the model)."""
    if _NOT_RESIDUAL_RE.search(cfg.hook_name):
        raise SaedexError(
            f"SAE hook {cfg.hook_name!r} is not in the residual stream: saedex indexes SAEs on "
            f"{RESIDUAL_HOOKS} hooks, whose decoder directions the logit lens can read"
        )


def hook_layer(hook_name: str) -> int:
    """The block a hook lives in; the forward pass can stop there."""
    match = _HOOK_RE.match(hook_name)
    if not match:
        raise SaedexError(f"unsupported hook {hook_name!r}: expected blocks.<layer>.<hook>")
    return int(match.group(1))


class SparseAutoencoder(torch.nn.Module):
    """encode/decode for standard (ReLU), TopK and JumpReLU SAEs."""

    def __init__(self, cfg: SaeConfig, weights: dict[str, torch.Tensor]):
        super().__init__()
        self.cfg = cfg
        self.W_enc = torch.nn.Parameter(weights["W_enc"])
        self.b_enc = torch.nn.Parameter(weights["b_enc"])
        self.W_dec = torch.nn.Parameter(weights["W_dec"])
        self.b_dec = torch.nn.Parameter(weights["b_dec"])
        threshold = weights.get("threshold", torch.zeros(cfg.d_sae))
        self.threshold = torch.nn.Parameter(threshold, requires_grad=False)

    def pre_acts(self, x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """x @ W_enc + b_enc; `out` ([n, d_sae], x flattened to n rows) is reused scratch space."""
        if self.cfg.apply_b_dec_to_input:
            x = x - self.b_dec
        # addmm fuses the bias add: one pass fewer over the large [n, d_sae] output
        flat = torch.addmm(self.b_enc, x.reshape(-1, x.shape[-1]), self.W_enc, out=out)
        return flat.reshape(*x.shape[:-1], -1)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Dense feature activations, shape [..., d_sae]."""
        pre = self.pre_acts(x)
        if self.cfg.architecture == "topk":
            values, indices = pre.topk(self.cfg.k, dim=-1)
            return torch.zeros_like(pre).scatter_(-1, indices, values.relu())
        return self._activate(pre)

    def _activate(self, pre: torch.Tensor) -> torch.Tensor:
        acts = pre.relu()
        if self.cfg.architecture == "jumprelu":
            acts = acts * (pre > self.threshold)
        return acts

    def encode_sparse(
        self, x: torch.Tensor, workspace: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(row, feature, value) of every non-zero activation of x [n, d_in], row-major.

        TopK takes them straight from topk, never materialising the dense activations.
        `workspace` ([>= n, d_sae]) holds the pre-activations: a caller encoding batch after
        batch passes the same one and saves a large allocation (and its page faults) per call.
        """
        fits = workspace is not None and workspace.shape[0] >= x.shape[0]
        out = workspace[: x.shape[0]] if fits else None
        pre = self.pre_acts(x, out)
        if self.cfg.architecture != "topk":
            acts = self._activate(pre)
            rows, features = acts.nonzero(as_tuple=True)
            return rows, features, acts[rows, features]
        values, indices = pre.topk(self.cfg.k, dim=-1, sorted=False)
        indices, order = indices.sort(dim=-1)
        values = values.gather(-1, order)
        keep = values > 0
        rows = torch.arange(x.shape[0], device=x.device)[:, None].expand_as(indices)
        return rows[keep], indices[keep], values[keep]

    def decode(self, acts: torch.Tensor) -> torch.Tensor:
        return acts @ self.W_dec + self.b_dec

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))


def resolve_sae(spec: str) -> Path:
    """The directory for `spec`: "default" (and the other SHIPPED_SAES names) are SAEs shipped
    inside the package."""
    path = SHIPPED_SAES.get(spec) or Path(spec)
    if not path.is_dir():
        raise SaedexError(f"SAE directory not found: {path}")
    return path


def load_sae(path: str | Path, device: str = "cpu", dtype: torch.dtype = torch.float32):
    """Load and validate an SAE directory; every problem is one clear SaedexError."""
    path = Path(path)
    if not path.is_dir():
        raise SaedexError(f"SAE directory not found: {path}")
    cfg = read_cfg(path)
    weights_path = path / WEIGHTS_FILE
    if not weights_path.is_file():
        raise SaedexError(f"SAE weights missing: {weights_path}")
    try:
        weights = load_file(str(weights_path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise SaedexError(f"SAE weights are corrupt: {weights_path} ({exc})") from exc
    _check_shapes(cfg, weights, weights_path)
    weights = {k: v.to(device=device, dtype=dtype) for k, v in weights.items()}
    return SparseAutoencoder(cfg, weights).to(device).eval()


def read_cfg(path: Path) -> SaeConfig:
    cfg_path = path / CFG_FILE
    if not cfg_path.is_file():
        raise SaedexError(f"SAE config missing: {cfg_path}")
    try:
        raw = json.loads(cfg_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise SaedexError(f"SAE config is not valid JSON: {cfg_path} ({exc})") from exc
    if not isinstance(raw, dict):
        raise SaedexError(f"SAE config is not a JSON object: {cfg_path}")
    return parse_cfg(raw, cfg_path)


def parse_cfg(raw: dict, where: Path | str = "cfg.json") -> SaeConfig:
    """Read either cfg generation into a SaeConfig."""
    _check_objects(raw, where)
    meta = raw.get("metadata") or {}
    architecture = raw.get("architecture", "standard")
    if architecture not in ARCHITECTURES:
        raise SaedexError(
            f"unsupported SAE architecture {architecture!r} in {where} "
            f"(supported: {', '.join(ARCHITECTURES)})"
        )
    norm = raw.get("normalize_activations", "none") or "none"
    if norm != "none":
        raise SaedexError(f"unsupported normalize_activations={norm!r} in {where}")
    reshape = raw.get("reshape_activations", "none") or "none"
    if reshape != "none":
        raise SaedexError(
            f"unsupported reshape_activations={reshape!r} in {where}: saedex runs SAEs on a "
            f"hook's activations as they are ({RESIDUAL_HOOKS} hooks)"
        )
    hook_name = meta.get("hook_name") or raw.get("hook_name") or raw.get("hook_point")
    if not hook_name or not isinstance(hook_name, str):
        raise SaedexError(f"SAE config names no hook (metadata.hook_name) in {where}")
    k = raw.get("k") or (raw.get("activation_fn_kwargs") or {}).get("k")
    if architecture == "topk" and not k:
        raise SaedexError(f"TopK SAE config has no k in {where}")
    d_in, d_sae = _count(raw.get("d_in"), "d_in", where), _count(raw.get("d_sae"), "d_sae", where)
    hook_layer(hook_name)
    return SaeConfig(
        architecture=architecture,
        d_in=d_in,
        d_sae=d_sae,
        hook_name=hook_name,
        k=_count(k, "k", where) if k else None,
        apply_b_dec_to_input=bool(raw.get("apply_b_dec_to_input", False)),
        **_optional_fields(raw, meta, where),
        metadata=meta,
    )


def _check_objects(raw: dict, where: Path | str) -> None:
    """The nested parts the parser reads into must be JSON objects, or it would crash."""
    for key in ("metadata", "activation_fn_kwargs"):
        if raw.get(key) and not isinstance(raw[key], dict):
            raise SaedexError(f"SAE config field {key!r} must be an object in {where}")


def _count(value: object, name: str, where: Path | str) -> int:
    """A positive integer (4, 4.0 or "4"), or one clear error."""
    try:
        number = int(value) if not isinstance(value, bool) else None
        exact = number is not None and number == float(value)
    except (TypeError, ValueError, OverflowError):
        number, exact = None, False
    if number is None or not exact or number <= 0:
        raise SaedexError(
            f"SAE config needs a positive integer {name}, got {reprlib.repr(value)}, in {where}"
        )
    return number


def _optional_fields(raw: dict, meta: dict, where: Path | str) -> dict:
    """model_name, prepend_bos and context_size (metadata first), None when absent."""
    model_name = meta.get("model_name") or raw.get("model_name")
    prepend_bos = meta.get("prepend_bos", raw.get("prepend_bos"))
    context_size = meta.get("context_size", raw.get("context_size"))
    if model_name is not None and not isinstance(model_name, str):
        raise SaedexError(f"SAE config model_name must be a string in {where}")
    if prepend_bos is not None and not isinstance(prepend_bos, bool):
        raise SaedexError(f"SAE config prepend_bos must be true or false in {where}")
    if context_size is not None:
        context_size = _count(context_size, "context_size", where)
    return {"model_name": model_name, "prepend_bos": prepend_bos, "context_size": context_size}


def _check_shapes(cfg: SaeConfig, weights: dict[str, torch.Tensor], where: Path) -> None:
    expected = {
        "W_enc": (cfg.d_in, cfg.d_sae),
        "b_enc": (cfg.d_sae,),
        "W_dec": (cfg.d_sae, cfg.d_in),
        "b_dec": (cfg.d_in,),
    }
    if cfg.architecture == "jumprelu":
        expected["threshold"] = (cfg.d_sae,)
    for name, shape in expected.items():
        if name not in weights:
            raise SaedexError(f"SAE weights lack tensor {name!r}: {where}")
        if tuple(weights[name].shape) != shape:
            raise SaedexError(
                f"SAE tensor {name} has shape {tuple(weights[name].shape)}, cfg says {shape}: "
                f"{where}"
            )


def save_sae(
    path: str | Path,
    weights: dict[str, torch.Tensor],
    cfg: SaeConfig,
    dtype: torch.dtype = torch.float32,
    extra_metadata: dict | None = None,
) -> Path:
    """Write the SAELens 6.x on-disk form, loadable by saedex and by SAELens."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    raw = {
        "architecture": cfg.architecture,
        "d_in": cfg.d_in,
        "d_sae": cfg.d_sae,
        "dtype": str(dtype).removeprefix("torch."),
        "device": "cpu",
        "apply_b_dec_to_input": cfg.apply_b_dec_to_input,
        "normalize_activations": "none",
        "reshape_activations": "none",
        "metadata": {
            **cfg.metadata,
            "model_name": cfg.model_name,
            "hook_name": cfg.hook_name,
            "prepend_bos": cfg.prepend_bos,
            "context_size": cfg.context_size,
            **(extra_metadata or {}),
        },
    }
    if cfg.architecture == "topk":
        raw["k"] = cfg.k
    tensors = {k: v.detach().to("cpu", dtype).contiguous() for k, v in weights.items()}
    save_file(tensors, str(path / WEIGHTS_FILE))
    (path / CFG_FILE).write_text(json.dumps(raw, indent=2) + "\n")
    return path
