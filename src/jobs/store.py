"""The job store: jobs and their finished pieces in SQLite (one file) or PostgreSQL (shared by replicas).

One SQLAlchemy Core implementation serves both dialects. Every method is synchronous, thread-safe and runs in
its own transaction (callers on an event loop use `asyncio.to_thread`). A job is claimed under a lease: the
claimer renews it while it works, and when it lapses (its holder died) another worker takes the job over and
resumes after the last stored piece. Claims are exclusive across threads, processes and replicas: PostgreSQL
locks the candidate row (`FOR UPDATE SKIP LOCKED`), SQLite serialises writers (`BEGIN IMMEDIATE`).
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, make_url

from asr_server.jobs.records import TERMINAL_STATES, JobRecord, JobState, OwnerUsage, PieceRecord

__all__ = ["TERMINAL_STATES", "JobRecord", "JobState", "JobStore", "OwnerUsage", "PieceRecord"]

POSTGRES_EXTRA = "jobs-postgres"


_TERMINAL = [s.value for s in TERMINAL_STATES]
_JOB_FIELDS = [f.name for f in dataclasses.fields(JobRecord)]
_Time = sa.Double
metadata = sa.MetaData()
jobs = sa.Table(
    "asr_jobs",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("owner", sa.String(255), nullable=False, index=True),
    sa.Column("filename", sa.Text, nullable=False),
    sa.Column("media_path", sa.Text, nullable=False),
    sa.Column("media_bytes", sa.BigInteger, nullable=False),
    sa.Column("options", sa.JSON, nullable=False),
    sa.Column("state", sa.String(16), nullable=False, index=True),
    sa.Column("created_at", _Time, nullable=False),
    sa.Column("updated_at", _Time, nullable=False),
    sa.Column("started_at", _Time),
    sa.Column("finished_at", _Time),
    sa.Column("expires_at", _Time),
    sa.Column("duration", _Time),
    sa.Column("done_seconds", _Time, nullable=False),
    sa.Column("error", sa.JSON(none_as_null=True)),
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("lease_owner", sa.String(255)),
    sa.Column("lease_until", _Time),
    sa.Column("webhook_url", sa.Text),
    sa.Column("webhook_state", sa.String(16)),
    sa.Column("webhook_attempts", sa.Integer, nullable=False),
    sa.Column("webhook_error", sa.Text),
    sa.Column("webhook_delivered_at", _Time),
    sa.Index("ix_asr_jobs_state_created", "state", "created_at"),
)
pieces = sa.Table(
    "asr_job_pieces",
    metadata,
    sa.Column("job_id", sa.String(64), sa.ForeignKey("asr_jobs.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("piece_index", sa.Integer, primary_key=True),
    sa.Column("start_time", _Time, nullable=False),
    sa.Column("end_time", _Time, nullable=False),
    sa.Column("data", sa.JSON, nullable=False),
)
# On finishing or cancelling: a job with a webhook URL now owes its webhook.
_WEBHOOK_DUE = sa.case((jobs.c.webhook_url.is_not(None), "pending"), else_=jobs.c.webhook_state)


def _create_engine(url: str) -> sa.Engine:
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        memory = parsed.database in (None, "", ":memory:")
        if not memory:
            Path(parsed.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(
            parsed,
            connect_args={"check_same_thread": False, "timeout": 30},
            poolclass=sa.pool.StaticPool if memory else sa.pool.QueuePool,
            **({} if memory else {"pool_size": 8, "max_overflow": 8}),
        )

        @sa.event.listens_for(engine, "connect")
        def _on_connect(dbapi_connection: Any, _record: Any) -> None:
            dbapi_connection.isolation_level = None  # sqlite3 emits no BEGIN of its own: `_on_begin` does
            cursor = dbapi_connection.cursor()
            if not memory:
                cursor.execute("PRAGMA journal_mode=WAL")
                cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

        @sa.event.listens_for(engine, "begin")
        def _on_begin(conn: Connection) -> None:
            # A writer takes the write lock up front, so a read-then-write transaction never loses its snapshot.
            conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get("jobs_write") else "BEGIN")

        return engine
    if backend == "postgresql":
        if parsed.drivername == "postgresql":
            parsed = parsed.set(drivername="postgresql+psycopg")
        try:
            return sa.create_engine(parsed, pool_size=5, max_overflow=10, pool_pre_ping=True, pool_recycle=1800)
        except ImportError as exc:
            raise RuntimeError(
                f"a PostgreSQL job store needs psycopg 3: pip install 'qwen3-asr-server[{POSTGRES_EXTRA}]' ({exc})"
            ) from exc
    raise ValueError(f"unsupported job store URL scheme {parsed.drivername!r}: use sqlite or postgresql+psycopg")


def _job(row: Any) -> JobRecord:
    values = {name: getattr(row, name) for name in _JOB_FIELDS}
    values["state"] = JobState(values["state"])
    return JobRecord(**values)


class JobStore:
    """Jobs and pieces behind one small API, the same on SQLite and PostgreSQL."""

    def __init__(self, url: str) -> None:
        self._engine = _create_engine(url)
        self.dialect = self._engine.dialect.name
        # An in-memory SQLite database is one shared connection: its transactions must take turns.
        self._lock = threading.RLock() if self._engine.pool.__class__ is sa.pool.StaticPool else None
        for attempt in range(3):  # replicas starting together may race to create the tables
            try:
                with self._tx(write=True) as conn:
                    metadata.create_all(conn)
                break
            except sa.exc.DBAPIError:
                if attempt == 2:
                    raise
                time.sleep(0.2)

    def close(self) -> None:
        self._engine.dispose()

    @contextmanager
    def _tx(self, *, write: bool = False) -> Iterator[Connection]:
        with self._lock or nullcontext(), self._engine.connect() as conn:
            if write:
                conn.execution_options(jobs_write=True)
            with conn.begin():
                yield conn

    @staticmethod
    def _fetch(conn: Connection, job_id: str) -> JobRecord | None:
        row = conn.execute(sa.select(jobs).where(jobs.c.id == job_id)).first()
        return _job(row) if row is not None else None

    def insert(self, job: JobRecord) -> JobRecord:
        created = job.created_at or time.time()
        job = dataclasses.replace(
            job, state=JobState(job.state), created_at=created, updated_at=job.updated_at or created
        )
        values = dataclasses.asdict(job)
        values["state"] = job.state.value
        with self._tx(write=True) as conn:
            conn.execute(sa.insert(jobs).values(**values))
        return job

    def get(self, job_id: str) -> JobRecord | None:
        with self._tx() as conn:
            return self._fetch(conn, job_id)

    def list_jobs(self, owner: str | None = None, *, limit: int = 100) -> list[JobRecord]:
        query = sa.select(jobs).order_by(jobs.c.created_at.desc(), jobs.c.id.desc()).limit(limit)
        if owner is not None:
            query = query.where(jobs.c.owner == owner)
        with self._tx() as conn:
            return [_job(row) for row in conn.execute(query)]

    def claim(
        self,
        worker: str,
        *,
        lease_seconds: float,
        now: float | None = None,
        max_attempts: int = 3,
        retention_seconds: float | None = None,
    ) -> JobRecord | None:
        """Take the oldest queued job, or a running one whose lease lapsed, and lease it to `worker`.

        Running jobs with a lapsed lease that were already claimed `max_attempts` times fail instead
        (`job_interrupted`), with `expires_at = now + retention_seconds` when that is given.
        """
        now = time.time() if now is None else now
        lapsed = (jobs.c.state == JobState.running.value) & (jobs.c.lease_until < now)
        with self._tx(write=True) as conn:
            exhausted = conn.execute(
                sa.select(jobs.c.id, jobs.c.attempts)
                .where(lapsed, jobs.c.attempts >= max_attempts)
                .with_for_update(skip_locked=True)
            ).all()
            for job_id, attempts in exhausted:
                error = {"message": f"the job was interrupted {attempts} times", "type": "server_error"}
                conn.execute(
                    sa.update(jobs)
                    .where(jobs.c.id == job_id, lapsed)
                    .values(
                        state=JobState.failed.value,
                        error={**error, "code": "job_interrupted"},
                        finished_at=now,
                        updated_at=now,
                        lease_owner=None,
                        lease_until=None,
                        webhook_state=_WEBHOOK_DUE,
                        **({} if retention_seconds is None else {"expires_at": now + retention_seconds}),
                    )
                )
            candidate = (jobs.c.state == JobState.queued.value) | lapsed
            job_id = conn.execute(
                sa.select(jobs.c.id)
                .where(candidate, jobs.c.attempts < max_attempts)
                .order_by(jobs.c.created_at, jobs.c.id)
                .limit(1)
                .with_for_update(skip_locked=True)
            ).scalar()
            if job_id is None:
                return None
            conn.execute(
                sa.update(jobs)
                .where(jobs.c.id == job_id)
                .values(
                    state=JobState.running.value,
                    lease_owner=worker,
                    lease_until=now + lease_seconds,
                    started_at=sa.func.coalesce(jobs.c.started_at, now),
                    attempts=jobs.c.attempts + 1,
                    updated_at=now,
                )
            )
            return self._fetch(conn, job_id)

    def _owned_update(self, job_id: str, worker: str, **values: Any) -> bool:
        """Update a job only while it is running under `worker`; False when it is not (cancelled, taken over)."""
        query = sa.update(jobs).where(
            jobs.c.id == job_id, jobs.c.state == JobState.running.value, jobs.c.lease_owner == worker
        )
        with self._tx(write=True) as conn:
            return conn.execute(query.values(**values)).rowcount == 1

    def release(self, job_id: str, worker: str) -> bool:
        """Give a running job back to the queue (this server is stopping): it is claimed again at once, by this
        server after its restart or by another, without waiting for the lease; not counted as an interruption."""
        return self._owned_update(
            job_id,
            worker,
            state=JobState.queued.value,
            lease_owner=None,
            lease_until=None,
            attempts=sa.case((jobs.c.attempts > 0, jobs.c.attempts - 1), else_=0),
            updated_at=time.time(),
        )

    def renew(self, job_id: str, worker: str, *, lease_seconds: float, now: float | None = None) -> bool:
        now = time.time() if now is None else now
        return self._owned_update(job_id, worker, lease_until=now + lease_seconds, updated_at=now)

    def set_progress(self, job_id: str, worker: str, *, done_seconds: float, duration: float | None) -> bool:
        """Record progress; `duration=None` keeps the duration already known."""
        values: dict[str, Any] = {"done_seconds": done_seconds, "updated_at": time.time()}
        if duration is not None:
            values["duration"] = duration
        return self._owned_update(job_id, worker, **values)

    def finish(
        self,
        job_id: str,
        worker: str,
        state: JobState,
        *,
        error: dict | None = None,
        expires_at: float | None = None,
    ) -> bool:
        """End a job running under `worker`; `expires_at=None` keeps the one it has."""
        state = JobState(state)
        if state not in TERMINAL_STATES:
            raise ValueError(f"finish needs a terminal state, not {state.value!r}")
        now = time.time()
        values: dict[str, Any] = {"expires_at": expires_at} if expires_at is not None else {}
        return self._owned_update(
            job_id,
            worker,
            state=state.value,
            error=error,
            finished_at=now,
            updated_at=now,
            lease_owner=None,
            lease_until=None,
            webhook_state=_WEBHOOK_DUE,
            **values,
        )

    def cancel(self, job_id: str, *, expires_at: float | None = None) -> JobRecord | None:
        """Cancel a queued or running job at once; terminal jobs stay as they are. The record after, or None."""
        now = time.time()
        values: dict[str, Any] = {"expires_at": expires_at} if expires_at is not None else {}
        with self._tx(write=True) as conn:
            conn.execute(
                sa.update(jobs)
                .where(jobs.c.id == job_id, jobs.c.state.in_([JobState.queued.value, JobState.running.value]))
                .values(
                    state=JobState.cancelled.value,
                    finished_at=now,
                    updated_at=now,
                    lease_owner=None,
                    lease_until=None,
                    webhook_state=_WEBHOOK_DUE,
                    **values,
                )
            )
            return self._fetch(conn, job_id)

    def put_piece(self, piece: PieceRecord) -> None:
        if self.dialect == "postgresql":
            from sqlalchemy.dialects.postgresql import insert
        else:
            from sqlalchemy.dialects.sqlite import insert
        values = {"start_time": piece.start, "end_time": piece.end, "data": piece.data}
        query = insert(pieces).values(job_id=piece.job_id, piece_index=piece.index, **values)
        query = query.on_conflict_do_update(index_elements=[pieces.c.job_id, pieces.c.piece_index], set_=values)
        with self._tx(write=True) as conn:
            conn.execute(query)

    def pieces(self, job_id: str) -> list[PieceRecord]:
        query = sa.select(pieces).where(pieces.c.job_id == job_id).order_by(pieces.c.piece_index)
        with self._tx() as conn:
            return [PieceRecord(r.job_id, r.piece_index, r.start_time, r.end_time, r.data) for r in conn.execute(query)]

    def set_webhook(
        self, job_id: str, *, state: str, attempts: int, error: str | None = None, delivered_at: float | None = None
    ) -> None:
        values = {
            "webhook_state": state,
            "webhook_attempts": attempts,
            "webhook_error": error,
            "webhook_delivered_at": delivered_at,
        }
        with self._tx(write=True) as conn:
            conn.execute(sa.update(jobs).where(jobs.c.id == job_id).values(**values))

    def pending_webhooks(self) -> list[JobRecord]:
        query = (
            sa.select(jobs)
            .where(jobs.c.webhook_state == "pending", jobs.c.state.in_(_TERMINAL))
            .order_by(jobs.c.finished_at, jobs.c.id)
        )
        with self._tx() as conn:
            return [_job(row) for row in conn.execute(query)]

    def usage(self, owner: str) -> OwnerUsage:
        active = sa.case((jobs.c.state.in_([JobState.queued.value, JobState.running.value]), 1), else_=0)
        query = sa.select(
            sa.func.coalesce(sa.func.sum(active), 0), sa.func.coalesce(sa.func.sum(jobs.c.media_bytes), 0)
        ).where(jobs.c.owner == owner)
        with self._tx() as conn:
            active_jobs, media_bytes = conn.execute(query).one()
        return OwnerUsage(active_jobs=int(active_jobs), media_bytes=int(media_bytes))

    def expired(self, now: float | None = None) -> list[JobRecord]:
        now = time.time() if now is None else now
        query = (
            sa.select(jobs)
            .where(jobs.c.state.in_(_TERMINAL), jobs.c.expires_at.is_not(None), jobs.c.expires_at <= now)
            .order_by(jobs.c.expires_at, jobs.c.id)
        )
        with self._tx() as conn:
            return [_job(row) for row in conn.execute(query)]

    def delete(self, job_id: str) -> None:
        with self._tx(write=True) as conn:
            conn.execute(sa.delete(pieces).where(pieces.c.job_id == job_id))
            conn.execute(sa.delete(jobs).where(jobs.c.id == job_id))
