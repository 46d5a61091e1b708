"""A small REST mirror of the GraphQL API, for clients that want plain JSON and status codes.

Each endpoint runs one fixed GraphQL document through the same schema, so REST and GraphQL
return the same shapes (camelCase), hit the same limits and share one code path. GraphQL
errors become JSON `{"error", "code"}` with the status their code implies.
"""

from __future__ import annotations

import json
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from saedex.api.context import ApiState, Context
from saedex.api.errors import ERROR_STATUS
from saedex.api.openapi import openapi_document
from saedex.api.schema import Schema

_EXAMPLE = "contextId documentId source tokens tokenIds activations maxActivation maxTokenIndex"
_LOGIT = "token tokenId value"
_HIST = "binEdges counts"

SAES_QUERY = """
query { saes { id modelName hookName hookLayer architecture dIn dSae saePath corpus contextSize
  prependBos nDocuments nSkippedDocuments nContexts nTokens nExcludedTokens deadFeatures status
  settings startedAt finishedAt durationS } }
"""

FEATURE_QUERY = f"""
query ($sae: ID!, $index: Int!) {{ feature(sae: $sae, index: $index) {{
  sae index nActive density maxActivation meanActivation skew kurtosis
  histogram {{ {_HIST} }} logitHistogram {{ {_HIST} }}
  topLogits {{ {_LOGIT} }} bottomLogits {{ {_LOGIT} }}
  topExamples {{ {_EXAMPLE} }}
  intervalSamples {{ index low high fraction examples {{ {_EXAMPLE} }} }}
  neighbours {{ index cosine }}
}} }}
"""

ACTIVE_QUERY = """
query ($sae: ID!, $text: String!, $topK: Int!) {
  activeFeatures(sae: $sae, text: $text, topK: $topK) {
    sae tokens tokenIds excluded
    positions { position token tokenId excluded features { index value } }
    features { index maxValue maxTokenIndex values }
  }
}
"""


STEER_QUERY = """
query ($sae: ID!, $prompt: String!, $features: [SteerFeatureInput!]!, $mode: SteerMode!,
       $nTokens: Int!, $temperature: Float!, $seed: Int!, $chatTemplate: Boolean!,
       $nShifts: Int!) {
  steer(sae: $sae, prompt: $prompt, features: $features, mode: $mode, nTokens: $nTokens,
        temperature: $temperature, seed: $seed, chatTemplate: $chatTemplate,
        nShifts: $nShifts) {
    sae mode prompt promptTokens temperature seed
    features { index strength value decoderNorm maxActivation }
    default { text steps { token tokenId logprob } }
    steered { text steps { token tokenId logprob
      raised { token tokenId delta probability } lowered { token tokenId delta probability } } }
  }
}
"""

STEER_DEFAULTS = {
    "mode": "ADD",
    "nTokens": 32,
    "temperature": 0.0,
    "seed": 0,
    "chatTemplate": False,
    "nShifts": 5,
}


def error(status: int, message: str, code: str) -> JSONResponse:
    return JSONResponse({"error": message, "code": code}, status_code=status)


class RestApi:
    """The /api routes over one schema and one server state."""

    def __init__(self, schema: Schema, state: ApiState):
        self.schema = schema
        self.state = state

    def routes(self) -> list[Route]:
        return [
            Route("/api/saes", self.saes, methods=["GET"]),
            Route("/api/features/{sae}/{index}", self.feature, methods=["GET"]),
            Route("/api/active-features", self.active_features, methods=["POST"]),
            Route("/api/steer", self.steer, methods=["POST"]),
            Route("/api/openapi.json", self.openapi, methods=["GET"]),
        ]

    async def run(self, query: str, field: str, variables: dict[str, Any] | None = None):
        """Execute a document; its one root field's value, or the first error as JSON."""
        result = await self.schema.execute(
            query, variable_values=variables, context_value=Context.new(self.state)
        )
        if result.errors:
            first = result.errors[0]
            code = (first.extensions or {}).get("code", "BAD_REQUEST")
            return error(ERROR_STATUS.get(code, 400), first.message, code)
        return JSONResponse(result.data[field])

    async def saes(self, request: Request) -> Response:
        return await self.run(SAES_QUERY, "saes")

    async def feature(self, request: Request) -> Response:
        raw = request.path_params["index"]
        try:
            index = int(raw)
        except ValueError:
            return error(422, f"feature index must be an integer, got {raw!r}", "BAD_USER_INPUT")
        variables = {"sae": request.path_params["sae"], "index": index}
        return await self.run(FEATURE_QUERY, "feature", variables)

    async def active_features(self, request: Request) -> Response:
        try:
            body = json.loads(await request.body())
        except (json.JSONDecodeError, UnicodeDecodeError):
            return error(400, "the request body is not valid JSON", "BAD_REQUEST")
        problem = _check_active_body(body)
        if problem:
            return error(422, problem, "BAD_USER_INPUT")
        variables = {"sae": body["sae"], "text": body["text"], "topK": body.get("topK", 10)}
        return await self.run(ACTIVE_QUERY, "activeFeatures", variables)

    async def steer(self, request: Request) -> Response:
        """POST /api/steer: the body is the steer field's arguments (camelCase, `mode` as
        ADD/CLAMP/ABLATE); GraphQL validates them, a bad one is a 400 with its message."""
        try:
            body = json.loads(await request.body())
        except (json.JSONDecodeError, UnicodeDecodeError):
            return error(400, "the request body is not valid JSON", "BAD_REQUEST")
        if not isinstance(body, dict):
            return error(
                422, "the body must be a JSON object {sae, prompt, features, ...}", "BAD_USER_INPUT"
            )
        unknown = set(body) - {"sae", "prompt", "features", *STEER_DEFAULTS}
        if unknown:
            return error(422, f"unknown fields: {', '.join(sorted(unknown))}", "BAD_USER_INPUT")
        return await self.run(STEER_QUERY, "steer", {**STEER_DEFAULTS, **body})

    async def openapi(self, request: Request) -> Response:
        return JSONResponse(openapi_document())


def _check_active_body(body: Any) -> str | None:
    """What is wrong with a POST /api/active-features body, or None."""
    if not isinstance(body, dict):
        return "the body must be a JSON object {sae, text, topK}"
    for name in ("sae", "text"):
        if not isinstance(body.get(name), str):
            return f"{name!r} must be a string"
    top_k = body.get("topK", 10)
    if not isinstance(top_k, int) or isinstance(top_k, bool):
        return "'topK' must be an integer"
    return None
