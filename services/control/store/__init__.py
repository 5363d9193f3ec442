"""Metadata database: tables, repositories of domain types, migrations; no access decisions."""
