"""Hostile input against the real CLI server in a child process: audio bombs by duration, rate and channels,
truncated and malformed files, an endless header, a thousand idle connections. Never a 5xx, the server keeps
serving, and its memory (VmHWM/VmRSS of the child) stays bounded by what a request may cost."""

from __future__ import annotations

import resource
import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from hostile_media import corrupt_middle, pyav_encode, silent_soundfile, wav, wav_header_only
from server_process import ServerProcess, serve_cli

MAX_AUDIO_SECONDS = 120
MIB = 1024
# Accepted 16 kHz mono audio costs 64 KB per second: 7.5 MiB at the limit; the rest is decoder blocks and copies.
REQUEST_BUDGET_KIB = 160 * MIB
SOFT_NOFILE, HARD_NOFILE = 256, 4096


def _low_soft_file_limit() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (SOFT_NOFILE, HARD_NOFILE))


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    env = {"MAX_AUDIO_SECONDS": str(MAX_AUDIO_SECONDS), "MAX_HEADER_BYTES": "65536"}
    with serve_cli(env, preexec_fn=_low_soft_file_limit) as process:
        yield process


def _post(server: ServerProcess, name: str, data: bytes) -> httpx.Response:
    return httpx.post(f"{server.url}/v1/audio/transcriptions", files={"file": (name, data)}, timeout=120)


def _healthy(server: ServerProcess) -> bool:
    return httpx.get(f"{server.url}/health", timeout=5).status_code == 200


BOMBS = {
    # name: (file name, bytes, expected status, expected error code)
    "20 min of 8-channel 192 kHz FLAC (refused from the header)": (
        "bomb.flac",
        lambda: silent_soundfile(1190, 192_000, 8),
        413,
        "audio_too_long",
    ),
    "100 s of stereo 192 kHz FLAC (accepted)": ("hires.flac", lambda: silent_soundfile(100, 192_000, 2), 200, None),
    "Matroska/FLAC at 384 kHz, no length (cut off while decoding)": (
        "bomb.mkv",
        lambda: pyav_encode(240, 384_000, container="matroska", codec="flac", channels=2, silent=True, seekable=False),
        413,
        "audio_too_long",
    ),
    "1024-channel 8-bit WAV": ("wide.wav", lambda: wav_header_only(1024, 16_000), 400, "unsupported_channels"),
    "768 kHz WAV": ("fast.wav", lambda: wav_header_only(2, 768_000), 400, "unsupported_sample_rate"),
}


def test_audio_bombs_are_refused_or_decoded_within_a_bounded_memory(server: ServerProcess) -> None:
    idle = server.status_kib("VmRSS")
    for name, (filename, build, status, code) in BOMBS.items():
        response = _post(server, filename, build())
        assert response.status_code == status, f"{name}: {response.status_code} {response.text[:300]}"
        if code is not None:
            assert response.json()["error"]["code"] == code, name
        peak = server.status_kib("VmHWM")
        assert peak - idle < REQUEST_BUDGET_KIB, f"{name}: peak RSS {peak / MIB:.0f} MiB, idle {idle / MIB:.0f} MiB"
    # Two at once: each costs its own budget, no more.
    bomb = BOMBS["Matroska/FLAC at 384 kHz, no length (cut off while decoding)"][1]()
    with ThreadPoolExecutor(2) as pool:
        statuses = [r.status_code for r in pool.map(lambda _: _post(server, "bomb.mkv", bomb), range(2))]
    assert statuses == [413, 413]
    assert server.status_kib("VmHWM") - idle < 2 * REQUEST_BUDGET_KIB
    # Memory comes back: malloc_trim after each decode.
    assert server.status_kib("VmRSS") - idle < 64 * MIB, f"RSS after: {server.status_kib('VmRSS') / MIB:.0f} MiB"
    assert _healthy(server)


def test_truncated_and_malformed_files_are_4xx_or_flagged(server: ServerProcess) -> None:
    whole_wav = wav(2.0)
    webm = pyav_encode(4.0, 48_000, container="webm", codec="libopus")
    mp3 = pyav_encode(4.0, 44_100, container="mp3", codec="libmp3lame")
    cases = {
        "WAV cut to 200 bytes": ("cut.wav", whole_wav[:200], 400),
        "WAV cut in half": ("half.wav", whole_wav[: len(whole_wav) // 2], 200),
        "WebM cut in half": ("half.webm", webm[: len(webm) // 2], 200),
        "MP3 with damaged frames": ("damaged.mp3", corrupt_middle(mp3, 10_000, 8_000), 200),
        "MP3 with a zeroed header": ("zeroed.mp3", b"\0" * 400 + mp3[400:], 200),
        "random bytes": ("noise.wav", corrupt_middle(b"\0" * 4096, 0, 4096), 400),
        "empty": ("empty.wav", b"", 400),
        "a header and nothing else": ("header.flac", silent_soundfile(1, 16_000, 1)[:42], 400),
    }
    for name, (filename, data, status) in cases.items():
        response = _post(server, filename, data)
        assert response.status_code < 500, f"{name}: {response.status_code} {response.text[:300]}"
        assert response.status_code == status, f"{name}: {response.status_code} {response.text[:300]}"
        if status == 200 and name != "MP3 with a zeroed header":
            assert "x-audio-warning" in response.headers, name
        if status >= 400:
            assert response.json()["error"]["param"] == "file", name
    assert _healthy(server)


def _stream_endless_header(port: int, limit: int) -> tuple[int, bytes]:
    """Send one header value without end until the server answers or closes; bytes sent and its answer."""
    sent = 0
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # A small send buffer of our own: otherwise the kernel takes up to tcp_wmem's 4 MiB from us unread, and
        # "sent" would measure this machine's buffers rather than what the server read.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 256 * 1024)
        sock.settimeout(10)
        sock.connect(("127.0.0.1", port))
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Endless: ")
        chunk = b"a" * 65536
        try:
            while sent < limit:
                sock.sendall(chunk)
                sent += len(chunk)
                sock.setblocking(False)
                try:
                    return sent, sock.recv(4096)  # an answer, or b"" when closed
                except BlockingIOError:
                    pass  # still reading our header
                finally:
                    sock.setblocking(True)
        except (BrokenPipeError, ConnectionResetError):
            return sent, b""
    return sent, b""


def test_an_endless_header_is_cut_off(server: ServerProcess) -> None:
    before = server.status_kib("VmRSS")
    sent, answer = _stream_endless_header(server.port, 100 * 1024 * 1024)
    assert sent <= 4 * 1024 * 1024, f"the server read {sent / 1024 / 1024:.0f} MiB of one header"
    assert answer == b"" or answer.startswith((b"HTTP/1.1 400", b"HTTP/1.1 431")), answer[:100]
    assert server.status_kib("VmRSS") - before < 32 * MIB
    assert _healthy(server)


def test_a_thousand_idle_connections_leave_health_answering(server: ServerProcess) -> None:
    # The child started with a soft limit of 256 descriptors; the server raised it to the hard limit.
    sockets: list[socket.socket] = []
    try:
        for k in range(1100):
            sockets.append(socket.create_connection(("127.0.0.1", server.port), timeout=5))
            if k % 275 == 0:
                assert _healthy(server)
        time.sleep(0.2)  # every connection accepted
        assert _healthy(server)
    finally:
        for sock in sockets:
            sock.close()
    assert _healthy(server)
