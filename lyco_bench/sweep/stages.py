"""What each job kind does: the bridge from a planned job to the other stages' public APIs.

``run_stage(job, store)`` runs one job and returns its output paths (files or folders), which
the executor records in the done marker. Every output is written atomically or by a stage that
resumes on its own (training from its last checkpoint, generation image by image), so a job
killed half-way leaves nothing that a rerun would mistake for a finished result.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from lyco_bench.errors import BadInput
from lyco_bench.sweep.planner import Job
from lyco_bench.sweep.store import StudyStore
from lyco_bench.sweep.study import DEMO_PREFIX, TINY_PREFIX, asset_seed
from lyco_bench.utils import atomic_path, atomic_write_json

# Metric → encoder kinds it reads (PAPER.md §5); "image" = EncoderSettings.image_encoders (DINOv2).
METRIC_ENCODERS = {
    "image_similarity": ("image",),
    "squared_centroid_distance": ("image",),
    "frechet_distance": ("image",),
    "vendi": ("image",),
    "text_similarity": ("clip",),
    "style_loss_base": ("vgg19",),
    "style_loss_dataset": ("vgg19",),
    "clip_iqa": ("clip",),
}
ENCODER_ORDER = ("dinov2", "clip", "vgg19")
_TINY_SIZE_FIELDS = {"dino": "dino_image_size", "vgg": "vgg_short_side"}


def needed_encoders(study: Any, images: str) -> list[str]:
    """Encoder kinds the study's metrics read from ``images`` (reference | base | generated).

    Fixed order, no heavy imports: the planner calls it.
    """
    from lyco_bench.metrics import METRICS

    names = (
        study.metrics if study.metrics is not None else [n for n, m in METRICS.items() if not m.experimental]
    )
    image_encoders = tuple(study.encoders.get("image_encoders", ("dinov2",)))
    kinds: set[str] = set()
    for name in names:
        if name not in METRICS:
            raise BadInput(f"metrics: unknown metric {name!r} (known: {', '.join(sorted(METRICS))})")
        if images not in METRICS[name].needs:
            continue
        for kind in METRIC_ENCODERS.get(name, ()):
            kinds.update(image_encoders if kind == "image" else (kind,))
    return [kind for kind in ENCODER_ORDER if kind in kinds]


# --- resolving the store's assets ------------------------------------------------------------
def model_path(value: str, store: StudyStore) -> str:
    return str(store.assets_dir / "tiny-model") if value.startswith(TINY_PREFIX) else value


def dataset_path(value: str, store: StudyStore) -> str:
    return str(store.assets_dir / "demo-dataset") if value.startswith(DEMO_PREFIX) else value


def encoder_settings(fields: dict[str, Any], store: StudyStore) -> Any:
    """EncoderSettings with ``tiny:`` fields pointing at the tiny encoders in the store."""
    from lyco_bench.metrics import EncoderSettings

    resolved = dict(fields)
    tiny_file = store.assets_dir / "tiny-encoders" / "settings.json"
    if any(isinstance(v, str) and v.startswith(TINY_PREFIX) for v in fields.values()):
        import json

        tiny = json.loads(tiny_file.read_text(encoding="utf-8"))
        for key, value in fields.items():
            if isinstance(value, str) and value.startswith(TINY_PREFIX):
                resolved[key] = str(tiny_file.parent / tiny[key])
                size_key = _TINY_SIZE_FIELDS.get(key)
                if size_key and size_key not in fields:
                    resolved[size_key] = tiny[size_key]
                if key == "clip" and "clip_pretrained" not in fields:
                    resolved["clip_pretrained"] = tiny["clip_pretrained"]
    return EncoderSettings(**resolved)


# --- the jobs ----------------------------------------------------------------------------------
def run_prepare(job: Job, store: StudyStore) -> list[Path]:
    asset, value = job.spec["asset"], job.spec["value"]
    if asset == "model":
        from lyco_bench.models import make_tiny_model

        out = store.assets_dir / "tiny-model"
        return [_build_fresh(out, lambda tmp: make_tiny_model(tmp, seed=asset_seed(value, TINY_PREFIX)))]
    if asset == "dataset":
        from lyco_bench.data import make_demo_dataset

        out = store.assets_dir / "demo-dataset"
        return [_build_fresh(out, lambda tmp: make_demo_dataset(tmp, seed=asset_seed(value, DEMO_PREFIX)))]
    if asset == "encoders":
        from lyco_bench.metrics.tiny import make_tiny_encoders

        out = store.assets_dir / "tiny-encoders"

        def build(tmp: Path) -> None:
            fields = make_tiny_encoders(tmp, seed=0)
            # Paths relative to the folder, so that the store can move.
            fields = {k: _relative_to(v, tmp) for k, v in fields.items()}
            atomic_write_json(tmp / "settings.json", fields)

        return [_build_fresh(out, build)]
    raise BadInput(f"job {job.id}: unknown asset {asset!r}")


def _relative_to(value: Any, folder: Path) -> Any:
    if isinstance(value, str) and value.startswith(str(folder)):
        return str(Path(value).relative_to(folder))
    return value


def _build_fresh(out: Path, build: Any) -> Path:
    """Build a folder in a temporary sibling and rename it into place (never half a folder)."""
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    build(tmp)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


def run_config_for(job: Job, store: StudyStore) -> Any:
    """The trainer's RunConfig for a train job (BadInput naming the configuration if it is invalid)."""
    from lyco_bench.config import validate
    from lyco_bench.training import RunConfig

    spec = job.spec
    captions = {"strategy": spec["captions"], **spec["training"].get("captions", {})}
    data = {
        **spec["training"],
        "model": model_path(spec["model"], store),
        "dataset": dataset_path(spec["dataset"], store),
        "captions": captions,
        "adapter": spec["adapter"],
        "seed": spec["seed"],
        "epochs": max(spec["checkpoint_epochs"]),
        "checkpoint_epochs": spec["checkpoint_epochs"],
        "cache_dir": str(store.cache_dir / "latents"),
    }
    return validate(RunConfig, data, source=f"configuration {spec['config']}")


