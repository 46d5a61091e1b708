"""REST mirror of the explanation mutations: each runs one fixed GraphQL document (as rest.py).

POST /api/explanations {sae, feature, text, author?, method?} -> the explanation
PATCH /api/explanations/{id} {text, author?} -> the explanation
DELETE /api/explanations/{id} -> {"deleted": true}
All need `Authorization: Bearer <key>` (401 UNAUTHENTICATED otherwise).
"""

from __future__ import annotations

import json
from typing import Any

from graphql import GraphQLObjectType
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from saedex.api.bounds import INT32_MAX, INT32_MIN
from saedex.api.openapi import _errors, _json
from saedex.api.rest import LINKS, RestApi, _integral, _problem, error, selection

DELETE = "mutation ($id: Int!) { deleteExplanation(id: $id) }"

# name -> (type, required) of each body
_BODIES = {
    "add": {"sae": (str, True), "feature": (int, True), "text": (str, True),
            "author": (str, False), "method": (str, False)},
    "edit": {"text": (str, True), "author": (str, False)},
}  # fmt: skip
_JSON_TYPES = {str: {"type": ["string", "null"]},
               int: {"type": ["integer", "null"], "minimum": INT32_MIN, "maximum": INT32_MAX}}  # fmt: skip


def _body_schema(kind: str) -> dict[str, Any]:
    fields = _BODIES[kind]
    properties = {}
    for name, (kind_type, required) in fields.items():
        schema = dict(_JSON_TYPES[kind_type])
        if required:  # null only where the field may be left out
            schema["type"] = schema["type"][0]
        properties[name] = schema
    required = [name for name, (_, needed) in fields.items() if needed]
    return {"type": "object", "properties": properties, "required": required}


def openapi_paths() -> dict[str, Any]:
    """These hand-written routes in the OpenAPI document (as the generated ones: every error
    status the API can answer, 401 UNAUTHENTICATED among them)."""
    body = lambda kind: {  # noqa: E731
        "required": True, "content": {"application/json": {"schema": _body_schema(kind)}},
    }  # fmt: skip
    auth = "Needs Authorization: Bearer <the server's API key>."
    by_id = [{"name": "id", "in": "path", "required": True,
              "schema": {"type": "integer", "minimum": INT32_MIN, "maximum": INT32_MAX}}]  # fmt: skip
    done = _json({"$ref": "#/components/schemas/Explanation"}, "The explanation")
    deleted = {"type": "object", "properties": {"deleted": {"type": "boolean"}},
               "required": ["deleted"]}  # fmt: skip
    return {
        "/api/explanations": {
            "post": {"summary": "Add an explanation", "description": auth,
                     "requestBody": body("add"),
                     "responses": {"200": done, **_errors("post")}},
        },
        "/api/explanations/{id}": {
            "patch": {"summary": "Edit an explanation's text", "description": auth,
                      "parameters": by_id, "requestBody": body("edit"),
                      "responses": {"200": done, **_errors("patch")}},
            "delete": {"summary": "Delete an explanation", "description": auth,
                       "parameters": by_id,
                       "responses": {"200": _json(deleted, "Deleted"), **_errors("delete")}},
        },
    }  # fmt: skip


class ExplanationRoutes:
    """The routes, declared in `rest`'s OpenAPI document; each answers the same Explanation
    (every field, as the feature endpoint's `explanations`)."""

    def __init__(self, rest: RestApi):
        self.rest = rest
        explanation = rest.schema._schema.type_map["Explanation"]
        assert isinstance(explanation, GraphQLObjectType)
        fields = selection(explanation, LINKS | {"Explanation"})
        self.add_query = f"""
mutation ($sae: ID!, $feature: Int!, $text: String!, $author: String, $method: String) {{
  addExplanation(sae: $sae, feature: $feature, text: $text, author: $author, method: $method)
  {{ {fields} }} }}
"""
        self.edit_query = f"""
mutation ($id: Int!, $text: String!, $author: String) {{
  editExplanation(id: $id, text: $text, author: $author) {{ {fields} }} }}
"""
        assert "Explanation" in rest.document["components"]["schemas"]
        rest.document["paths"].update(openapi_paths())

    def routes(self) -> list[Route]:
        return [
            Route("/api/explanations", self.add, methods=["POST"]),
            Route("/api/explanations/{id}", self.by_id, methods=["PATCH", "DELETE"]),
        ]

    async def by_id(self, request: Request) -> Response:
        """One route for both methods, so a 405 and OPTIONS list them both in `Allow`."""
        if request.method == "DELETE":
            return await self.delete(request)
        return await self.edit(request)

    async def add(self, request: Request) -> Response:
        body = await _body(request, "add")
        if isinstance(body, Response):
            return body
        return await self._run(request, self.add_query, "addExplanation", body)

    async def edit(self, request: Request) -> Response:
        body = await _body(request, "edit")
        if isinstance(body, Response):
            return body
        return await self._with_id(request, self.edit_query, "editExplanation", body)

    async def delete(self, request: Request) -> Response:
        response = await self._with_id(request, DELETE, "deleteExplanation", {})
        if response.status_code == 200:
            return JSONResponse({"deleted": True})
        return response

    async def _with_id(self, request: Request, query: str, field: str, body: dict) -> Response:
        raw = request.path_params["id"]
        try:
            explanation_id = int(raw)
        except ValueError:
            return error(422, f"explanation id must be an integer, got {raw!r}", "BAD_USER_INPUT")
        return await self._run(request, query, field, {**body, "id": explanation_id})

    async def _run(self, request: Request, query: str, field: str, variables: dict) -> Response:
        auth = request.headers.get("authorization")
        return await self.rest.run(query, field, variables, authorization=auth)


async def _body(request: Request, kind: str) -> dict[str, Any] | Response:
    """The JSON body checked against its declared schema (as rest.py checks the generated
    endpoints'), or the 400/422 response saying why not."""
    try:
        body = json.loads(await request.body())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return error(400, "the request body is not valid JSON", "BAD_REQUEST")
    schema = _body_schema(kind)
    problem = _problem(schema, body)
    if problem:
        return error(422, problem, "BAD_USER_INPUT")
    return {name: _integral(s, body.get(name)) for name, s in schema["properties"].items()}
