"""`asr-server` command line: `serve`, `settings-table`."""

from __future__ import annotations

import argparse
import sys

from asr_server.config import Settings, settings_table


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    overrides = {key: value for key, value in {"host": args.host, "port": args.port}.items() if value is not None}
    if args.model_id:
        overrides["model_id"] = args.model_id
    if args.engine:
        overrides["asr_engine"] = args.engine
    settings = Settings(**overrides)
    from asr_server.server import create_app

    app = create_app(settings)
    # log_config=None: logging is configured by create_app (loguru), not by uvicorn.
    uvicorn.run(
        app, host=settings.host, port=settings.port, log_config=None, access_log=False, ws_max_size=16 * 1024 * 1024
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="asr-server", description="Qwen3-ASR speech-to-text service")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="start the HTTP/WebSocket server (settings also from env and .env)")
    serve.add_argument("--host", help="address to listen on (HOST)")
    serve.add_argument("--port", type=int, help="port (PORT)")
    serve.add_argument("--model-id", help="hub id or local directory (MODEL_ID)")
    serve.add_argument("--engine", choices=["transformers", "fake", "vllm"], help="inference engine (ASR_ENGINE)")
    serve.set_defaults(func=_serve)
    table = sub.add_parser("settings-table", help="print the settings as a Markdown table")
    table.set_defaults(func=lambda _args: print(settings_table()) or 0)
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
