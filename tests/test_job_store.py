"""The job store on both backends: SQLite in a temporary file, and a real PostgreSQL server (postgres_server.py)."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from asr_server.jobs.store import (
    TERMINAL_STATES,
    JobRecord,
    JobState,
    JobStore,
    OwnerUsage,
    PieceRecord,
)

from postgres_server import create_database


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'jobs' / 'jobs.db'}"
    return create_database(request.getfixturevalue("postgres_url"))


@pytest.fixture
def store(store_url: str) -> Iterator[JobStore]:
    store = JobStore(store_url)
    yield store
    store.close()


def make_job(job_id: str, *, owner: str = "key-1", created_at: float = 0.0, **extra) -> JobRecord:
    return JobRecord(
        id=job_id,
        owner=owner,
        filename=f"{job_id}.wav",
        media_path=f"/srv/jobs/{job_id}.wav",
        media_bytes=1000,
        options={"language": "en", "response_format": "verbose_json", "timestamp_granularities[]": ["word"]},
        created_at=created_at,
        **extra,
    )


def test_insert_get_and_list_newest_first_by_owner(store: JobStore) -> None:
    before = time.time()
    stored = store.insert(make_job("a"))
    assert before <= stored.created_at <= time.time() and stored.updated_at == stored.created_at
    store.insert(make_job("b", owner="key-2", created_at=stored.created_at + 1))
    store.insert(make_job("c", created_at=stored.created_at + 2, webhook_url="https://example.test/hook"))
    got = store.get("a")
    assert got == stored and got.state is JobState.queued and got.options["timestamp_granularities[]"] == ["word"]
    assert got.error is None and got.duration is None and got.attempts == 0 and got.webhook_state is None
    assert store.get("missing") is None
    assert [j.id for j in store.list_jobs()] == ["c", "b", "a"]
    assert [j.id for j in store.list_jobs("key-1")] == ["c", "a"]
    assert [j.id for j in store.list_jobs("key-1", limit=1)] == ["c"]
    assert store.list_jobs("nobody") == []
    assert store.get("c").webhook_url == "https://example.test/hook"


def test_claim_takes_the_oldest_and_leases_it(store: JobStore) -> None:
    for i, job_id in enumerate(["new", "old", "mid"]):
        store.insert(make_job(job_id, created_at=[300.0, 100.0, 200.0][i]))
    first = store.claim("w1", lease_seconds=30, now=1000)
    assert first is not None and first.id == "old"
    assert first.state is JobState.running and first.lease_owner == "w1" and first.lease_until == 1030
    assert first.started_at == 1000 and first.attempts == 1
    assert [store.claim("w2", lease_seconds=30, now=1000).id for _ in range(2)] == ["mid", "new"]
    assert store.claim("w3", lease_seconds=30, now=1000) is None
    assert store.renew("old", "w1", lease_seconds=60, now=1010)
    assert store.get("old").lease_until == 1070
    assert store.set_progress("old", "w1", done_seconds=180.0, duration=3600.0)
    assert store.set_progress("old", "w1", done_seconds=360.0, duration=None)
    progressed = store.get("old")
    assert (progressed.done_seconds, progressed.duration) == (360.0, 3600.0)


def test_concurrent_claimers_never_share_a_job(store: JobStore, store_url: str) -> None:
    """Four threads on two stores (two replicas, or two processes on one SQLite file) drain 40 jobs."""
    for i in range(40):
        store.insert(make_job(f"job-{i:02d}", created_at=1000.0 + i))
    replica = JobStore(store_url)
    claimed: list[str] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(4)

    def drain(target: JobStore, worker: str) -> None:
        try:
            barrier.wait()
            while (job := target.claim(worker, lease_seconds=300)) is not None:
                claimed.append(job.id)
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=drain, args=(s, f"w{i}")) for i, s in enumerate([store, replica] * 2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    replica.close()
    assert not errors
    assert [job_id for job_id, n in Counter(claimed).items() if n > 1] == []
    assert sorted(claimed) == [f"job-{i:02d}" for i in range(40)]
    assert {job.attempts for job in store.list_jobs()} == {1}


def test_an_expired_lease_lets_another_worker_take_over(store: JobStore) -> None:
    store.insert(make_job("a", created_at=1.0))
    assert store.claim("dead", lease_seconds=10, now=1000).id == "a"
    assert store.claim("alive", lease_seconds=10, now=1005) is None  # the lease still holds
    taken = store.claim("alive", lease_seconds=10, now=1011)
    assert taken is not None and taken.id == "a" and taken.lease_owner == "alive"
    assert taken.attempts == 2 and taken.started_at == 1000  # started_at is the first start
    assert not store.renew("a", "dead", lease_seconds=10, now=1012)
    assert not store.set_progress("a", "dead", done_seconds=5.0, duration=10.0)
    assert not store.finish("a", "dead", JobState.succeeded)
    assert store.get("a").lease_owner == "alive" and store.get("a").done_seconds == 0.0
    assert store.finish("a", "alive", JobState.succeeded, expires_at=5000.0)
    done = store.get("a")
    assert done.state is JobState.succeeded and done.finished_at is not None and done.expires_at == 5000.0
    assert done.lease_owner is None and done.lease_until is None and done.webhook_state is None
    assert not store.finish("a", "alive", JobState.failed)  # once only
    with pytest.raises(ValueError):
        store.finish("a", "alive", JobState.running)


def test_a_released_job_is_claimed_again_at_once_and_not_counted(store: JobStore) -> None:
    store.insert(make_job("a", created_at=1.0))
    assert store.claim("stopping", lease_seconds=30, now=1000).attempts == 1
    assert not store.release("a", "someone else")  # only its holder gives it back
    assert store.release("a", "stopping")
    back = store.get("a")
    assert back.state is JobState.queued and back.lease_owner is None and back.attempts == 0
    assert not store.renew("a", "stopping", lease_seconds=30, now=1001)
    again = store.claim("restarted", lease_seconds=30, now=1001)  # no waiting for the old lease
    assert again is not None and again.attempts == 1 and again.started_at == 1000


def test_a_job_interrupted_max_attempts_times_fails(store: JobStore) -> None:
    store.insert(make_job("doomed", created_at=1.0, webhook_url="https://example.test/hook"))
    store.insert(make_job("next", created_at=2.0))
    now = 1000.0
    for attempt in range(1, 4):
        job = store.claim(f"w{attempt}", lease_seconds=10, now=now, max_attempts=3)
        assert (job.id, job.attempts) == ("doomed", attempt)
        now += 11
    job = store.claim("w4", lease_seconds=10, now=now, max_attempts=3, retention_seconds=100)
    assert job is not None and job.id == "next"
    doomed = store.get("doomed")
    assert doomed.state is JobState.failed and doomed.attempts == 3 and doomed.lease_owner is None
    message = "the job was interrupted 3 times"
    assert doomed.error == {"message": message, "type": "server_error", "code": "job_interrupted"}
    assert doomed.finished_at == now and doomed.expires_at == now + 100
    assert [j.id for j in store.pending_webhooks()] == ["doomed"]


def test_cancel_queued_and_running_jobs(store: JobStore) -> None:
    store.insert(make_job("queued", created_at=2.0, webhook_url="https://example.test/hook"))
    store.insert(make_job("running", created_at=1.0))
    assert store.claim("w", lease_seconds=60).id == "running"
    cancelled = store.cancel("queued", expires_at=9e9)
    assert cancelled.state is JobState.cancelled and cancelled.finished_at is not None
    assert cancelled.expires_at == 9e9 and cancelled.webhook_state == "pending"
    stopped = store.cancel("running")
    assert stopped.state is JobState.cancelled and stopped.lease_owner is None and stopped.webhook_state is None
    assert not store.renew("running", "w", lease_seconds=60)
    assert not store.set_progress("running", "w", done_seconds=1.0, duration=2.0)
    assert not store.finish("running", "w", JobState.succeeded)
    assert store.claim("w2", lease_seconds=60) is None  # cancelled jobs are never claimed
    again = store.cancel("running", expires_at=1.0)  # terminal: unchanged
    assert again == stopped
    assert store.cancel("unknown") is None


def test_pieces_upsert_in_order_and_survive_a_restart(store: JobStore, store_url: str) -> None:
    store.insert(make_job("a"))
    store.insert(make_job("b"))
    store.put_piece(PieceRecord("a", 1, 180.0, 360.0, {"text": "second", "words": [{"w": "two", "s": 180.5}]}))
    store.put_piece(PieceRecord("a", 0, 0.0, 180.0, {"text": "first draft"}))
    store.put_piece(PieceRecord("a", 0, 0.0, 179.5, {"text": "first", "timing": "aligned"}))  # upsert
    store.put_piece(PieceRecord("b", 0, 0.0, 10.0, {"text": "other job"}))
    expected = [
        PieceRecord("a", 0, 0.0, 179.5, {"text": "first", "timing": "aligned"}),
        PieceRecord("a", 1, 180.0, 360.0, {"text": "second", "words": [{"w": "two", "s": 180.5}]}),
    ]
    assert store.pieces("a") == expected
    assert store.pieces("missing") == []
    store.close()
    reopened = JobStore(store_url)  # a restart: the tables exist already
    try:
        assert reopened.pieces("a") == expected
        assert reopened.get("a") is not None and len(reopened.list_jobs()) == 2
    finally:
        reopened.close()


def test_webhook_state_and_pending_webhooks(store: JobStore) -> None:
    store.insert(make_job("hooked", created_at=1.0, webhook_url="https://example.test/hook"))
    store.insert(make_job("plain", created_at=2.0))
    assert store.pending_webhooks() == []
    for job_id in ("hooked", "plain"):
        assert store.claim("w", lease_seconds=60).id == job_id
    assert store.pending_webhooks() == []  # running jobs owe nothing yet
    error = {"message": "could not decode", "type": "invalid_request_error", "code": "bad_media"}
    assert store.finish("hooked", "w", JobState.failed, error=error)
    assert store.finish("plain", "w", JobState.succeeded)
    pending = store.pending_webhooks()
    assert [j.id for j in pending] == ["hooked"] and pending[0].error == error
    store.set_webhook("hooked", state="pending", attempts=1, error="HTTP 503")
    assert store.get("hooked").webhook_attempts == 1 and store.get("hooked").webhook_error == "HTTP 503"
    store.set_webhook("hooked", state="delivered", attempts=2, delivered_at=1234.5)
    hooked = store.get("hooked")
    assert (hooked.webhook_state, hooked.webhook_attempts, hooked.webhook_error) == ("delivered", 2, None)
    assert hooked.webhook_delivered_at == 1234.5
    assert store.pending_webhooks() == []


def test_usage_counts_active_jobs_and_stored_media(store: JobStore) -> None:
    assert store.usage("key-1") == OwnerUsage(active_jobs=0, media_bytes=0)
    store.insert(make_job("q", created_at=1.0))
    store.insert(make_job("r", created_at=2.0))
    store.insert(make_job("done", created_at=3.0))
    store.insert(make_job("theirs", owner="key-2", created_at=4.0))
    assert store.claim("w", lease_seconds=60).id == "q"
    assert store.claim("w", lease_seconds=60).id == "r"
    assert store.claim("w", lease_seconds=60).id == "done"
    assert store.finish("done", "w", JobState.succeeded)
    assert store.usage("key-1") == OwnerUsage(active_jobs=2, media_bytes=3000)
    store.delete("done")
    assert store.usage("key-1") == OwnerUsage(active_jobs=2, media_bytes=2000)
    assert store.usage("key-2") == OwnerUsage(active_jobs=1, media_bytes=1000)


def test_expired_jobs_and_delete_with_their_pieces(store: JobStore) -> None:
    for i, job_id in enumerate(["old", "fresh", "forever", "active"]):
        store.insert(make_job(job_id, created_at=float(i + 1)))
    for job_id, expires in [("old", 100.0), ("fresh", 900.0), ("forever", None)]:
        assert store.claim("w", lease_seconds=60).id == job_id
        store.put_piece(PieceRecord(job_id, 0, 0.0, 1.0, {"text": job_id}))
        assert store.finish(job_id, "w", JobState.succeeded, expires_at=expires)
    store.put_piece(PieceRecord("active", 0, 0.0, 1.0, {"text": "active"}))
    assert [j.id for j in store.expired(now=500.0)] == ["old"]
    assert [j.id for j in store.expired(now=900.0)] == ["old", "fresh"]
    assert {j.state for j in store.expired(now=1e12)} <= TERMINAL_STATES
    store.delete("old")
    assert store.get("old") is None and store.pieces("old") == []
    assert [j.id for j in store.expired(now=900.0)] == ["fresh"]
    assert store.pieces("fresh") != [] and store.pieces("active") != []
    store.delete("missing")  # a no-op


def test_a_postgres_url_without_the_driver_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "psycopg", None)  # as if it were not installed
    with pytest.raises(RuntimeError, match="jobs-postgres"):
        JobStore("postgresql+psycopg://user@127.0.0.1:1/jobs")
