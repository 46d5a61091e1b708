"""The API key that guards writes (explanation edits): where it comes from, how it is checked.

The key is read once at start-up from `ServeConfig.api_key_file` or else the `SAEDEX_API_KEY`
environment variable; with neither, every edit is refused. A request presents it as
`Authorization: Bearer <key>`, compared in constant time. Neither the key nor the header is
ever logged (the access log records method, path, status and time only).
"""

from __future__ import annotations

import hmac
import os

from saedex.api.errors import Unauthenticated
from saedex.config import ServeConfig
from saedex.errors import SaedexError

API_KEY_ENV = "SAEDEX_API_KEY"
MIN_KEY_CHARS = 16


def load_api_key(config: ServeConfig) -> str | None:
    """The configured key, or None (edits off). A key too short to be safe is refused."""
    if config.api_key_file is not None:
        try:
            key = config.api_key_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise SaedexError(f"cannot read the API key file {config.api_key_file}: {exc}") from exc
        where = str(config.api_key_file)
    else:
        key = os.environ.get(API_KEY_ENV, "").strip()
        where = API_KEY_ENV
    if not key:
        return None
    if len(key) < MIN_KEY_CHARS:
        raise SaedexError(
            f"the API key in {where} is too short (at least {MIN_KEY_CHARS} characters)"
        )
    return key


def check_key(expected: str | None, authorization: str | None) -> None:
    """Raise UNAUTHENTICATED unless `authorization` is `Bearer <expected>`."""
    if expected is None:
        raise Unauthenticated(
            "editing is off on this server: start it with --api-key-file or "
            f"{API_KEY_ENV} set, and send Authorization: Bearer <key>"
        )
    scheme, _, token = (authorization or "").strip().partition(" ")
    given = token.strip().encode() if scheme.lower() == "bearer" else b""
    if not hmac.compare_digest(given, expected.encode()):
        raise Unauthenticated("this needs a valid API key: Authorization: Bearer <key>")
