"""Users' tables in DuckDB, sandboxed queries, snapshots, tokenizers; no metadata database."""
