"""The OpenAI-compatible HTTP API: chat and text completions over the COMPLETE core, models,
files and fine-tuning jobs over control's public API. See docs/openai.md."""
