"""Adapters only: parse and validate the wire, call a service, format the answer.

REST routers, the two WebSocket protocols (the service's own and OpenAI's Realtime dialect), their wire models,
middleware, API-key auth and the injected dependencies. Nothing here runs a model or holds serving logic.
"""
