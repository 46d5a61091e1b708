"""Generating and scoring explanations: the scorer arithmetic by hand, the prompts, and both
model paths (a local HF causal LM: the tiny model; an OpenAI-compatible endpoint: a fake
server on loopback)."""

from __future__ import annotations

import json
import math
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from saedex.config import ExplainConfig, ScoreConfig
from saedex.data import Example
from saedex.errors import SaedexError
from saedex.explain import prompts
from saedex.explain.explainer import METHOD, explain, parse_features
from saedex.explain.models import HFCausalLM, ModelSpec, OpenAICompatible
from saedex.explain.scoring import Confusion, confusion, histogram_svg, roc_auc, score, summarise
from saedex.store import IndexReader
from tests.test_explanations import SAE, built_index, db  # noqa: F401 (fixtures)

# -- arithmetic ------------------------------------------------------------------------------


def test_confusion_and_balanced_accuracy_by_hand():
    labels = [True, True, True, False, False, False, False]
    predicted = [True, False, True, False, True, False, False]
    m = confusion(labels, predicted)
    assert m == Confusion(tp=2, fp=1, tn=3, fn=1)
    assert m.recall == pytest.approx(2 / 3) and m.specificity == pytest.approx(3 / 4)
    assert m.balanced_accuracy == pytest.approx((2 / 3 + 3 / 4) / 2)  # 0.7083
    assert m.precision == pytest.approx(2 / 3) and m.f1 == pytest.approx(4 / 6)
    assert m.accuracy == pytest.approx(5 / 7)
    always_yes = confusion([True] * 5 + [False] * 5, [True] * 10)
    assert always_yes == Confusion(5, 5, 0, 0) and always_yes.balanced_accuracy == 0.5
    # unbalanced classes: plain accuracy 0.9, balanced accuracy still chance
    lopsided = confusion([True] * 9 + [False], [True] * 10)
    assert lopsided.accuracy == pytest.approx(0.9) and lopsided.balanced_accuracy == 0.5
    perfect = confusion([True, False, False], [True, False, False])
    assert perfect.balanced_accuracy == 1.0 and perfect.f1 == 1.0
    only_negatives = confusion([False, False], [True, False])
    assert only_negatives.balanced_accuracy == 0.5 and math.isnan(only_negatives.recall)


def test_roc_auc_by_hand():
    assert roc_auc([True, True, False, False], [0.9, 0.4, 0.4, 0.1]) == pytest.approx(3.5 / 4)
    assert roc_auc([True, False], [0.1, 0.9]) == 0.0
    assert math.isnan(roc_auc([True, True], [0.1, 0.9]))


# -- prompts ---------------------------------------------------------------------------------


def example(context_id: int, acts: list[float]) -> Example:
    tokens = [f" t{i}" for i in range(len(acts))]
    peak = max(range(len(acts)), key=acts.__getitem__)
    return Example(context_id, "d", "s", list(range(len(acts))), tokens, acts, max(acts), peak)


def test_marks_scale_and_split():
    assert prompts.marked(["a", "b", "c", "d"], [False, True, True, False]) == "a<<bc>>d"
    assert prompts.marked(["a", "b"], [True, True]) == "<<ab>>"
    assert [prompts.scaled(v, 4.0) for v in (0, 0.1, 1.2, 4.0)] == [0, 1, 3, 10]
    w = prompts.Window([" the", " fox", " ran"], [0.0, 4.0, 1.0])
    assert prompts.explainer_example(w, 4.0) == "the<< fox>> ran\n(fox: 10, ran: 3)"
    pool = [example(i, [0.0, float(i + 1), 0.0]) for i in range(7)]
    mine, held = prompts.split_examples(pool[:4], [pool[3:], pool[:2]])
    assert [e.context_id for e in mine] == [6, 4, 2, 0] and [e.context_id for e in held] == [
        5,
        3,
        1,
    ]
    assert prompts.clean_explanation('\n**Explanation:** "the word fox".\nmore') == "the word fox"
    assert parse_features("3,10-12,3", 20) == [3, 10, 11, 12]
    with pytest.raises(SaedexError, match="outside"):
        parse_features("5-30", 20)


def test_histogram_svg_counts_each_scorer():
    rows = [{"kind": "model", "detection": 0.55, "fuzzing": 0.95},
            {"kind": "model", "detection": 0.51, "fuzzing": math.nan},
            {"kind": "baseline", "detection": 0.1, "fuzzing": 0.1}]  # fmt: skip
    svg = histogram_svg(rows)
    assert svg.startswith("<svg") and "detection 0.5-0.6: 2" in svg and "fuzzing 0.9-1.0: 1" in svg
    assert "detection 0.1-0.2: 0" in svg  # the baseline is not in the histogram


# -- the two model paths ---------------------------------------------------------------------


