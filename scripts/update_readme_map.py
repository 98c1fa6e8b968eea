"""Regenerate the map of the code's rooms in README.md from each room's docstring (`make readme`).

A room is a package under `src/`; its `__init__.py` docstring states its rule. Top-level modules are listed
with the first line of theirs. `tests/test_architecture.py` fails when the README's map is stale.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
START, END = "<!-- rooms-map:start -->", "<!-- rooms-map:end -->"


def _docstring(path: Path) -> str:
    return ast.get_docstring(ast.parse(path.read_text())) or ""


def _one_paragraph(text: str) -> str:
    return " ".join(text.split("\n\n", 1)[0].split())


def rooms_map() -> str:
    rows = ["| room | its rule | modules |", "|---|---|---|"]
    for init in sorted(SRC.rglob("__init__.py")):
        room = init.parent
        if room == SRC:
            continue
        modules = sorted(p.stem for p in room.glob("*.py") if p.name != "__init__.py")
        name = room.relative_to(SRC).as_posix() + "/"
        rows.append(f"| `{name}` | {_one_paragraph(_docstring(init))} | {', '.join(f'`{m}`' for m in modules)} |")
    rows += ["", "| top-level module | what it is |", "|---|---|"]
    for module in sorted(SRC.glob("*.py")):
        if module.name != "__init__.py":
            rows.append(f"| `{module.name}` | {_one_paragraph(_docstring(module))} |")
    return "\n".join(rows)


def main() -> None:
    readme = ROOT / "README.md"
    text = readme.read_text()
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    readme.write_text(f"{head}{START}\n{rooms_map()}\n{END}{tail}")


if __name__ == "__main__":
    main()
