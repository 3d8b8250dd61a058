"""The Ray backend (``--backend ray [--address auto]``): jobs as Ray tasks on a shared-filesystem store.

Resources per kind: a train job asks for a whole GPU when the cluster has GPUs (else one CPU);
generation half a GPU; encode/score jobs a quarter (encoders are small next to a UNet). Each task
sets torch's thread count so that ``jobs`` concurrent CPU tasks share the cores instead of
oversubscribing them. Ray is an optional extra (``pip install lyco-bench[ray]``), imported here only.
"""

from __future__ import annotations

import os
from typing import Any

from lyco_bench.errors import BadInput
from lyco_bench.sweep.planner import Job
from lyco_bench.sweep.store import StudyStore

GPU_SHARE = {"train": 1.0, "generate": 0.5, "encode": 0.25, "score": 0.25, "prepare": 0.0}


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise BadInput("--backend ray: Ray is not installed (pip install 'lyco-bench[ray]')") from None
    return ray


def _remote_execute(job_data: dict, store_root: str, attempt: int, threads: int) -> dict:
    from lyco_bench.sweep.executors import execute_job

    os.environ.setdefault("LYCO_BENCH_NO_PROGRESS", "1")
    return execute_job(job_data, store_root, attempt=attempt, threads=threads)


class RayBackend:
    """Submits jobs as Ray tasks; at most ``jobs`` in flight."""

    def __init__(
        self, store: StudyStore, *, jobs: int = 1, address: str | None = None, threads: int | None = None
    ) -> None:
        ray = _import_ray()
        self.ray = ray
        self.store = store
        self.capacity = jobs
        self._started = False
        if not ray.is_initialized():
            env = {"env_vars": {k: v for k, v in os.environ.items() if k in _FORWARDED_ENV}}
            if address:
                ray.init(address=address, runtime_env=env, log_to_driver=False)
            else:
                ray.init(
                    num_cpus=max(jobs, os.cpu_count() or 1),
                    runtime_env=env,
                    log_to_driver=False,
                    include_dashboard=False,
                )
            self._started = True
        resources = ray.cluster_resources()
        self.has_gpu = resources.get("GPU", 0) > 0
        cpus = int(resources.get("CPU", 1))
        self.threads = threads or max(1, cpus // jobs)
        self._task = ray.remote(_remote_execute)

    def options_for(self, job: Job) -> dict[str, Any]:
        share = GPU_SHARE.get(job.kind, 0.0)
        if self.has_gpu and share > 0:
            return {"num_gpus": share, "num_cpus": 1, "max_retries": 2}
        return {"num_cpus": 1, "max_retries": 2}

    def submit(self, job: Job, attempt: int) -> Any:
        opts = self.options_for(job)
        return self._task.options(**opts).remote(job.to_dict(), str(self.store.root), attempt, self.threads)

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


_FORWARDED_ENV = (
    "HF_HUB_OFFLINE",
    "TRANSFORMERS_OFFLINE",
    "LYCO_BENCH_NO_PROGRESS",
    "TOKENIZERS_PARALLELISM",
    "PYTHONPATH",
)
