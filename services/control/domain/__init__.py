"""Pure domain types and rules: no I/O, no gRPC, no database; imports only services.common."""
