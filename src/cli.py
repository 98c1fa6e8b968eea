"""`asr-server` command line: `serve`, `transcribe`, `settings-table`, `export-encoder`."""

from __future__ import annotations

import argparse
import os
import sys

from asr_server.config import Settings, settings_table

WS_MAX_MESSAGE_BYTES = 16 * 1024 * 1024
# File descriptors kept free of connections: model shards, log files, the worker's pipes, sockets to the LLM.
RESERVED_FILE_DESCRIPTORS = 128
# Where the hard limit is "unlimited", raise to this rather than to a number the kernel refuses.
UNLIMITED_NOFILE_CAP = 1 << 20


def raise_open_file_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit (allowed without privileges); the soft limit in effect.

    The usual soft default, 1,024, lets a peer holding a thousand idle connections starve the process of
    descriptors (then /health, log writes and model loading fail too)."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = UNLIMITED_NOFILE_CAP if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass  # e.g. above the kernel's nr_open: keep the soft limit we have
    return UNLIMITED_NOFILE_CAP if soft == resource.RLIM_INFINITY else soft


def connection_limit(settings: Settings, open_files: int) -> int:
    """MAX_CONNECTIONS, or what the open-file limit allows after the reserve."""
    if settings.max_connections:
        return settings.max_connections
    return max(16, open_files - RESERVED_FILE_DESCRIPTORS)


def _overrides(args: argparse.Namespace) -> dict[str, str]:
    """CLI flags as setting values (they win over the environment and .env)."""
    values = {"host": args.host, "port": args.port, "model_id": args.model_id, "asr_engine": args.engine}
    if getattr(args, "ray", False):
        values["use_ray"] = True
    return {name: str(value) for name, value in values.items() if value is not None}


def _serve(args: argparse.Namespace) -> int:
    overrides = _overrides(args)
    settings = Settings(**overrides)
    from asr_server.engines import check_acceleration
    from asr_server.errors import EngineUnavailable

    try:  # a flag whose package or hardware is missing stops the start with one clear line
        check_acceleration(settings)
    except EngineUnavailable as exc:
        print(f"asr-server: {exc.message}", file=sys.stderr)
        return 2
    if settings.use_ray:
        from asr_server.engines.ray.serve import serve_on_ray

        return serve_on_ray(settings)
    max_connections = connection_limit(settings, raise_open_file_limit())
    if settings.use_granian:
        return _serve_granian(settings, overrides, max_connections)
    import uvicorn

    from asr_server.server import create_app

    # log_config=None: logging is configured by create_app (loguru), not by uvicorn.
    # http="h11": httptools has no bound on a request's head, so an endless header would grow without limit.
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,
        ws_max_size=WS_MAX_MESSAGE_BYTES,
        http="h11",
        h11_max_incomplete_event_size=settings.max_header_bytes,
        timeout_keep_alive=settings.keep_alive_timeout,
        limit_concurrency=max_connections,
        backlog=settings.backlog,
    )
    return 0


def _serve_granian(settings: Settings, overrides: dict[str, str], max_connections: int) -> int:
    try:
        from granian import Granian
        from granian.constants import Interfaces
        from granian.http import HTTP1Settings
    except ImportError:
        print("USE_GRANIAN=1 needs the 'granian' extra: pip install 'qwen3-asr-server[granian]'", file=sys.stderr)
        return 2
    # Granian builds the app in its worker process from the factory, which reads the environment.
    os.environ.update({name.upper(): value for name, value in overrides.items()})
    Granian(
        "asr_server.server:create_app",
        factory=True,
        interface=Interfaces.ASGI,
        address=settings.host,
        port=settings.port,
        websockets=True,
        log_enabled=False,
        backlog=settings.backlog,
        backpressure=max_connections,
        http1_settings=HTTP1Settings(max_buffer_size=settings.max_header_bytes),
    ).serve()
    return 0


def _export_encoder(args: argparse.Namespace) -> int:
    import json

    from asr_server.engines import export_encoder

    report = export_encoder(args.model, args.out, tensorrt=args.tensorrt)
    print(json.dumps(report, indent=2))
    return 0


def _transcribe(args: argparse.Namespace) -> int:
    from asr_server.client.transcribe import run

    return run(args)


def _add_transcribe(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    transcribe = sub.add_parser(
        "transcribe",
        help="files or folders to subtitles through the jobs API, with progress and resume (docs/jobs.md)",
        description="Submit each file as a job, show its progress, and write <stem>.<format> beside it (or into "
        "--out). Run again to skip what is written and re-attach to jobs still running. Without --server the "
        "service runs in this process, configured from the environment as `asr-server serve` is.",
    )
    transcribe.add_argument("files", nargs="+", metavar="FILE", help="audio/video files, or folders of them")
    transcribe.add_argument(
        "--format", default="srt", choices=["srt", "vtt", "json", "verbose_json", "text"], help="output (srt)"
    )
    transcribe.add_argument("--out", metavar="DIR", help="folder for the outputs (default: beside each file)")
    transcribe.add_argument("--server", metavar="URL", help="the service, e.g. http://host:8000 (default: in-process)")
    transcribe.add_argument("--api-key", metavar="KEY", help="sent as Authorization: Bearer (default: ASR_API_KEY)")
    transcribe.add_argument("--language", help="ISO-639-1 code or name (default: detect)")
    transcribe.add_argument("--prompt", help="context text that helps the model (names, terms)")
    transcribe.add_argument("--subtitle-mode", choices=["accurate", "fast"], help="cue timing (server default)")
    transcribe.add_argument("--max-line-width", type=int, metavar="N", help="characters per subtitle line")
    transcribe.add_argument("--max-lines", type=int, metavar="N", help="lines per cue")
    transcribe.add_argument("--max-cue-duration", type=float, metavar="S", help="seconds per cue")
    transcribe.add_argument("--max-cps", type=float, metavar="N", help="characters per second")
    transcribe.add_argument("--parallel", type=int, default=3, metavar="N", help="files in flight at once (3)")
    transcribe.add_argument("--force", action="store_true", help="transcribe again even when the output is current")
    transcribe.set_defaults(func=_transcribe)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="asr-server", description="Qwen3-ASR speech-to-text service")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="start the HTTP/WebSocket server (settings also from env and .env)")
    serve.add_argument("--host", help="address to listen on (HOST)")
    serve.add_argument("--port", type=int, help="port (PORT)")
    serve.add_argument("--model-id", help="hub id or local directory (MODEL_ID)")
    serve.add_argument("--engine", choices=["transformers", "fake", "vllm"], help="inference engine (ASR_ENGINE)")
    serve.add_argument("--ray", action="store_true", help="serve on a Ray cluster (USE_RAY; extra ray)")
    serve.set_defaults(func=_serve)
    _add_transcribe(sub)
    table = sub.add_parser("settings-table", help="print the settings as a Markdown table")
    table.set_defaults(func=lambda _args: print(settings_table()) or 0)
    export = sub.add_parser(
        "export-encoder", help="export the audio encoder to ONNX (for ONNX_ENCODER_PATH / TRT_ENCODER_PATH)"
    )
    export.add_argument("--model", required=True, help="hub id or local directory of the Qwen3-ASR model")
    export.add_argument("--out", required=True, help="folder to write encoder.onnx and encoder.json to")
    export.add_argument("--tensorrt", action="store_true", help="also build the TensorRT engine (CUDA GPU, extra gpu)")
    export.set_defaults(func=_export_encoder)
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
