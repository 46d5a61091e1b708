"""The query API: GraphQL and a REST mirror over an index (see docs/api.md)."""
