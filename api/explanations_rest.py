"""REST mirror of the explanation mutations: each runs one fixed GraphQL document (as rest.py).

POST /api/explanations {sae, feature, text, author?, method?} -> the explanation
PATCH /api/explanations/{id} {text, author?} -> the explanation
DELETE /api/explanations/{id} -> {"deleted": true}
All need `Authorization: Bearer <key>` (401 UNAUTHENTICATED otherwise).
"""

from __future__ import annotations

import json
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from saedex.api.rest import _EXPLANATION, RestApi, error

ADD = f"""
mutation ($sae: ID!, $feature: Int!, $text: String!, $author: String, $method: String) {{
  addExplanation(sae: $sae, feature: $feature, text: $text, author: $author, method: $method)
  {{ {_EXPLANATION} }} }}
"""
EDIT = f"""
mutation ($id: Int!, $text: String!, $author: String) {{
  editExplanation(id: $id, text: $text, author: $author) {{ {_EXPLANATION} }} }}
"""
DELETE = "mutation ($id: Int!) { deleteExplanation(id: $id) }"

# name -> (type, required) of each body
_BODIES = {
    "add": {"sae": (str, True), "feature": (int, True), "text": (str, True),
            "author": (str, False), "method": (str, False)},
    "edit": {"text": (str, True), "author": (str, False)},
}  # fmt: skip


class ExplanationRoutes:
    def __init__(self, rest: RestApi):
        self.rest = rest

    def routes(self) -> list[Route]:
        return [
            Route("/api/explanations", self.add, methods=["POST"]),
            Route("/api/explanations/{id}", self.edit, methods=["PATCH"]),
            Route("/api/explanations/{id}", self.delete, methods=["DELETE"]),
        ]

    async def add(self, request: Request) -> Response:
        body = await _body(request, "add")
        if isinstance(body, Response):
            return body
        return await self._run(request, ADD, "addExplanation", body)

    async def edit(self, request: Request) -> Response:
        body = await _body(request, "edit")
        if isinstance(body, Response):
            return body
        return await self._with_id(request, EDIT, "editExplanation", body)

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
    """The JSON body checked against its fields, or the 400/422 response saying why not."""
    try:
        body = json.loads(await request.body())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return error(400, "the request body is not valid JSON", "BAD_REQUEST")
    fields = _BODIES[kind]
    if not isinstance(body, dict):
        return error(
            422, f"the body must be a JSON object {{{', '.join(fields)}}}", "BAD_USER_INPUT"
        )
    for name, (kind_type, required) in fields.items():
        value = body.get(name)
        if value is None and not required:
            continue
        if not isinstance(value, kind_type) or isinstance(value, bool):
            return error(422, f"{name!r} must be a {kind_type.__name__}", "BAD_USER_INPUT")
    return {name: body.get(name) for name in fields}
