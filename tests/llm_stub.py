"""A scripted OpenAI-compatible chat-completions server on a real loopback port, for translator tests.

`POST /v1/chat/completions` reads the ids and texts it was really sent (the JSON payload in the user
message), "translates" them deterministically with `fake_translate`, and answers a proper ChatCompletion.
The request's model name selects the behaviour (see `BEHAVIOURS`); every request is recorded, so tests
can count calls and inspect prompts.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

# Items whose text contains this word are the ones "missing" drops and "merged" folds into a neighbour.
POISON = "xyzzy"

HUGE_CHARS = 1_000_000

BEHAVIOURS = {
    "correct": "plain JSON, one entry per id",
    "fenced": "the JSON inside a ```json markdown fence",
    "chatty": "commentary before and after the JSON",
    "numbered": "a numbered list ('7. text') instead of JSON",
    "think": "a <think> block (holding decoy JSON) before the JSON",
    "missing": f"leaves out every id whose text contains {POISON!r}",
    "merged": f"folds a {POISON!r} item's text into its neighbour's entry and drops its id",
    "invalid-json": "truncated JSON, always",
    "invalid-once": "truncated JSON on the first request, then correct",
    "slow": "sleeps SLOW_S seconds, then correct",
    "sluggish": "sleeps 0.15 s, then correct (to observe concurrency)",
    "429-then-ok": "HTTP 429 with Retry-After on the first request, then correct",
    "500": "HTTP 500, always",
    "401": "HTTP 401, always",
    "huge": f"a correct answer whose texts add up to {HUGE_CHARS:,} characters",
    "content-number": "a completion whose message content is a number",
    "content-list": "a completion whose message content is a list",
    "garbage-body": "HTTP 200 with bytes that are not JSON (content-type application/json)",
    "not-a-completion": "HTTP 200 with a JSON list instead of a chat completion",
}
SLOW_S = 3.0

# 26 distinct CJK characters standing in for a-z, so a fake Chinese translation is injective enough to
# tell cues apart and is all double-width for layout checks.
_CJK_LETTERS = "阿贝策德鹅佛哥哈伊杰卡勒马娜欧坡丘日斯特乌维沃克亚泽"
_CJK_PUNCT = {".": "。", ",": "，", "?": "？", "!": "！", ":": "：", ";": "；"}


def fake_translate(text: str, target: str) -> str:
    """The stub's deterministic "translation": letters become CJK characters for zh, a tag for en."""
    if target == "zh":
        out = []
        for char in text.lower():
            if "a" <= char <= "z":
                out.append(_CJK_LETTERS[ord(char) - ord("a")])
            elif not char.isspace():
                out.append(_CJK_PUNCT.get(char, char))
        return "".join(out)
    return f"(en) {text}"


@dataclass
class RecordedRequest:
    """One chat-completions request as the stub saw it."""

    model: str
    system: str
    user: str
    ids: list[int]
    context: list[str]
    authorization: str | None


def _payload(user: str) -> dict[str, Any]:
    """The first JSON object in the user message that has a "translate" list (the stub's own parse)."""
    decoder = json.JSONDecoder()
    for match in re.finditer(r"\{", user):
        try:
            value, _ = decoder.raw_decode(user, match.start())
        except ValueError:
            continue
        if isinstance(value, dict) and isinstance(value.get("translate"), list):
            return value
    raise ValueError("no translate payload in the user message")


