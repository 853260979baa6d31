"""Storage: the schema, the named queries, and what differs between backends."""
