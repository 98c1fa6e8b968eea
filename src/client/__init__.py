"""Clients of the service's HTTP API: the `asr-server transcribe` command line. Nothing here imports the server's
internals except to start one in-process."""
