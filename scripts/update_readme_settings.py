"""Regenerate the settings table in README.md from the settings' docstrings (`make readme`)."""

from __future__ import annotations

from pathlib import Path

from asr_server.config import settings_table

START, END = "<!-- settings-table:start -->", "<!-- settings-table:end -->"


def main() -> None:
    readme = Path(__file__).resolve().parents[1] / "README.md"
    text = readme.read_text()
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    readme.write_text(f"{head}{START}\n{settings_table()}\n{END}{tail}")


if __name__ == "__main__":
    main()
