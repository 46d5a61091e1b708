"""API fuzzing: schemathesis drives the REST mirror (through the OpenAPI document the app
serves) and the GraphQL schema (through introspection) in-process over ASGI, no network.

Both schemas are read from the running app, so an operation added later (a mutation, a REST
route in the document) is fuzzed with no change here. Every phase the `schemathesis run` CLI
runs is run (examples, coverage of boundaries and unsupported methods, positive and negative
fuzzing, stateful links), with all its default checks: statuses and bodies the document
declares, valid requests accepted, invalid ones rejected, no 5xx. On top, for both APIs: no
"Internal server error" anywhere, and a GraphQL error from a resolver always carries a code
that is not INTERNAL_SERVER_ERROR (schemathesis's own GraphQL check counts any code it does
not know, e.g. our NOT_FOUND, as a server error, so it is replaced by ours).

CI runs a bounded, seeded run; docs/api.md shows the long one (SAEDEX_FUZZ_EXAMPLES).
"""

from __future__ import annotations

import json
import os

import pytest
import schemathesis
from hypothesis import strategies as st
from schemathesis.engine import Status, events, from_schema

from saedex.api.app import create_app
from saedex.api.errors import INTERNAL
from saedex.config import ServeConfig
from saedex.store import IndexReader
from tests.conftest import API_SAE as SAE
from tests.conftest import copy_index

EXAMPLES = int(os.environ.get("SAEDEX_FUZZ_EXAMPLES", "30"))
SEED = int(os.environ.get("SAEDEX_FUZZ_SEED", "21"))

# IDs are mostly the indexed SAE, so generated queries reach the resolvers behind the lookup.
schemathesis.graphql.scalar(
    "ID",
    st.one_of(st.just(SAE), st.just(SAE), st.text(max_size=8)).map(
        schemathesis.graphql.nodes.String
    ),
)


@schemathesis.check
def no_internal_error(ctx, response, case) -> None:
    """No 500 and no masked exception, whatever the status (GraphQL answers 200)."""
    assert response.status_code != 500, f"500: {response.text[:300]}"
    assert "Internal server error" not in response.text, response.text[:300]
    if case.operation.schema.specification.name != "GraphQL":
        return
    try:
        payload = json.loads(response.text)
    except ValueError as exc:
        raise AssertionError(f"GraphQL answer is not JSON: {response.text[:300]}") from exc
    for error in payload.get("errors") or []:
        code = (error.get("extensions") or {}).get("code")
        assert code != INTERNAL, error
        if error.get("path") is not None:  # raised by a resolver, not by validation
            assert code, f"resolver error without extensions.code: {error}"


@pytest.fixture(scope="module")
def fuzz_app(api_db, engine, tmp_path_factory):
    """The app over a private copy of the test index: fuzzed mutations (explanations, edits)
    write beside it, never beside the index other tests read."""
    db = tmp_path_factory.mktemp("fuzz") / api_db.name
    copy_index(api_db, db)
    with IndexReader(db) as reader:
        yield create_app(reader, ServeConfig(), engine)


def configure(schema, *excluded: str):
    schema.config.seed = SEED
    schema.config.generation.update(max_examples=EXAMPLES, database="none")
    schema.config.checks.update(excluded_check_names=list(excluded))
    return schema


def failures(schema) -> list[str]:
    """Every failed check of a full schemathesis run, one readable entry each."""
    found = []
    for event in from_schema(schema).execute():
        if isinstance(event, events.FatalError):
            raise event.exception
        if isinstance(event, events.NonFatalError):
            found.append(f"{event.label}: error: {event.info.message}")
        if not isinstance(event, events.ScenarioFinished):
            continue
        for checks in event.recorder.checks.values():
            for check in checks:
                if check.status != Status.FAILURE:
                    continue
                failure = check.failure_info.failure
                curl = check.failure_info.code_sample
                found.append(
                    f"{event.label} [{event.phase.value}] {check.name}: {failure.title}\n"
                    f"  {failure.message.strip()[:400]}\n  {curl}"
                )
    return sorted(set(found))


def report(found: list[str]) -> None:
    assert not found, f"{len(found)} failures (seed {SEED}):\n" + "\n".join(found)


def test_rest_mirror_conforms_to_its_openapi_document(fuzz_app):
    report(failures(configure(schemathesis.openapi.from_asgi("/api/openapi.json", fuzz_app))))


def test_graphql_never_fails_inside(fuzz_app):
    schema = schemathesis.graphql.from_asgi("/graphql", fuzz_app)
    # GraphQL types cannot state a range, so a valid-typed `first: 10**6` is rightly refused
    # (BAD_USER_INPUT): positive_data_acceptance does not apply.
    report(failures(configure(schema, "not_a_server_error", "positive_data_acceptance")))
