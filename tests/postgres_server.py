"""A real, throw-away PostgreSQL server for the tests, from the Debian `postgresql` package's binaries.

`postgres_url` is a session-scoped fixture: the first test that asks for it runs `initdb` into a new temporary
folder and starts `postgres` there (unix socket in that folder, TCP on a free localhost port, trust
authentication, no fsync), waits until it accepts connections, and yields the URL of its `postgres` database;
the server is stopped and the folder removed at the end of the session. Use it from a test module with
the `postgres_url` fixture (registered in conftest.py), and give each test its own database with
`create_database(postgres_url)`.

The binaries are found through $PG_BINDIR, then `pg_config --bindir`, then the newest
/usr/lib/postgresql/*/bin. PostgreSQL refuses to run as root: as root (CI), `initdb` and `pg_ctl` run as the
`postgres` user (created by Debian's package) through `runuser` (or `su`), with the folder chowned to it.
Without binaries, psycopg, or a server that starts, the tests that need it skip with the reason.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shlex
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

SUPERUSER = "postgres"
START_TIMEOUT_S = 60


def find_bindir() -> Path | None:
    """The folder holding `initdb`, `pg_ctl` and `postgres`, or None."""
    candidates = [os.environ.get("PG_BINDIR", "")]
    if shutil.which("pg_config"):
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            found = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True, timeout=10)
            candidates.append(found.stdout.strip())

    def version(path: str) -> tuple[int, ...]:
        name = Path(path).parent.name
        return tuple(int(p) for p in name.split(".") if p.isdigit())

    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=version, reverse=True)
    for candidate in candidates:
        if candidate and all((Path(candidate) / tool).is_file() for tool in ("initdb", "pg_ctl", "postgres")):
            return Path(candidate)
    return None


def _as_server_user() -> tuple[list[str], tuple[int, int] | None]:
    """The command prefix that runs a tool as a user PostgreSQL accepts, and the uid/gid to chown to (root)."""
    if os.geteuid() != 0:
        return [], None
    import pwd

    try:
        entry = pwd.getpwnam("postgres")
    except KeyError:
        pytest.skip("running as root and there is no `postgres` user to run PostgreSQL as")
    if shutil.which("runuser"):
        return ["runuser", "-u", "postgres", "--"], (entry.pw_uid, entry.pw_gid)
    return ["su", "postgres", "-s", "/bin/sh", "-c"], (entry.pw_uid, entry.pw_gid)


def _run(prefix: list[str], command: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    argv = [*prefix, shlex.join(command)] if prefix[:1] == ["su"] else [*prefix, *command]
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd="/", check=False)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _tail(path: Path, result: subprocess.CompletedProcess[str] | None = None) -> str:
    text = (result.stdout + result.stderr) if result is not None else ""
    if path.is_file():
        text += path.read_text(errors="replace")
    return text.strip()[-1500:]


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    try:
        import psycopg
    except ImportError:
        pytest.skip("psycopg is not installed (extra `jobs-postgres`)")
    bindir = find_bindir()
    if bindir is None:
        pytest.skip("no PostgreSQL server binaries (Debian package `postgresql`; or set PG_BINDIR)")
    prefix, owner = _as_server_user()
    # Under /tmp rather than pytest's tmp_path: the `postgres` user must be able to reach it when we are root.
    root = Path(tempfile.mkdtemp(prefix="asr-pg-"))
    data, log = root / "data", root / "server.log"
    if owner is not None:
        os.chown(root, *owner)
    port = _free_port()
    try:
        init = _run(
            prefix,
            [str(bindir / "initdb"), "-D", str(data), "-U", SUPERUSER, "--auth=trust", "-E", "UTF8", "--no-sync"],
            timeout=120,
        )
        if init.returncode != 0:
            pytest.skip(f"initdb failed: {_tail(log, init)}")
        options = f"-k {root} -p {port} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off"
        options += " -c full_page_writes=off -c max_connections=100"
        start = _run(
            prefix,
            [str(bindir / "pg_ctl"), "-D", str(data), "-l", str(log), "-o", options, "-w", "-t", str(START_TIMEOUT_S),
             "start"],
            timeout=START_TIMEOUT_S + 30,
        )  # fmt: skip
        if start.returncode != 0:
            pytest.skip(f"PostgreSQL did not start: {_tail(log, start)}")
        url = f"postgresql+psycopg://{SUPERUSER}@127.0.0.1:{port}/postgres"
        try:
            with psycopg.connect(f"host=127.0.0.1 port={port} user={SUPERUSER} dbname=postgres", connect_timeout=10):
                pass
        except psycopg.Error as exc:
            pytest.skip(f"PostgreSQL started but refuses connections: {exc}")
        yield url
    finally:
        if (data / "postmaster.pid").exists():
            _run(prefix, [str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"], timeout=60)
        shutil.rmtree(root, ignore_errors=True)


def create_database(server_url: str, name: str | None = None) -> str:
    """A new, empty database on the server at `server_url`; its URL."""
    import psycopg
    from sqlalchemy.engine import make_url

    url = make_url(server_url)
    name = name or f"test_{uuid.uuid4().hex[:16]}"
    conninfo = f"host={url.host} port={url.port} user={url.username} dbname={url.database}"
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return url.set(database=name).render_as_string(hide_password=False)
