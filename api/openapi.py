"""The OpenAPI 3.1 document of the REST mirror, derived from the GraphQL schema.

Each REST endpoint is one GraphQL document (api/rest.py). Its response schema is that
document's selection set walked against the schema's types; its parameters are the document's
variables, described by the root field's arguments and bounded by the server's limits
(api/bounds.py); its error responses are the API's error codes (api/errors.py). Nothing here
names a field, so the document cannot drift from what the server returns.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from graphql import (
    FieldNode,
    GraphQLEnumType,
    GraphQLField,
    GraphQLInputObjectType,
    GraphQLList,
    GraphQLNonNull,
    GraphQLObjectType,
    GraphQLScalarType,
    GraphQLSchema,
    OperationDefinitionNode,
    SelectionSetNode,
    Undefined,
    parse,
    type_from_ast,
)

from saedex.api.bounds import INT32_MAX, INT32_MIN, Bound
from saedex.api.errors import ERROR_CLASSES, ERROR_STATUS
from saedex.api.scalars import JSON_SCHEMAS

BUILTIN_SCALARS: dict[str, dict[str, Any]] = {
    "Int": {"type": "integer", "minimum": INT32_MIN, "maximum": INT32_MAX},
    "Float": {"type": "number"},
    "String": {"type": "string"},
    "Boolean": {"type": "boolean"},
    "ID": {"type": "string"},
}


@dataclass(frozen=True)
class Endpoint:
    """One REST route: a GraphQL document whose variables come from the path (GET) or from a
    JSON body (POST), answering its one root field's value."""

    method: str
    path: str
    summary: str
    document: str

    @property
    def operation(self) -> OperationDefinitionNode:
        (operation,) = parse(self.document).definitions
        assert isinstance(operation, OperationDefinitionNode)
        return operation

    @property
    def root(self) -> FieldNode:
        (root,) = self.operation.selection_set.selections
        assert isinstance(root, FieldNode)
        return root


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    kind = schema.get("type")
    if isinstance(kind, str):
        return {**schema, "type": [kind, "null"]}
    if not schema:  # any JSON value already includes null
        return schema
    return {"anyOf": [schema, {"type": "null"}]}


def _scalar(named: GraphQLScalarType | GraphQLEnumType) -> dict[str, Any]:
    if isinstance(named, GraphQLEnumType):
        return {"type": "string", "enum": list(named.values)}
    return dict(BUILTIN_SCALARS.get(named.name) or JSON_SCHEMAS[named.name])


class _Walker:
    """Builds response schemas; object types become named components when their selection is
    the same wherever they appear, and are inlined where one differs."""

    def __init__(self) -> None:
        self.components: dict[str, dict[str, Any]] = {}

    def output(self, gql_type: Any, selection: SelectionSetNode | None) -> dict[str, Any]:
        """The JSON Schema of a value of `gql_type` (NonNull, List, object, scalar)."""
        if isinstance(gql_type, GraphQLNonNull):
            return self.output(gql_type.of_type, selection)
        if isinstance(gql_type, GraphQLList):
            return _nullable({"type": "array", "items": self.required(gql_type.of_type, selection)})
        if isinstance(gql_type, GraphQLObjectType):
            assert selection is not None
            return _nullable(self.object(gql_type, selection))
        return _nullable(_scalar(gql_type))

    def required(self, gql_type: Any, selection: SelectionSetNode | None) -> dict[str, Any]:
        """As `output`, without null where the GraphQL type is non-null."""
        if isinstance(gql_type, GraphQLNonNull):
            inner = gql_type.of_type
            if isinstance(inner, GraphQLList):
                return {"type": "array", "items": self.required(inner.of_type, selection)}
            if isinstance(inner, GraphQLObjectType):
                assert selection is not None
                return self.object(inner, selection)
            return _scalar(inner)
        return self.output(gql_type, selection)

    def object(self, gql_type: GraphQLObjectType, selection: SelectionSetNode) -> dict[str, Any]:
        properties, required = {}, []
        for node in selection.selections:
            assert isinstance(node, FieldNode), "REST documents use plain fields"
            field: GraphQLField = gql_type.fields[node.name.value]
            key = (node.alias or node.name).value
            schema = self.required(field.type, node.selection_set)
            if field.description:
                schema = {**schema, "description": field.description}
            properties[key] = schema
            required.append(key)
        schema = {
            "type": "object",
            "properties": properties,
            "required": required,
            "additionalProperties": False,
        }
        if gql_type.description:
            schema["description"] = gql_type.description
        known = self.components.setdefault(gql_type.name, schema)
        if known == schema:
            return {"$ref": f"#/components/schemas/{gql_type.name}"}
        return schema


def _input(gql_type: Any) -> dict[str, Any]:
    """The JSON Schema of an input value of `gql_type`: null where GraphQL takes null, a list
    as an array, an input object with its fields (required where GraphQL requires them)."""
    if isinstance(gql_type, GraphQLNonNull):
        return _given(gql_type.of_type)
    return _nullable(_given(gql_type))


