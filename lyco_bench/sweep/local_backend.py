"""The local backend: jobs in this process, or in worker processes pinned to this machine's GPUs.

The interface every backend offers the scheduler (lyco_bench.sweep.executors): ``capacity`` (jobs
at once), ``fits(job)`` (room for it now), ``submit(job, attempt)`` → handle, ``wait(handles)`` →
the finished ones, ``result(handle)`` → execute_job's dict, ``close()``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool

from lyco_bench.sweep import worker
from lyco_bench.sweep.planner import Job
from lyco_bench.sweep.store import StudyStore


class InProcessBackend:
    """Runs each job when submitted, in this process (its GPU, if any): one job at a time."""

    capacity = 1

    def __init__(self, store: StudyStore, threads: int | None = None, work: Callable | None = None) -> None:
        self.store = store
        self.threads = threads
        self.work = work or worker.execute_job  # a top-level function: pickled by name for worker processes

    def fits(self, job: Job) -> bool:
        return True

    def submit(self, job: Job, attempt: int) -> Future:
        fut: Future = Future()
        fut.set_result(self.work(job.to_dict(), str(self.store.root), attempt=attempt, threads=self.threads))
        return fut

    def wait(self, handles: list[Future]) -> list[Future]:
        return [h for h in handles if h.done()]

    def result(self, handle: Future) -> dict:
        return handle.result()

    def close(self) -> None:
        pass


def _pin_worker(gpu: str | None) -> None:
    """Worker initializer: the one GPU this worker may use ("" none), set before CUDA starts."""
    if gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu


def _run_in_worker(
    work: Callable, job_data: dict, store_root: str, attempt: int, threads: int | None
) -> dict:
    result = work(job_data, store_root, attempt=attempt, threads=threads)
    import sys

    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        torch.cuda.empty_cache()  # the next job in this worker (or a neighbour on its GPU) gets the memory
    return result


class LocalBackend(InProcessBackend):
    """Worker processes on this machine: each GPU's own, pinned by ``CUDA_VISIBLE_DEVICES``, plus
    CPU workers for CPU-bound jobs.

    A job runs on the least-used GPU with room for its share (lyco_bench.sweep.resources): one
    training per GPU, light jobs (encode, score) several to a GPU; CPU-bound jobs (share 0) go to
    the CPU workers, which see no GPU, and never wait for a GPU slot. Without GPUs every job is a
    CPU job. Each worker gets cpu_count / workers torch threads.
    """

    def __init__(
        self,
        store: StudyStore,
        *,
        gpus: list[str],
        jobs: int | None = None,
        threads: int | None = None,
        work: Callable | None = None,
    ) -> None:
        import multiprocessing

        from lyco_bench.sweep.resources import GpuSlots, jobs_per_gpu

        per_gpu = jobs_per_gpu()
        cpu_workers = max(1, jobs or 1) if not gpus else 1
        workers = len(gpus) * per_gpu + cpu_workers
        self.capacity = min(jobs, workers) if jobs and gpus else workers
        super().__init__(store, threads or max(1, (os.cpu_count() or 1) // min(workers, self.capacity)), work)
        self._spawn = multiprocessing.get_context("spawn")  # fresh workers: no CUDA state, no forked locks
        self.slots = GpuSlots(gpus)
        # Per pool: (processes, the CUDA_VISIBLE_DEVICES its workers get; None on a CPU-only machine).
        self._pool_args = {gpu: (per_gpu, gpu) for gpu in gpus}
        self._pool_args[""] = (cpu_workers, "" if gpus else None)
        self.pools = {key: self._new_pool(key) for key in self._pool_args}
        self._placed: dict[Future, tuple[str, str]] = {}

    def _new_pool(self, key: str) -> ProcessPoolExecutor:
        size, gpu = self._pool_args[key]
        return ProcessPoolExecutor(size, mp_context=self._spawn, initializer=_pin_worker, initargs=(gpu,))

    def fits(self, job: Job) -> bool:
        gpu = self.slots.take(job.kind) if self.slots.used else ""
        if gpu is None:
            return False
        self.slots.give_back(gpu, job.kind)
        return True

    def submit(self, job: Job, attempt: int) -> Future:
        gpu = self.slots.take(job.kind) if self.slots.used else ""
        if gpu is None:  # the scheduler asks fits() first
            raise RuntimeError(f"no GPU has room for {job.id}")
        args = (_run_in_worker, self.work, job.to_dict(), str(self.store.root), attempt, self.threads)
        try:
            handle = self.pools[gpu].submit(*args)
        except BrokenProcessPool:  # a worker died (killed, out of memory): its jobs failed, start afresh
            self.pools[gpu].shutdown(wait=False, cancel_futures=True)
            self.pools[gpu] = self._new_pool(gpu)
            handle = self.pools[gpu].submit(*args)
        self._placed[handle] = (gpu, job.kind)
        return handle

    def wait(self, handles: list[Future]) -> list[Future]:
        finished, _ = wait(handles, timeout=worker.POLL_S, return_when=FIRST_COMPLETED)
        return list(finished)

    def result(self, handle: Future) -> dict:
        gpu, kind = self._placed.pop(handle, ("", ""))
        self.slots.give_back(gpu, kind)
        try:
            return handle.result()
        except Exception as exc:  # noqa: BLE001 - a worker that died: retried by the scheduler
            return {"status": "failed", "error": f"worker: {type(exc).__name__}: {exc}", "retry": True}

    def close(self) -> None:
        for pool in self.pools.values():
            pool.shutdown(wait=True, cancel_futures=True)
