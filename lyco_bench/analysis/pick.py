"""``lyco-bench pick RUN_DIR``: which checkpoint of one training run to keep (docs/protocol.md §7.6).

The run folder is what ``lyco-bench train`` writes (``ckpt-eNNN.safetensors`` + its run record);
no study is needed. Every intact checkpoint generates a small fixed subset of the prompts (the
trajectory budget: :func:`lyco_bench.prompts.budget_items`) with the run's own base model, the
base model generates the subset's paired prompt classes once, everything is scored, and the
best-checkpoint rule (:mod:`lyco_bench.analysis.trajectory`) names the checkpoint to keep.

Output folder (default ``RUN_DIR/pick``): ``images/{base,eNNN}/``, ``scores/eNNN.parquet`` (+ the
key it was computed under), ``cache/features/``, ``pick.csv`` (the curves, one row per criterion
and epoch) and ``pick.json`` (the pick and its evidence). Rerunning resumes: images and scores made
under the same key (checkpoint content, model, prompts, sampler, encoders, metrics) are kept, and a
folder made under another key is emptied first.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from lyco_bench.analysis.trajectory import (
    BestCheckpointRule,
    picks_table,
    trajectory_table,
    write_csv,
)
from lyco_bench.analysis.uncertainty import BootstrapSettings
from lyco_bench.errors import BadInput
from lyco_bench.utils import atomic_write_json, stable_hash

PICK_VERSION = 1
"""Bumped when what a pick computes for the same inputs changes (every cached score is redone)."""
DEFAULT_CLASSES = ("trigger", "alter", "agnostic")


@dataclass
class PickOptions:
    """What ``pick`` generates and scores (flags of ``lyco-bench pick``)."""

    prompt_set: str = "default"
    classes: tuple[str, ...] = DEFAULT_CLASSES
    prompts_per_class: int = 2
    images_per_prompt: int = 2
    sampler: dict[str, Any] = field(default_factory=dict)  # SamplerSettings fields
    encoders: dict[str, Any] = field(default_factory=dict)  # EncoderSettings fields
    rule: BestCheckpointRule = field(default_factory=BestCheckpointRule)
    bootstrap: BootstrapSettings = field(default_factory=BootstrapSettings)
    model: str | None = None  # None: the run record's
    dataset: str | None = None
    device: str | None = None


@dataclass
class PickResult:
    table: pd.DataFrame  # trajectory rows (pick.csv)
    pick: dict[str, Any]  # pick.json
    checkpoints: dict[int, Path]
    out_dir: Path


def discover(run_dir: Path) -> list[tuple[int, dict[str, Any]]]:
    """(epoch, run record) of every checkpoint of ``run_dir``; BadInput for a folder without any or
    with a damaged one (named)."""
    from lyco_bench.training.run import saved_checkpoints

    if not run_dir.is_dir():
        raise BadInput(f"RUN_DIR {run_dir}: not a folder")
    found = []
    for epoch, record, why in saved_checkpoints(run_dir):
        if why:
            raise BadInput(f"RUN_DIR {run_dir}: {why}")
        found.append((epoch, record))
    if not found:
        raise BadInput(f"RUN_DIR {run_dir}: no checkpoints (ckpt-eNNN.safetensors with its .json run record)")
    configs = {
        stable_hash({k: v for k, v in r["config"].items() if k != "checkpoint_epochs"}) for _, r in found
    }
    if len(configs) > 1:
        raise BadInput(f"RUN_DIR {run_dir}: checkpoints of different runs (their records' configs differ)")
    return found


@dataclass
class _Plan:
    """Everything resolved before anything is written."""

    model: str
    dataset: Any
    prompt_set: Any
    items: list[Any]
    base_items: list[Any]
    sampler: Any
    encoders: Any
    metrics: list[str]
    key: dict[str, Any]
    device: str


def _resolve(run_dir: Path, found: list[tuple[int, dict[str, Any]]], options: PickOptions) -> _Plan:
    from lyco_bench.data import load_dataset
    from lyco_bench.generation import SamplerSettings
    from lyco_bench.metrics import METRICS, EncoderSettings
    from lyco_bench.prompts import budget_items, expand_prompts, load_prompt_set

    config = found[-1][1]["config"]
    model = options.model or str(config["model"])
    if not options.model and _looks_local(model) and not Path(model).exists():
        raise BadInput(f"RUN_DIR {run_dir}: the run's model {model} is not there; pass --model")
    dataset_root = options.dataset or str(config["dataset"])
    if not Path(dataset_root).is_dir():
        raise BadInput(f"--dataset {dataset_root}: not a folder (the run's dataset; pass --dataset)")
    dataset = load_dataset(dataset_root, categories=config.get("categories"), verify_images=False)
    prompt_set = load_prompt_set(options.prompt_set)
    caption = config.get("captions", {}).get("strategy")
    items = expand_prompts(prompt_set, dataset, list(options.classes), caption_strategy=caption)
    items = budget_items(items, prompts_per_class=options.prompts_per_class,
                         images_per_prompt=options.images_per_prompt)  # fmt: skip
    for criterion, metric in options.rule.metrics().items():
        if metric not in METRICS:
            raise BadInput(f"--{criterion} {metric!r}: not a registered metric ({', '.join(METRICS)})")
    metrics = list(dict.fromkeys(options.rule.metrics().values()))
    paired = {c for m in metrics if "base" in METRICS[m].needs for c in METRICS[m].prompt_classes}
    base_items = [i for i in items if i.prompt_class in paired]
    resolution = int(config.get("resolution", 512))
    device = options.device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        sampler = SamplerSettings(**{"width": resolution, "height": resolution, **options.sampler}).resolved(
            device
        )
    except ValueError as exc:
        raise BadInput(f"--sampler {_first_error(exc)}") from None
    try:
        encoders = EncoderSettings(
            **{**({"device": options.device} if options.device else {}), **options.encoders}
        )
    except ValueError as exc:
        raise BadInput(f"--encoder {_first_error(exc)}") from None
    key = {
        "version": PICK_VERSION, "model": model, "prompt_set": [prompt_set.name, prompt_set.version],
        "sampler": sampler.model_dump(mode="json"),
    }  # fmt: skip
    return _Plan(model, dataset, prompt_set, items, base_items, sampler, encoders, metrics, key, device)


def _first_error(exc: Exception) -> str:
    errors = getattr(exc, "errors", None)
    if callable(errors):
        first = errors()[0]
        return f"{'.'.join(map(str, first.get('loc', ())))}: {first.get('msg', '')}"
    return str(exc)


def _looks_local(model: str) -> bool:
    return model.startswith(("/", ".", "~")) or model.endswith(".safetensors") or model.count("/") != 1


def pick_run(
    run_dir: str | Path, out_dir: str | Path | None = None, options: PickOptions | None = None
) -> PickResult:
    """Score every checkpoint of ``run_dir`` on the trajectory budget and apply the rule."""
    from lyco_bench.utils import check_output_dir

    run_dir = Path(run_dir)
    options = options or PickOptions()
    found = discover(run_dir)
    plan = _resolve(run_dir, found, options)
    out = Path(out_dir) if out_dir is not None else run_dir / "pick"
    check_output_dir(out, what=f"--out {out}", need_bytes=16 * 2**20)
    name = run_dir.resolve().name
    runs, score_files, checkpoints = [], [], {}
    pipeline = None
    base_dir = None
    if plan.base_items:
        base_key = {**plan.key, "checkpoint": "base", "items": [i.relpath for i in plan.base_items]}
        base_dir, pipeline = _generate(
            plan, out / "images" / "base", [], plan.base_items, base_key, "base", None
        )
    for epoch, record in found:
        ckpt = run_dir / f"ckpt-e{epoch:03d}.safetensors"
        checkpoints[epoch] = ckpt
        ckpt_name = f"{name}-e{epoch:03d}"
        key = {**plan.key, "checkpoint": record["file_sha256"], "items": [i.relpath for i in plan.items]}
        images, pipeline = _generate(plan, out / "images" / f"e{epoch:03d}", [(ckpt, 1.0)], plan.items, key,
                                     ckpt_name, pipeline)  # fmt: skip
        score_key = {**key, "base": base_dir is not None, "encoders": plan.encoders.model_dump(mode="json"),
                     "metrics": plan.metrics}  # fmt: skip
        score_files.append(_score(plan, images, base_dir, out, epoch, ckpt_name, score_key))
        runs.append(_run_row(ckpt_name, name, record))
    return _conclude(plan, out, run_dir, options, score_files, runs, checkpoints)


def _generate(plan: _Plan, folder: Path, adapters: list, items: list, key: dict, name: str, pipeline: Any):
    """Images of ``items`` in ``folder`` (kept when made under ``key``), and the pipeline, loaded
    once (in the sampler's precision) by the first call that has images to make."""
    from lyco_bench.generation import DTYPES, generate
    from lyco_bench.models import load_pipeline

    _own(folder, key)
    if pipeline is None and any(not (folder / item.relpath).is_file() for item in items):
        pipeline = load_pipeline(plan.model, device=plan.device, dtype=DTYPES[plan.sampler.dtype])
    generate(model=plan.model, adapters=adapters, items=items, out_dir=folder, sampler=plan.sampler,
             device=plan.device, checkpoint_name=name, prompt_set=plan.prompt_set, pipeline=pipeline,
             exact=True)  # fmt: skip
    return folder, pipeline


def _own(folder: Path, key: dict) -> None:
    """``folder`` holds what ``key`` made, or is emptied (its content would be stale)."""
    owner = folder / "key.json"
    digest = stable_hash(key, length=16)
    try:
        found = json.loads(owner.read_text(encoding="utf-8")).get("key")
    except (OSError, ValueError, AttributeError):
        found = None
    if found != digest:
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_json(owner, {"key": digest})


def _score(plan: _Plan, images: Path, base: Path | None, out: Path, epoch: int, name: str, key: dict) -> Path:
    from lyco_bench.metrics import score
    from lyco_bench.utils import atomic_path

    path = out / "scores" / f"e{epoch:03d}.parquet"
    digest = stable_hash(key, length=16)
    stamp = path.with_suffix(".key")
    if path.is_file() and stamp.is_file() and stamp.read_text(encoding="utf-8").strip() == digest:
        return path
    frame = score(images_dir=images, dataset=plan.dataset, base_images_dir=base, encoders=plan.encoders,
                  cache_dir=out / "cache" / "features", checkpoint=name, metrics=plan.metrics)  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        frame.to_parquet(tmp, index=False)
    stamp.write_text(digest + "\n", encoding="utf-8")
    return path


def _run_row(checkpoint: str, config: str, record: dict[str, Any]) -> dict[str, Any]:
    from lyco_bench.adapters import AdapterSpec

    spec = AdapterSpec(**record["config"]["adapter"])
    return {
        "checkpoint": checkpoint, "config": config, "algo": spec.label(), "preset": spec.preset,
        "lr": float(record["config"]["lr"]), "seed": int(record["seed"]), "epoch": int(record["epoch"]),
        "trainable_params": int(record["trainable_params"]), "file_bytes": int(record["file_bytes"]),
    }  # fmt: skip


def _conclude(plan, out, run_dir, options, score_files, runs, checkpoints) -> PickResult:
    from lyco_bench.analysis import collect_results

    results = collect_results(score_files, pd.DataFrame(runs))
    table = trajectory_table(results, rule=options.rule, bootstrap=options.bootstrap)
    picks = picks_table(table, options.rule)
    row = picks.iloc[0].to_dict() if len(picks) else {}
    best = row.get("best_epoch")
    pick = {
        "run": str(run_dir),
        "checkpoint": str(checkpoints[int(best)]) if best is not None else None,
        "best_epoch": int(best) if best is not None else None,
        "tied_epochs": [int(e) for e in str(row.get("tied_epochs", "")).split(";") if e],
        "max_epochs": [int(e) for e in str(row.get("max_epochs", "")).split(";") if e],
        "fallback": bool(row.get("fallback", False)),
        "overfitting": None if row.get("overfitting", "") == "" else bool(row["overfitting"]),
        "evidence": row.get("best_evidence", "no fidelity metric scored"),
        "overfitting_evidence": row.get("overfitting_evidence", ""),
        "epochs": sorted(checkpoints),
        "images": {"checkpoint": len(plan.items), "base": len(plan.base_items)},
        "rule": options.rule.model_dump(mode="json"),
        "budget": {"prompt_set": plan.prompt_set.name, "classes": list(options.classes),
                   "prompts_per_class": options.prompts_per_class, "images_per_prompt": options.images_per_prompt},
    }  # fmt: skip
    write_csv(table, out / "pick.csv")
    atomic_write_json(out / "pick.json", pick)
    return PickResult(table=table, pick=pick, checkpoints=checkpoints, out_dir=out)
