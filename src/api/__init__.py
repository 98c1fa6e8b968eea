"""HTTP routers: thin adapters from the wire to `asr_server.services.transcription`."""
