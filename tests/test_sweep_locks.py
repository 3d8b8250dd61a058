"""Job locks under contention: racing takeovers of a stale lock, live locks, killed owners, files per job.

The racers are forked processes released together by a barrier. Each one, after judging the lock
it found, waits ``JUDGE_DELAY_S`` + i × ``STAGGER_S`` before acting on its verdict: every racer
judges the same stale lock, and they act one after another — the window in which the takeover
"remove the stale lock, then create a fresh one with O_EXCL" lets a late racer remove the early
racer's fresh lock and create its own (``naive_try_lock``, kept here only to show that the window
is real). Winners hold their lock until every racer has tried.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lyco_bench.sweep import joblock
from lyco_bench.sweep import store as store_mod
from lyco_bench.sweep.store import STALE_AFTER_S, StudyStore

CTX = mp.get_context("fork")
RACERS = 4
ROUNDS = 20
JUDGE_DELAY_S = 0.02
STAGGER_S = 0.005
VARIANTS = ["host-lock", "generations-only"]  # generations-only: as on a filesystem without flock
STALE = ["dead-pid", "old-heartbeat"]


@pytest.fixture
def store(tmp_path):
    st = StudyStore.open(tmp_path, "micro")
    st.jobs_dir.mkdir(parents=True)
    return st


@pytest.fixture(scope="module")
def dead_pid():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    assert not joblock._pid_alive(proc.pid)
    return proc.pid


def _plant(path: Path, stale: str, dead_pid: int) -> None:
    """A lock whose owner is gone: a dead pid on this host, or another host's heartbeat from 1970."""
    if stale == "dead-pid":
        owner = {"host": socket.gethostname(), "pid": dead_pid, "since": 0, "host_lock": True}
        path.write_text(json.dumps(owner))
    else:
        path.write_text(json.dumps({"host": "elsewhere.example", "pid": 1, "since": 0}))
        os.utime(path, (0, 0))


def _naive_is_stale(path: Path) -> bool:
    try:
        owner = json.loads(path.read_text())
    except FileNotFoundError:
        return True
    except ValueError:
        return time.time() - path.stat().st_mtime > STALE_AFTER_S
    if owner["host"] == socket.gethostname():
        return not joblock._pid_alive(owner["pid"])
    return time.time() - path.stat().st_mtime > STALE_AFTER_S


def naive_try_lock(store: StudyStore, job_id: str, *, delay: float = 0.0) -> Path | None:
    """The takeover the generations replaced: judge the lock stale, remove it, create it with O_EXCL."""
    path = store.jobs_dir / f"{job_id}.naive-lock"
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            if not _naive_is_stale(path):
                return None
            time.sleep(delay)
            path.unlink(missing_ok=True)  # … by now perhaps another racer's fresh lock
            continue
        with os.fdopen(fd, "w") as fh:
            fh.write(json.dumps({"host": socket.gethostname(), "pid": os.getpid()}))
        return path
    return None


def _racer(i, root, job_id, variant, start, tried, won) -> None:
    store = StudyStore(Path(root))
    delay = JUDGE_DELAY_S + i * STAGGER_S
    if variant == "naive":
        take = lambda: naive_try_lock(store, job_id, delay=delay)  # noqa: E731
    else:
        joblock.HOST_LOCKS = variant == "host-lock"
        judge = store_mod.lock_is_stale
        delays = [delay]

        def slow_judge(*args, **kwargs):  # the same window as the naive racer's, on the first verdict
            verdict = judge(*args, **kwargs)
            time.sleep(delays.pop() if delays else 0)
            return verdict

        store_mod.lock_is_stale = slow_judge
        take = lambda: store.try_lock(job_id)  # noqa: E731
    start.wait()
    lock = take()
    won[i] = lock is not None
    tried.wait()  # hold the lock until every racer has tried
    if lock is not None and variant != "naive":
        lock.release()


