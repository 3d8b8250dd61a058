"""What a job needs to run: its share of a GPU, the GPUs a machine has, and the environment a worker inherits.

Every backend reads the same table. A job kind's **GPU share** is the fraction of one GPU it holds
while it runs: a training run takes a whole GPU (its activations and optimizer state fill one),
sampling half (two samplers of an SD1.5 UNet fit one 80 GB card), encoding and scoring a quarter
(DINOv2/CLIP/VGG are small next to a UNet). A share of 0 marks CPU-bound work (``prepare`` draws
assets into the store): it never waits for a GPU and runs in a worker that sees none.

Workers are pinned to their GPU by ``CUDA_VISIBLE_DEVICES`` (local worker processes, set before
CUDA starts; Ray sets it itself for a task that asks for ``num_gpus``), so a job's ``cuda`` is its
own device. The cache, token and offline variables below travel to every worker — Ray's
``runtime_env`` for remote workers, the inherited environment for local ones — and are never
written into a job spec, a record or a log line.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from lyco_bench.errors import BadInput

GPU_SHARE: dict[str, float] = {
    "train": 1.0, "generate": 0.5, "encode": 0.25, "score": 0.25, "prepare": 0.0, "extract": 0.0,
}  # fmt: skip
"""Fraction of one GPU a job of each kind holds (0: CPU-bound). Kinds not listed take a whole GPU."""

FORWARDED_ENV = (
    # where the hub, torch and lyco-bench keep their caches, and how to reach the hub
    "HF_HOME",
    "HF_HUB_CACHE",
    "HUGGINGFACE_HUB_CACHE",
    "TRANSFORMERS_CACHE",
    "HF_ENDPOINT",
    "HF_TOKEN",
    "HUGGING_FACE_HUB_TOKEN",
    "HF_TOKEN_PATH",
    "HF_HUB_OFFLINE",
    "TRANSFORMERS_OFFLINE",
    "HF_HUB_DISABLE_TELEMETRY",
    "TORCH_HOME",
    "XDG_CACHE_HOME",
    "LYCO_BENCH_CACHE",
    "LYCO_BENCH_NO_PROGRESS",
    "TOKENIZERS_PARALLELISM",
    "PYTHONPATH",
)
"""Environment variables every worker gets from the runner that starts it (values never logged)."""


def gpu_share(kind: str) -> float:
    return GPU_SHARE.get(kind, 1.0)


def forwarded_env(environ: dict[str, str] | None = None) -> dict[str, str]:
    """The :data:`FORWARDED_ENV` variables set in ``environ`` (default: this process's)."""
    environ = os.environ if environ is None else environ
    return {key: environ[key] for key in FORWARDED_ENV if key in environ}


def visible_gpus() -> list[str]:
    """The GPUs this process may use, as ``CUDA_VISIBLE_DEVICES`` names them (none on a CPU machine).

    The devices torch counts (NVML: no CUDA context is created here), named by their entries in
    ``CUDA_VISIBLE_DEVICES`` when it is set (indices or UUIDs), else by index.
    """
    try:
        import torch

        count = torch.cuda.device_count()
    except Exception:  # noqa: BLE001 - no usable CUDA runtime is a machine without GPUs
        count = 0
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is None:
        return [str(i) for i in range(count)]
    return [g.strip() for g in listed.split(",") if g.strip()][:count]


def parse_gpus(value: str | None) -> list[str] | None:
    """``--gpus``: ``0,1`` (device names as ``CUDA_VISIBLE_DEVICES`` takes them), ``none``, or None
    (not given: every visible GPU)."""
    if value is None:
        return None
    text = value.strip()
    if text.lower() in ("", "none", "cpu"):
        return []
    gpus = [g.strip() for g in text.split(",")]
    if any(not g or not g.replace("-", "").isalnum() for g in gpus):
        raise BadInput(
            f"--gpus: expected device indices or UUIDs separated by commas (0,1) or none, got {value!r}"
        )
    if len(set(gpus)) != len(gpus):
        raise BadInput(f"--gpus: {value!r} names a device twice")
    return gpus


def jobs_per_gpu(kinds: Iterable[str] = GPU_SHARE) -> int:
    """The most jobs that can share one GPU (1 / the smallest positive share)."""
    shares = [gpu_share(k) for k in kinds if gpu_share(k) > 0]
    return max(1, int(1 / min(shares) + 1e-9)) if shares else 1


class GpuSlots:
    """Fractions of each GPU held by running jobs; a job goes to the least-used GPU it fits on."""

    def __init__(self, gpus: list[str]) -> None:
        self.used = {gpu: 0.0 for gpu in gpus}

    def take(self, kind: str) -> str | None:
        """The GPU a job of ``kind`` runs on now, or None when none has room (``""``: CPU-bound)."""
        share = gpu_share(kind)
        if share <= 0:
            return ""
        room = [g for g, used in self.used.items() if used + share <= 1.0 + 1e-9]
        if not room:
            return None
        gpu = min(room, key=lambda g: self.used[g])  # first listed on ties: deterministic
        self.used[gpu] += share
        return gpu

    def give_back(self, gpu: str, kind: str) -> None:
        if gpu:
            self.used[gpu] = max(0.0, self.used[gpu] - gpu_share(kind))
