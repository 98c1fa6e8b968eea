"""A shim: `python -m asr_server.worker_process` as before; the code is in `engines/gateway/process.py`."""

from asr_server.engines.gateway.process import create_worker_app, main

__all__ = ["create_worker_app", "main"]

if __name__ == "__main__":
    raise SystemExit(main())
