"""Helpers of `asr_server.translator` (the public module): language tags and the JSON exchange with the LLM."""