def _given(gql_type: Any) -> dict[str, Any]:
    """As `_input`, for a value that is there (not null)."""
    if isinstance(gql_type, GraphQLList):
        return {"type": "array", "items": _input(gql_type.of_type)}
    if isinstance(gql_type, GraphQLInputObjectType):
        properties = {}
        for name, field in gql_type.fields.items():
            properties[name] = _input(field.type)
            if field.description:
                properties[name]["description"] = field.description
        required = [
            name
            for name, field in gql_type.fields.items()
            if isinstance(field.type, GraphQLNonNull) and field.default_value is Undefined
        ]
        found = {"type": "object", "properties": properties, "required": required}
        return found | {"additionalProperties": False}
    return _scalar(gql_type)


def _wire(gql_type: Any, value: Any) -> Any:
    """A default as JSON carries it (an enum by its name)."""
    named = gql_type.of_type if isinstance(gql_type, GraphQLNonNull) else gql_type
    return named.serialize(value) if isinstance(named, GraphQLEnumType) else value


def _inputs(
    schema: GraphQLSchema, endpoint: Endpoint, limits: dict[str, Bound], examples: dict[str, list]
) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """Each variable's JSON Schema (type, root argument's description and default, bounds,
    examples), and the names of the required ones."""
    root = endpoint.root
    arguments = schema.query_type.fields[root.name.value].args
    argument_of = {
        a.value.name.value: a.name.value for a in root.arguments or () if a.value.kind == "variable"
    }
    properties, required = {}, []
    for definition in endpoint.operation.variable_definitions or ():
        name = definition.variable.name.value
        gql_type = type_from_ast(schema, definition.type)
        value = _given(gql_type.of_type if isinstance(gql_type, GraphQLNonNull) else gql_type)
        argument = arguments[argument_of[name]]
        if argument.description:
            value["description"] = argument.description
        if argument.default_value is not Undefined and argument.default_value is not None:
            value["default"] = _wire(argument.type, argument.default_value)
        elif isinstance(gql_type, GraphQLNonNull):
            required.append(name)
        if name in limits:
            value.update(limits[name].json_schema())
        if examples.get(name):
            value["examples"] = examples[name]
        properties[name] = value
    return properties, required


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


ERROR_SCHEMA = {
    "type": "object",
    "required": ["error", "code"],
    "properties": {
        "error": {"type": "string", "description": "One line naming the problem."},
        "code": {"type": "string", "description": "The GraphQL error code."},
    },
}


def _errors(method: str) -> dict[str, Any]:
    """Every error status the API can answer (500 aside): its error classes' statuses, the
    other codes REST maps (node budget, time limit), and 413 where a request has a body."""
    meaning = {c.code: (c.__doc__ or c.code).strip().splitlines()[0] for c in ERROR_CLASSES}
    found: dict[str, str] = {}
    for code, status in ERROR_STATUS.items():
        if status != 500:
            found.setdefault(str(status), meaning.get(code) or code.replace("_", " ").capitalize())
    if method != "get":
        found["413"] = "The request body is larger than the server's limit."
    ref = {"$ref": "#/components/schemas/Error"}
    return {status: _json(ref, text) for status, text in sorted(found.items())}


def operation(
    schema: GraphQLSchema,
    endpoint: Endpoint,
    limits: dict[str, Bound],
    examples: dict[str, list],
    walker: _Walker,
) -> dict[str, Any]:
    """The OpenAPI operation object of one endpoint."""
    root_field = schema.query_type.fields[endpoint.root.name.value]
    # a null root answers with an error status, never 200: the 200 body is never null
    value_type = root_field.type
    if not isinstance(value_type, GraphQLNonNull):
        value_type = GraphQLNonNull(value_type)
    response = walker.required(value_type, endpoint.root.selection_set)
    properties, required = _inputs(schema, endpoint, limits, examples)
    found: dict[str, Any] = {"summary": endpoint.summary}
    if root_field.description:
        found["description"] = f"GraphQL: `{endpoint.root.name.value}`. {root_field.description}"
    if endpoint.method == "get":
        if properties:
            found["parameters"] = [
                {"name": n, "in": "path", "required": True, "schema": s}
                for n, s in properties.items()
            ]
    else:
        body = {
            "type": "object",
            "properties": properties,
            "required": required,
            "additionalProperties": False,
        }
        found["requestBody"] = {"required": True, "content": {"application/json": {"schema": body}}}
    found["responses"] = {"200": _json(response, endpoint.summary), **_errors(endpoint.method)}
    return found


def _version() -> str:
    try:
        return version("saedex")
    except PackageNotFoundError:
        return "0"


def openapi_document(
    schema: GraphQLSchema,
    endpoints: list[Endpoint],
    limits: dict[str, Bound],
    examples: dict[str, list] | None = None,
) -> dict[str, Any]:
    """The whole document for these endpoints over this schema and these limits; `examples`
    (variable name -> values, e.g. this index's SAE ids) let clients and fuzzers find data."""
    walker = _Walker()
    paths: dict[str, dict[str, Any]] = {}
    for endpoint in endpoints:
        paths.setdefault(endpoint.path, {})[endpoint.method] = operation(
            schema, endpoint, limits, examples or {}, walker
        )
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "saedex REST API",
            "version": _version(),
            "description": "A REST mirror of saedex's GraphQL API at /graphql: each endpoint "
            "runs one GraphQL query, and answers its value or {error, code}.",
        },
        "paths": paths,
        "components": {"schemas": {"Error": ERROR_SCHEMA, **walker.components}},
    }
