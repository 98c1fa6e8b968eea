"""Kept so that `python -m asr_server.worker_process` still starts gateway mode's worker process: the code lives
in `asr_server.engines.gateway.process`."""

from asr_server.engines.gateway.process import create_worker_app, main

__all__ = ["create_worker_app", "main"]

if __name__ == "__main__":
    raise SystemExit(main())
