"""The store: the only code that knows the schema or writes SQL."""

from saedex.store.reader import IndexReader
from saedex.store.schema import SCHEMA_VERSION
from saedex.store.writer import IndexWriter

__all__ = ["SCHEMA_VERSION", "IndexReader", "IndexWriter"]
