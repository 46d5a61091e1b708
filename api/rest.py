"""A small REST mirror of the GraphQL API, for clients that want plain JSON and status codes.

Each endpoint runs one GraphQL document through the same schema, so REST and GraphQL return
the same shapes (camelCase), hit the same limits and share one code path. The documents select
every field of their type (api/rest.py's `selection`), and the OpenAPI document is derived from
them (api/openapi.py); inputs are checked against that document's own schemas before they run.
GraphQL errors become JSON `{"error", "code"}` with the status their code implies.
"""

from __future__ import annotations

import json
from typing import Any

import jsonschema
from graphql import (
    GraphQLNonNull,
    GraphQLObjectType,
    GraphQLSchema,
    Undefined,
    get_named_type,
)
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from saedex.api.bounds import bounds
from saedex.api.context import ApiState, Context
from saedex.api.errors import ERROR_STATUS
from saedex.api.openapi import Endpoint, openapi_document
from saedex.api.schema import Schema

# Links from a record to a whole other feature: GraphQL's to follow; REST leaves them out,
# which also keeps every REST answer bounded.
LINKS = frozenset({"Feature"})


def selection(gql_type: GraphQLObjectType, seen: frozenset[str] = LINKS) -> str:
    """Every field of an object type, recursively, but for fields with required arguments
    and links to types already on the way down (or to a whole feature)."""
    parts = []
    for name, field in gql_type.fields.items():
        if any(
            isinstance(a.type, GraphQLNonNull) and a.default_value is Undefined
            for a in field.args.values()
        ):
            continue
        named = get_named_type(field.type)
        if not isinstance(named, GraphQLObjectType):
            parts.append(name)
        elif named.name not in seen:
            parts.append(f"{name} {{ {selection(named, seen | {named.name})} }}")
    return " ".join(parts)


def endpoints(schema: GraphQLSchema) -> list[Endpoint]:
    """The REST routes, each a GraphQL document over every field of its answer's type."""
    types = schema.type_map

    def every(name: str) -> str:
        named = types[name]
        assert isinstance(named, GraphQLObjectType)
        return selection(named, LINKS | {name})

    return [
        Endpoint(
            "get", "/api/saes", "Every SAE in the index", f"query {{ saes {{ {every('Sae')} }} }}"
        ),
        Endpoint(
            "get",
            "/api/features/{sae}/{index}",
            "One feature's dashboard data",
            "query ($sae: ID!, $index: Int!) { feature(sae: $sae, index: $index) "
            f"{{ {every('Feature')} }} }}",
        ),
        Endpoint(
            "post",
            "/api/active-features",
            "Run the model and SAE on a text (live inference)",
            "query ($sae: ID!, $text: String!, $topK: Int) "
            "{ activeFeatures(sae: $sae, text: $text, topK: $topK) "
            f"{{ {every('ActiveFeatures')} }} }}",
        ),
        Endpoint(
            "post",
            "/api/steer",
            "Default and steered completions of a prompt (live inference)",
            "query ($sae: ID!, $prompt: String!, $features: [SteerFeatureInput!]!, "
            "$mode: SteerMode, $nTokens: Int, $temperature: Float, $seed: Int, "
            "$chatTemplate: Boolean, $nShifts: Int) { steer(sae: $sae, prompt: $prompt, "
            "features: $features, mode: $mode, nTokens: $nTokens, temperature: $temperature, "
            "seed: $seed, chatTemplate: $chatTemplate, nShifts: $nShifts) "
            f"{{ {every('Steering')} }} }}",
        ),
    ]


