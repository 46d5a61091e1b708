"""The OpenAPI 3.1 document of the REST mirror (served at /api/openapi.json)."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import Any


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*statuses: int) -> dict[str, Any]:
    meaning = {
        400: "Malformed request",
        404: "Unknown SAE or feature",
        422: "Invalid input (limits, types)",
        503: "Live inference is off or the SAE cannot be loaded",
        401: "No valid API key (Authorization: Bearer <key>)",
    }
    return {str(s): _json(_ref("Error"), meaning[s]) for s in statuses}


def _array(items: dict[str, Any]) -> dict[str, Any]:
    return {"type": "array", "items": items}


_NUM, _INT, _STR = {"type": "number"}, {"type": "integer"}, {"type": "string"}
_NULL_NUM = {"type": ["number", "null"]}

_SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["error", "code"],
        "properties": {"error": _STR, "code": _STR},
    },
    "Sae": {
        "type": "object",
        "description": "An indexed SAE (the GraphQL Sae type).",
        "properties": {
            "id": _STR,
            "modelName": _STR,
            "hookName": _STR,
            "hookLayer": _INT,
            "architecture": _STR,
            "dIn": _INT,
            "dSae": _INT,
            "nTokens": _INT,
            "nContexts": _INT,
            "deadFeatures": _INT,
            "status": _STR,
            "settings": {"type": "object"},
        },
    },
    "Histogram": {
        "type": "object",
        "properties": {"binEdges": _array(_NUM), "counts": _array(_INT)},
    },
    "Logit": {
        "type": "object",
        "properties": {"token": _STR, "tokenId": _INT, "value": _NUM},
    },
    "Example": {
        "type": "object",
        "properties": {
            "contextId": _INT,
            "documentId": _STR,
            "source": _STR,
            "tokens": _array(_STR),
            "tokenIds": _array(_INT),
            "activations": _array(_NUM),
            "maxActivation": _NUM,
            "maxTokenIndex": _INT,
        },
    },
    "Feature": {
        "type": "object",
        "description": "A feature's dashboard data (the GraphQL Feature type).",
        "properties": {
            "sae": _STR,
            "index": _INT,
            "nActive": _INT,
            "density": _NUM,
            "maxActivation": _NUM,
            "meanActivation": _NUM,
            "skew": _NULL_NUM,
            "kurtosis": _NULL_NUM,
            "histogram": _ref("Histogram"),
            "logitHistogram": _ref("Histogram"),
            "topLogits": _array(_ref("Logit")),
            "bottomLogits": _array(_ref("Logit")),
            "topExamples": _array(_ref("Example")),
            "explanations": _array(_ref("Explanation")),
            "intervalSamples": _array(
                {
                    "type": "object",
                    "properties": {
                        "index": _INT,
                        "low": _NUM,
                        "high": _NUM,
                        "fraction": _NUM,
                        "examples": _array(_ref("Example")),
                    },
                }
            ),
            "neighbours": _array({"type": "object", "properties": {"index": _INT, "cosine": _NUM}}),
        },
    },
    "ActiveFeaturesRequest": {
        "type": "object",
        "required": ["sae", "text"],
        "properties": {
            "sae": _STR,
            "text": {**_STR, "description": "At most the server's text limit (2,000 by default)."},
            "topK": {**_INT, "default": 10, "minimum": 1},
        },
    },
    "ActiveFeatures": {
        "type": "object",
        "properties": {
            "sae": _STR,
            "tokens": _array(_STR),
            "tokenIds": _array(_INT),
            "excluded": _array({"type": "boolean"}),
            "positions": _array(
                {
                    "type": "object",
                    "properties": {
                        "position": _INT,
                        "token": _STR,
                        "tokenId": _INT,
                        "excluded": {"type": "boolean"},
                        "features": _array(
                            {"type": "object", "properties": {"index": _INT, "value": _NUM}}
                        ),
                    },
                }
            ),
            "features": _array(
                {
                    "type": "object",
                    "properties": {
                        "index": _INT,
                        "maxValue": _NUM,
                        "maxTokenIndex": _INT,
                        "values": _array(_NUM),
                    },
                }
            ),
        },
    },
}


def _version() -> str:
    try:
        return version("saedex")
    except PackageNotFoundError:
        return "0"


def openapi_document() -> dict[str, Any]:
    """The document; built per call (it is small and rarely asked for)."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "saedex REST API",
            "version": _version(),
            "description": "A REST mirror of saedex's GraphQL API at /graphql.",
        },
        "paths": {
            "/api/saes": {
                "get": {
                    "summary": "Every SAE in the index",
                    "responses": {"200": _json(_array(_ref("Sae")), "The SAEs")},
                }
            },
            "/api/features/{sae}/{index}": {
                "get": {
                    "summary": "One feature's dashboard data",
                    "parameters": [
                        {"name": "sae", "in": "path", "required": True, "schema": _STR},
                        {"name": "index", "in": "path", "required": True, "schema": _INT},
                    ],
                    "responses": {
                        "200": _json(_ref("Feature"), "The feature"),
                        **_errors(404, 422),
                    },
                }
            },
            **_explanation_paths(),
            "/api/active-features": {
                "post": {
                    "summary": "Run the model and SAE on a text (live inference)",
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": _ref("ActiveFeaturesRequest")}},
                    },
                    "responses": {
                        "200": _json(_ref("ActiveFeatures"), "Features active on the text"),
                        **_errors(400, 404, 422, 503),
                    },
                }
            },
        },
        "components": {"schemas": {**_SCHEMAS, **_EXPLANATION_SCHEMAS}},
    }


