"""The trainer: a Ray job that trains a LoRA adapter (see job.py)."""
