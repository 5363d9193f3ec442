"""The router: one address in front of several inference engines, one per base model.

It serves the same InferenceService and OpenAI-compatible API as an engine does, resolves each
request's model through control (as an engine does) only to learn its base model, and forwards
the call, with the caller's own key, to the engine of that base model, which checks, generates
and counts usage as if called directly. It imports services.common, the inference service's
types and conversions, and the OpenAI door; it never opens the metadata DB or an engine.
"""
