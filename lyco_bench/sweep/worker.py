"""The unit of work, the same on every backend: take the job's lock, re-check its done marker and
its inputs, run it, write the marker last, release the lock (lyco_bench.sweep.executors schedules
it; the backends run it in this process, in worker processes or as Ray tasks)."""

from __future__ import annotations

import os
import time
import traceback
from typing import Any

from lyco_bench.errors import BadInput
from lyco_bench.sweep.integrity import check_inputs
from lyco_bench.sweep.locks import holder_record, lock_holder
from lyco_bench.sweep.planner import Job
from lyco_bench.sweep.store import StudyStore
from lyco_bench.utils import stable_hash

POLL_S = 0.5
"""How often a backend looks for finished jobs (seconds)."""


def execute_job(
    job_data: dict[str, Any], store_root: str, *, attempt: int = 1, threads: int | None = None
) -> dict:
    """Run one job under its lock. Returns ``{"status": done|skipped|busy|damaged|failed, …}``;
    never raises. ``damaged``: an output of a job it reads is damaged (``deps``: those jobs, now
    marked damaged, to be rerun first)."""
    from pathlib import Path

    from lyco_bench.sweep.stages import run_stage

    if threads:
        import torch

        torch.set_num_threads(threads)
    job = Job.from_dict(job_data)
    store = StudyStore(Path(store_root))
    before = lock_holder(store, job.id)
    lock = store.try_lock(job.id)
    if lock is None:
        return {"status": "busy", "job": job.id}
    try:
        if before is not None and not before.released:  # a dead runner's lock, taken over
            store.append_log({"job": job.id, "kind": job.kind, "event": "takeover", **holder_record(before)})
        if store.is_done(job.id, whole=True):  # finished by another runner since our check
            return {"status": "skipped", "job": job.id}
        damaged = check_inputs(job, store)  # what it reads: hashed; damaged jobs rerun first
        if damaged:
            return {"status": "damaged", "job": job.id, "deps": damaged}
        gpu = os.environ.get("CUDA_VISIBLE_DEVICES")  # which device this worker was given (None: all)
        store.append_log({"job": job.id, "kind": job.kind, "event": "start", "attempt": attempt, "gpu": gpu})
        reset_global_rngs(job.id)
        start = time.perf_counter()
        outputs = run_stage(job, store)
        duration = time.perf_counter() - start
        store.write_marker(job, outputs, duration_s=duration, attempt=attempt)
        store.append_log({"job": job.id, "kind": job.kind, "event": "done", "duration_s": round(duration, 3)})
        return {"status": "done", "job": job.id, "duration_s": duration, "pid": os.getpid()}
    except BadInput as exc:
        result = {"status": "failed", "job": job.id, "error": f"error: {exc}", "retry": False}
    except Exception as exc:  # noqa: BLE001 - reported, retried by the scheduler
        error = f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=8)}"
        result = {"status": "failed", "job": job.id, "error": error, "retry": True}
    finally:
        lock.release()
    store.append_log(
        {"job": job.id, "kind": job.kind, "event": "failed", "error": result["error"].splitlines()[0]}
    )
    return result


def reset_global_rngs(job_id: str) -> None:
    """Seed Python's, NumPy's and torch's global RNGs from the job id before the job runs.

    A stage that draws from a global RNG anywhere would otherwise depend on what ran before it in
    the same process (other jobs, in whatever order): with this, a job's outputs depend on the job
    alone, in-process or in a fresh worker, first or last.
    """
    import random

    import numpy as np
    import torch

    seed = int(stable_hash(job_id, length=8), 16)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
