"""Serving logic with no FastAPI: transcription and timed subtitles, called by `api/`, streams and benchmarks.

A service submits jobs to the queue and shapes results; it never sees a request or a socket.
"""
