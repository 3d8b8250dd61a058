"""The Ray backend (``--backend ray [--address auto]``): jobs as Ray tasks on a shared-filesystem store.

Resources per kind (lyco_bench.sweep.resources.GPU_SHARE): a train job asks for a whole GPU when
the cluster has GPUs, generation half a GPU, encode/score jobs a quarter (encoders are small next
to a UNet), CPU-bound jobs none; every task holds one CPU. Ray starts a task when its resources
are free and sets its ``CUDA_VISIBLE_DEVICES`` to the GPUs it assigned, so concurrency follows the
cluster: as many jobs are kept in flight as the cluster has CPUs (re-read as nodes join or
leave), or ``--jobs`` when given. Cache, token and offline variables travel to every worker in
the ``runtime_env`` (never into a record). Ray is an optional extra (``pip install
lyco-bench[ray]``), imported here only.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

from lyco_bench.errors import BadInput
from lyco_bench.sweep.planner import Job
from lyco_bench.sweep.resources import forwarded_env, gpu_share
from lyco_bench.sweep.store import StudyStore

RESOURCES_EVERY_S = 30.0
"""How often the cluster's resources are read again (an autoscaling cluster grows)."""


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise BadInput("--backend ray: Ray is not installed (pip install 'lyco-bench[ray]')") from None
    return ray


def _remote_execute(
    work: Callable | None, job_data: dict, store_root: str, attempt: int, threads: int
) -> dict:
    from lyco_bench.sweep.worker import execute_job

    os.environ.setdefault("LYCO_BENCH_NO_PROGRESS", "1")
    return (work or execute_job)(job_data, store_root, attempt=attempt, threads=threads)


class RayBackend:
    """Submits jobs as Ray tasks; as many in flight as the cluster has CPUs (or ``jobs``)."""

    def __init__(
        self,
        store: StudyStore,
        *,
        jobs: int | None = None,
        address: str | None = None,
        threads: int | None = None,
        work: Callable | None = None,
    ) -> None:
        ray = _import_ray()
        self.ray = ray
        self.store = store
        self.jobs = jobs
        self.work = work
        self._started = False
        env = {"env_vars": forwarded_env()}
        self._task_env: dict[str, Any] | None = None
        if not ray.is_initialized():
            if address:
                ray.init(address=address, runtime_env=env, log_to_driver=False)
            else:
                ray.init(
                    num_cpus=max(jobs or 1, os.cpu_count() or 1),
                    runtime_env=env,
                    log_to_driver=False,
                    include_dashboard=False,
                )
            self._started = True
        elif env["env_vars"]:
            self._task_env = env  # Ray started by the caller: the variables go with each task
        self._read_resources()
        self.threads = threads or max(1, self.cpus // self.capacity)
        self._task = ray.remote(_remote_execute)

    def _read_resources(self) -> None:
        resources = self.ray.cluster_resources()
        self.has_gpu = resources.get("GPU", 0) > 0
        self.cpus = max(1, int(resources.get("CPU", 1)))
        # Every task holds one CPU: no more than the cluster's CPUs can run at once.
        self.capacity = min(self.jobs, self.cpus) if self.jobs else self.cpus
        self._read_at = time.monotonic()

    def fits(self, job: Job) -> bool:
        if time.monotonic() - self._read_at > RESOURCES_EVERY_S:
            self._read_resources()
        return True  # Ray queues a task until its resources are free

    def options_for(self, job: Job) -> dict[str, Any]:
        share = gpu_share(job.kind)
        opts: dict[str, Any] = {"num_cpus": 1, "max_retries": 2}
        if self.has_gpu and share > 0:
            opts["num_gpus"] = share
        if self._task_env is not None:
            opts["runtime_env"] = self._task_env
        return opts

    def submit(self, job: Job, attempt: int) -> Any:
        opts = self.options_for(job)
        return self._task.options(**opts).remote(
            self.work, job.to_dict(), str(self.store.root), attempt, self.threads
        )

    def wait(self, handles: list[Any]) -> list[Any]:
        ready, _ = self.ray.wait(handles, num_returns=1, timeout=0.5)
        return ready

    def result(self, handle: Any) -> dict:
        try:
            return self.ray.get(handle)
        except Exception as exc:  # noqa: BLE001 - a dead worker: retried by the scheduler
            return {"status": "failed", "error": f"ray: {type(exc).__name__}: {exc}", "retry": True}

    def close(self) -> None:
        if self._started:
            self.ray.shutdown()