def _race(store: StudyStore, job_id: str, variant: str) -> list[bool]:
    # Barriers wait for every racer however slowly a loaded machine starts them; the timeout only
    # turns a racer that died before arriving into a failure instead of a hang.
    start, tried = CTX.Barrier(RACERS, timeout=600), CTX.Barrier(RACERS, timeout=600)
    won = CTX.Array("b", RACERS)
    procs = [
        CTX.Process(target=_racer, args=(i, str(store.root), job_id, variant, start, tried, won))
        for i in range(RACERS)
    ]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join()
    assert [proc.exitcode for proc in procs] == [0] * RACERS
    return [bool(w) for w in won]


def _lock_files(store: StudyStore, job_id: str) -> list[str]:
    return sorted(n for n in os.listdir(store.jobs_dir) if n.startswith(f"{job_id}.lock"))


@pytest.mark.e2e
@pytest.mark.parametrize("stale", STALE)
@pytest.mark.parametrize("variant", VARIANTS)
def test_racing_runners_on_a_stale_lock_exactly_one_wins(store, dead_pid, variant, stale):
    for round_ in range(ROUNDS):
        job = f"job-{round_}"
        _plant(store.lock_generation_path(job, 1), stale, dead_pid)
        won = _race(store, job, variant)
        assert sum(won) == 1, f"round {round_}: winners {won}"
        # The winner took generation 2, removed the stale one, and left a tombstone.
        assert store.lock_generations(job) == [2]
        assert json.loads(store.lock_generation_path(job, 2).read_text())["released"]
        assert not store.locked_by_other(job)


@pytest.mark.e2e
@pytest.mark.parametrize("stale", STALE)
def test_naive_takeover_lets_two_runners_win(store, dead_pid, stale):
    """The same race against remove-then-create: a late racer removes the winner's fresh lock."""
    wins = []
    for round_ in range(5):
        _plant(store.jobs_dir / f"job-{round_}.naive-lock", stale, dead_pid)
        wins.append(sum(_race(store, f"job-{round_}", "naive")))
    assert max(wins) >= 2, wins


@pytest.mark.parametrize("variant", VARIANTS)
def test_live_lock_is_never_taken_over(store, monkeypatch, variant):
    monkeypatch.setattr(joblock, "HOST_LOCKS", variant == "host-lock")
    held = store.try_lock("mine")  # this process: alive
    assert held is not None
    theirs = store.lock_generation_path("theirs", 1)  # another host, heartbeat just now
    theirs.write_text(json.dumps({"host": "elsewhere.example", "pid": 1, "since": time.time()}))
    for job in ("mine", "theirs"):
        for _ in range(3):
            assert _race(store, job, variant) == [False] * RACERS
        assert store.try_lock(job) is None and store.locked_by_other(job)
        assert store.lock_generations(job) == [1]
    assert json.loads(held.path.read_text())["pid"] == os.getpid()
    held.release()
    assert not store.locked_by_other("mine")


def _hold(root: str, job_id: str, ready) -> None:
    lock = StudyStore(Path(root)).try_lock(job_id)
    assert lock is not None
    ready.set()
    time.sleep(120)


@pytest.mark.parametrize("variant", VARIANTS)
def test_lock_of_killed_runner_is_taken_over_at_once(store, monkeypatch, variant):
    monkeypatch.setattr(joblock, "HOST_LOCKS", variant == "host-lock")
    ready = CTX.Event()
    proc = CTX.Process(target=_hold, args=(str(store.root), "job", ready))
    proc.start()
    try:
        while not ready.wait(0.1):  # the holder has the lock: an event, not a guess of how long
            assert proc.is_alive(), "the holder died before it took the lock"
        assert store.try_lock("job") is None and store.locked_by_other("job")
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.join()
    # A heartbeat that never goes stale: the dead owner is found gone at once (the host lock is
    # free / its pid is dead), not by waiting for its heartbeat to age.
    lock = store.try_lock("job", stale_after=1e9)
    assert lock is not None
    assert lock.path == store.lock_generation_path("job", 2) and store.lock_generations("job") == [2]
    lock.release()