class LLMStub:
    """Runs the stub app with uvicorn in a background thread on 127.0.0.1 and a free port."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: list[RecordedRequest] = []
        self._in_flight = 0
        self.max_in_flight = 0
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def reset(self) -> None:
        with self._lock:
            self.requests.clear()
            self.max_in_flight = 0

    def count(self, model: str | None = None) -> int:
        with self._lock:
            return sum(1 for r in self.requests if model is None or r.model == model)

    def start(self) -> LLMStub:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        app = Starlette(routes=[Route("/v1/chat/completions", self._handle, methods=["POST"])])
        config = uvicorn.Config(app, log_level="error", lifespan="off", timeout_graceful_shutdown=1)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]}, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("the LLM stub did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(timeout=5)

    async def _handle(self, request: Request) -> JSONResponse:
        body = await request.json()
        messages = body.get("messages", [])
        system = "\n".join(m["content"] for m in messages if m.get("role") == "system")
        user = "\n".join(m["content"] for m in messages if m.get("role") == "user")
        model = str(body.get("model", ""))
        payload = _payload(user)
        items = [(int(entry["id"]), str(entry["text"])) for entry in payload["translate"]]
        record = RecordedRequest(
            model=model,
            system=system,
            user=user,
            ids=[ident for ident, _ in items],
            context=list(payload.get("context", [])),
            authorization=request.headers.get("authorization"),
        )
        with self._lock:
            self.requests.append(record)
            seen = sum(1 for r in self.requests if r.model == model)
            self._in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self._in_flight)
        try:
            return await self._respond(model, system, items, first=seen == 1)
        finally:
            with self._lock:
                self._in_flight -= 1

    async def _respond(self, model: str, system: str, items: list[tuple[int, str]], first: bool) -> Response:
        if model in _NOT_TEXT:
            return _NOT_TEXT[model](items)
        if model == "500":
            return _error(500, "server_error", "the model crashed")
        if model == "401":
            return _error(401, "invalid_request_error", "bad api key")
        if model == "429-then-ok" and first:
            return _error(429, "rate_limit_error", "slow down", headers={"retry-after": "0.05"})
        if model == "slow":
            await asyncio.sleep(SLOW_S)
        if model == "sluggish":
            await asyncio.sleep(0.15)
        target = "zh" if "into Simplified Chinese" in system else "en"
        entries = [{"id": ident, "text": fake_translate(text, target)} for ident, text in items]
        if model == "missing":
            entries = [e for e, (_, text) in zip(entries, items, strict=True) if POISON not in text]
        if model == "merged":
            entries = _merge_poison(entries, items)
        if model == "huge":
            entries = [{"id": e["id"], "text": "blah " * (HUGE_CHARS // 5 // len(entries))} for e in entries]
        answer = json.dumps({"translations": entries}, ensure_ascii=False)
        if model == "fenced":
            answer = f"```json\n{answer}\n```"
        elif model == "chatty":
            answer = f"Sure! Here are the translations you asked for:\n\n{answer}\n\nLet me know if you need more."
        elif model == "think":
            answer = f'<think>Maybe {{"translations": [{{"id": 0, "text": "x"}}]}}? No.</think>\n{answer}'
        elif model == "numbered":
            answer = "Here you go:\n" + "\n".join(f"{e['id']}. {e['text']}" for e in entries)
        elif model == "invalid-json" or (model == "invalid-once" and first):
            answer = answer[: len(answer) // 2]
        return JSONResponse(_completion(model, answer))


def _merge_poison(entries: list[dict[str, Any]], items: list[tuple[int, str]]) -> list[dict[str, Any]]:
    """Fold each poisoned entry into the previous one (or the next, if it is first); alone, keep it."""
    out = [dict(e) for e in entries]
    for k in reversed(range(len(out))):
        if POISON in items[k][1] and len(out) > 1:
            into = k - 1 if k > 0 else k + 1
            first, second = sorted((k, into))
            out[into]["text"] = out[first]["text"] + out[second]["text"]
            del out[k]
    return out


_NOT_TEXT: dict[str, Any] = {
    "content-number": lambda items: JSONResponse(_completion("content-number", 12345)),
    "content-list": lambda items: JSONResponse(_completion("content-list", [{"id": i, "text": t} for i, t in items])),
    "garbage-body": lambda items: Response(b"\x00\x9f garbage {[", media_type="application/json"),
    "not-a-completion": lambda items: JSONResponse([1, 2, 3]),
}


def _completion(model: str, content: Any) -> dict[str, Any]:
    return {
        "id": "chatcmpl-stub",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }


def _error(status: int, kind: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    body = {"error": {"message": message, "type": kind, "code": None, "param": None}}
    return JSONResponse(body, status_code=status, headers=headers)


def free_port() -> int:
    """A loopback port nothing listens on (bound, then released), for connection-refused tests."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
