#!/bin/sh
# The images' one entrypoint. The first argument names the process, the rest are its own flags:
#   control    [flags of python -m services.control]    gRPC on :50051, migrates the DB at start
#   inference  [flags of python -m services.inference]  gRPC on :50052, one base model
#   router     [flags of python -m services.router]     gRPC on :50060, every base model's engine
#   ray-head   [flags of ray start]                     a Ray head without KubeRay
#   ray-worker [flags of ray start]                     a Ray worker; RAY_HEAD_ADDRESS=host:6379
# Anything else runs as given: KubeRay replaces the command with its own `ray start`.
# `exec` makes the service PID 1, so SIGTERM reaches its graceful stop (drain, usage flush).
set -eu
case "${1:-}" in
  control)
    shift
    exec python -m services.control "$@" ;;
  inference)
    shift
    exec python -m services.inference --host 0.0.0.0 "$@" ;;
  router)
    shift
    exec python -m services.router --host 0.0.0.0 "$@" ;;
  ray-head)
    shift
    exec ray start --head --block --port=6379 --dashboard-host=0.0.0.0 "$@" ;;
  ray-worker)
    shift
    exec ray start --address="${RAY_HEAD_ADDRESS:?set RAY_HEAD_ADDRESS to the head host:6379}" --block "$@" ;;
  *)
    exec "$@" ;;
esac
