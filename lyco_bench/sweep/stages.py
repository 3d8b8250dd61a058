"""What each job kind does: the bridge from a planned job to the other stages' public APIs.

``run_stage(job, store)`` runs one job and returns its output paths (files or folders), which
the executor records in the done marker. Every output is written atomically or by a stage that
resumes on its own (training from its last checkpoint, generation image by image), so a job
killed half-way leaves nothing that a rerun would mistake for a finished result.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from lyco_bench.errors import BadInput
from lyco_bench.sweep.assets import (
    built_encoders,
    built_model,
    dataset_path,
    encoder_settings,
    job_model_path,
    model_path,
)
from lyco_bench.sweep.axes import base_images_dir, extracted_path
from lyco_bench.sweep.planner import Job, train_run_identity
from lyco_bench.sweep.store import StudyStore
from lyco_bench.sweep.study import draw_generated_dataset, generated_dataset, generated_folder
from lyco_bench.sweep.trajectory import checkpoint_dirs
from lyco_bench.utils import atomic_folder, atomic_path, atomic_write_json, stable_hash


# --- the jobs ----------------------------------------------------------------------------------
def run_prepare(job: Job, store: StudyStore) -> list[Path]:
    """Build an asset into the store's assets folder (a stale build there is replaced whole)."""
    asset, value = job.spec["asset"], job.spec["value"]
    if asset == "model" and (model := built_model(value)) is not None:
        out = store.assets_dir / job.params.get("folder", model[1].folder)  # an eval model's: its own
        with _fresh(out) as tmp:
            model[1].build(tmp, value[len(model[0].prefix) :])
        return [out]
    if asset == "dataset" and generated_dataset(value):
        out = store.assets_dir / generated_folder(value)
        with _fresh(out) as tmp:
            draw_generated_dataset(value, tmp)
        return [out]
    if asset == "encoders" and (encoders := built_encoders(value)) is not None:
        out = store.assets_dir / encoders[1].folder
        with _fresh(out) as tmp:
            fields = encoders[1].build(tmp)
            # Paths relative to the folder, so that the store can move.
            fields = {k: _relative_to(v, tmp) for k, v in fields.items()}
            atomic_write_json(tmp / "settings.json", fields)
        return [out]
    raise BadInput(f"job {job.id}: unknown asset {asset!r}")


@contextlib.contextmanager
def _fresh(out: Path) -> Iterator[Path]:
    """``atomic_folder`` replacing a stale build, after removing what a killed build of this job
    left beside it (its temporary folders: the job's lock makes this the only builder)."""
    for left in out.parent.glob(f".{out.name}.*") if out.parent.is_dir() else ():
        shutil.rmtree(left, ignore_errors=True)
    with atomic_folder(out, replace=True) as tmp:
        yield tmp


def _relative_to(value: Any, folder: Path) -> Any:
    if isinstance(value, str) and value.startswith(str(folder)):
        return str(Path(value).relative_to(folder))
    return value


def run_config_for(job: Job, store: StudyStore) -> Any:
    """The trainer's RunConfig for a train job: its spec's resolved settings, placed in the store."""
    from lyco_bench.config import validate
    from lyco_bench.training import RunConfig

    spec = job.spec
    epochs = max(spec["checkpoint_epochs"])
    data = {
        **spec["run"],
        "epochs": epochs,
        "checkpoint_epochs": spec["checkpoint_epochs"],
        "checkpoint_every": spec.get("checkpoint_every"),
        "model": model_path(job.params["model"], store),
        "dataset": dataset_path(job.params["dataset"], store),
        "cache_dir": str(store.cache_dir / "latents"),
        **job.params.get("run_hints", {}),  # settings outside the id (sweep.inputs.RUN_HINT_FIELDS)
    }
    if job.params.get("class_images") is not None:
        data["class_images"] = str(store.class_images_dir(job.params["class_images"]))
    return validate(RunConfig, data, source=f"configuration {spec['config']}")


def run_train(job: Job, store: StudyStore) -> list[Path]:
    from lyco_bench.training import checkpoint_path, train

    config = run_config_for(job, store)
    _check_unchanged(job, store, dataset_key="content")
    out_dir = store.run_dir(job.params["config"], job.params["seed"])
    # The folder holds one run: training resumes in it, or extends it to more epochs, only while
    # every setting that changes a checkpoint is the same.
    _claim_dir(out_dir, owner=stable_hash(train_run_identity(job)), job=job)
    _retrain_for_missing(config, out_dir)
    train(config, out_dir)
    outputs = []
    for epoch in config.save_epochs():
        ckpt = checkpoint_path(out_dir, epoch)
        if not ckpt.is_file():
            raise RuntimeError(f"training finished without {ckpt.name}")
        outputs.append(ckpt)
        if ckpt.with_suffix(".json").is_file():
            outputs.append(ckpt.with_suffix(".json"))
    return outputs


