"""Executors: run a plan's jobs locally (in-process or worker processes) or on Ray, resumably.

One scheduler loop serves every backend: it submits jobs whose dependencies are done, highest
critical-path rank first, as long as the backend has room (``capacity`` jobs at once, and
``fits``: a GPU with room for the job's share, lyco_bench.sweep.resources — a job that does not
fit lets the next one, e.g. CPU-bound work, go ahead). It retries failures up to ``max_retries``
times and skips the dependents of a job that keeps failing. The unit of work,
:func:`execute_job`, is the same everywhere: take the job's lock, re-check its done marker, run
it, write the marker last, release the lock. A job locked by another live runner is left to that
runner and waited for, so two runners on one store never do the same job twice; one that stays
busy is reported (lyco_bench.sweep.locks).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from lyco_bench.errors import BadInput
from lyco_bench.sweep.locks import BusyWatch
from lyco_bench.sweep.planner import Job, Plan
from lyco_bench.sweep.store import StudyStore
from lyco_bench.sweep.worker import POLL_S, execute_job, reset_global_rngs  # noqa: F401 - the API
from lyco_bench.utils import console, progress_bar

MAX_REPAIRS = 3  # rebuilds of a job's damaged inputs before the job fails


@dataclass
class RunSummary:
    """What one ``run`` did."""

    total: int
    already_done: int
    ran: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    blocked: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def complete(self) -> bool:
        return not self.failed and not self.blocked


@dataclass
class _State:
    done: set[str]
    pending: list[Job]
    in_flight: dict[Any, Job] = field(default_factory=dict)
    attempts: dict[str, int] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    busy_since: dict[str, float] = field(default_factory=dict)
    blocked: list[str] = field(default_factory=list)
    durations: dict[str, list[float]] = field(default_factory=dict)
    priority: dict[str, float] = field(default_factory=dict)
    watch: BusyWatch | None = None
    repairs: dict[str, int] = field(default_factory=dict)


def critical_path_priority(plan: Plan) -> dict[str, float]:
    """Rough seconds from the start of each job to the end of the longest chain that needs it.

    Jobs on long chains (train → generate → encode → score) go first, so that parallel workers
    are not left idle at the end waiting for one chain (list scheduling by upward rank).
    """
    from lyco_bench.sweep.planner import rough_costs

    cost = rough_costs(getattr(getattr(plan.study, "study", None), "model", ""))
    dependents: dict[str, list[str]] = {}
    for job in plan.jobs:
        for dep in job.deps:
            dependents.setdefault(dep, []).append(job.id)
    by_id = plan.by_id()
    rank: dict[str, float] = {}
    for job in reversed(plan.jobs):  # dependents come after their dependencies in a plan
        after = [rank[d] for d in dependents.get(job.id, ()) if d in rank]
        rank[job.id] = cost.get(by_id[job.id].kind, 1.0) + max(after, default=0.0)
    return rank


def _ready(state: _State, busy_recheck: float) -> list[Job]:
    now = time.monotonic()
    flying = {job.id for job in state.in_flight.values()}
    ready = [
        job
        for job in state.pending
        if job.id not in flying
        and all(dep in state.done for dep in job.deps)
        and now - state.busy_since.get(job.id, -1e9) >= busy_recheck
    ]
    return sorted(ready, key=lambda job: -state.priority.get(job.id, 0.0))  # stable: plan order on ties


def _blocked(state: _State, by_id: dict[str, Job]) -> list[str]:
    """Pending jobs that can never run because something they need failed for good."""
    dead = set(state.failed)
    changed = True
    while changed:
        changed = False
        for job in state.pending:
            if job.id not in dead and any(dep in dead for dep in job.deps):
                dead.add(job.id)
                changed = True
    return [job.id for job in state.pending if job.id in dead and job.id not in state.failed]


def run_plan(
    plan: Plan,
    *,
    backend: str = "local",
    jobs: int | None = None,
    address: str | None = None,
    max_retries: int = 1,
    threads: int | None = None,
    gpus: list[str] | None = None,
    on_event: Callable[[str, Job, dict], None] | None = None,
) -> RunSummary:
    """Run every job of ``plan`` that is not done yet; returns what happened.

    ``jobs``: the most jobs at once (None: local, one per CPU worker and GPU slot; Ray, what the
    cluster's resources allow). ``gpus``: the local backend's GPUs (None: every visible one).
    """
    start = time.perf_counter()
    done = plan.done_ids()
    state = _State(done=set(done), pending=[job for job in plan.jobs if job.id not in done])
    state.priority = critical_path_priority(plan)
    state.watch = BusyWatch(plan.store)
    summary = RunSummary(total=len(plan.jobs), already_done=len(done))
    runner = make_backend(backend, plan.store, jobs=jobs, address=address, threads=threads, gpus=gpus)
    by_id = plan.by_id()
    try:
        with progress_bar() as bar:
            task = bar.add_task(f"run {plan.study.name}", total=len(plan.jobs), completed=len(done), info="")
            _loop(state, runner, summary, max_retries, bar=bar, task=task, by_id=by_id, on_event=on_event)
    finally:
        runner.close()
    summary.failed = dict(state.failed)
    summary.blocked = state.blocked
    summary.seconds = time.perf_counter() - start
    return summary


def _loop(state, runner, summary, max_retries, *, bar, task, by_id, on_event) -> None:  # noqa: ANN001
    while True:
        newly_blocked = _blocked(state, by_id)
        state.blocked += newly_blocked
        dead = set(state.failed) | set(newly_blocked)
        state.pending = [job for job in state.pending if job.id not in dead]
        for job in _ready(state, busy_recheck=POLL_S * 4):
            if len(state.in_flight) >= runner.capacity:
                break
            if not runner.fits(job):  # no GPU room for it now: a job needing less (or none) may go
                continue
            state.attempts[job.id] = state.attempts.get(job.id, 0) + 1
            bar.update(task, info=f"{job.kind} {job.name}")
            state.in_flight[runner.submit(job, state.attempts[job.id])] = job
        if not state.in_flight:
            if not state.pending:
                return
            if not state.busy_since:
                return  # nothing runnable, nothing running elsewhere: the rest is blocked
            time.sleep(POLL_S)
            _recheck_busy(state, runner.store)
            continue
        for handle in runner.wait(list(state.in_flight)):
            job = state.in_flight.pop(handle)
            result = runner.result(handle)
            _settle(state, job, result, summary, max_retries, by_id)
            if result["status"] == "done":
                state.durations.setdefault(job.kind, []).append(result["duration_s"])
                _report_progress(state, job, result, total=len(by_id), capacity=runner.capacity)
            if on_event:
                on_event(result["status"], job, result)
            bar.update(task, completed=len(state.done))


def _report_progress(state: _State, job: Job, result: dict, *, total: int, capacity: int) -> None:
    """One line per finished job: done/total, what it was, and the time left at this run's pace."""
    every = [d for ds in state.durations.values() for d in ds]
    mean_all = sum(every) / len(every)
    left = sum(
        (sum(ds) / len(ds)) if (ds := state.durations.get(j.kind)) else mean_all for j in state.pending
    ) / max(1, capacity)
    console.print(
        f"[{len(state.done)}/{total}] {job.kind} {job.name} done in {result['duration_s']:.1f} s; "
        f"{len(state.pending)} left, ETA ~{left / 60:.1f} min",
        highlight=False,
    )


def _recheck_busy(state: _State, store: StudyStore) -> None:
    """Jobs another runner holds: done now? lock gone? then they leave the busy list."""
    for job_id in list(state.busy_since):
        if store.is_done(job_id, whole=True):
            state.done.add(job_id)
            state.pending = [job for job in state.pending if job.id != job_id]
            del state.busy_since[job_id]
            if state.watch is not None:
                state.watch.clear(job_id)
        elif not store.locked_by_other(job_id):
            del state.busy_since[job_id]


def _settle(
    state: _State, job: Job, result: dict, summary: RunSummary, max_retries: int, by_id: dict[str, Job]
) -> None:
    status = result["status"]
    if state.watch is not None and status != "busy":
        state.watch.clear(job.id)
    if status in ("done", "skipped"):
        state.done.add(job.id)
        state.pending = [j for j in state.pending if j.id != job.id]
        state.busy_since.pop(job.id, None)
        (summary.ran if status == "done" else summary.skipped).append(job.id)
    elif status == "damaged":  # its inputs must be rebuilt first: not an attempt
        state.attempts[job.id] -= 1
        state.repairs[job.id] = state.repairs.get(job.id, 0) + 1
        if state.repairs[job.id] > MAX_REPAIRS:  # rebuilt, damaged again: not the disk's doing
            state.failed[job.id] = f"its inputs were damaged again after {MAX_REPAIRS} rebuilds"
            return
        for dep in result["deps"]:
            state.done.discard(dep)
            if all(j.id != dep for j in state.pending):
                state.pending.append(by_id[dep])
    elif status == "busy":
        state.attempts[job.id] -= 1
        state.busy_since[job.id] = time.monotonic()
        if state.watch is not None:  # a lock that stays busy is reported, not waited on in silence
            state.watch.busy(job.id, f"{job.kind} {job.name}")
    else:
        console.print(
            f"[red]failed[/red] {job.kind} {job.name} (attempt {state.attempts[job.id]}): "
            f"{result['error'].splitlines()[0]}"
        )
        if not result.get("retry", True) or state.attempts[job.id] > max_retries:
            state.failed[job.id] = result["error"]


def check_backend_options(
    name: str, *, jobs: int | None = None, threads: int | None = None, gpus: list[str] | None = None
) -> None:
    """BadInput for executor options no backend accepts (checked before anything is written)."""
    if jobs is not None and jobs < 1:
        raise BadInput(f"--jobs: must be ≥ 1, got {jobs}")
    if threads is not None and threads < 1:
        raise BadInput(f"--threads: must be ≥ 1, got {threads}")
    if name not in ("local", "ray"):
        raise BadInput(f"--backend: unknown backend {name!r} (local or ray)")
    if name == "ray" and gpus is not None:
        raise BadInput("--gpus: the local backend's; on Ray each task gets the GPUs Ray assigns it")


def make_backend(
    name: str,
    store: StudyStore,
    *,
    jobs: int | None = None,
    address: str | None = None,
    threads: int | None = None,
    gpus: list[str] | None = None,
) -> Any:
    """The backend ``name``: local (in this process for one job at a time without GPUs, else worker
    processes pinned to GPUs) or ray."""
    check_backend_options(name, jobs=jobs, threads=threads, gpus=gpus)
    if name == "ray":
        from lyco_bench.sweep.ray_backend import RayBackend

        return RayBackend(store, jobs=jobs, address=address, threads=threads)
    from lyco_bench.sweep.local_backend import InProcessBackend, LocalBackend
    from lyco_bench.sweep.resources import visible_gpus

    gpus = visible_gpus() if gpus is None else gpus
    if not gpus and (jobs or 1) == 1:
        return InProcessBackend(store, threads)
    return LocalBackend(store, gpus=gpus, jobs=jobs, threads=threads)
