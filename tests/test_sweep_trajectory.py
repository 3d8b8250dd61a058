"""Checkpoint trajectories in a study: job identities (a study without them keeps its ids), the
trajectory jobs and their budget, their costs, bad settings, and a micro study run end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml

from lyco_bench.cli import main
from lyco_bench.errors import BadInput
from lyco_bench.sweep.axes import evaluations as evaluations_of
from lyco_bench.sweep.planner import build_plan
from lyco_bench.sweep.store import StudyStore
from lyco_bench.sweep.study import load_study
from tests.helpers import micro_study

TOUR = Path(__file__).resolve().parents[1] / "experiments" / "tour.yaml"
DENSE = ["checkpoint_every=1", "trajectory={prompts_per_class: 1, images_per_prompt: 1}"]


def _plan(tmp_path, overrides=()):
    study = load_study(TOUR, list(overrides))
    return build_plan(study, StudyStore.open(tmp_path, study.name))


def test_trajectory_adds_jobs_and_keeps_every_other_id(tmp_path):
    plain = _plan(tmp_path / "a", ["checkpoint_epochs=[2]"])
    dense = _plan(tmp_path / "b", ["checkpoint_epochs=[2]", *DENSE])
    # a study without a trajectory: no spec names one (its ids are those it had before)
    assert not any(k in json.dumps(j.spec) for j in plain.jobs for k in ("trajectory", "checkpoint_every"))
    ids = {j.id for j in dense.jobs}
    kept = [j for j in plain.jobs if j.kind != "train"]
    assert all(j.id in ids for j in kept)  # shared work and the full evaluation at epoch 2: same ids
    # training saves more epochs: a new train id (the spec says so), same checkpoint identities
    trains = {j.name: j for j in dense.of_kind("train")}
    for job in plain.of_kind("train"):
        assert trains[job.name].id != job.id and trains[job.name].spec["checkpoint_every"] == 1
        assert {k: v for k, v in trains[job.name].spec.items() if k != "checkpoint_every"} == job.spec
    # one trajectory point per (evaluation, seed, epoch 1..2): a generate and a score job each
    points = [j for j in dense.jobs if j.params.get("trajectory")]
    evaluations = [
        (name, s)
        for c in dense.study.configs
        for name, _ in evaluations_of(dense.study.study, c)
        for s in dense.study.study.seeds
    ]
    assert len(points) == 2 * 2 * len(evaluations)
    assert {j.name for j in points if j.kind == "score"} == {
        f"traj-{name}-s{seed}-e{epoch:03d}" for name, seed in evaluations for epoch in (1, 2)
    }
    gen = next(j for j in points if j.kind == "generate")
    assert gen.spec["classes"] == ["trigger", "alter", "agnostic"]
    assert gen.spec["trajectory"] == {"prompts_per_class": 1, "images_per_prompt": 1, "version": 1}
    score = next(j for j in points if j.kind == "score")
    assert score.spec["metrics"] == ["image_similarity", "text_similarity", "vendi", "intrusion"]
    assert not score.params["grid"]
    # the costs count the budget's images: per concept one trigger and one alter image, plus one
    # per agnostic prompt block (the set-wide one and each category's first prompt)
    from lyco_bench.sweep.costs import job_costs, load_hardware

    costs = job_costs(dense, load_hardware("h100"))
    full = next(
        j
        for j in dense.of_kind("generate")
        if j.params.get("target") == "checkpoint" and not j.params.get("trajectory")
    )
    inputs = dense.inputs
    concepts = inputs.trajectory_images_per_class["trigger"]
    assert inputs.trajectory_images_per_class["alter"] == concepts
    assert costs[gen.id][1] == sum(inputs.trajectory_images_per_class.values()) < costs[full.id][1]


def test_trajectory_epochs_without_checkpoint_every(tmp_path):
    plan = _plan(tmp_path, ["checkpoint_epochs=[1,2]", "trajectory={classes: [alter]}"])
    points = [j for j in plan.of_kind("generate") if j.params.get("trajectory")]
    assert sorted({j.params["epoch"] for j in points}) == [1, 2]
    assert all(j.spec["classes"] == ["alter"] for j in points)
    assert not any("checkpoint_every" in j.spec for j in plan.of_kind("train"))


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ("trajectory={classes: [nope]}", "trajectory.classes"),
        ("trajectory={prompts_per_class: 0}", "trajectory.prompts_per_class"),
        ("checkpoint_every=0", "checkpoint_every"),
        ("analysis.best_checkpoint={tolerance: {speed: 1}}", "analysis.best_checkpoint.tolerance"),
    ],
)
def test_bad_trajectory_settings(override, named):
    with pytest.raises(BadInput, match=named.replace(".", r"\.")):
        load_study(TOUR, [override])


@pytest.mark.e2e
def test_micro_study_with_a_trajectory(tmp_path, tiny_model_dir, demo_dataset_dir, tiny_encoders):
    encoders = {k: v for k, v in tiny_encoders.items() if k not in ("device", "batch_size")}
    path = micro_study(tmp_path, model=str(tiny_model_dir), dataset=str(demo_dataset_dir), encoders=encoders)
    study = yaml.safe_load(path.read_text())
    study.update(checkpoint_epochs=[3], checkpoint_every=1, trajectory={"prompts_per_class": 1})
    study["prompts"]["classes"] = ["trigger", "alter", "agnostic"]
    study["metrics"] = ["image_similarity", "text_similarity", "vendi", "intrusion"]
    study["analysis"] = {"bootstrap_resamples": 200}
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    store, reports = tmp_path / "store", tmp_path / "reports"
    assert main(["run", str(path), "--store", str(store), "--reports", str(reports), "--no-plots"]) == 0
    run = store / "micro" / "runs" / "lora2" / "1"
    assert sorted(p.name for p in run.glob("ckpt-e???.safetensors")) == [
        f"ckpt-e00{e}.safetensors" for e in (1, 2, 3)
    ]
    # the leaderboard reads only the full evaluation (epoch 3); the trajectory has epochs 1-3
    results = pd.read_parquet(store / "micro" / "results.parquet")
    assert set(results.loc[results["algo"] != "base", "epoch"]) == {3}
    points = pd.read_parquet(store / "micro" / "trajectory.parquet")
    assert set(points["epoch"]) == {1, 2, 3}
    board = pd.read_csv(reports / "micro" / "leaderboard.csv", keep_default_na=False)
    best = pd.read_csv(reports / "micro" / "analysis" / "best_checkpoint.csv")
    assert list(best["config"]) == ["lora2"]
    tuned = board[board["config"] == "lora2"]
    assert set(tuned["best_epoch"].astype(int)) == {int(best["best_epoch"].iloc[0])}
    assert set(tuned["overfitting"].astype(str)) == {str(best["overfitting"].iloc[0])}
    assert (board.loc[board["config"] == "base", "best_epoch"] == "").all()
    curves = pd.read_csv(reports / "micro" / "analysis" / "trajectory.csv")
    assert set(curves["epoch"]) == {1, 2, 3} and "fidelity" in set(curves["criterion"])
    html = (reports / "micro" / "index.html").read_text()
    assert 'id="best-checkpoint"' in html and "analysis/best_checkpoint.csv" in html


def test_checkpoint_every_added_after_training_retrains_the_run(tmp_path):
    """Epochs 10 and 30 on disk, every 5 asked: the run cannot resume from epoch 10 (its resume
    state is gone), so the checkpoints from the first missing epoch (5: all) are removed and the
    run trains again from the start (training rebuilds the same bytes)."""
    from lyco_bench.sweep.stages import _retrain_for_missing
    from lyco_bench.training import RunConfig
    from lyco_bench.utils import sha256_file

    def write(run, epoch, state=False):
        ckpt = run / f"ckpt-e{epoch:03d}.safetensors"
        ckpt.write_bytes(b"weights %d" % epoch)
        record = {"config": {}, "file_bytes": ckpt.stat().st_size, "file_sha256": sha256_file(ckpt)}
        (run / f"ckpt-e{epoch:03d}.json").write_text(json.dumps(record))
        if state:
            (run / f"ckpt-e{epoch:03d}.state.safetensors").write_bytes(b"state")

    run = tmp_path / "run"
    run.mkdir()
    write(run, 10)
    write(run, 30, state=True)
    config = RunConfig(model="m", dataset="d", epochs=30, checkpoint_epochs=[10, 30], checkpoint_every=5)
    _retrain_for_missing(config, run)
    assert sorted(p.name for p in run.iterdir()) == []
    # every save epoch there, or only later ones missing (an unfinished run resumes): nothing removed
    for epoch in (5, 10):
        write(run, epoch)
    _retrain_for_missing(config, run)
    assert sorted(p.name for p in run.glob("*.safetensors")) == [
        "ckpt-e005.safetensors",
        "ckpt-e010.safetensors",
    ]
    # epoch 15 missing before 20: from 15 on
    write(run, 20, state=True)
    _retrain_for_missing(config, run)
    assert sorted(p.name for p in run.glob("*.safetensors")) == [
        "ckpt-e005.safetensors",
        "ckpt-e010.safetensors",
    ]
