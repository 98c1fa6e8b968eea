"""A scripted HTTP receiver for webhooks on a loopback port (a real server in a thread), and its fixture."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest


@dataclass
class Received:
    path: str
    headers: dict[str, str]  # lower-case names
    body: bytes
    at: float  # time.monotonic() when the request was read


@dataclass
class Receiver:
    """A scripted HTTP receiver: each request takes the next action of `script` (then 200 once it is used up)
    and is recorded. Actions: an int status, `(status, {header: value})`, "drop" (close the connection with no
    answer) or `("slow", seconds)` (answer 200 after that long)."""

    url: str
    script: list[object] = field(default_factory=list)
    requests: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def next_action(self) -> object:
        with self.lock:
            return self.script.pop(0) if self.script else 200


def _handler(receiver: Receiver) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:  # quiet
            pass

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            with receiver.lock:
                receiver.requests.append(
                    Received(self.path, {k.lower(): v for k, v in self.headers.items()}, body, time.monotonic())
                )
            action = receiver.next_action()
            if action == "drop":
                self.close_connection = True
                return  # no status line: the client sees the connection closed
            status, headers = 200, {}
            if isinstance(action, int):
                status = action
            elif isinstance(action, tuple) and action[0] == "slow":
                time.sleep(action[1])
            elif isinstance(action, tuple):
                status, headers = action
            reply = b'{"ok":true}' if status < 300 else b"receiver's private answer"
            with contextlib.suppress(OSError):  # the client may have given up (the timeout tests)
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

    return Handler


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    receiver = Receiver(url="")
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(receiver))
    server.daemon_threads = True  # a slow answer still sleeping never holds the test up
    server.block_on_close = False
    receiver.url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
