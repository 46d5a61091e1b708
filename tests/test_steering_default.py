"""Steering exactness on the real default model and shipped SAE (integration)."""

from __future__ import annotations

import pytest
import torch

from saedex.indexer.model import forward_to_hook, load_model
from saedex.indexer.quantized import QuantizedModel
from saedex.indexer.sae import DEFAULT_SAE_DIR, load_sae
from saedex.indexer.steering import Intervention, PairGeneration, prompt_ids
from saedex.steering import FeatureEdit, SteerRequest
from tests.test_steering_quantized import assert_same_completion, at_hook, features_at_hook

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not DEFAULT_SAE_DIR.is_dir(), reason="the shipped SAE is not in this tree"),
]
PROMPT = "The capital of France is"


@pytest.fixture(scope="module")
def default():
    return load_model("default", "cpu", progress=False), load_sae(DEFAULT_SAE_DIR)


def generate(model, sae, req: SteerRequest, forward=None) -> PairGeneration:
    gen = PairGeneration(
        model, sae, prompt_ids(model, req.prompt, True, req.chat_template), req, 4.0, forward
    )
    while gen.step():
        pass
    return gen


def test_strength_zero_and_inactive_ablation_are_the_unsteered_model(default):
    model, sae = default
    base = generate(model, sae, SteerRequest(PROMPT, (FeatureEdit(5, 0.0),), "add", 8))
    assert base.completion(0) == base.completion(1)
    ids = base.prompt + base.completion(0)[0]
    with torch.inference_mode():
        resid = forward_to_hook(model, torch.tensor([ids]), sae.cfg.hook_name)[0, 1:]
        seen = sae.encode(resid).amax(0)
    inactive = int((seen == 0).nonzero()[0])
    gen = generate(model, sae, SteerRequest(PROMPT, (FeatureEdit(inactive),), "ablate", 8))
    assert gen.completion(1) == base.completion(0)


def test_clamping_to_own_values_keeps_the_logits(default):
    model, sae = default
    ids = prompt_ids(model, "Paris", True, False)[:2]
    with torch.inference_mode():
        resid = forward_to_hook(model, torch.tensor([ids]), sae.cfg.hook_name)[0, 1]
        acts = sae.encode(resid)
        edits = tuple(FeatureEdit(int(i), None, float(acts[i])) for i in acts.nonzero()[:, 0])
        tokens = torch.tensor([ids] * 2)
        plain = model.bridge(tokens, return_type="logits")
        hook = Intervention(sae, edits, "clamp", [False, True], True, 0.0)
        with model.bridge.hooks(fwd_hooks=[(sae.cfg.hook_name, hook)]):
            clamped = model.bridge(tokens, return_type="logits")
    assert len(edits) > 5
    torch.testing.assert_close(clamped[1], plain[1], rtol=1e-4, atol=1e-3)


def test_chat_template_and_a_strong_edit_changes_the_completion(default):
    model, sae = default
    req = SteerRequest("Name a colour.", (FeatureEdit(100, 40.0),), "add", 6, chat_template=True)
    gen = generate(model, sae, req)
    assert model.tokenizer.decode(gen.prompt).startswith("<|im_start|>")
    assert gen.completion(0)[0] != gen.completion(1)[0]
    shifts = gen.shifts(3)  # the steered tokens over the unsteered row's cached prompt
    assert len(shifts) == len(gen.completion(1)[0])
    assert all(len(up) == len(down) == 3 and up[0].delta > 0 > down[0].delta for up, down in shifts)


@pytest.mark.parametrize("weights", ["int8", "float16"])
def test_quantized_weights_keep_the_exactness_within_their_mode(default, weights):
    """steer_weights float16/int8: strength 0 and an inactive ablation give that mode's
    unsteered completion exactly, clamping to own values its logits within tolerance."""
    model, sae = default
    forward = QuantizedModel(model, weights).forward(sae.cfg.hook_name)
    base = generate(model, sae, SteerRequest(PROMPT, (FeatureEdit(5, 0.0),), "add", 8), forward)
    assert_same_completion(base.completion(0), base.completion(1))
    assert base.forward.weights == weights
    seen = features_at_hook(forward, sae, base.prompt + base.completion(0)[0])
    inactive = int((seen == 0).nonzero()[0])
    req = SteerRequest(PROMPT, (FeatureEdit(inactive),), "ablate", 8)
    assert_same_completion(generate(model, sae, req, forward).completion(1), base.completion(0))
    ids = prompt_ids(model, "Paris", True, False)[:2]
    with torch.inference_mode():
        own = sae.encode(at_hook(forward, ids)[0, 1])
        edits = tuple(FeatureEdit(int(i), None, float(own[i])) for i in own.nonzero()[:, 0])
        plain, _ = forward(torch.tensor([ids] * 2), None)
        with forward.edited(Intervention(sae, edits, "clamp", [False, True], True, 0.0)):
            clamped, _ = forward(torch.tensor([ids] * 2), None)
    assert len(edits) > 5
    torch.testing.assert_close(clamped[1], plain[1], rtol=1e-4, atol=1e-3)
