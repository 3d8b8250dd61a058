"""The run store and the scheduler: done markers, locks (exclusive, stale takeover), retries, blocking."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

from lyco_bench.sweep import executors, stages
from lyco_bench.sweep.planner import Plan, make_job
from lyco_bench.sweep.store import StudyStore, lock_is_stale


@pytest.fixture
def store(tmp_path):
    return StudyStore.open(tmp_path, "micro")


def test_marker_requires_intact_outputs(store):
    job = make_job("score", "a", spec={"x": 1})
    out = store.root / "scores" / "a.parquet"
    out.parent.mkdir(parents=True)
    out.write_bytes(b"12345")
    assert not store.is_done(job.id)
    marker = store.write_marker(job, [out], duration_s=1.5, attempt=1)
    assert marker["outputs"]["scores/a.parquet"]["bytes"] == 5
    assert store.is_done(job.id) and store.marker_ids() == {job.id}
    assert store.durations_by_kind() == {"score": [1.5]}
    out.write_bytes(b"123")  # truncated by something else: no longer done
    assert not store.is_done(job.id)
    out.unlink()
    assert not store.is_done(job.id)


def test_lock_is_exclusive_and_released(store):
    first = store.try_lock("job-1")
    assert first is not None
    assert store.try_lock("job-1") is None
    assert store.locked_by_other("job-1")
    owner = json.loads(first.path.read_text())
    assert owner["pid"] == os.getpid() and owner["host"] == socket.gethostname()
    first.release()
    assert json.loads(first.path.read_text())["released"]  # a tombstone: the generation stays
    assert not store.locked_by_other("job-1")
    second = store.try_lock("job-1")
    assert second is not None and second.path == store.lock_generation_path("job-1", 2)
    second.release()
    assert store.lock_generations("job-1") == [2]


def test_lock_of_dead_process_is_taken_over(store):
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    path = store.lock_generation_path("job-2", 1)
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"host": socket.gethostname(), "pid": int(dead.stdout), "since": 0}))
    assert lock_is_stale(path)
    lock = store.try_lock("job-2")
    assert lock is not None
    lock.release()


def test_lock_on_other_host_is_stale_only_without_heartbeat(store):
    path = store.lock_generation_path("job-3", 1)
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"host": "elsewhere", "pid": 1, "since": 0}))
    assert not lock_is_stale(path, stale_after=60)
    os.utime(path, (0, 0))  # last heartbeat in 1970
    assert lock_is_stale(path, stale_after=60)


def _plan(store, jobs):
    return Plan(study=type("S", (), {"name": "micro"})(), store=store, jobs=jobs)


def test_scheduler_retries_then_blocks_dependents(store, monkeypatch):
    calls: list[str] = []

    def flaky(job, st):
        calls.append(job.name)
        if job.name == "bad" or (job.name == "flaky" and calls.count("flaky") == 1):
            raise RuntimeError(f"{job.name} broke")
        out = st.root / f"{job.name}.txt"
        out.write_text(job.name)
        return [out]

    monkeypatch.setitem(stages.STAGES, "score", flaky)
    store.root.mkdir(parents=True)
    a = make_job("score", "flaky", spec={"n": 1})
    b = make_job("score", "bad", spec={"n": 2})
    c = make_job("score", "after-bad", spec={"n": 3}, deps=[b.id])
    d = make_job("score", "after-flaky", spec={"n": 4}, deps=[a.id])
    summary = executors.run_plan(_plan(store, [a, b, c, d]), max_retries=1)
    assert calls == ["flaky", "flaky", "bad", "bad", "after-flaky"]
    assert summary.ran == [a.id, d.id]
    assert list(summary.failed) == [b.id] and summary.blocked == [c.id]
    assert not summary.complete
    assert store.read_marker(a.id)["attempt"] == 2
    # A second run only tries what is not done.
    calls.clear()
    summary = executors.run_plan(_plan(store, [a, b, c, d]), max_retries=0)
    assert calls == ["bad"] and summary.already_done == 2


def test_job_locked_elsewhere_is_waited_for(store, monkeypatch):
    """A job another live runner holds is not run here; its dependents start once it is done."""
    ran: list[str] = []

    def work(job, st):
        ran.append(job.name)
        out = st.root / f"{job.name}.txt"
        out.write_text(job.name)
        return [out]

    monkeypatch.setitem(stages.STAGES, "score", work)
    monkeypatch.setattr(executors, "POLL_S", 0.05)
    held = make_job("score", "held", spec={"n": 1})
    after = make_job("score", "after", spec={"n": 2}, deps=[held.id])
    free = make_job("score", "free", spec={"n": 3})
    other = store.try_lock(held.id)  # stands for another runner (this pid is alive)
    events = []

    def on_event(status, job, result):
        events.append((status, job.name))
        if job.name == "free":  # the other runner finishes "held" meanwhile
            out = store.root / "held.txt"
            out.write_text("held elsewhere")
            store.write_marker(held, [out], duration_s=0.1, attempt=1)
            other.release()

    summary = executors.run_plan(_plan(store, [held, after, free]), on_event=on_event)
    assert ran == ["free", "after"]
    assert ("busy", "held") in events and summary.complete
