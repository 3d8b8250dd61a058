"""What a study costs in GPU-hours per stage on given hardware (`lyco-bench plan --gpu NAME`).

Work is counted in FLOPs from the plan itself, then divided by the hardware's throughput:

- train: the real step count of each training job — every epoch's batches as the trainer cuts
  them (``bucket_batches``: each image's bucket from its size, the concepts' repeats, the batch
  size) up to the last checkpoint epoch — × 3 UNet forwards (forward + backward ≈ 3×) of a batch
  at its bucket's size;
- generate: per image, steps × UNet forwards (2 with classifier-free guidance) + one VAE decode;
- encode / score: per encoder pass of an image, the encoder's forward.

UNet and VAE FLOPs are counted by ``torch.utils.flop_counter`` on the study's own configs built
on the ``meta`` device (no weights); encoder FLOPs from each encoder kind's declaration (``EncoderKind.flops``: a ViT's per-layer
matmuls, VGG's convolutions: ``vit_flops``, ``vgg_flops``).
The hardware table (``benchmarks/gpu_costs.yaml``) gives each precision's dense peak and the
fraction of it each stage reaches: measured by ``benchmarks/gpu_check.py`` where it says so,
else an assumption it names.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lyco_bench.errors import BadInput
from lyco_bench.metrics.encoders.base import vit_flops  # noqa: F401 - re-exported (benchmarks, tests)
from lyco_bench.metrics.encoders.vgg19 import vgg_flops  # noqa: F401 - re-exported

DEFAULT_TABLE = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_costs.yaml"
STAGES = ("train", "generate", "encode", "score")
TRAIN_FLOPS_PER_FORWARD = 3.0  # forward + backward (two matmuls per forward matmul)
# SD1.x's VAE (every SD1.x checkpoint's vae/config.json), when the model folder has none.
SD_VAE = {
    "in_channels": 3, "out_channels": 3, "latent_channels": 4, "layers_per_block": 2, "norm_num_groups": 32,
    "block_out_channels": [128, 256, 512, 512], "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
}  # fmt: skip


@dataclass(frozen=True)
class Hardware:
    """One GPU: dense peak TFLOP/s per precision, and the fraction of it each stage reaches."""

    name: str
    peak_tflops: dict[str, float]
    efficiency: dict[str, float]
    sources: dict[str, str]
    """Stage (or ``peak``) → where its figure comes from (measured by…, assumed because…)."""
    memory_gb: float | None = None
    """GPU memory in GB (10⁹ bytes, the datasheet's); None: training memory is not checked."""

    def seconds(self, stage: str, flops: float, precision: str) -> float:
        return flops / (self.peak_tflops[precision] * 1e12 * self.efficiency[stage])


def load_hardware(name: str, table: str | Path | None = None) -> Hardware:
    """The row ``name`` of the hardware table (YAML), checked; bad input names the file and field."""
    from lyco_bench.config import read_yaml

    path = Path(table) if table is not None else DEFAULT_TABLE
    if not path.is_file():
        raise BadInput(f"--gpu-costs {path}: no such file")
    data = read_yaml(path)
    if not isinstance(data, dict) or name not in data:
        known = ", ".join(sorted(data)) if isinstance(data, dict) else "none"
        raise BadInput(f"--gpu {name}: not in {path} (known: {known})")
    row = data[name]
    try:
        peak = {str(k): float(v) for k, v in row["peak_tflops"].items()}
        eff = {stage: float(row["efficiency"][stage]["value"]) for stage in STAGES}
        sources = {stage: str(row["efficiency"][stage]["source"]) for stage in STAGES}
        sources["peak"] = str(row["source"])
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise BadInput(f"{path}: {name}: missing or bad field ({exc})") from None
    for key in ("float32", "float16", "bfloat16"):
        if not peak.get(key, 0) > 0:
            raise BadInput(f"{path}: {name}.peak_tflops.{key}: must be a positive number")
    for stage, value in eff.items():
        if not 0 < value <= 1:
            raise BadInput(f"{path}: {name}.efficiency.{stage}.value: must be in (0, 1]")
    memory = row.get("memory_gb")
    if memory is not None and not (isinstance(memory, int | float) and memory > 0):
        raise BadInput(f"{path}: {name}.memory_gb: must be a positive number")
    return Hardware(name=name, peak_tflops=peak, efficiency=eff, sources=sources, memory_gb=memory)


_FLOPS_CACHE: dict[str, float] = {}
FLOPS_FILE = "flops.json"
"""A store's remembered FLOP counts (config digest → FLOPs): counting on ``meta`` takes seconds."""


def _key(what: list) -> str:
    from lyco_bench.utils import stable_hash

    return stable_hash(what)


def _remembered(store_root: Path) -> dict[str, float]:
    try:
        data = json.loads((store_root / FLOPS_FILE).read_text(encoding="utf-8"))
        return {str(k): float(v) for k, v in data.items()} if isinstance(data, dict) else {}
    except (OSError, ValueError, TypeError):
        return {}  # absent or damaged: counted again


def unet_forward_flops(unet_config: dict, width: int, height: int, text_dim: int | None = None) -> float:
    """FLOPs of one UNet forward for one image of ``width``×``height`` pixels (77 text tokens)."""
    key = _key(["unet", unet_config, width, height])
    if key not in _FLOPS_CACHE:
        import torch
        from torch.utils.flop_counter import FlopCounterMode

        from lyco_bench.sweep.gpu_memory import denoiser_class, denoiser_inputs

        with torch.device("meta"):  # a UNet (SDXL's added conditioning included) or a FLUX transformer
            unet = _meta_model("unet", unet_config, denoiser_class(unet_config))
            args, kwargs = denoiser_inputs(unet, 1, width, height)
            with FlopCounterMode(display=False) as counter, torch.no_grad():
                unet(*args, **kwargs)
        _FLOPS_CACHE[key] = float(counter.get_total_flops())
    return _FLOPS_CACHE[key]


_META_MODELS: dict[str, Any] = {}


def _meta_model(kind: str, config: dict, cls: Any) -> Any:
    """A weightless model built once per config (training buckets reuse it at every size)."""
    key = json.dumps([kind, config], sort_keys=True, default=str)
    if key not in _META_MODELS:
        _META_MODELS[key] = cls.from_config(config)
    return _META_MODELS[key]


def vae_decode_flops(vae_config: dict, width: int, height: int) -> float:
    """FLOPs of one VAE decode to a ``width``×``height`` image."""
    key = _key(["vae", vae_config, width, height])
    if key not in _FLOPS_CACHE:
        import torch
        from diffusers import AutoencoderKL
        from torch.utils.flop_counter import FlopCounterMode

        with torch.device("meta"):
            vae = _meta_model("vae", vae_config, AutoencoderKL)
            z = torch.empty(1, vae.config.latent_channels, height // 8, width // 8)
            with FlopCounterMode(display=False) as counter:
                vae.decode(z)
        _FLOPS_CACHE[key] = float(counter.get_total_flops())
    return _FLOPS_CACHE[key]


def train_steps(plan: Any, config: str) -> list[tuple[int, int, int]]:
    """(width, height, images) of every optimizer step of one training job of ``config``: each
    epoch's batches as ``bucket_batches`` cuts them, up to the study's last checkpoint epoch."""
    from lyco_bench.data import assign_bucket, make_buckets

    run = plan.inputs.runs[config]
    buckets = make_buckets(run["resolution"], min_size=run["buckets"]["min"], max_size=run["buckets"]["max"],
                           step=run["buckets"]["step"])  # fmt: skip
    wanted = run.get("categories")
    counts: dict[tuple[int, int], int] = {}
    for category, width, height, repeats in dataset_images(plan):
        if wanted is None or category in wanted:
            bucket = assign_bucket(width, height, buckets)
            counts[bucket] = counts.get(bucket, 0) + repeats
    batch, epochs = run["batch_size"], max(plan.study.study.checkpoint_epochs)
    steps = []
    for (w, h), n in sorted(counts.items()):
        full, last = divmod(n, batch)
        steps += [(w, h, batch)] * full + ([(w, h, last)] if last else [])
    return steps * epochs


def dataset_images(plan: Any) -> list[tuple[str, int, int, int]]:
    """(category, width, height, repeats) of the dataset's images: the folder's, read again for
    the concepts' repeats; a dataset drawn by a prepare job (not there yet): its listed sizes."""
    from lyco_bench.sweep.study import generated_dataset

    value = str(plan.study.study.dataset)
    if generated_dataset(value) is None and Path(value).is_dir():
        from lyco_bench.data import load_dataset

        dataset = load_dataset(value)
        return [(c.category, i.width, i.height, c.repeats) for c, i in dataset.items()]
    return [(cat, w, h, 1) for cat, w, h in plan.inputs.dataset_images]


@dataclass
class StageCost:
    jobs: int
    units: int
    """Optimizer steps (train), images (generate), encoder passes of an image (encode, score)."""
    flops: float
    precision: str
    seconds: float = 0.0


def job_costs(plan: Any, hardware: Hardware) -> dict[str, tuple[str, int, float, str, float]]:
    """Job id → (stage, units, FLOPs, precision, GPU-seconds) for every GPU job of ``plan``."""
    configs = _configs(plan)
    if configs is None:
        raise BadInput(f"model {plan.study.study.model}: no UNet config to count FLOPs from")
    unet_cfg, vae_cfg = configs
    remembered = _remembered(plan.store.root)
    for key, value in remembered.items():
        _FLOPS_CACHE.setdefault(key, value)
    out = _job_flops(plan, unet_cfg, vae_cfg)
    if not _FLOPS_CACHE.keys() <= remembered.keys() and plan.store.root.is_dir():
        from lyco_bench.utils import atomic_write_json

        atomic_write_json(plan.store.root / FLOPS_FILE, dict(sorted(_FLOPS_CACHE.items())))
    return {
        job_id: (stage, units, flops, precision, hardware.seconds(stage, flops, precision))
        for job_id, (stage, units, flops, precision) in out.items()
    }


def _job_flops(plan: Any, unet_cfg: dict, vae_cfg: dict) -> dict[str, tuple[str, int, float, str]]:
    out: dict[str, tuple[str, int, float, str]] = {}
    train_precision = {"bf16": "bfloat16", "fp16": "float16"}
    for job in plan.of_kind("train"):
        config = job.params["config"]
        steps = train_steps(plan, config)
        flops = sum(
            TRAIN_FLOPS_PER_FORWARD * n * unet_forward_flops(unet_cfg, w, h)
            for (w, h), n in _grouped(steps).items()
        )
        precision = train_precision.get(plan.inputs.runs[config]["mixed_precision"], "float32")
        out[job.id] = ("train", len(steps), flops, precision)
    sampler = plan.inputs.sampler
    w, h = sampler["width"], sampler["height"]
    passes = sampler["steps"] * (2 if sampler["cfg"] > 1 else 1)
    per_image = passes * unet_forward_flops(unet_cfg, w, h) + vae_decode_flops(vae_cfg, w, h)
    for job in plan.of_kind("generate"):
        n = _generated_images(plan, job)
        out[job.id] = ("generate", n, n * per_image, sampler.get("dtype", "float32"))
    per_pass = _encoder_flops(plan)
    for job in plan.of_kind("score"):
        generated = sum(_per_class(plan, job).values())
        out[job.id] = ("score", generated * len(per_pass), generated * sum(per_pass.values()), "float32")
    # an eval model's base images (lyco_bench.sweep.axes) are encoded by its own encode jobs
    encode_jobs = [j for j in plan.of_kind("encode") if j.params.get("eval_model") is None]
    refs = len(plan.inputs.dataset_images) * len(plan.study.study.encoders.get("modes", ["resize"]))
    base = sum(plan.inputs.base_images_per_class.values())
    shared = refs + base
    for job in encode_jobs:  # the shared images' passes, split evenly over the encode jobs
        n = shared * len(per_pass) // len(encode_jobs)
        out[job.id] = ("encode", n, shared * sum(per_pass.values()) / len(encode_jobs), "float32")
    per_model: dict[str, list[Any]] = {}
    for job in plan.of_kind("encode"):
        if job.params.get("eval_model") is not None:
            per_model.setdefault(job.params["eval_model"], []).append(job)
    for jobs in per_model.values():
        for job in jobs:
            out[job.id] = ("encode", base * len(per_pass) // len(jobs), base * sum(per_pass.values()) / len(jobs),
                           "float32")  # fmt: skip
    return out


def estimate_costs(plan: Any, hardware: Hardware, jobs: dict | None = None) -> dict[str, StageCost]:
    """FLOPs and GPU-seconds per stage for every job of ``plan`` (done or not); ``jobs``: the
    result of :func:`job_costs` when already computed."""
    costs: dict[str, StageCost] = {}
    for stage, units, flops, precision, seconds in (jobs or job_costs(plan, hardware)).values():
        if stage not in costs:
            costs[stage] = StageCost(jobs=0, units=0, flops=0.0, precision=precision)
        c = costs[stage]
        c.jobs, c.units, c.flops, c.seconds = (
            c.jobs + 1,
            c.units + units,
            c.flops + flops,
            c.seconds + seconds,
        )
        if c.precision != precision:
            c.precision = "mixed"
    return costs


def cost_table(costs: dict[str, StageCost], hardware: Hardware) -> str:
    """Per stage: jobs, units, PFLOP, precision, GPU-hours, and the total; sources below."""
    lines = [f"{'GPU-hours on one ' + hardware.name:<22} {'jobs':>6} {'units':>12} {'PFLOP':>10} "
             f"{'precision':>9} {'of peak':>7} {'GPU-h':>8}"]  # fmt: skip
    for stage in STAGES:
        if stage in costs:
            c = costs[stage]
            lines.append(f"{stage:<22} {c.jobs:>6,} {c.units:>12,} {c.flops / 1e15:>10,.1f} {c.precision:>9} "
                         f"{hardware.efficiency[stage]:>7.0%} {_hours(c.seconds):>8}")  # fmt: skip
    total = sum(c.seconds for c in costs.values()) / 3600
    lines.append(f"{'total':<22} {'':>6} {'':>12} {sum(c.flops for c in costs.values()) / 1e15:>10,.1f} "
                 f"{'':>9} {'':>7} {_hours(total * 3600):>8}")  # fmt: skip
    lines.append(f"peak: {hardware.sources['peak']}")
    for stage in STAGES:
        lines.append(f"{stage} efficiency: {hardware.sources[stage]}")
    return "\n".join(lines)


def _hours(seconds: float) -> str:
    hours = seconds / 3600
    return f"{hours:,.1f}" if hours >= 10 else f"{hours:.3g}"


def _grouped(steps: list[tuple[int, int, int]]) -> dict[tuple[int, int], int]:
    out: dict[tuple[int, int], int] = {}
    for w, h, n in steps:
        out[(w, h)] = out.get((w, h), 0) + n
    return out


def _generated_images(plan: Any, job: Any) -> int:
    target = job.params.get("target")
    if target == "base":
        return sum(plan.inputs.base_images_per_class.values())
    if target == "class":
        return len(job.spec.get("class_prompts", [])) * int(job.spec.get("images_per_prompt", 0))
    return sum(_per_class(plan, job).values())


def _per_class(plan: Any, job: Any) -> dict[str, int]:
    """Images per prompt class of a checkpoint's job: its trajectory budget's or the full set's."""
    return (
        plan.inputs.trajectory_images_per_class
        if job.params.get("trajectory")
        else plan.inputs.images_per_class
    )


def _encoder_flops(plan: Any) -> dict[str, float]:
    """FLOPs of one image's forward per encoder kind the study's metrics read (each kind's
    declaration; a kind that declares none is left out)."""
    from lyco_bench.metrics.encoders import ENCODERS
    from lyco_bench.sweep.assets import tiny_weights

    fields = plan.study.study.encoders
    out = {}
    for kind in plan.inputs.encoders:
        spec = ENCODERS[kind]
        if spec.flops is not None:
            out[kind] = spec.flops(fields, tiny_weights(fields.get(spec.weights_field)))
    return out


def _configs(plan: Any) -> tuple[dict, dict] | None:
    """(UNet config, VAE config) of the study's model: its folder's, SD1.x's VAE when it has none."""
    from lyco_bench.sweep.sizing import _model_configs, model_folder

    configs = _model_configs(plan.study.study.model)
    if configs is None:
        return None
    from lyco_bench.sweep.assets import built_model

    value = plan.study.study.model
    folder = model_folder(value)
    built = built_model(value)
    vae = built[1].configs(value[len(built[0].prefix) :])[2] if built is not None else dict(SD_VAE)
    if folder is not None and (folder / "vae" / "config.json").is_file():
        vae = json.loads((folder / "vae" / "config.json").read_text(encoding="utf-8"))
    return configs[0], vae