def run_train(job: Job, store: StudyStore) -> list[Path]:
    from lyco_bench.training import checkpoint_path, train

    config = run_config_for(job, store)
    out_dir = store.run_dir(job.params["config"], job.params["seed"])
    _claim_dir(out_dir, job)
    train(config, out_dir)
    outputs = []
    for epoch in job.spec["checkpoint_epochs"]:
        ckpt = checkpoint_path(out_dir, epoch)
        if not ckpt.is_file():
            raise RuntimeError(f"training finished without {ckpt.name}")
        outputs.append(ckpt)
        if ckpt.with_suffix(".json").is_file():
            outputs.append(ckpt.with_suffix(".json"))
    return outputs


def _claim_dir(out_dir: Path, job: Job) -> None:
    """Own ``out_dir`` for this job id; a folder left by an older version of the job is moved aside.

    Training and generation resume from what is in their folder, which is only right when it was
    written by the very same job (same resolved config).
    """
    owner_file = out_dir / "job.json"
    if owner_file.is_file():
        import json

        try:
            owner = json.loads(owner_file.read_text(encoding="utf-8")).get("job_id")
        except ValueError:
            owner = None
        if owner == job.id:
            return
        stale = out_dir.with_name(f"{out_dir.name}.stale-{owner or 'unknown'}")
        shutil.rmtree(stale, ignore_errors=True)
        out_dir.rename(stale)
    elif out_dir.is_dir() and any(out_dir.iterdir()):
        stale = out_dir.with_name(f"{out_dir.name}.stale-unknown")
        shutil.rmtree(stale, ignore_errors=True)
        out_dir.rename(stale)
    atomic_write_json(owner_file, {"job_id": job.id, "spec": job.spec})


def prompt_items(spec: dict[str, Any], store: StudyStore) -> tuple[Any, list[Any]]:
    """The prompt set and the items to generate for a generate job."""
    from lyco_bench.data import load_dataset
    from lyco_bench.prompts import expand_prompts, load_prompt_set

    prompt_set = load_prompt_set(spec["prompt_set"])
    dataset = load_dataset(dataset_path(spec["dataset"], store))
    items = expand_prompts(
        prompt_set,
        dataset,
        classes=spec["classes"],
        images_per_prompt=spec.get("images_per_prompt"),
        caption_strategy=spec.get("captions"),
    )
    return prompt_set, items


def checkpoint_name(config: str, seed: int, epoch: int) -> str:
    """The checkpoint's name in manifests, score rows and the results table."""
    return f"{config}-s{seed}-e{epoch:03d}"