# -- explanations (api/explanations_rest.py) --

_NULL_STR = {"type": ["string", "null"]}
_EXPLANATION_SCHEMAS: dict[str, Any] = {
    "Explanation": {
        "type": "object",
        "description": "What a feature means, in words (the GraphQL Explanation type).",
        "properties": {
            "id": _INT, "sae": _STR, "feature": _INT, "text": _STR,
            "source": {"enum": ["human", "import", "model"]}, "author": _NULL_STR,
            "method": _NULL_STR, "scores": {"type": "object"}, "saeFingerprint": _NULL_STR,
            "current": {"type": "boolean"}, "createdAt": _NULL_STR, "updatedAt": _NULL_STR,
        },
    },
    "NewExplanation": {
        "type": "object",
        "required": ["sae", "feature", "text"],
        "properties": {"sae": _STR, "feature": _INT, "text": _STR, "author": _STR, "method": _STR},
    },
    "ExplanationEdit": {
        "type": "object",
        "required": ["text"],
        "properties": {"text": _STR, "author": _STR},
    },
}  # fmt: skip


def _explanation_paths() -> dict[str, Any]:
    body = lambda name: {  # noqa: E731
        "required": True, "content": {"application/json": {"schema": _ref(name)}},
    }  # fmt: skip
    auth = "Needs Authorization: Bearer <the server's API key>."
    by_id = [{"name": "id", "in": "path", "required": True, "schema": _INT}]
    done = _json(_ref("Explanation"), "The explanation")
    return {
        "/api/explanations": {
            "post": {"summary": "Add an explanation", "description": auth,
                     "requestBody": body("NewExplanation"),
                     "responses": {"200": done, **_errors(400, 401, 404, 422)}},
        },
        "/api/explanations/{id}": {
            "patch": {"summary": "Edit an explanation's text", "description": auth,
                      "parameters": by_id, "requestBody": body("ExplanationEdit"),
                      "responses": {"200": done, **_errors(400, 401, 404, 422)}},
            "delete": {"summary": "Delete an explanation", "description": auth,
                       "parameters": by_id,
                       "responses": {"200": _json({"type": "object"}, "Deleted"),
                                     **_errors(401, 404, 422)}},
        },
    }  # fmt: skip