class FakeOpenAI(BaseHTTPRequestHandler):
    """Explains every feature as "words with the letter e"; as a scorer, says Yes exactly when
    the text has an 'e' in it (or, fuzzing, in the marked part), with log-probabilities."""

    requests: list[dict] = []

    def do_POST(self):  # noqa: N802 (http.server's name)
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        FakeOpenAI.requests.append(body)
        user = body["messages"][-1]["content"]
        if body.get("logprobs"):
            text = user.split("Text: ", 1)[1]
            if "<<" in text:
                text = "".join(part.split(">>")[0] for part in text.split("<<")[1:])
            yes = "e" in text
            top = [{"token": "Yes", "logprob": math.log(0.9 if yes else 0.2)},
                   {"token": "No", "logprob": math.log(0.1 if yes else 0.8)}]  # fmt: skip
            choice = {"message": {"content": "Yes" if yes else "No"},
                      "logprobs": {"content": [{"token": "Yes", "top_logprobs": top}]}}  # fmt: skip
        else:
            choice = {"message": {"content": "Explanation: words with the letter e."}}
        payload = json.dumps({"choices": [choice]}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args):
        pass


@pytest.fixture
def fake_endpoint():
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeOpenAI)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    FakeOpenAI.requests = []
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


def test_openai_compatible_explain_resume_and_score(db, fake_endpoint):  # noqa: F811 (the fixture)
    model = OpenAICompatible(ModelSpec(fake_endpoint, "fake-llm"))
    with IndexReader(db) as reader:
        first = explain(reader, SAE, model, list(range(8)), ExplainConfig(batch_size=3), False)
        live = first.explained
        assert live > 0 and first.failed == 0
        stored = reader.explanations(SAE, list(range(8)))
        texts = {e.text for es in stored.values() for e in es}
        assert texts == {"words with the letter e"}
        assert all(e.source == "model" and e.author == "fake-llm" and e.method == METHOD
                   for es in stored.values() for e in es)  # fmt: skip
        prompt = FakeOpenAI.requests[0]["messages"]
        assert prompt[0]["role"] == "system" and "<<" in prompt[1]["content"]
        assert "Tokens the feature makes more likely next" in prompt[1]["content"]
        n_requests = len(FakeOpenAI.requests)
        again = explain(reader, SAE, model, list(range(8)), ExplainConfig(), False)
        assert again.explained == 0 and len(FakeOpenAI.requests) == n_requests  # resumed
        features = [f for f, es in stored.items() if es]
        rows = score(reader, SAE, model, features, ScoreConfig(n_activating=4, n_inactive=4),
                     baseline=True, progress=False)  # fmt: skip
        assert {r["kind"] for r in rows} == {"model", "baseline"}
        for row in rows:
            assert 0.0 <= row["detection"] <= 1.0 and 0.0 <= row["fuzzing"] <= 1.0
            matrix = row["details"]["detection"]["confusion"]
            assert sum(matrix.values()) == row["n_activating"] + row["n_inactive"]
        scored_ids = {r["explanation_id"] for r in rows if r["kind"] == "model"}
        assert scored_ids
        for es in reader.explanations(SAE, features).values():
            for e in es:
                assert set(e.scores) == ({"detection", "fuzzing"} if e.id in scored_ids else set())
        assert set(summarise(rows)) == {"model", "baseline", "seconds_per_feature"}
    model.close()


def test_unreachable_endpoint_is_one_clear_error(db):  # noqa: F811 (the fixture)
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the block ends: nothing listens there
    model = OpenAICompatible(ModelSpec(f"http://127.0.0.1:{port}/v1", "x"))
    with IndexReader(db) as reader, pytest.raises(SaedexError, match="cannot reach the model"):
        explain(reader, SAE, model, [0, 1, 2, 3], ExplainConfig(), False)


def test_local_hf_model_explains_and_scores(db, tiny_model):  # noqa: F811 (the fixture)
    small = HFCausalLM(ModelSpec(str(tiny_model), context_length=100))
    with IndexReader(db) as reader, pytest.raises(SaedexError, match="does not fit"):
        explain(reader, SAE, small, [0, 1, 2], ExplainConfig(), False)
    # RoPE runs past the tiny model's 512 positions; its byte-level BPE makes prompts long
    model = HFCausalLM(ModelSpec(str(tiny_model), context_length=1500))
    with IndexReader(db) as reader:
        result = explain(reader, SAE, model, list(range(4)), ExplainConfig(batch_size=2,
                         max_new_tokens=8, n_examples=40), False)  # fmt: skip
        assert result.explained + result.failed > 0
        assert (
            model.count_tokens(
                prompts.explainer_prompt([prompts.Window([" a"] * 10, [1.0] * 10)], [])
            )
            > 0
        )
        tops = reader.top_examples(SAE, list(range(64)))
        sparse = reader.list_features(SAE, "density", limit=64).items  # least dense first
        chosen = next(f.index for f in sparse if len(tops[f.index]) >= 4)
        rows = score(reader, SAE, model, [chosen], ScoreConfig(n_activating=3, n_inactive=3),
                     baseline=True, progress=False)  # fmt: skip
        assert rows and all(
            0.0 <= r["detection_auc"] <= 1.0 for r in rows if not math.isnan(r["detection_auc"])
        )
