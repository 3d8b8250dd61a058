"""Paths in a study resolve against the current directory at load and travel absolute; writing them
another way (relative or absolute) changes no job id, so finished jobs stay done."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from lyco_bench.errors import BadInput
from lyco_bench.sweep.planner import build_plan
from lyco_bench.sweep.store import StudyStore
from lyco_bench.sweep.study import load_study
from tests.helpers import micro_study

pytestmark = pytest.mark.e2e  # whole studies / subprocess runs: `make test-fast` skips them


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_model_dir, demo_dataset_dir):
    """A folder holding a model, a dataset, encoders and a prompt set, side by side."""
    from lyco_bench.metrics.tiny import make_tiny_encoders

    folder = tmp_path_factory.mktemp("paths")
    (folder / "model").symlink_to(tiny_model_dir, target_is_directory=True)
    (folder / "data").symlink_to(demo_dataset_dir, target_is_directory=True)
    encoders = make_tiny_encoders(folder / "encoders", seed=0)
    return folder, encoders


def _relative(encoders: dict, folder: Path) -> dict:
    return {k: os.path.relpath(v, folder) if isinstance(v, str) and Path(v).exists() else v
            for k, v in encoders.items()}  # fmt: skip


def test_relative_paths_resolve_against_the_cwd_and_keep_job_ids(world, tmp_path, monkeypatch):
    folder, encoders = world
    (tmp_path / "abs").mkdir()
    absolute = micro_study(tmp_path / "abs", model=str(folder / "model"), dataset=str(folder / "data"),
                           encoders=encoders)  # fmt: skip
    rel_dir = tmp_path / "rel"
    rel_dir.mkdir()
    relative = micro_study(rel_dir, model="model", dataset="./data", encoders=_relative(encoders, folder))
    data = yaml.safe_load(relative.read_text())
    data["prompts"]["set"] = os.path.relpath(data["prompts"]["set"], folder)
    relative.write_text(yaml.safe_dump(data, sort_keys=False))

    monkeypatch.chdir(folder)
    study = load_study(relative)
    s = study.study
    assert s.model == str(folder / "model") and s.dataset == str(folder / "data")
    assert s.encoders["dino"] == encoders["dino"] and Path(s.prompts.set).is_absolute()
    assert s.encoders["modes"] == ["resize"]  # not a path: untouched
    rel_plan = build_plan(study, StudyStore.open(tmp_path / "store", "micro"))
    monkeypatch.chdir(tmp_path)
    abs_plan = build_plan(load_study(absolute), StudyStore.open(tmp_path / "store", "micro"))
    assert [j.id for j in rel_plan.jobs] == [j.id for j in abs_plan.jobs]  # finished jobs stay done
    for job in rel_plan.jobs:  # what travels to workers: absolute
        assert job.params["dataset"] == str(folder / "data") and job.params["model"] == str(folder / "model")
    # The same relative study read from another directory names other (here: missing) folders.
    with pytest.raises(BadInput, match="model"):
        build_plan(load_study(relative), StudyStore.open(tmp_path / "store", "micro"))


def test_names_and_hub_ids_stay_as_written(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    study = {
        "name": "hub", "model": "stable-diffusion-v1-5/stable-diffusion-v1-5", "dataset": "demo:",
        "prompts": {"set": "lyco-v1"}, "encoders": {"dino": "facebook/dinov2-large", "clip": "ViT-L-14",
        "clip_pretrained": "datacomp_xl_s13b_b90k", "vgg": "IMAGENET1K_V1"}, "seeds": [1],
        "checkpoint_epochs": [1], "algorithms": {"lora": {"default": "lora"}},
    }  # fmt: skip
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(study))
    s = load_study(tmp_path / "s.yaml").study
    assert (s.model, s.dataset, s.prompts.set) == (study["model"], "demo:", "lyco-v1")
    assert s.encoders == study["encoders"]
    # A prompt set found in ./prompts/ (which shadows a packaged one) travels as its absolute path.
    (tmp_path / "prompts").mkdir()
    packaged = Path(__file__).resolve().parents[1] / "lyco_bench" / "prompt_sets" / "lyco-v1.yaml"
    (tmp_path / "prompts" / "lyco-v1.yaml").write_text(packaged.read_text())
    assert load_study(tmp_path / "s.yaml").study.prompts.set == str(tmp_path / "prompts" / "lyco-v1.yaml")
