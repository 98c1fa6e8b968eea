"""The layout's rules, checked by reading every module's imports (nothing is imported or run)."""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"

# The engines and engine-side machinery; outside `engines/` the service sees only the contract (`engines`,
# `engines.base`) and the small shared facts (`oom`, `special_tokens`), plus the hosts' entry points.
ENGINE_IMPLEMENTATIONS = {
    "asr_server.engines.fake",
    "asr_server.engines.transformers_engine",
    "asr_server.engines.vllm_engine",
    "asr_server.engines.speculative",
    "asr_server.engines.onnx_encoder",
    "asr_server.engines.quantization",
    "asr_server.engines.token_scores",
    "asr_server.engines.token_text",
    "asr_server.engines.weights",
    "asr_server.engines.hardware",
    "asr_server.engines.gateway.engine",
    "asr_server.engines.ray.engine",
}
WEB_FRAMEWORKS = ("fastapi", "starlette", "uvicorn")
FRAMEWORK_FREE_ROOMS = ("services", "streaming", "media", "text", "jobs")


def module_name(path: Path) -> str:
    parts = ["asr_server", *path.relative_to(SRC).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path) -> set[str]:
    """Every module `path` imports, at any depth (lazy imports inside functions count too)."""
    found: set[str] = set()
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = importlib.util.resolve_name("." * node.level + base, package)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)  # `from pkg import module`
    return found


MODULES = sorted(SRC.rglob("*.py"))


def _room(path: Path) -> str:
    relative = path.relative_to(SRC).parts
    return relative[0] if len(relative) > 1 else ""


def test_the_import_reader_sees_what_modules_import() -> None:
    worker = imported_modules(SRC / "worker.py")
    assert "asr_server.engines" in worker and "asyncio" in worker
    cli = imported_modules(SRC / "cli.py")
    assert "uvicorn" in cli  # imported inside a function: still seen


@pytest.mark.parametrize("path", [p for p in MODULES if _room(p) != "engines"], ids=lambda p: str(p.relative_to(SRC)))
def test_only_engines_import_an_engine_implementation(path: Path) -> None:
    offending = imported_modules(path) & ENGINE_IMPLEMENTATIONS
    assert not offending, f"{path.relative_to(SRC)} imports {sorted(offending)}: go through asr_server.engines"


@pytest.mark.parametrize(
    "path", [p for p in MODULES if _room(p) in FRAMEWORK_FREE_ROOMS], ids=lambda p: str(p.relative_to(SRC))
)
def test_serving_logic_never_imports_the_web_framework(path: Path) -> None:
    offending = {m for m in imported_modules(path) if m.split(".")[0] in WEB_FRAMEWORKS}
    assert not offending, f"{path.relative_to(SRC)} imports {sorted(offending)}"


@pytest.mark.parametrize(
    "path", [p for p in MODULES if _room(p) in FRAMEWORK_FREE_ROOMS], ids=lambda p: str(p.relative_to(SRC))
)
def test_inner_rooms_never_import_the_adapters(path: Path) -> None:
    offending = {m for m in imported_modules(path) if m == "asr_server.api" or m.startswith("asr_server.api.")}
    assert not offending, f"{path.relative_to(SRC)} imports {sorted(offending)}: api/ calls inward, never the reverse"


def test_no_router_imports_another_router() -> None:
    routers = {module_name(p) for p in (SRC / "api").glob("*.py") if "APIRouter(" in p.read_text()}
    assert len(routers) >= 4
    for path in (SRC / "api").glob("*.py"):
        if module_name(path) in routers:
            others = imported_modules(path) & (routers - {module_name(path)})
            assert not others, f"{path.name} imports the router(s) {sorted(others)}"


def test_every_room_states_its_rule() -> None:
    for init in SRC.rglob("__init__.py"):
        if init.parent != SRC:
            assert ast.get_docstring(ast.parse(init.read_text())), f"{init.relative_to(SRC)} has no rule"


def test_readme_map_is_current() -> None:
    spec = importlib.util.spec_from_file_location("update_readme_map", ROOT / "scripts" / "update_readme_map.py")
    assert spec is not None and spec.loader is not None
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    readme = (ROOT / "README.md").read_text()
    current = readme[readme.index(script.START) + len(script.START) : readme.index(script.END)].strip()
    assert current == script.rooms_map().strip(), "run: make readme"


def test_the_package_lists_every_room() -> None:
    import tomllib

    declared = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    assert declared == {module_name(init) for init in SRC.rglob("__init__.py")}


def test_one_sample_rate_for_the_whole_project() -> None:
    """16 kHz is defined once (asr_server.media.SAMPLE_RATE); the streaming protocol's list of accepted client
    rates is the one other place the number may appear."""
    allowed = {SRC / "media" / "__init__.py", SRC / "streaming" / "protocol.py"}
    for path in MODULES:
        if path in allowed:
            continue
        tree = ast.parse(path.read_text())
        assigned = [
            node.lineno
            for node in ast.walk(tree)
            if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "SAMPLE_RATE" for t in node.targets)
        ]
        literals = [n.lineno for n in ast.walk(tree) if isinstance(n, ast.Constant) and n.value in (16_000, 16_000.0)]
        assert not assigned and not literals, f"{path.relative_to(SRC)}: 16 kHz at lines {assigned + literals}"
