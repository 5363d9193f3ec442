"""The inference service: COMPLETE on vLLM, hot-swapping LoRA adapters per request."""
