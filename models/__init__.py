"""The one source of truth: tables, wire schemas, vocabulary, database access and queries."""
