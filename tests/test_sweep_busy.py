"""Busy locks are reported (holder's host, since when, heartbeat), stale ones taken over and logged."""

from __future__ import annotations

import json
import os
import time

import pytest

from lyco_bench.sweep import executors, locks, stages
from lyco_bench.sweep.locks import BusyWatch, lock_holder
from lyco_bench.sweep.planner import Plan, make_job
from lyco_bench.sweep.store import STALE_AFTER_S, StudyStore

SINCE = 1_700_000_000.0  # 2023-11-14 22:13:20 UTC


@pytest.fixture
def store(tmp_path):
    st = StudyStore.open(tmp_path, "micro")
    st.jobs_dir.mkdir(parents=True)
    return st


def _plant(store: StudyStore, job_id: str, *, heartbeat_age: float, generation: int = 1) -> None:
    """Another host's lock generation whose last heartbeat was ``heartbeat_age`` seconds ago."""
    path = store.lock_generation_path(job_id, generation)
    path.write_text(json.dumps({"host": "elsewhere.example", "pid": 4242, "since": SINCE}))
    beat = time.time() - heartbeat_age
    os.utime(path, (beat, beat))


def _plan(store, jobs):  # noqa: ANN001
    return Plan(study=type("S", (), {"name": "micro"})(), store=store, jobs=jobs)


def test_watch_reports_after_n_heartbeats_then_every_n(store):
    now = [100.0]
    lines: list[str] = []
    watch = BusyWatch(store, heartbeats=3, heartbeat_s=20.0, report=lines.append, clock=lambda: now[0])
    _plant(store, "job-a", heartbeat_age=5.0)
    for t, reported in [(100.0, False), (159.0, False), (160.0, True), (200.0, False), (220.0, True)]:
        now[0] = t
        assert (watch.busy("job-a", "score a") is not None) == reported, t
    assert len(lines) == 2
    assert lines[0].startswith("busy score a: locked for 60 s by host elsewhere.example pid 4242 since ")
    assert "2023-11-14 22:13:20 UTC, last heartbeat 5 s ago" in lines[0]
    assert "stopped" not in lines[0]
    records = [e for e in store.read_log() if e["event"] == "busy"]
    assert [r["busy_s"] for r in records] == [60.0, 120.0]
    assert records[0]["holder_host"] == "elsewhere.example" and records[0]["holder_pid"] == 4242
    watch.clear("job-a")  # done or run here: the span starts again
    now[0] = 230.0
    assert watch.busy("job-a", "score a") is None and watch.watched == ["job-a"]


def test_watch_says_when_a_silent_holder_will_be_taken_over(store):
    now = [0.0]
    lines: list[str] = []
    watch = BusyWatch(store, heartbeats=1, heartbeat_s=20.0, report=lines.append, clock=lambda: now[0])
    _plant(store, "job-b", heartbeat_age=STALE_AFTER_S - 100)
    watch.busy("job-b", "train b")
    now[0] = 20.0
    watch.busy("job-b", "train b")
    assert "its heartbeat stopped: taken over in" in lines[0]
    left = float(lines[0].rsplit("taken over in ", 1)[1].split(" s")[0])
    assert 95 <= left <= 100
    holder = lock_holder(store, "job-b")
    assert holder.generation == 1 and not holder.released and holder.since == SINCE


def test_run_reports_a_job_busy_elsewhere_and_waits_for_it(store, monkeypatch):
    """The scheduler waits on a job another host holds, reporting it; it finishes elsewhere."""
    monkeypatch.setattr(executors, "POLL_S", 0.02)
    monkeypatch.setattr(locks, "HEARTBEAT_S", 0.05)
    monkeypatch.setattr(locks, "BUSY_REPORT_HEARTBEATS", 2)
    printed: list[str] = []
    monkeypatch.setattr(locks, "_print", printed.append)
    held = make_job("score", "held", spec={"n": 1})
    after = make_job("score", "after", spec={"n": 2}, deps=[held.id])

    def work(job, st):  # noqa: ANN001
        out = st.root / f"{job.name}.txt"
        out.write_text(job.name)
        return [out]

    monkeypatch.setitem(stages.STAGES, "score", work)
    _plant(store, held.id, heartbeat_age=0.0)

    def on_event(status, job, result):  # noqa: ANN001
        if status == "busy" and any(e["event"] == "busy" for e in store.read_log()):
            out = store.root / "held.txt"  # … and the other host finishes the job
            out.write_text("held elsewhere")
            store.write_marker(held, [out], duration_s=0.1, attempt=1)
            path = store.lock_generation_path(held.id, 1)
            path.write_text(json.dumps({"released": True, "host": "elsewhere.example", "pid": 4242}))
        elif status == "busy":  # the other host's heartbeat goes on
            os.utime(store.lock_generation_path(held.id, 1))

    summary = executors.run_plan(_plan(store, [held, after]), on_event=on_event)
    assert summary.complete and summary.ran == [after.id]
    out = "\n".join(printed)
    assert "busy score held: locked for" in out and "host elsewhere.example pid 4242" in out
    assert any(e["event"] == "busy" and e["job"] == held.id for e in store.read_log())


def test_stale_lock_of_another_host_is_taken_over_and_logged(store, monkeypatch):
    ran: list[str] = []

    def work(job, st):  # noqa: ANN001
        ran.append(job.name)
        out = st.root / f"{job.name}.txt"
        out.write_text(job.name)
        return [out]

    monkeypatch.setitem(stages.STAGES, "score", work)
    job = make_job("score", "orphan", spec={"n": 1})
    _plant(store, job.id, heartbeat_age=STALE_AFTER_S + 60)
    summary = executors.run_plan(_plan(store, [job]))
    assert summary.complete and ran == ["orphan"]
    takeover = [e for e in store.read_log() if e["event"] == "takeover"]
    assert len(takeover) == 1 and takeover[0]["holder_host"] == "elsewhere.example"
    assert takeover[0]["heartbeat_age_s"] >= STALE_AFTER_S + 60
    assert store.lock_generations(job.id) == [2] and lock_holder(store, job.id).released
