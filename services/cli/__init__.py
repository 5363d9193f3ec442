"""The finetune command: gRPC client and local stack launcher; imports services.common only."""
