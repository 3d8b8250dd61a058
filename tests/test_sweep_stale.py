"""Results are never stale: a finished job is reused only while every input it read is unchanged.

One micro study (a tiny LoRA, one epoch, <trigger> and <style> prompts) is run, then its inputs are
edited one at a time; each edit must make exactly the jobs that read it stale, `plan` must say
why, and `run` must rerun those jobs and no others.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml

from lyco_bench.cli import main
from lyco_bench.sweep.cli import load_plan
from lyco_bench.sweep.stale import stale_reasons
from lyco_bench.sweep.store import StudyStore
from tests.helpers import micro_study

pytestmark = pytest.mark.e2e  # whole studies / subprocess runs: `make test-fast` skips them


@pytest.fixture(scope="module")
def study(tmp_path_factory, tiny_model_dir, demo_dataset_dir):
    from lyco_bench.metrics.tiny import make_tiny_encoders

    folder = tmp_path_factory.mktemp("stale")
    dataset = Path(shutil.copytree(demo_dataset_dir, folder / "data"))
    encoders = make_tiny_encoders(folder / "encoders", seed=0)
    path = micro_study(folder, model=str(tiny_model_dir), dataset=str(dataset), encoders=encoders)
    spec = yaml.safe_load(path.read_text())
    spec["algorithms"]["lora"] = {"default": "lora-defaults"}  # dim, α and lr left to the trainer
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    store = folder / "store"
    assert _run(path, store) == 0
    return {"folder": folder, "study": path, "store": store, "dataset": dataset}


def _run(study: Path, store: Path, *overrides: str) -> int:
    return main(["run", str(study), *overrides, "--store", str(store), "--no-analysis"])


def _done_since(store: Path, mark: int) -> list[str]:
    """(kind, name) of the jobs finished after the first ``mark`` log entries."""
    log = StudyStore(store / "micro").read_log()[mark:]
    return sorted(e["job"].rsplit("-", 1)[0] for e in log if e["event"] == "done")


def _stale(study: Path, store: Path, *overrides: str) -> dict[str, str]:
    plan = load_plan(str(study), list(overrides), str(store))
    by_id = plan.by_id()
    return {f"{by_id[i].kind}-{by_id[i].name}": r for i, r in stale_reasons(plan, plan.done_ids()).items()}


def _log_len(store: Path) -> int:
    return len(StudyStore(store / "micro").read_log())


def test_results_record_the_settings_the_trainer_used(study):
    """The study leaves dim, α and lr to the per-algorithm defaults: the table has the values used."""
    table = pd.read_parquet(study["store"] / "micro" / "results.parquet")
    assert set(table["lr"]) == {5e-4} and set(table["dim"]) == {8.0} and set(table["alpha"]) == {4.0}


def test_nothing_is_stale_after_a_run(study):
    assert _stale(study["study"], study["store"]) == {}
    mark = _log_len(study["store"])
    assert _run(study["study"], study["store"]) == 0
    assert _done_since(study["store"], mark) == []  # finished, valid jobs are never rerun


def test_template_edit_reruns_generation_and_scoring_not_training(study):
    prompts = study["folder"] / "micro-prompts.yaml"
    data = yaml.safe_load(prompts.read_text())
    data["style_templates"] = ["{} in the style of watercolor painting"]
    prompts.write_text(yaml.safe_dump(data))
    images = study["store"] / "micro" / "images" / "lora-defaults" / "1" / "e001"
    kept = {p: p.stat().st_mtime_ns for p in images.glob("trigger/**/*.png")}

    stale = _stale(study["study"], study["store"])
    assert stale == {
        "generate-base": "prompt set changed",
        "encode-base-vgg19": "images changed: prompt set changed",
        "generate-lora-defaults-s1-e001": "prompt set changed",
        "score-lora-defaults-s1-e001": "images changed: prompt set changed; base-model images changed: "
        "prompt set changed",
    }
    mark = _log_len(study["store"])
    assert _run(study["study"], study["store"]) == 0
    assert _done_since(study["store"], mark) == sorted(k for k in stale)
    # Only the <style> images were drawn again; the <trigger> ones (same prompt, seed) were kept.
    assert {p: p.stat().st_mtime_ns for p in images.glob("trigger/**/*.png")} == kept
    assert all("watercolor" in p for p in pd.read_parquet(images / "manifest.parquet").query(
        "prompt_class == 'style'")["prompt"])  # fmt: skip


def test_caption_edit_reruns_training(study):
    caption = next(study["dataset"].glob("shapes/circle/*.txt"))
    caption.write_text(caption.read_text() + ", sparkles")
    stale = _stale(study["study"], study["store"])
    assert stale["train-lora-defaults-s1"] == "dataset changed"
    assert stale["generate-lora-defaults-s1-e001"].startswith("checkpoint changed: dataset changed")
    assert "encode-dataset-dinov2" not in stale  # captions are not what the dataset's features read
    mark = _log_len(study["store"])
    assert _run(study["study"], study["store"]) == 0
    assert "train-lora-defaults-s1" in _done_since(study["store"], mark)


def test_encoder_preprocessing_version_makes_features_and_scores_stale(study, monkeypatch):
    from lyco_bench.metrics.encoders import base  # where the built-in encoders read it

    monkeypatch.setattr(base, "PREPROCESS_VERSION", base.PREPROCESS_VERSION + 1)
    stale = _stale(study["study"], study["store"])
    assert sorted(stale) == ["encode-dataset-dinov2", "score-lora-defaults-s1-e001"]
    assert stale["encode-dataset-dinov2"] == "encoder weights or preprocessing changed"
    assert stale["score-lora-defaults-s1-e001"].startswith(
        "encoder weights or preprocessing changed (clip 'clip:open_clip@"
    )
    mark = _log_len(study["store"])
    assert _run(study["study"], study["store"]) == 0
    assert _done_since(study["store"], mark) == sorted(stale)
    monkeypatch.undo()  # the store back to the real version: the tests after this one start valid
    assert _run(study["study"], study["store"]) == 0
    assert _stale(study["study"], study["store"]) == {}


def test_store_holds_images_plus_few_files_per_job(study):
    root = study["store"] / "micro"
    plan = load_plan(str(study["study"]), [], str(study["store"]))
    other = [p for p in root.rglob("*") if p.is_file() and p.suffix != ".png" and "assets" not in p.parts]
    assert len(other) <= 10 * len(plan.jobs), sorted(str(p.relative_to(root)) for p in other)


@pytest.mark.parametrize("setting", ["grids", "none"])
def test_images_removed_after_scoring_come_back_when_needed(setting, study, tmp_path):
    store = tmp_path / "store"
    sizes = ["prompts.images_per_prompt=2"]  # 12 <trigger> images: more than a grid's 8
    assert _run(study["study"], store, f"images={setting}", *sizes) == 0
    images = store / "micro" / "images" / "lora-defaults" / "1" / "e001"
    left = sorted(images.rglob("*.png"))
    manifest = pd.read_parquet(images / "manifest.parquet")
    if setting == "none":
        assert left == []
    else:  # the report's grids: the first 8 images of each prompt class of this (first seed, last epoch)
        assert len(left) == sum(min(8, n) for n in manifest["prompt_class"].value_counts()) < len(manifest)
    assert sorted((store / "micro" / "images" / "base").rglob("*.png"))  # base images are shared: kept
    # A new metric makes the score stale: the images it needs are generated again first.
    mark = _log_len(store)
    assert _run(study["study"], store, f"images={setting}", *sizes, "metrics=[image_similarity,vendi]") == 0
    assert _done_since(store, mark) == ["generate-lora-defaults-s1-e001", "score-lora-defaults-s1-e001"]


def test_reference_modes_make_exactly_their_readers_stale(study):
    """Another set of reference modes changes what the dataset's features and the scores hold; base
    images that no metric compares with the dataset (VGG Grams, paired only with the checkpoint's)
    are kept. (The micro study encodes with ``[resize]``.)"""
    assert _stale(study["study"], study["store"], "encoders.modes=[resize]") == {}
    stale = _stale(study["study"], study["store"], "encoders.modes=[resize, crop]")
    assert sorted(stale) == ["encode-dataset-dinov2", "score-lora-defaults-s1-e001"]


def test_base_encoding_identity_holds_the_modes_its_readers_need():
    from lyco_bench.sweep.planner import base_modes

    scoring = {"modes": ["resize", "crop"], "image_encoders": ["dinov2"]}
    assert base_modes(["intrusion", "drift"], "dinov2", scoring) == ["resize", "crop"]  # vs the dataset
    assert base_modes(["drift", "kid"], "dinov2", scoring) == ["resize"]  # base vs tuned only
    assert base_modes(["style_loss_base"], "vgg19", scoring) == ["native"]