def _retrain_for_missing(config: Any, out_dir: Path) -> None:
    """A run that lacks a save epoch before its last checkpoint (``checkpoint_every`` added after
    it trained) is retrained from the start: its checkpoints from that epoch on are removed (the
    earlier ones keep no resume state; training rebuilds the same bytes)."""
    from lyco_bench.training import checkpoint_path
    from lyco_bench.training.run import saved_checkpoints

    found = [epoch for epoch, _, why in saved_checkpoints(out_dir) if why is None]
    missing = [e for e in config.save_epochs() if e not in found and found and e < max(found)]
    for epoch in found if missing else ():
        if epoch >= missing[0]:
            for path in out_dir.glob(f"{checkpoint_path(out_dir, epoch).stem}.*"):
                path.unlink()


def _claim_dir(out_dir: Path, *, owner: str, job: Job) -> None:
    """Own ``out_dir`` under ``owner`` (a hash of what its content depends on); a folder left
    under another owner is removed — its content is stale and nothing reads it again.

    Training and generation resume from what is in their folder, which is only right when it
    was written under the same owner key.
    """
    owner_file = out_dir / "job.json"
    if owner_file.is_file():
        import json

        try:
            found = json.loads(owner_file.read_text(encoding="utf-8")).get("owner")
        except ValueError:
            found = None
        if found == owner:
            atomic_write_json(owner_file, {"owner": owner, "job_id": job.id, "spec": job.spec})
            return
    if out_dir.is_dir() and any(out_dir.iterdir()):
        shutil.rmtree(out_dir)
    atomic_write_json(owner_file, {"owner": owner, "job_id": job.id, "spec": job.spec})


def _check_unchanged(job: Job, store: StudyStore, *, dataset_key: str) -> None:
    """BadInput when the dataset or prompt set changed after planning (the job id would lie)."""
    from lyco_bench.sweep.hashing import FileHasher
    from lyco_bench.sweep.inputs import dataset_identity

    value = job.params["dataset"]
    if not generated_dataset(value):
        from lyco_bench.data import load_dataset

        hasher = FileHasher(store.cache_dir / "file-hashes.json")
        now = getattr(dataset_identity(load_dataset(value, verify_images=False), hasher), dataset_key)
        if now != job.spec["dataset"]:
            raise BadInput(f"dataset {value}: changed since the plan was made; run again to replan")
    if job.kind == "generate":
        from lyco_bench.prompts import load_prompt_set
        from lyco_bench.sweep.inputs import prompt_set_identity

        if prompt_set_identity(load_prompt_set(job.params["prompt_set"])) != job.spec["prompts"]:
            raise BadInput(
                f"prompt set {job.params['prompt_set']}: changed since the plan was made; run again"
            )


def prompt_items(job: Job, store: StudyStore) -> tuple[Any, list[Any]]:
    """The prompt set and the items to generate for a generate job."""
    from lyco_bench.data import load_dataset
    from lyco_bench.prompts import expand_prompts, load_prompt_set

    prompt_set = load_prompt_set(job.params["prompt_set"])
    dataset = load_dataset(dataset_path(job.params["dataset"], store), verify_images=False)
    items = expand_prompts(
        prompt_set,
        dataset,
        classes=job.spec["classes"],
        images_per_prompt=job.spec.get("images_per_prompt"),
        caption_strategy=job.spec.get("captions"),
    )
    budget = job.spec.get("trajectory")  # a trajectory point: the budget's subset of the same items
    if budget:
        from lyco_bench.prompts import budget_items

        items = budget_items(items, prompts_per_class=budget["prompts_per_class"],
                             images_per_prompt=budget["images_per_prompt"])  # fmt: skip
    return prompt_set, items


def checkpoint_name(config: str, seed: int, epoch: int) -> str:
    """The checkpoint's name in manifests, score rows and the results table."""
    return f"{config}-s{seed}-e{epoch:03d}"


