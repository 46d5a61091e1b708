"""Steering and ablation: exactness of the interventions, and the API and CLI surfaces."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from starlette.testclient import TestClient

from saedex.api.app import create_app
from saedex.api.inference import InferenceEngine
from saedex.config import ServeConfig
from saedex.indexer.model import load_model
from saedex.indexer.sae import load_sae
from saedex.indexer.steering import Intervention, PairGeneration, ablation_effect, prompt_ids
from saedex.steering import FeatureEdit, SteerRequest
from saedex.store import IndexReader
from tests.test_live import live_db  # noqa: F401 (a fixture)

SAE = "sae"
PROMPT = "the quick brown fox jumps over"


@pytest.fixture(scope="module")
def model(tiny_model):
    return load_model(str(tiny_model), "cpu", progress=False)


@pytest.fixture(scope="module")
def sae(tiny_sae):
    return load_sae(tiny_sae)


def generate(model, sae, req: SteerRequest, sink: float = 0.0) -> PairGeneration:
    gen = PairGeneration(model, sae, prompt_ids(model, req.prompt, True, False), req, sink)
    while gen.step():
        pass
    return gen


def features_seen(model, sae, ids: list[int]) -> torch.Tensor:
    """Each feature's max activation over a token sequence (BOS left out)."""
    from saedex.indexer.model import forward_to_hook

    with torch.inference_mode():
        resid = forward_to_hook(model, torch.tensor([ids]), sae.cfg.hook_name)[0, 1:]
        return sae.encode(resid).amax(0)


def test_strength_zero_is_exactly_the_unsteered_model(model, sae):
    req = SteerRequest(PROMPT, (FeatureEdit(3, 0.0), FeatureEdit(7, 0.0)), "add", 12)
    gen = generate(model, sae, req)
    assert gen.completion(0) == gen.completion(1)
    assert len(gen.completion(0)[0]) == 12


@pytest.fixture(scope="module")
def wide_topk(tmp_path_factory):
    """A TopK SAE with many features silent on a short text (inactive ones to ablate)."""
    from tests.conftest import build_tiny_sae

    return load_sae(build_tiny_sae(tmp_path_factory.mktemp("wide") / "s", "topk", 256, 2))


def test_ablating_an_inactive_feature_is_exactly_the_unsteered_model(model, wide_topk):
    sae = wide_topk
    base = generate(model, sae, SteerRequest(PROMPT, (FeatureEdit(0, 0.0),), "add", 12))
    ids, _ = base.completion(0)
    seen = features_seen(model, sae, base.prompt + ids)
    inactive = int((seen == 0).nonzero()[0])
    active = int(seen.argmax())
    gen = generate(model, sae, SteerRequest(PROMPT, (FeatureEdit(inactive),), "ablate", 12))
    assert gen.completion(1) == base.completion(0) == gen.completion(0)
    strong = generate(model, sae, SteerRequest(PROMPT, (FeatureEdit(active),), "ablate", 12))
    assert strong.completion(1)[1] != strong.completion(0)[1]  # an active one changes things


def own_values(acts: torch.Tensor) -> tuple[FeatureEdit, ...]:
    """Every active feature clamped to the value it has (a clamp that changes nothing)."""
    return tuple(FeatureEdit(int(i), None, float(acts[i])) for i in acts.nonzero()[:, 0])


