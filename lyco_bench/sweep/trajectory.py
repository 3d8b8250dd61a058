"""Checkpoint trajectories in a study: which epochs, which prompts, where their files go.

A study with ``checkpoint_every`` (and/or a ``trajectory`` budget) saves a cheap checkpoint every N
epochs; each trajectory epoch — those and the ``checkpoint_epochs`` — gets a ``generate-traj-…``
job making only the budget's images (:func:`lyco_bench.prompts.budget_items`: the first prompts and
seeds of each unit, so they are the same images as the full evaluation's) and a ``score-traj-…`` job
scoring them with the best-checkpoint rule's metrics. Their scores are collected into
``<store>/<study>/trajectory.parquet``, never into the results table the leaderboard reads.
A study without either setting has no trajectory jobs and keeps every job id it had.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lyco_bench.sweep.study import LoadedStudy

TRAJECTORY_VERSION = 1
"""Bumped when what a trajectory job makes for the same inputs changes."""
DEFAULT_BUDGET = {"prompts_per_class": 2, "images_per_prompt": 2, "classes": ["trigger", "alter", "agnostic"]}


def has_trajectory(study: LoadedStudy) -> bool:
    s = study.study
    return s.checkpoint_every is not None or s.trajectory is not None


def trajectory_epochs(study: LoadedStudy) -> list[int]:
    """Every ``checkpoint_every``-th epoch up to the last checkpoint epoch, and the checkpoint
    epochs; empty when the study has no trajectory."""
    s = study.study
    if not has_trajectory(study):
        return []
    last, every = max(s.checkpoint_epochs), s.checkpoint_every
    dense = range(every, last + 1, every) if every else ()
    return sorted({*dense, *s.checkpoint_epochs})


def budget_spec(study: LoadedStudy, metrics: list[str]) -> dict[str, Any] | None:
    """What a trajectory job's identity holds of its budget: sizes, prompt classes (the budget's
    among the study's) and the metrics it is scored with (the rule's among the study's)."""
    if not has_trajectory(study):
        return None
    s = study.study
    budget = s.trajectory.model_dump() if s.trajectory is not None else dict(DEFAULT_BUDGET)
    classes = [c for c in budget["classes"] if s.prompts.classes is None or c in s.prompts.classes]
    rule = s.analysis.rule()
    wanted = [m for m in dict.fromkeys(rule.metrics().values()) if m in metrics]
    return {
        "prompts_per_class": budget["prompts_per_class"],
        "images_per_prompt": budget["images_per_prompt"],
        "classes": classes,
        "metrics": wanted,
        "version": TRAJECTORY_VERSION,
    }


def checkpoint_dirs(params: dict[str, Any], store: Any) -> tuple[Path, Path, Path]:
    """(images, features, score file) of a checkpoint job's params: ``e010`` for the full
    evaluation, ``t010`` for a trajectory point."""
    name, seed, epoch = params["evaluated"], params["seed"], params["epoch"]
    if not params.get("trajectory"):
        return (
            store.images_dir(name, seed, epoch),
            store.features_dir(name, seed, epoch),
            store.scores_path(name, seed, epoch),
        )
    tag = f"t{epoch:03d}"
    return (
        store.root / "images" / name / str(seed) / tag,
        store.root / "features" / name / str(seed) / tag,
        store.root / "scores" / name / str(seed) / f"{tag}.parquet",
    )
