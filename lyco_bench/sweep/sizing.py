"""What a study's store will hold when it is finished: files and bytes per kind of output.

``lyco-bench plan`` prints it, with what each image-retention setting costs, so that a sweep is
sized before it starts (the paper's: 234 checkpoints × ~14,900 images). The estimate is built
from the plan itself — images per prompt class from the expanded prompt set, which images each
metric's encoders read (the metric registry), encoder widths from their configs, adapter sizes
from the configuration injected into the model built on the ``meta`` device (no weights are
loaded) — and from what the store already holds where it can be measured (PNG sizes).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lyco_bench.sweep.assets import built_model, tiny_weights

# A 512² Stable Diffusion PNG is about half its raw RGB size (measured ~390 KB on SD1.5 samples);
# used until the store holds images of its own.
PNG_RATIO = 0.5
SAFETENSORS_HEADER = 200  # bytes of header per small tensor file, roughly


@dataclass
class StoreEstimate:
    """Rows of (what, files, bytes) for a finished study, and the images under each setting."""

    rows: list[tuple[str, int, int]] = field(default_factory=list)
    images: dict[str, tuple[int, int]] = field(default_factory=dict)
    """Image setting (keep | grids | none) → (files, bytes) of generated images kept."""
    setting: str = "keep"
    n_jobs: int = 0

    def add(self, what: str, files: int, size: float) -> None:
        self.rows.append((what, int(files), int(round(size))))

    @property
    def files(self) -> int:
        return sum(f for _, f, _ in self.rows) + self.images[self.setting][0]

    @property
    def bytes(self) -> int:
        return sum(b for _, _, b in self.rows) + self.images[self.setting][1]

    def of(self, prefix: str) -> tuple[int, int]:
        """(files, bytes) of the rows whose name starts with ``prefix``."""
        rows = [(f, b) for what, f, b in self.rows if what.startswith(prefix)]
        return sum(f for f, _ in rows), sum(b for _, b in rows)

    def table(self) -> str:
        lines = [f"{'store when finished':<46} {'files':>11} {'size':>10}"]
        for what, files, size in self.rows:
            lines.append(f"{what:<46} {files:>11,} {human_bytes(size):>10}")
        for setting, (files, size) in self.images.items():
            mark = " ← study" if setting == self.setting else ""
            lines.append(f"{'images: ' + setting:<46} {files:>11,} {human_bytes(size):>10}{mark}")
        lines.append(f"{'total':<46} {self.files:>11,} {human_bytes(self.bytes):>10}")
        others = self.files - self.images[self.setting][0] - self.of("base-model images")[0]
        lines.append(f"files besides images: {others:,} for {self.n_jobs} jobs")
        return "\n".join(lines)


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def estimate_store(plan: Any, *, png_bytes: float | None = None) -> StoreEstimate:
    """The finished store of ``plan`` (see the module docstring)."""
    from lyco_bench.metrics import METRICS, metric_encoders
    from lyco_bench.metrics.encoders import ENCODERS

    s, inputs = plan.study.study, plan.inputs
    est = StoreEstimate(setting=getattr(s, "images", "keep"), n_jobs=len(plan.jobs))
    sampler = inputs.sampler
    square = sampler["width"] == sampler["height"]
    png = png_bytes or _measured_png_bytes(plan.store) or sampler["width"] * sampler["height"] * 3 * PNG_RATIO
    n_traj = sum(1 for job in plan.of_kind("score") if job.params.get("trajectory"))
    n_ckpt = len(plan.of_kind("score")) - n_traj  # trajectory points: their budget's images only
    per_ckpt = sum(inputs.images_per_class.values())
    traj_images = n_traj * sum(inputs.trajectory_images_per_class.values())
    n_base = sum(inputs.base_images_per_class.values())

    # Images: kept all, the report's grids only (first seed, last epoch, 8 per prompt class), or none.
    grids = len(plan.study.configs)
    per_grid = sum(min(8, n) for n in inputs.images_per_class.values())
    est.images = {
        "keep": (n_ckpt * per_ckpt + traj_images, (n_ckpt * per_ckpt + traj_images) * png),
        "grids": (grids * per_grid, grids * per_grid * png),
        "none": (0, 0),
    }
    # one set per base model: the study's, and each eval model's (lyco_bench.sweep.axes)
    n_sets = sum(j.params.get("target") == "base" for j in plan.of_kind("generate")) or 1
    est.add("base-model images (shared)", n_base * n_sets, n_base * n_sets * png)
    n_folders = n_ckpt + n_sets
    est.add("manifests (one per image folder)", n_folders, n_folders * (2000 + 120 * per_ckpt))

    dims = {kind: encoder_dim(kind, plan) for kind in inputs.encoders}
    image_encoders = tuple(inputs.scoring["image_encoders"])
    for kind in inputs.encoders:
        reading = [m for m in inputs.metrics if kind in metric_encoders(METRICS[m], image_encoders)]
        if ENCODERS[kind].streamed:  # generated images' features are never stored
            base_classes = {
                c for m in reading if "base" in METRICS[m].needs for c in METRICS[m].prompt_classes
            }
            n = sum(v for c, v in inputs.base_images_per_class.items() if c in base_classes)
            est.add(f"features: base images, {kind} (shared)", 1 if n else 0, n * dims[kind] * 4)
            if any("reference" in METRICS[m].needs for m in reading):
                n = sum(1 for cat, _, _ in inputs.dataset_images if cat in inputs.scoring["style_categories"])
                est.add(f"features: style images of the dataset, {kind}", 1 if n else 0, n * dims[kind] * 4)
            continue
        classes = {c for m in reading for c in METRICS[m].prompt_classes}
        n = sum(v for c, v in inputs.images_per_class.items() if c in classes)
        modes = 1 if square else len(inputs.scoring["modes"])
        est.add(f"features: checkpoint images, {kind}", n_ckpt * modes, n_ckpt * n * modes * dims[kind] * 4)
        if any("reference" in METRICS[m].needs for m in reading):
            n_ref = sum(1 if w == h else len(inputs.scoring["modes"]) for _, w, h in inputs.dataset_images)
            est.add(
                f"features: dataset images, {kind} (shared)",
                len(inputs.scoring["modes"]),
                n_ref * dims[kind] * 4,
            )
    for kind in (k for k in inputs.encoders if ENCODERS[k].text):
        if any("text" in METRICS[m].needs and kind in METRICS[m].encoders for m in inputs.metrics):
            texts = per_ckpt  # at most one text per image
            est.add(f"features: prompt texts, {kind} (shared)", 1, texts * dims[kind] * 4)

    _add_checkpoints(est, plan)
    n_scores = n_ckpt + n_traj
    est.add("score rows (one parquet per checkpoint)", n_scores, n_scores * 40_000)
    owners = len(plan.of_kind("train")) + len(plan.of_kind("generate"))  # job.json in their folders
    est.add(
        "job markers, locks, records, folders' job.json", 3 * len(plan.jobs) + owners, len(plan.jobs) * 3000
    )
    _add_latents(est, plan)

    return est


def _add_latents(est: StoreEstimate, plan: Any) -> None:
    """VAE latents (mean, std) of every dataset image in its bucket: one shard per bucket."""
    from lyco_bench.data import assign_bucket, make_buckets

    run = next(iter(plan.inputs.runs.values()))
    b = run["buckets"]
    buckets = make_buckets(run["resolution"], min_size=b["min"], max_size=b["max"], step=b["step"])
    used = [assign_bucket(w, h, buckets) for _, w, h in plan.inputs.dataset_images]
    # SD's VAE: 4 latent channels, 8× smaller sides; mean and std in float32.
    est.add(
        "latents of the dataset (shared)",
        len(set(used)),
        sum(2 * 4 * (w // 8) * (h // 8) * 4 for w, h in used),
    )


def _add_checkpoints(est: StoreEstimate, plan: Any) -> None:
    """Adapter files per saved epoch, their run records, and the latest resume state per run."""
    from lyco_bench.sweep.trajectory import trajectory_epochs

    s = plan.study.study
    epochs = len({*s.checkpoint_epochs, *trajectory_epochs(plan.study)})
    total_files = total_bytes = 0
    for config in plan.study.configs:
        params = trainable_parameters(plan, config.name)
        if params is None:
            from lyco_bench.adapters import AdapterModule, get_algorithm

            layered = issubclass(
                get_algorithm(plan.inputs.runs[config.name]["adapter"]["algo"]), AdapterModule
            )
            why = "model config unknown" if layered else "a model-level method: sized once trained"
            est.add(f"checkpoints of {config.name}: {why}", 0, 0)
            continue
        adapter = params * 4 + SAFETENSORS_HEADER * 8
        state = params * 4 * 3  # parameters + Adam's two moments, fp32
        runs = len(s.seeds)
        total_files += runs * (epochs * 2 + 1)
        total_bytes += runs * (epochs * (adapter + 3000) + state)
    est.add("checkpoints + run records + latest resume state", total_files, total_bytes)


def trainable_parameters(plan: Any, config_name: str) -> int | None:
    """Trainable parameters of a configuration: from a run record in the store when one exists,
    else the configuration injected into the model built on the meta device (once per setting)."""
    import json as _json

    for seed in plan.study.study.seeds:
        for record in sorted(plan.store.run_dir(config_name, seed).glob("ckpt-e*.json")):
            try:
                return int(_json.loads(record.read_text(encoding="utf-8"))["trainable_params"])
            except (OSError, ValueError, KeyError, TypeError):
                continue
    adapter = plan.inputs.runs[config_name]["adapter"]
    key = (plan.study.study.model, _json.dumps(adapter, sort_keys=True))
    if key not in _PARAMS_CACHE:
        _PARAMS_CACHE[key] = _injected_parameters(plan, adapter)
    return _PARAMS_CACHE[key]


_PARAMS_CACHE: dict[tuple[str, str], int | None] = {}


def _injected_parameters(plan: Any, adapter: dict[str, Any]) -> int | None:
    from lyco_bench.adapters import AdapterModule, AdapterSpec, get_algorithm, inject

    if not issubclass(get_algorithm(adapter["algo"]), AdapterModule):
        return None  # a model-level method: its size is known once it is trained

    models = _meta_models(plan)
    if models is None:
        return None
    net = inject(*models, AdapterSpec(**adapter))
    try:
        return int(net.num_trainable())
    finally:
        net.remove()


_META_CACHE: dict[str, Any] = {}


def _meta_models(plan: Any) -> tuple[Any, Any] | None:
    """(UNet, text encoder) of the study's model with no weights (meta tensors), or None."""
    import torch

    value = plan.study.study.model
    if value in _META_CACHE:
        return _META_CACHE[value]
    configs = _model_configs(value)
    result = None
    if configs is not None:
        from transformers import CLIPTextConfig, CLIPTextModel

        from lyco_bench.sweep.gpu_memory import denoiser_class

        unet_cfg, text_cfg = configs
        with torch.device("meta"):
            unet = denoiser_class(unet_cfg).from_config(unet_cfg)
            text = CLIPTextModel(CLIPTextConfig(**text_cfg))
        result = (unet, text)
    _META_CACHE[value] = result
    return result


