"""Shared by every service (errors, keys, gRPC server, catalog); imports no other package."""
