"""The inference service: COMPLETE on vLLM, LoRA adapters per request; control via gRPC only."""