def error(status: int, message: str, code: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": message, "code": code}, status_code=status, headers=headers)


def _bad(message: str) -> JSONResponse:
    return error(422, message, "BAD_USER_INPUT")


def _problem(schema: dict[str, Any], value: Any, name: str | None = None) -> str | None:
    """What is wrong with `value` under a JSON Schema of the OpenAPI document, or None."""
    found = jsonschema.exceptions.best_match(
        jsonschema.Draft202012Validator(schema).iter_errors(value)
    )
    if found is None:
        return None
    where = ".".join(str(p) for p in found.absolute_path) or name
    return f"{where}: {found.message}" if where else found.message


def _integral(schema: dict[str, Any], value: Any) -> Any:
    """A JSON number the schema's "integer" admits (3.0 is one) as the int GraphQL expects,
    inside arrays and objects too."""
    schema = next((s for s in schema.get("anyOf", ()) if s.get("type") != "null"), schema)
    if schema.get("type") == "integer" and isinstance(value, float):
        return int(value)
    if isinstance(value, list) and "items" in schema:
        return [_integral(schema["items"], v) for v in value]
    if isinstance(value, dict) and "properties" in schema:
        props = schema["properties"]
        return {k: _integral(props[k], v) if k in props else v for k, v in value.items()}
    return value


class RestApi:
    """The /api routes over one schema and one server state."""

    def __init__(self, schema: Schema, state: ApiState):
        self.schema = schema
        self.state = state
        self.endpoints = endpoints(schema._schema)
        examples = {"sae": list(state.saes), "text": ["The quick brown fox"]}
        self.document = openapi_document(
            schema._schema, self.endpoints, bounds(state.config), examples
        )

    def routes(self) -> list[Route]:
        found = [
            Route(e.path, self.handler(e), methods=[e.method.upper()], name=e.path)
            for e in self.endpoints
        ]
        return [*found, Route("/api/openapi.json", self.openapi, methods=["GET"])]

    def handler(self, endpoint: Endpoint):
        spec = self.document["paths"][endpoint.path][endpoint.method]
        field = endpoint.root.name.value

        async def handle(request: Request) -> Response:
            if endpoint.method == "get":
                variables = self.path_variables(spec, request)
            else:
                variables = await self.body_variables(spec, request)
            if isinstance(variables, Response):
                return variables
            return await self.run(endpoint.document, field, variables)

        return handle

    @staticmethod
    def path_variables(spec: dict[str, Any], request: Request) -> dict[str, Any] | Response:
        variables = {}
        for parameter in spec.get("parameters", []):
            name, schema = parameter["name"], parameter["schema"]
            value: Any = request.path_params[name]
            if schema.get("type") == "integer":
                try:
                    value = int(value)
                except ValueError:
                    return _bad(f"{name} must be an integer, got {value!r}")
            problem = _problem(schema, value, name)
            if problem:
                return _bad(problem)
            variables[name] = value
        return variables

    @staticmethod
    async def body_variables(spec: dict[str, Any], request: Request) -> dict[str, Any] | Response:
        try:
            body = json.loads(await request.body())
        except (json.JSONDecodeError, UnicodeDecodeError):
            return error(400, "the request body is not valid JSON", "BAD_REQUEST")
        schema = spec["requestBody"]["content"]["application/json"]["schema"]
        problem = _problem(schema, body)
        if problem:
            return _bad(problem)
        properties = schema["properties"]
        return {k: _integral(properties[k], v) for k, v in body.items() if k in properties}

    async def run(
        self,
        query: str,
        field: str,
        variables: dict[str, Any],
        authorization: str | None = None,
    ) -> Response:
        """Execute a document; its one root field's value, or the first error as JSON
        (`authorization`: the request's header, for the explanation mutations)."""
        context = Context.new(self.state, authorization)
        result = await self.schema.execute(query, variable_values=variables, context_value=context)
        if result.errors:
            first = result.errors[0]
            code = (first.extensions or {}).get("code", "BAD_REQUEST")
            return error(ERROR_STATUS.get(code, 400), first.message, code)
        return JSONResponse(result.data[field])

    async def openapi(self, request: Request) -> Response:
        return JSONResponse(self.document)
