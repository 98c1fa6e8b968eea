"""Run an app on a loopback port in a background thread, and drive it as a client: for tests, benchmarks and
embedding."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator

import uvicorn
from fastapi import FastAPI


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def running_server(app: FastAPI) -> Iterator[str]:
    """Serve `app` with uvicorn in a thread (lifespan included); yield its base URL."""
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, access_log=False, lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 180  # start-up includes PRELOAD, which may load a model
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


REALTIME_FINALS = {
    "conversation.item.input_audio_transcription.completed": "completed",
    "conversation.item.input_audio_transcription.failed": "failed",
}


async def commit_realtime_turns(
    ws_url: str, turns: int, appends: list[str], *, timeout_s: float = 60.0
) -> Counter[str]:
    """A /v1/realtime client with `turn_detection: null` that sends faster than the model decodes: `turns` turns
    of `appends` (`input_audio_buffer.append` messages), each committed at once, then reads until every turn got
    its final event. Returns how many were "completed" and how many "failed" (tests and benchmarks)."""
    import websockets  # the dev extra's client

    no_vad = {
        "type": "session.update",
        "session": {"type": "transcription", "audio": {"input": {"turn_detection": None}}},
    }
    finals: Counter[str] = Counter()
    async with websockets.connect(f"{ws_url}/v1/realtime?intent=transcription", max_size=None) as ws:
        await ws.recv()
        await ws.send(json.dumps(no_vad))

        async def send_all() -> None:
            for _ in range(turns):
                for append in appends:
                    await ws.send(append)
                await ws.send(json.dumps({"type": "input_audio_buffer.commit"}))

        sender = asyncio.create_task(send_all())
        while finals.total() < turns:
            event = json.loads(await asyncio.wait_for(ws.recv(), timeout_s))
            if event["type"] in REALTIME_FINALS:
                finals[REALTIME_FINALS[event["type"]]] += 1
        await sender
    return finals
