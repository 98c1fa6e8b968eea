"""The model worker process of gateway mode: the engine behind a tiny HTTP API on a Unix socket.

The gateway (no torch) keeps the queue, batching, validation and formats; this process only runs
engine batches. HTTP over a Unix socket is the transport: a maintained protocol (uvicorn, httpx),
debuggable with curl, and nothing is pickled. Audio travels as raw float32 bytes in multipart parts,
everything else as JSON.

    python -m asr_server.engines.gateway.process --uds /tmp/asr-worker.sock
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Annotated, Any

import numpy as np
from fastapi import FastAPI, File, Form, UploadFile
from fastapi.responses import JSONResponse

from asr_server.config import Settings
from asr_server.engines import AlignItem, Engine, TranscribeItem, create_engine
from asr_server.engines.hosting import EngineExecutor, engine_error
from asr_server.logger import configure_logging


def _error(exc: Exception, what: str) -> JSONResponse:
    error = engine_error(exc, what)  # an out-of-memory keeps its code: the gateway retries that batch in halves
    body = {"status": error.status_code, "code": error.code, "message": error.message}
    return JSONResponse(body, status_code=error.status_code)


async def _arrays(files: list[UploadFile]) -> list[np.ndarray]:
    return [np.frombuffer(await f.read(), dtype="<f4").copy() for f in files]


def create_worker_app(engine: Engine) -> FastAPI:
    executor = EngineExecutor(engine)
    app = FastAPI(title="asr-server worker process", docs_url=None, redoc_url=None)

    run = executor.run

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"pid": os.getpid(), "loaded": engine.loaded, **engine.describe()}

    @app.post("/load")
    async def load(warmup: bool = True) -> JSONResponse:
        try:
            if not engine.loaded:
                await run(engine.load)
                if warmup:
                    await run(engine.warmup)
        except Exception as exc:
            return _error(exc, "the engine call")
        return JSONResponse(
            {
                "loaded": True,
                "supports_alignment": engine.supports_alignment,
                "model_id": engine.model_id,
                **engine.describe(),
            }
        )

    @app.post("/unload")
    async def unload() -> dict[str, bool]:
        await run(engine.unload)
        return {"loaded": False}

    @app.post("/transcribe")
    async def transcribe(
        meta: Annotated[str, Form()], audio: Annotated[list[UploadFile], File()]
    ) -> JSONResponse:
        items_meta = json.loads(meta)
        arrays = await _arrays(audio)
        items = [
            TranscribeItem(audio=a, language=m.get("language"), context=m.get("context", ""))
            for a, m in zip(arrays, items_meta, strict=True)
        ]
        try:
            results = await run(engine.transcribe, items)
        except Exception as exc:
            return _error(exc, "the engine call")
        return JSONResponse([r.to_wire() for r in results])

    @app.post("/align")
    async def align(meta: Annotated[str, Form()], audio: Annotated[list[UploadFile], File()]) -> JSONResponse:
        items_meta = json.loads(meta)
        arrays = await _arrays(audio)
        items = [
            AlignItem(audio=a, text=m["text"], language=m["language"]) for a, m in zip(arrays, items_meta, strict=True)
        ]
        try:
            results = await run(engine.align, items)
        except Exception as exc:
            return _error(exc, "the engine call")
        return JSONResponse([[[u.text, u.start, u.end] for u in units] for units in results])

    return app


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="asr-server model worker process (started by the gateway)")
    parser.add_argument("--uds", required=True, help="Unix socket path to serve on")
    args = parser.parse_args(argv)
    import uvicorn

    # The gateway passes its settings through the environment; this process runs the real engine.
    settings = Settings(gateway_mode=False)
    configure_logging(settings.log_level, settings.log_json, settings.log_file)
    app = create_worker_app(create_engine(settings))
    uvicorn.run(app, uds=args.uds, log_config=None, access_log=False, timeout_keep_alive=300)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
