"""Flood a live-stream endpoint with tiny messages from several sockets, never reading; run as a script:

    python tests/ws_flooder.py WS_URL {byte|sample|append} SECONDS SOCKETS

Prints the number of messages sent. A separate process, so the flood does not share the server's GIL.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

import websockets

FRAMES: dict[str, str | bytes] = {
    "byte": b"\x00",  # not even one sample: an error event each
    "sample": b"\x00\x00",  # one sample of audio
    "append": json.dumps({"type": "input_audio_buffer.append", "audio": "AAA="}),  # one 24 kHz sample
}


async def flood(url: str, frame: str | bytes, seconds: float) -> int:
    sent = 0
    try:
        async with websockets.connect(url, compression=None, ping_interval=None, close_timeout=1) as ws:
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                await ws.send(frame)
                sent += 1
                if sent % 100 == 0:
                    await asyncio.sleep(0)  # let the deadline check run
    except websockets.ConnectionClosed:
        pass
    return sent


async def main(url: str, kind: str, seconds: float, sockets: int) -> None:
    counts = await asyncio.gather(*(flood(url, FRAMES[kind], seconds) for _ in range(sockets)))
    print(sum(counts))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4])))