def run_generate(job: Job, store: StudyStore) -> list[Path]:
    from lyco_bench.generation import SamplerSettings, generate
    from lyco_bench.sweep.planner import SAMPLING_CONTENT_KEYS
    from lyco_bench.training import checkpoint_path

    spec, params = job.spec, job.params
    sampler = SamplerSettings(**spec["sampler"])
    if params["target"] == "class":
        return _generate_class_images(job, store, sampler)
    _check_unchanged(job, store, dataset_key="prompts")
    prompt_set, items = prompt_items(job, store)
    if params["target"] == "base":
        out_dir, adapters, name = base_images_dir(store, params), [], "base"
    else:
        config, seed, epoch = params["config"], params["seed"], params["epoch"]
        out_dir = checkpoint_dirs(params, store)[0]
        file = checkpoint_path(store.run_dir(config, seed), epoch)
        if params.get("compress") is not None:  # its extract job's file
            file = extracted_path(store, config, seed, epoch, params["compress"])
        adapters = [(file, params.get("multiplier", 1.0), params["rank"])]
        name = checkpoint_name(params["evaluated"], seed, epoch)
    # Images depend on the weights and the sampler, not on which other prompts are generated: a
    # folder made under the same weights and sampler keeps every image whose prompt is unchanged.
    look = {k: v for k, v in spec.items() if k not in SAMPLING_CONTENT_KEYS}
    _claim_dir(out_dir, owner=stable_hash(look), job=job)
    manifest = generate(
        model=job_model_path(params, store),
        adapters=adapters,
        items=items,
        out_dir=out_dir,
        sampler=sampler,
        checkpoint_name=name,
        prompt_set=prompt_set,
        exact=True,
    )
    return [manifest, out_dir]


def _generate_class_images(job: Job, store: StudyStore, sampler: Any) -> list[Path]:
    """The base model's images of each class prompt (prior preservation), ``count`` per prompt."""
    from lyco_bench.generation import generate
    from lyco_bench.prompts import PromptItem

    items = [
        PromptItem(prompt=prompt, clip_text=prompt, prompt_class="class", category="", concept="",
                   subclass=None, prompt_index=p, image_index=i, seed=sampler.seed_base + i, group=f"class/{p}")
        for p, prompt in enumerate(job.spec["class_prompts"])
        for i in range(job.spec["images_per_prompt"])
    ]  # fmt: skip
    out_dir = store.class_images_dir(job.params["count"])
    _claim_dir(
        out_dir, owner=stable_hash({k: v for k, v in job.spec.items() if k != "class_prompts"}), job=job
    )
    manifest = generate(
        model=model_path(job.params["model"], store), items=items, out_dir=out_dir, sampler=sampler,
        checkpoint_name="base", exact=True,
    )  # fmt: skip
    return [manifest, out_dir]


def images_dir_of(job: Job, store: StudyStore) -> Path:
    p = job.params
    if p["target"] == "base":
        return base_images_dir(store, p)
    return checkpoint_dirs(p, store)[0]


def run_encode(job: Job, store: StudyStore) -> list[Path]:
    """Features of a shared image set (the dataset, the base model's images) into the shared cache.

    Only the images some requested metric reads with this encoder: the reference concepts of
    fidelity metrics (VGG: the style categories' concepts), the base images a paired metric reads.
    """
    from lyco_bench.metrics import FeatureCache
    from lyco_bench.metrics.features import EncoderPool, image_features

    settings = encoder_settings(job.params["encoders"], store)
    pool, cache = EncoderPool(settings), FeatureCache(store.cache_dir / "features")
    kind = job.params["encoder"]
    if job.params["target"] == "dataset":
        paths, modes = _dataset_paths(job, store, settings, kind)
    else:
        paths, modes = _base_paths(job, store, kind), tuple(job.spec["modes"])  # planner.base_modes
    shards: list[Path] = []
    for mode in modes if paths else ():
        image_features(pool, kind, paths, mode=mode, cache=cache, flush=False)
        shards += cache.flush()
    record = store.jobs_dir / f"{job.id}.features.json"
    atomic_write_json(record, {"encoder": pool.id(kind), "images": len(paths), "encoded": dict(pool.passes)})
    return [record, *shards]


