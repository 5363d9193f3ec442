"""The trainer: a Ray job training a LoRA adapter (job.py); reports to control via gRPC only."""