def model_folder(value: str) -> Path | None:
    """The diffusers folder of a model: a local one, or the hub cache's copy; None if neither."""
    if built_model(value) is not None:
        return None
    folder = Path(value).expanduser()
    if not folder.is_dir():
        from lyco_bench.sweep.sources import cached_hub_file

        index = cached_hub_file(value, "model_index.json")
        folder = index.parent if index is not None else None
    return folder


def _model_configs(value: str) -> tuple[dict, dict] | None:
    built = built_model(value)
    if built is not None:  # not built yet: its declared configs
        unet, text, _ = built[1].configs(value[len(built[0].prefix) :])
        return unet, text
    folder = model_folder(value)
    if folder is None:
        return None
    try:
        unet = json.loads((folder / "unet" / "config.json").read_text(encoding="utf-8"))
        text = json.loads((folder / "text_encoder" / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    text = {k: v for k, v in text.items() if not k.startswith("_") and k not in ("architectures",)}
    return unet, text


def encoder_dim(kind: str, plan: Any) -> int:
    """Width of one feature vector of encoder ``kind`` (its declaration; packed Gram length for VGG19)."""
    from lyco_bench.metrics.encoders import ENCODERS

    spec = ENCODERS[kind]
    fields = plan.study.study.encoders
    value = fields.get(spec.weights_field)
    return spec.feature_dim(fields, tiny_weights(value))


def _measured_png_bytes(store: Any, sample: int = 200) -> float | None:
    images = store.root / "images"
    if not images.is_dir():
        return None
    sizes = []
    for path in images.rglob("*.png"):
        sizes.append(path.stat().st_size)
        if len(sizes) >= sample:
            break
    return sum(sizes) / len(sizes) if sizes else None
