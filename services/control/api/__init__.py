"""Thin gRPC servicers: translate messages and call core; no decisions, no store access."""