def test_clamping_to_its_own_value_keeps_the_outputs(model, sae):
    """BOS + one token: every active feature clamped to the value it has there."""
    ids = prompt_ids(model, "fox", True, False)[:2]
    acts = features_seen(model, sae, ids)
    edits = own_values(acts)
    assert len(edits) >= 2
    tokens = torch.tensor([ids] * 2)
    with torch.inference_mode():
        plain = model.bridge(tokens, return_type="logits")
        hook = Intervention(sae, edits, "clamp", [False, True], True, 0.0)
        with model.bridge.hooks(fwd_hooks=[(sae.cfg.hook_name, hook)]):
            clamped = model.bridge(tokens, return_type="logits")
        off = Intervention(sae, edits[:1], "clamp", [False, True], True, 0.0)
        off.amount += 5.0
        with model.bridge.hooks(fwd_hooks=[(sae.cfg.hook_name, off)]):
            moved = model.bridge(tokens, return_type="logits")
    torch.testing.assert_close(clamped[1], plain[1], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(moved[1, 1], plain[1, 1], atol=1e-3)
    assert torch.equal(moved[1, 0], plain[1, 0])  # BOS untouched


def test_add_moves_the_residual_by_the_decoder_rows_except_bos_and_sinks(model, sae):
    edits = (FeatureEdit(2, 3.0), FeatureEdit(5, -1.5))
    hook = Intervention(sae, edits, "add", [False, True], True, 1.3)
    gen = torch.Generator().manual_seed(0)
    act = torch.randn(2, 10, sae.cfg.d_in, generator=gen)
    act[:, 4] *= 10  # an attention sink
    out = hook(act.clone())
    want = 3.0 * sae.W_dec[2] - 1.5 * sae.W_dec[5]
    assert torch.equal(out[0], act[0])  # the default row
    assert torch.equal(out[1, 0], act[1, 0]) and torch.equal(out[1, 4], act[1, 4])
    for pos in (1, 2, 3, 5, 9):
        torch.testing.assert_close(out[1, pos] - act[1, pos], want.detach())
    step = hook(torch.randn(2, 1, sae.cfg.d_in, generator=gen))  # a cached step: no BOS
    assert hook.offset == 11 and step.shape == (2, 1, sae.cfg.d_in)


def test_sampling_uses_the_same_seed_on_both_sides(model, sae):
    req = SteerRequest(PROMPT, (FeatureEdit(1, 0.0),), "add", 10, temperature=1.0, seed=5)
    a, b = generate(model, sae, req), generate(model, sae, req)
    assert a.completion(0) == a.completion(1) == b.completion(1)
    other = generate(model, sae, SteerRequest(PROMPT, req.features, "add", 10, 1.0, seed=6))
    assert other.completion(0) != a.completion(0)


def test_shifts_are_the_steered_against_the_unsteered_model_on_the_steered_prefix(model, sae):
    """The shifts (the unsteered model's steered tokens run over row 0's prompt cache) against
    a brute-force reference: both models run over the whole steered text, no cache."""
    req = SteerRequest(PROMPT, (FeatureEdit(3, 4.0),), "add", 10, n_shifts=4)
    gen = generate(model, sae, req)
    ids, _ = gen.completion(1)
    with torch.inference_mode():
        seq = torch.tensor([gen.prompt + ids[:-1]])
        plain = model.bridge(seq, return_type="logits")[0, len(gen.prompt) - 1 :].softmax(-1)
        steered = steered_probs(model, sae, req, gen.prompt, ids)
    shifts = gen.shifts(4)
    assert len(shifts) == len(ids) and any(up for up, _ in shifts)
    for step, (raised, lowered) in enumerate(shifts):
        delta = steered[step] - plain[step]
        assert len(raised) == len(lowered) == 4
        assert math.isclose(raised[0].delta, float(delta.max()), abs_tol=1e-5)
        assert math.isclose(lowered[0].delta, float(delta.min()), abs_tol=1e-5)
        for s in raised + lowered:
            assert math.isclose(s.delta, float(delta[s.token_id]), abs_tol=1e-5)
            assert math.isclose(s.probability, float(steered[step, s.token_id]), abs_tol=1e-5)
    assert [len(u) for u, _ in gen.shifts(2)] == [2] * len(ids)


def steered_probs(model, sae, req, prompt: list[int], ids: list[int]) -> torch.Tensor:
    """The steered model's next-token probabilities over the steered text, without a cache."""
    hook = Intervention(sae, req.features, req.mode, [True], True, 0.0)
    with model.bridge.hooks(fwd_hooks=[(sae.cfg.hook_name, hook)]):
        logits = model.bridge(torch.tensor([prompt + ids[:-1]]), return_type="logits")
    return logits[0, len(prompt) - 1 :].softmax(-1)


def test_the_edit_is_gone_between_steps(model, sae):
    """Other model work (activeFeatures) runs between a generation's steps: it must see the
    plain model, with no hook left on the hook point, also after a step that failed."""
    tokens = torch.tensor([prompt_ids(model, PROMPT, True, False)])
    with torch.inference_mode():
        before = model.bridge(tokens, return_type="logits")
    gen = PairGeneration(
        model, sae, tokens[0].tolist(), SteerRequest(PROMPT, (FeatureEdit(3, 40.0),)), 0.0
    )
    gen.step()
    point = model.bridge.hook_dict[sae.cfg.hook_name]
    assert not point.fwd_hooks
    with torch.inference_mode():
        assert torch.equal(model.bridge(tokens, return_type="logits"), before)

    def broken(act, hook=None):
        raise RuntimeError("the edit failed")

    gen.hook = broken
    with pytest.raises(RuntimeError, match="the edit failed"):
        gen.step()
    assert not point.fwd_hooks


def test_no_shifts_asked_keeps_no_prompt_cache(model, sae):
    req = SteerRequest(PROMPT, (FeatureEdit(3, 4.0),), "add", 6, n_shifts=0)
    gen = generate(model, sae, req)
    with_shifts = generate(model, sae, SteerRequest(**{**req.__dict__, "n_shifts": 3}))
    assert gen.prompt_cache is None and gen.shifts(0) == [([], [])] * 6
    assert gen.completion(1) == with_shifts.completion(1)


def test_ablation_effect(model, wide_topk):
    sae = wide_topk
    ids = prompt_ids(model, PROMPT, True, False)
    seen = features_seen(model, sae, ids)
    inactive, active = int((seen == 0).nonzero()[0]), int(seen.argmax())
    change, raised, lowered = ablation_effect(model, sae, ids, inactive, 2, 0.0, 4)
    assert len(change) == len(ids) - 1 and all(c == 0 for c in change)
    from saedex.indexer.model import forward_to_hook

    with torch.inference_mode():
        resid = forward_to_hook(model, torch.tensor([ids]), sae.cfg.hook_name)[0]
        at = int(sae.encode(resid)[1:, active].argmax()) + 1
    change, raised, lowered = ablation_effect(model, sae, ids, active, at, 0.0, 4)
    assert any(abs(c) > 1e-4 for c in change)
    assert len(raised) == len(lowered) == 4 and raised[0].delta > 0 > lowered[0].delta


# -- the API -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def steer_db(live_db) -> Path:  # noqa: F811 (the imported fixture)
    return live_db


@pytest.fixture(scope="module")
def client(steer_db):
    with IndexReader(steer_db) as reader:
        app = create_app(reader, ServeConfig(max_steer_new_tokens=16), InferenceEngine("cpu"))
        with TestClient(app) as c:
            yield c


STEER = """query ($features: [SteerFeatureInput!]!, $mode: SteerMode!, $n: Int!, $t: Float!) {
  steer(sae: "sae", prompt: "the quick brown fox", features: $features, mode: $mode,
        nTokens: $n, temperature: $t) {
    sae mode weights promptTokens features { index strength decoderNorm maxActivation }
    default { text steps { token tokenId logprob } }
    steered { text steps { token logprob raised { token delta probability } lowered { delta } } }
  } }"""


def steer(client, features, mode="ADD", n=8, t=0.0):
    variables = {"features": features, "mode": mode, "n": n, "t": t}
    return client.post("/graphql", json={"query": STEER, "variables": variables}).json()


def test_graphql_steer(client, sae):
    body = steer(client, [{"index": 4, "strength": 0.0}])
    got = body["data"]["steer"]
    assert got["sae"] == SAE and got["mode"] == "ADD" and got["promptTokens"][0] == "<bos>"
    assert got["weights"] == "float32"
    assert got["default"]["text"] == got["steered"]["text"]
    assert len(got["default"]["steps"]) == 8
    assert all(s["logprob"] <= 0 for s in got["default"]["steps"])
    (feature,) = got["features"]
    assert feature["decoderNorm"] == pytest.approx(float(sae.W_dec[4].detach().norm()), rel=1e-5)
    pushed = steer(client, [{"index": 4, "strength": 40.0}])["data"]["steer"]
    assert pushed["steered"]["text"] != pushed["default"]["text"]
    step = pushed["steered"]["steps"][0]
    assert len(step["raised"]) == 5 and step["raised"][0]["delta"] > 0
    assert step["lowered"][0]["delta"] < 0


@pytest.mark.parametrize(
    ("features", "mode", "n", "t", "fragment"),
    [
        ([{"index": 10_000, "strength": 1.0}], "ADD", 8, 0.0, "unknown feature 10000"),
        ([{"index": -1, "strength": 1.0}], "ADD", 8, 0.0, "unknown feature -1"),
        ([{"index": 1, "strength": 1e300}], "ADD", 8, 0.0, "finite"),
        ([{"index": 1}], "ADD", 8, 0.0, "needs a strength"),
        ([{"index": 1, "strength": 1.0}], "CLAMP", 8, 0.0, "needs a value"),
        ([{"index": 1, "strength": 1.0}], "ADD", 17, 0.0, "nTokens must be between 1 and 16"),
        ([{"index": 1, "strength": 1.0}], "ADD", 8, -1.0, "temperature"),
        ([], "ADD", 8, 0.0, "at least one feature"),
        ([{"index": i, "value": 1.0} for i in range(21)], "CLAMP", 8, 0.0, "limit is 20"),
    ],
)
def test_steer_bad_input(client, features, mode, n, t, fragment):
    body = steer(client, features, mode, n, t)
    (err,) = body["errors"]
    assert err["extensions"]["code"] == "BAD_USER_INPUT" and fragment in err["message"], err


@pytest.mark.parametrize("number", [math.nan, math.inf, -math.inf])
def test_non_finite_strength_is_refused(number):
    from saedex.errors import SaedexError
    from saedex.steering import SteerLimits, check_request

    req = SteerRequest("x", (FeatureEdit(1, number),), "add", 4)
    with pytest.raises(SaedexError, match="finite"):
        check_request(req, 64, SteerLimits(10, 10, 10))


def test_rest_refuses_nan(client):
    body = '{"sae": "sae", "prompt": "x", "features": [{"index": 1, "strength": NaN}]}'
    r = client.post("/api/steer", content=body, headers={"content-type": "application/json"})
    assert r.status_code in (400, 422) and r.json()["error"], r.text


def test_rest_steer(client):
    ok = client.post(
        "/api/steer",
        json={
            "sae": SAE,
            "prompt": "the fox",
            "features": [{"index": 2}],
            "mode": "ABLATE",
            "nTokens": 8,
        },
    )
    assert ok.status_code == 200, ok.text
    got = ok.json()
    assert got["mode"] == "ABLATE" and got["default"]["steps"] and got["steered"]["steps"]
    bad = client.post("/api/steer", json={"sae": SAE, "prompt": "x", "features": [], "n": 1})
    assert bad.status_code == 422 and "'n' was unexpected" in bad.json()["error"]
    extra = {"sae": SAE, "prompt": "x", "features": [{"index": 1, "stren": 2}]}
    bad = client.post("/api/steer", json=extra)
    assert bad.status_code == 422 and "features.0: " in bad.json()["error"]
    nan = client.post(
        "/api/steer",
        json={"sae": SAE, "prompt": "x", "features": [{"index": 999999}], "nTokens": 4},
    )
    assert nan.status_code == 422 and "unknown feature" in nan.json()["error"]


def test_rest_steer_is_in_the_openapi_document(client):
    """POST /api/steer is generated like the other routes (issue 12.7): its answer and its
    errors validate against the document, whose body schema holds the input objects."""
    import jsonschema

    doc = client.get("/api/openapi.json").json()
    spec = doc["paths"]["/api/steer"]["post"]
    body = spec["requestBody"]["content"]["application/json"]["schema"]
    assert body["required"] == ["sae", "prompt", "features"]
    assert body["properties"]["mode"]["enum"] == ["ADD", "CLAMP", "ABLATE"]
    assert body["properties"]["features"]["items"]["required"] == ["index"]
    request = {"sae": SAE, "prompt": "the fox", "features": [{"index": 2.0, "strength": 8}]}
    for status, payload in ((200, {**request, "nTokens": 4}), (404, {**request, "sae": "x"})):
        response = client.post("/api/steer", json=payload)
        assert response.status_code == status, response.text
        schema = spec["responses"][str(status)]["content"]["application/json"]["schema"]
        jsonschema.validate(response.json(), {**schema, "components": doc["components"]})


def test_graphql_ablation(client):
    query = '{ ablation(sae: "sae", index: %d, nShifts: 3) { index contextId tokens \
      activations maxTokenIndex logprobChange raised { token delta } lowered { delta } } }'
    page = client.post(
        "/graphql",
        json={
            "query": '{ features(sae: "sae", first: 1, \
      orderBy: MAX_ACTIVATION_DESC) { edges { node { index } } } }'
        },
    ).json()
    index = page["data"]["features"]["edges"][0]["node"]["index"]
    got = client.post("/graphql", json={"query": query % index}).json()["data"]["ablation"]
    assert len(got["logprobChange"]) == len(got["tokens"]) - 1
    assert got["activations"][got["maxTokenIndex"]] > 0
    assert len(got["raised"]) == 3 and got["lowered"][0]["delta"] <= 0
    missing = client.post("/graphql", json={"query": query % 99999}).json()
    assert missing["errors"][0]["extensions"]["code"] == "NOT_FOUND"


def test_steer_without_inference_is_unavailable(steer_db):
    with IndexReader(steer_db) as reader:
        app = create_app(reader, ServeConfig(inference=False))
        with TestClient(app) as c:
            r = c.post("/api/steer", json={"sae": SAE, "prompt": "x", "features": [{"index": 1}]})
    assert r.status_code == 503


def test_steer_on_int8_weights(steer_db):
    """`serve --steer-weights int8`: both sides on the int8 copy, and the answer says so."""
    config = ServeConfig(steer_weights="int8")
    engine = InferenceEngine("cpu")
    with IndexReader(steer_db) as reader, TestClient(create_app(reader, config, engine)) as c:
        got = steer(c, [{"index": 4, "strength": 0.0}])["data"]["steer"]
        rest = c.post(
            "/api/steer",
            json={
                "sae": SAE,
                "prompt": "x",
                "features": [{"index": 4, "strength": 9.0}],
                "nTokens": 3,
            },
        )
    assert got["weights"] == "int8" and got["default"]["text"] == got["steered"]["text"]
    logprobs = [[s["logprob"] for s in got[side]["steps"]] for side in ("default", "steered")]
    assert logprobs[0] == logprobs[1]
    assert rest.status_code == 200 and rest.json()["weights"] == "int8"


def test_cli_steer(steer_db):
    from typer.testing import CliRunner

    from saedex.cli import app

    runner = CliRunner()
    args = ["steer", "--db", str(steer_db), "--sae", SAE, "--prompt", "the quick brown fox"]
    ok = runner.invoke(app, [*args, "--feature", "4:40", "--n-tokens", "6", "--device", "cpu"])
    assert ok.exit_code == 0, ok.output
    assert "default:" in ok.output and "steered:" in ok.output and "feature 4: add 40" in ok.output
    int8 = runner.invoke(
        app, [*args, "--feature", "4:40", "--n-tokens", "3", "--steer-weights", "int8"]
    )
    assert int8.exit_code == 0 and "(weights: int8)" in int8.output, int8.output
    wrong = runner.invoke(app, [*args, "--feature", "4:1", "--steer-weights", "int4"])
    assert (
        wrong.exit_code == 2
        and "--steer-weights must be one of float32, float16, int8" in wrong.output
    )
    bad = runner.invoke(app, [*args, "--feature", "99999:1"])
    assert bad.exit_code == 2 and "unknown feature 99999" in bad.output
    worse = runner.invoke(app, [*args, "--feature", "x:y"])
    assert worse.exit_code == 2 and "INDEX:AMOUNT" in worse.output