@pytest.mark.parametrize("released", [False, True])
def test_laggard_with_an_old_listing_backs_off(store, monkeypatch, released):
    """A runner that listed the jobs folder before generation 1 existed creates generation 1 long
    after it was taken, released and removed; it sees generation 2 and backs off."""
    monkeypatch.setattr(joblock, "HOST_LOCKS", False)  # as for a runner on another host
    store.try_lock("job").release()
    second = store.try_lock("job")
    assert second.path == store.lock_generation_path("job", 2) and store.lock_generations("job") == [2]
    if released:
        second.release()
    created = []
    real_listing, real_create = StudyStore.lock_generations, store_mod.JobLock.create
    old_views = [[]]  # the first listing: from before generation 1

    def listing(self, job_id):
        return old_views.pop() if old_views else real_listing(self, job_id)

    monkeypatch.setattr(StudyStore, "lock_generations", listing)
    monkeypatch.setattr(
        store_mod.JobLock,
        "create",
        classmethod(lambda cls, p, **kw: created.append(p.name) or real_create(p, **kw)),
    )
    lock = store.try_lock("job")
    assert created[0] == "job.lock.1"  # the laggard did create the old generation again …
    if released:  # … backed off, judged generation 2 (released) and took generation 3
        assert lock is not None and lock.path.name == "job.lock.3"
        assert store.lock_generations("job") == [3]
        lock.release()
    else:  # … backed off, and found generation 2 held
        assert lock is None and store.lock_generations("job") == [2]
        second.release()


@pytest.mark.parametrize("variant", VARIANTS)
def test_lock_files_stay_bounded(store, monkeypatch, dead_pid, variant):
    monkeypatch.setattr(joblock, "HOST_LOCKS", variant == "host-lock")
    for cycle in range(60):
        if cycle % 10 == 5:  # a runner died holding the next generation; a straggler left an old one
            newest = store.lock_generations("job")[-1]
            _plant(store.lock_generation_path("job", newest + 1), "dead-pid", dead_pid)
            _plant(store.lock_generation_path("job", 1), "old-heartbeat", dead_pid)
        lock = store.try_lock("job")
        assert lock is not None
        assert len(_lock_files(store, "job")) <= 2
        lock.release()
    host = ["job.lock"] if variant == "host-lock" else []
    assert _lock_files(store, "job") == [*host, f"job.lock.{store.lock_generations('job')[-1]}"]


def _disk_full(*args, **kwargs):
    raise OSError(28, "No space left on device")


def test_release_on_a_full_disk_leaves_no_temporary_file_and_frees_the_job(store, monkeypatch):
    """The tombstone cannot be written (the disk filled during the job): release still drops the
    host lock, leaves no ``*.tmp`` beside the generation, and the job can be taken again."""
    lock = store.try_lock("job")
    assert lock is not None
    real_write = Path.write_text

    def half_written(self, data, *args, **kwargs):  # the file is created, then the disk is full
        real_write(self, data[: len(data) // 2], *args, **kwargs)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Path, "write_text", half_written)
    lock.release()
    monkeypatch.undo()
    assert sorted(p.name for p in store.jobs_dir.iterdir()) == ["job.lock", "job.lock.1"]
    again = store.try_lock("job")
    assert again is not None and again.path.name == "job.lock.2"
    again.release()


def test_a_lock_that_cannot_be_written_is_not_left_behind(store, monkeypatch):
    """A full disk while creating a generation: the error reaches the caller and no empty
    generation (which would read as held for STALE_AFTER_S) is left."""
    real_fdopen = os.fdopen

    def full_fdopen(fd, *args, **kwargs):
        fh = real_fdopen(fd, *args, **kwargs)
        fh.write = _disk_full
        return fh

    monkeypatch.setattr(store_mod.os, "fdopen", full_fdopen)
    with pytest.raises(OSError, match="No space left"):
        store.try_lock("job")
    monkeypatch.undo()
    assert sorted(p.name for p in store.jobs_dir.iterdir()) == ["job.lock"]
    lock = store.try_lock("job")
    assert lock is not None and lock.path.name == "job.lock.1"
    lock.release()
