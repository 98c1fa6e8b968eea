"""Translation's helpers for the LLM client (`asr_server.translator`): target-language tags, prompts and the JSON
exchange, and the bounded text work on answers.
"""
