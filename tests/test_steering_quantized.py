"""Steering on quantized weights (ServeConfig.steer_weights float16 and int8): the hook's place
in the plain transformers model, and the exactness guarantees within each mode, on the tiny
model."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from saedex.errors import SaedexError
from saedex.indexer.model import load_model
from saedex.indexer.quantized import HookSite, PlainForward, QuantizedModel, hook_site
from saedex.indexer.sae import load_sae
from saedex.indexer.steering import Intervention, PairGeneration, prompt_ids
from saedex.steering import FeatureEdit, SteerRequest
from tests.conftest import build_tiny_sae
from tests.test_steering import PROMPT, own_values


@pytest.fixture(scope="module")
def tiny(tiny_model, tiny_sae):
    """The tiny model (its bridge) and SAE."""
    return load_model(str(tiny_model), "cpu", progress=False), load_sae(tiny_sae)


@pytest.fixture(scope="module", params=["int8", "float16"])
def quantized(tiny, request):
    """The quantized copy (int8, or float16: the same tests hold for both)."""
    return QuantizedModel(tiny[0], request.param)


def generate(model, sae, req, forward, sink: float = 0.0) -> PairGeneration:
    ids = prompt_ids(model, req.prompt, True, False)
    gen = PairGeneration(model, sae, ids, req, sink, forward)
    while gen.step():
        pass
    return gen


def test_hooks_map_to_the_modules_the_bridge_wraps(tiny):
    model = tiny[0]
    assert hook_site(model, "blocks.0.hook_resid_post") == HookSite("model.layers.0", "output")
    assert hook_site(model, "blocks.1.hook_resid_pre") == HookSite("model.layers.1", "input")
    assert hook_site(model, "blocks.0.hook_mlp_out") == HookSite("model.layers.0.mlp", "output")
    # the bridge computes attention itself: its hook_out is not the HF module's output
    with pytest.raises(
        SaedexError, match="cannot be steered with quantized weights .* use float32"
    ):
        hook_site(model, "blocks.0.hook_attn_out")
    with pytest.raises(SaedexError, match="cannot be steered with quantized weights"):
        hook_site(model, "blocks.0.attn.hook_pattern")
    with pytest.raises(SaedexError, match="unknown hook"):
        hook_site(model, "blocks.7.hook_resid_post")


@pytest.mark.parametrize("mode", ["add", "clamp"])
def test_the_plain_model_edited_at_the_site_is_the_bridge_edited_at_the_hook(tiny, mode):
    """The quantized path's plumbing on float32 weights: a plain transformers copy with the edit
    on model.layers.0's output gives the bridge's tokens and log-probs (BOS, sinks and the
    clamp's encode included)."""
    model, sae = tiny
    hf = AutoModelForCausalLM.from_pretrained(model.bridge.original_model.name_or_path).eval()
    site = hook_site(model, sae.cfg.hook_name)
    plain = PlainForward(hf, hf.get_submodule(site.module), site.side, "float32")
    edits = (FeatureEdit(3, 20.0, 20.0), FeatureEdit(5, -10.0, 0.0))
    req = SteerRequest(PROMPT, edits, mode, 10, n_shifts=3)
    ours, theirs = generate(model, sae, req, plain, 1.5), generate(model, sae, req, None, 1.5)
    assert theirs.completion(1) != theirs.completion(0)  # the edit does something
    for row in (0, 1):
        assert ours.completion(row)[0] == theirs.completion(row)[0]
        torch.testing.assert_close(
            torch.tensor(ours.completion(row)[1]), torch.tensor(theirs.completion(row)[1])
        )
    for a, b in zip(ours.shifts(3), theirs.shifts(3), strict=True):
        assert [s.token_id for s in a[0]] == [s.token_id for s in b[0]]


def assert_same_completion(a, b) -> None:
    """Identical tokens; log-probs equal but for the last bits: float16 weights run fbgemm's
    fp16 GEMM, which can round a row differently by its place in the batch (1e-6 seen with 2
    threads); int8's integer GEMM is exact."""
    assert a[0] == b[0]
    torch.testing.assert_close(torch.tensor(a[1]), torch.tensor(b[1]), rtol=1e-5, atol=1e-5)


def test_quantized_strength_zero_is_exactly_its_unsteered_model(tiny, quantized):
    model, sae = tiny
    req = SteerRequest(PROMPT, (FeatureEdit(3, 0.0), FeatureEdit(7, 0.0)), "add", 12)
    gen = generate(model, sae, req, quantized.forward(sae.cfg.hook_name))
    assert gen.forward.weights == quantized.weights
    assert_same_completion(gen.completion(0), gen.completion(1))
    assert len(gen.completion(0)[0]) == 12
    bridge = generate(model, sae, req, None)
    assert bridge.forward.weights == "float32"
    assert gen.completion(0)[1] != bridge.completion(0)[1]  # another model


def test_quantized_ablating_an_inactive_feature_is_exactly_its_unsteered_model(
    tiny, quantized, tmp_path
):
    model = tiny[0]
    wide = load_sae(build_tiny_sae(tmp_path / "wide", "topk", 256, 2))  # many inactive features
    forward = quantized.forward(wide.cfg.hook_name)
    base = generate(model, wide, SteerRequest(PROMPT, (FeatureEdit(0, 0.0),), "add", 12), forward)
    seen = features_at_hook(forward, wide, base.prompt + base.completion(0)[0])
    inactive, active = int((seen == 0).nonzero()[0]), int(seen.argmax())
    req = SteerRequest(PROMPT, (FeatureEdit(inactive),), "ablate", 12)
    gen = generate(model, wide, req, forward)
    assert_same_completion(gen.completion(1), base.completion(0))
    assert_same_completion(gen.completion(0), base.completion(0))
    strong = generate(
        model, wide, SteerRequest(PROMPT, (FeatureEdit(active),), "ablate", 12), forward
    )
    assert strong.completion(1)[1] != strong.completion(0)[1]


def test_quantized_clamping_to_its_own_values_keeps_its_outputs(tiny, quantized):
    model, sae = tiny
    forward = quantized.forward(sae.cfg.hook_name)
    ids = prompt_ids(model, "fox", True, False)[:2]
    acts = features_at_hook(forward, sae, ids)
    assert len(own_values(acts)) >= 2
    tokens = torch.tensor([ids] * 2)
    with torch.inference_mode():
        plain, _ = forward(tokens, None)
        with forward.edited(Intervention(sae, own_values(acts), "clamp", [False, True], True, 0.0)):
            clamped, _ = forward(tokens, None)
    torch.testing.assert_close(clamped[1], plain[1], rtol=1e-4, atol=1e-3)


def at_hook(forward: PlainForward, ids: list[int]) -> torch.Tensor:
    """The activations at the hook of `forward`'s model, [1, T, d]."""
    seen = []

    def grab(act, hook=None):
        seen.append(act.detach().clone())
        return act

    with torch.inference_mode(), forward.edited(grab):
        forward(torch.tensor([ids]), None)
    return seen[0]


def features_at_hook(forward: PlainForward, sae, ids: list[int]) -> torch.Tensor:
    """Each feature's max activation at the hook of `forward`'s model (BOS left out)."""
    with torch.inference_mode():
        return sae.encode(at_hook(forward, ids)[0, 1:]).amax(0)


def test_quantized_weights_need_the_cpu(tiny):
    from dataclasses import replace

    with pytest.raises(SaedexError, match="CPU only"):
        QuantizedModel(replace(tiny[0], device="cuda"), "int8")
