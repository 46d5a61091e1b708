"""saedex: a feature index for sparse autoencoders.

For notebooks: `saedex.IndexReader("index.duckdb")` reads an index file, `saedex.Client(url)`
a running `saedex serve`; both return the records of saedex.data. Loaded on first use, so
`import saedex` stays light.
"""

from __future__ import annotations

from typing import Any

_LAZY = {"Client": "saedex.client", "IndexReader": "saedex.store"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'saedex' has no attribute {name!r}")


__all__ = ["Client", "IndexReader"]
