"""Use cases: every decision (access, job/evaluation lifecycles, usage); no gRPC messages."""