def _dataset_paths(
    job: Job, store: StudyStore, settings: Any, kind: str
) -> tuple[list[Path], tuple[str, ...]]:
    from lyco_bench.data import load_dataset
    from lyco_bench.metrics import METRICS
    from lyco_bench.metrics.encoders import ENCODERS

    dataset = load_dataset(dataset_path(job.params["dataset"], store), verify_images=False)
    concepts = dataset.concepts
    # Only style concepts when every metric comparing the dataset through this encoder scores
    # style categories only (VGG's: the style loss against the dataset).
    readers = [m for m in METRICS.values() if "reference" in m.needs and kind in m.encoders]
    if readers and all(m.categories == "style" for m in readers):
        styles = job.spec["scoring"]["style_categories"]
        concepts = [c for c in concepts if c.category in styles]
    modes = ("native",) if ENCODERS[kind].native else tuple(settings.modes)
    return sorted({Path(item.path) for c in concepts for item in c.images}), modes


def _base_paths(job: Job, store: StudyStore, kind: str) -> list[Path]:
    """Base-model images a metric that pairs with the base model reads with encoder ``kind``."""
    from lyco_bench.metrics import METRICS, metric_encoders
    from lyco_bench.metrics.manifest import read_manifest

    df = read_manifest(base_images_dir(store, job.params))
    from lyco_bench.metrics.features import CommonEncoderSettings

    default = CommonEncoderSettings.model_fields["image_encoders"].default
    image_encoders = tuple(job.params["encoders"].get("image_encoders", default))
    classes = {
        c
        for name in job.spec["metrics"]
        if "base" in METRICS[name].needs and kind in metric_encoders(METRICS[name], image_encoders)
        for c in METRICS[name].prompt_classes
    }
    return [Path(p) for p in df.loc[df["prompt_class"].isin(sorted(classes)), "path"]]


def run_score(job: Job, store: StudyStore) -> list[Path]:
    from lyco_bench.data import load_dataset
    from lyco_bench.metrics import score

    p = job.params
    images_dir, features_dir, out = checkpoint_dirs(p, store)
    frame = score(
        images_dir=images_dir,
        dataset=load_dataset(dataset_path(p["dataset"], store), verify_images=False),
        base_images_dir=base_images_dir(store, p) if job.spec["base"] else None,
        encoders=encoder_settings(p["encoders"] | job.spec["scoring"], store),
        cache_dir=store.cache_dir / "features",
        features_dir=features_dir,
        checkpoint=checkpoint_name(p["evaluated"], p["seed"], p["epoch"]),
        metrics=job.spec["metrics"],
    )
    _check_finite_scores(frame, job)
    with atomic_path(out) as tmp:
        frame.to_parquet(tmp, index=False)
    if p["images"] != "keep":
        prune_images(
            images_dir,
            grids=p["images"] == "grids" and p["grid"],
        )
        store.mark_pruned(job.spec["images"])
    return [out, *sorted(features_dir.rglob("*.safetensors"))]


def _check_finite_scores(frame: Any, job: Job) -> None:
    """No ±inf score is written (NaN is a metric without a value, its row's reason says why)."""
    import numpy as np

    values = frame["value"].to_numpy(dtype=float) if len(frame) else np.zeros(0)
    if np.isinf(values).any():
        row = frame.iloc[int(np.flatnonzero(np.isinf(values))[0])]
        raise BadInput(f"job {job.id}: {row.get('label', row.get('metric'))}: an infinite score; not written")


def prune_images(images_dir: Path, *, grids: bool, images_per_grid: int = 8) -> int:
    """Remove a scored checkpoint's images, keeping the report's grid images when ``grids``.

    The manifest stays (it lists what was generated); returns the number of files removed.
    """
    from lyco_bench.analysis.report import grid_rows_of
    from lyco_bench.metrics.manifest import read_manifest

    manifest = read_manifest(images_dir)
    keep = set()
    if grids:
        keep = {f for _, rows in grid_rows_of(manifest, images_per_grid) for f in rows["file"]}
    removed = 0
    for file in manifest["file"]:
        if file not in keep:
            (images_dir / file).unlink(missing_ok=True)
            removed += 1
    return removed


def _run_extract(job: Job, store: StudyStore) -> list[Path]:
    from lyco_bench.sweep.compress import run_extract  # it imports the adapters: only when asked

    return run_extract(job, store)


STAGES = {
    "prepare": run_prepare,
    "train": run_train,
    "generate": run_generate,
    "encode": run_encode,
    "score": run_score,
    "extract": _run_extract,
}


def run_stage(job: Job, store: StudyStore) -> list[Path]:
    """Run ``job`` and return its outputs (files and folders under the study store)."""
    return STAGES[job.kind](job, store)
