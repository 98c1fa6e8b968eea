"""Documentation that must not drift from the code."""

from __future__ import annotations

from pathlib import Path

from asr_server.config import settings_table

ROOT = Path(__file__).resolve().parents[1]


def test_readme_settings_table_is_current() -> None:
    readme = (ROOT / "README.md").read_text()
    start, end = "<!-- settings-table:start -->", "<!-- settings-table:end -->"
    current = readme[readme.index(start) + len(start) : readme.index(end)].strip()
    assert current == settings_table().strip(), "run: make readme"


def test_ci_runs_the_readme_test_command() -> None:
    assert "make test" in (ROOT / ".ci" / "run").read_text()
    assert "make test" in (ROOT / "README.md").read_text()