def run_generate(job: Job, store: StudyStore) -> list[Path]:
    from lyco_bench.generation import SamplerSettings, generate
    from lyco_bench.training import checkpoint_path

    spec, params = job.spec, job.params
    sampler = SamplerSettings(**spec["sampler"])
    prompt_set, items = prompt_items(spec, store)
    if params["target"] == "base":
        out_dir, adapters, name = store.base_images_dir, [], "base"
    else:
        config, seed, epoch = params["config"], params["seed"], params["epoch"]
        out_dir = store.images_dir(config, seed, epoch)
        adapters = [(checkpoint_path(store.run_dir(config, seed), epoch), 1.0)]
        name = checkpoint_name(config, seed, epoch)
    _claim_dir(out_dir, job)
    manifest = generate(
        model=model_path(spec["model"], store),
        adapters=adapters,
        items=items,
        out_dir=out_dir,
        sampler=sampler,
        checkpoint_name=name,
        prompt_set=prompt_set,
    )
    return [manifest, out_dir]


def images_dir_of(job: Job, store: StudyStore) -> Path:
    p = job.params
    if p["target"] == "base":
        return store.base_images_dir
    return store.images_dir(p["config"], p["seed"], p["epoch"])


ENCODE_CHUNK = 64  # images per call: VGG Gram vectors are large, never hold a whole set in memory


def _encode_paths(pool: Any, kind: str, paths: list[Path], *, modes: tuple[str, ...], cache: Any) -> int:
    from lyco_bench.metrics.features import image_features

    for mode in modes:
        for start in range(0, len(paths), ENCODE_CHUNK):
            image_features(pool, kind, paths[start : start + ENCODE_CHUNK], mode=mode, cache=cache)
    return len(paths) * len(modes)


def run_encode(job: Job, store: StudyStore) -> list[Path]:
    """Fill the feature cache with what ``score`` will read for one (image set, encoder)."""
    from lyco_bench.metrics import FeatureCache
    from lyco_bench.metrics.features import EncoderPool, list_images

    settings = encoder_settings(job.spec["encoders"], store)
    pool, cache = EncoderPool(settings), FeatureCache(store.cache_dir / "features")
    kind = job.params["encoder"]
    # Fidelity compares in every reference mode; VGG ignores the mode, CLIP images use "resize".
    modes = tuple(settings.modes) if kind in settings.image_encoders else ("resize",)
    if job.params["target"] == "dataset":
        from lyco_bench.data import load_dataset

        dataset = load_dataset(dataset_path(job.spec["dataset"], store))
        concepts = dataset.concepts
        if kind == "vgg19" and settings.style_categories is not None:  # style loss: style concepts only
            concepts = [c for c in concepts if c.category in settings.style_categories]
        paths = sorted({Path(item.path) for c in concepts for item in c.images})
    else:
        paths = list_images(images_dir_of(job, store))
    count = _encode_paths(pool, kind, paths, modes=modes, cache=cache) if paths else 0
    record = store.jobs_dir / f"{job.id}.features.json"
    atomic_write_json(record, {"encoder": pool.id(kind), "images": len(paths), "features": count})
    return [record]


def _encoder_fields(job: Job) -> dict[str, Any]:
    """Encoder settings of a score job: experimental metrics only when the study asks for one."""
    from lyco_bench.metrics import METRICS

    fields = dict(job.spec["encoders"])
    metrics = job.spec["metrics"]
    if "experimental" not in fields:
        fields["experimental"] = bool(metrics) and any(METRICS[m].experimental for m in metrics)
    return fields


def run_score(job: Job, store: StudyStore) -> list[Path]:
    from lyco_bench.data import load_dataset
    from lyco_bench.metrics import score

    p = job.params
    frame = score(
        images_dir=store.images_dir(p["config"], p["seed"], p["epoch"]),
        dataset=load_dataset(dataset_path(job.spec["dataset"], store)),
        base_images_dir=store.base_images_dir,
        encoders=encoder_settings(_encoder_fields(job), store),
        cache_dir=store.cache_dir / "features",
        checkpoint=checkpoint_name(p["config"], p["seed"], p["epoch"]),
    )
    if job.spec["metrics"] is not None:
        frame = frame[frame["metric"].isin(job.spec["metrics"])].reset_index(drop=True)
    out = store.scores_path(p["config"], p["seed"], p["epoch"])
    with atomic_path(out) as tmp:
        frame.to_parquet(tmp, index=False)
    return [out]


STAGES = {
    "prepare": run_prepare,
    "train": run_train,
    "generate": run_generate,
    "encode": run_encode,
    "score": run_score,
}


def run_stage(job: Job, store: StudyStore) -> list[Path]:
    """Run ``job`` and return its outputs (files and folders under the study store)."""
    return STAGES[job.kind](job, store)
