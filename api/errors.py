"""Client errors: one-line messages with a machine-readable code that REST maps to a status.

graphql-core copies an exception's `extensions` dict onto the GraphQL error, so GraphQL clients
see the same code in `errors[].extensions.code` that REST turns into 404/422/503.
"""

from __future__ import annotations

from graphql import GraphQLError
from strawberry.extensions import MaskErrors

from saedex.api.cost import NODE_LIMIT
from saedex.errors import SaedexError
from saedex.store.deadline import TIMEOUT


class ApiError(SaedexError):
    """Malformed request (not JSON, not a valid GraphQL document).

    The base of the errors the API answers: `code` names why, `status` is its HTTP equivalent.
    """

    code = "BAD_REQUEST"
    status = 400

    def __init__(self, message: str):
        super().__init__(message)
        self.extensions = {"code": self.code}


class NotFound(ApiError):
    """Unknown SAE or feature."""

    code = "NOT_FOUND"
    status = 404


class BadInput(ApiError):
    """Invalid input: a value out of its bounds, of the wrong type, or malformed."""

    code = "BAD_USER_INPUT"
    status = 422


class Unavailable(ApiError):
    """Live inference is off, or its model or SAE cannot be loaded."""

    code = "UNAVAILABLE"
    status = 503


class Unauthenticated(ApiError):
    """A write without a valid API key (explanation edits)."""

    code = "UNAUTHENTICATED"
    status = 401


def is_unexpected(error: GraphQLError) -> bool:
    """True for errors that must be masked: anything raised that is not one of ours."""
    original = error.original_error
    return original is not None and not isinstance(original, (SaedexError, GraphQLError))


INTERNAL = "INTERNAL_SERVER_ERROR"

# The HTTP status of each error code, for REST; an error without a code is the client's (400).
# Add a class here and the OpenAPI document declares its status on every endpoint.
ERROR_CLASSES: tuple[type[ApiError], ...] = (
    ApiError,
    NotFound,
    BadInput,
    Unavailable,
    Unauthenticated,
)
ERROR_STATUS = {
    **{cls.code: cls.status for cls in ERROR_CLASSES},
    INTERNAL: 500,
    # limits (api/limits.py): over the node budget, past the time limit
    NODE_LIMIT: 400,
    TIMEOUT: 504,
}


class MaskUnexpected(MaskErrors):
    """strawberry's MaskErrors for errors not ours, tagged so REST can answer 500."""

    def __init__(self) -> None:
        super().__init__(should_mask_error=is_unexpected, error_message="Internal server error.")

    def anonymise_error(self, error: GraphQLError) -> GraphQLError:
        masked = super().anonymise_error(error)
        masked.extensions = {"code": INTERNAL}
        return masked
