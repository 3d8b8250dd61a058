"""GPU memory per configuration of a plan: the table ``lyco-bench plan`` prints and the check
``plan --gpu NAME`` makes (the estimate itself: lyco_bench.sweep.gpu_memory).

Each configuration is estimated at its largest trained bucket (from the dataset's image sizes, as
the cost model cuts batches) and its batch size, on the study's model built on the ``meta``
device with the configuration's adapter injected; estimates are shared by configurations that
train the same way (the same adapter, shape and memory settings).
"""

from __future__ import annotations

import json
from typing import Any

from lyco_bench.errors import BadInput
from lyco_bench.sweep.gpu_memory import MemoryEstimate, TrainingShape, estimate_training_memory
from lyco_bench.utils import stable_hash

_ESTIMATES: dict[str, MemoryEstimate] = {}
MEMORY_FILE = "gpu-memory.json"
"""A store's remembered estimates (digest → parts): a trace on ``meta`` takes a second or more."""
ESTIMATE_VERSION = 1  # bumped when lyco_bench.sweep.gpu_memory counts differently


def largest_bucket(plan: Any, config: str) -> tuple[int, int]:
    """(width, height) of the largest bucket a configuration trains on (its resolution² if the
    dataset's images are not known)."""
    from lyco_bench.sweep.costs import train_steps

    run = plan.inputs.runs[config]
    sizes = {(w, h) for w, h, _ in train_steps(plan, config)}
    if not sizes:
        return run["resolution"], run["resolution"]
    return max(sizes, key=lambda wh: (wh[0] * wh[1], wh))


def plan_memory(plan: Any) -> dict[str, tuple[TrainingShape, MemoryEstimate]]:
    """Configuration → (shape, estimate); empty when the model's configs are not at hand (a hub
    model not downloaded yet)."""
    from lyco_bench.sweep.sizing import _meta_models, _model_configs

    models = _meta_models(plan)
    if models is None:
        return {}
    path = plan.store.root / MEMORY_FILE
    remembered = _remembered(path)
    for key, parts in remembered.items():
        _ESTIMATES.setdefault(key, MemoryEstimate(*parts))
    model_key = _model_configs(plan.study.study.model)
    out = {}
    for config, run in plan.inputs.runs.items():
        width, height = largest_bucket(plan, config)
        out[config] = _estimate(plan, model_key, models, run, width, height)
    if not _ESTIMATES.keys() <= remembered.keys() and plan.store.root.is_dir():
        from lyco_bench.utils import atomic_write_json

        atomic_write_json(path, {k: list(vars(v).values()) for k, v in sorted(_ESTIMATES.items())})
    return out


def _remembered(path: Any) -> dict[str, list[int]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return {str(k): [int(x) for x in v] for k, v in data.items()} if isinstance(data, dict) else {}
    except (OSError, ValueError, TypeError):
        return {}  # absent or damaged: estimated again


def _estimate(
    plan: Any, model_key: Any, models: tuple, run: dict[str, Any], width: int, height: int
) -> tuple[TrainingShape, Any]:
    from lyco_bench.adapters import AdapterModule, AdapterSpec, get_algorithm, inject
    from lyco_bench.training.config import text_encoder_gradients

    adapter = run["adapter"]
    gradients = text_encoder_gradients(run, adapter["algo"])
    shape = TrainingShape.of_run(run, width=width, height=height, text_gradients=gradients)
    key = stable_hash([ESTIMATE_VERSION, model_key, adapter, run["train_text_encoder"], vars(shape)])
    if key not in _ESTIMATES:
        denoiser, *encoders = models
        for module in models:
            module.requires_grad_(False)
        # A model-level method (textual inversion, hypernetworks) has no layers to inject: its
        # few parameters are left out; its gradients reach the denoiser through the conditioning.
        net = None
        if issubclass(get_algorithm(adapter["algo"]), AdapterModule):
            encoder = encoders[0] if run["train_text_encoder"] and encoders else None
            net = inject(denoiser, encoder, AdapterSpec(**adapter))
        try:
            _ESTIMATES[key] = estimate_training_memory(
                denoiser, encoders, shape, vae_params=_vae_params(plan) if shape.vae_on_device else 0
            )
        finally:
            if net is not None:
                net.remove()
    return shape, _ESTIMATES[key]


def _vae_params(plan: Any) -> int:
    import torch
    from diffusers import AutoencoderKL

    from lyco_bench.sweep.costs import _configs, _meta_model

    configs = _configs(plan)
    if configs is None:
        return 0
    with torch.device("meta"):
        vae = _meta_model("vae", configs[1], AutoencoderKL)
    return sum(p.numel() for p in vae.parameters())


def memory_table(estimates: dict[str, tuple[TrainingShape, MemoryEstimate]], hardware: Any = None) -> str:
    """One row per configuration: the estimate's parts and total (GB), and whether it fits."""
    from lyco_bench.sweep.sizing import human_bytes

    limit = getattr(hardware, "memory_gb", None)
    head = f"{'training GPU memory':<28} {'batch×bucket':>14} {'weights':>9} {'adapter':>9} {'optim':>9} "
    head += f"{'activ.':>9} {'total':>9}" + (f"  fits {hardware.name} ({limit:g} GB)" if limit else "")
    lines = [head]
    for config, (shape, est) in estimates.items():
        parts = (est.weights, est.adapter, est.optimizer, est.activations, est.total)
        row = f"{config:<28} {f'{shape.batch}×{shape.width}×{shape.height}':>14} "
        row += " ".join(f"{human_bytes(p):>9}" for p in parts)
        if limit:
            row += "  yes" if est.total <= limit * 1e9 else "  NO"
        lines.append(row)
    lines.append(
        "(weights in base_dtype, fp32 adapter + grads, optimizer states, activations at the largest "
        "bucket, 0.5 GB CUDA context; lyco_bench/sweep/gpu_memory.py)"
    )
    return "\n".join(lines)


def check_fits(estimates: dict[str, tuple[TrainingShape, MemoryEstimate]], hardware: Any) -> None:
    """BadInput naming the first configuration whose estimate exceeds the GPU's memory."""
    from lyco_bench.sweep.sizing import human_bytes

    limit = hardware.memory_gb
    if not limit:
        return
    for config, (shape, est) in estimates.items():
        if est.total > limit * 1e9:
            hints = [
                "training.gradient_checkpointing: true" if not shape.gradient_checkpointing else "",
                "base_dtype: auto with mixed_precision: bf16" if shape.base_dtype == "float32" else "",
                "a smaller batch_size",
            ]
            raise BadInput(
                f"--gpu {hardware.name}: configuration {config} needs ~{human_bytes(est.total)} of GPU "
                f"memory (batch {shape.batch} at {shape.width}×{shape.height}: weights "
                f"{human_bytes(est.weights)}, activations {human_bytes(est.activations)}), more than the "
                f"{hardware.name}'s {limit:g} GB; try {' or '.join(h for h in hints if h)}"
            )
