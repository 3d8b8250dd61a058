"""``lyco-bench pick RUN_DIR``: bad input in one line, a tiny run scored end to end, resuming."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from lyco_bench.cli import main
from lyco_bench.errors import BadInput
from lyco_bench.training import train
from tests.helpers import run_config


def _pick_args(run, out, tiny_encoders, *extra):
    args = ["pick", str(run), "--out", str(out), "--prompts", "demo", "--sampler", "steps=2",
            "--resamples", "200", "--device", "cpu", "--encoder", "modes=[resize]", *extra]  # fmt: skip
    for key, value in tiny_encoders.items():
        args += ["--encoder", f"{key}={'null' if value is None else value}"]
    return args


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tiny_model_dir, small_dataset, cache_dir):
    run = tmp_path_factory.mktemp("pick") / "run"
    train(run_config(tiny_model_dir, small_dataset, cache_dir, epochs=3, checkpoint_epochs=[1, 2]), run)
    return run


def _error(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


@pytest.fixture()
def fake_run(tmp_path, tiny_model_dir, demo_dataset_dir):
    """A run folder as `train` leaves it, without training: an adapter file and its run record."""
    from lyco_bench.utils import sha256_file

    run = tmp_path / "run"
    run.mkdir()
    for epoch in (1, 2):
        ckpt = run / f"ckpt-e00{epoch}.safetensors"
        ckpt.write_bytes(b"not read before the flags are checked %d" % epoch)
        config = {"model": str(tiny_model_dir), "dataset": str(demo_dataset_dir), "resolution": 64}
        record = {"config": config, "epoch": epoch, "file_bytes": ckpt.stat().st_size,
                  "file_sha256": sha256_file(ckpt)}  # fmt: skip
        (run / f"ckpt-e00{epoch}.json").write_text(json.dumps(record))
    return run


def test_bad_input_one_line(tmp_path, capsys, fake_run):
    assert "not a folder" in _error(capsys, ["pick", str(tmp_path / "nope")])
    (tmp_path / "empty").mkdir()
    assert "no checkpoints (ckpt-eNNN.safetensors" in _error(capsys, ["pick", str(tmp_path / "empty")])
    assert "must be a number ≥ 0" in _error(capsys, ["pick", str(fake_run), "--tolerance", "-1"])
    assert "is not one of" in _error(capsys, ["pick", str(fake_run), "--tolerance", "speed=1"])
    assert "--sampler steps: " in _error(capsys, ["pick", str(fake_run), "--sampler", "steps=zero"])
    assert "--encoder batch_size: " in _error(capsys, ["pick", str(fake_run), "--encoder", "batch_size=x"])
    assert "--classes 'trigger,nope'" in _error(capsys, ["pick", str(fake_run), "--classes", "trigger,nope"])
    assert "--prompts-per-class" in _error(capsys, ["pick", str(fake_run), "--prompts-per-class", "0"])
    assert "--fidelity 'nope': not a registered metric" in _error(
        capsys, ["pick", str(fake_run), "--fidelity", "nope", "--out", str(tmp_path / "o")]
    )
    assert not (tmp_path / "o").exists()  # nothing written before the input is checked
    assert "--dataset " in _error(capsys, ["pick", str(fake_run), "--dataset", str(tmp_path / "nope")])
    # a run whose model moved: named, with the flag that fixes it
    for epoch in (1, 2):
        record = json.loads((fake_run / f"ckpt-e00{epoch}.json").read_text())
        record["config"]["model"] = str(tmp_path / "gone")
        (fake_run / f"ckpt-e00{epoch}.json").write_text(json.dumps(record))  # a record's bytes are not hashed
    assert "pass --model" in _error(capsys, ["pick", str(fake_run)])
    # checkpoints of two different runs in one folder
    record["config"]["model"] = str(tmp_path)
    (fake_run / "ckpt-e002.json").write_text(json.dumps(record))
    assert "checkpoints of different runs" in _error(capsys, ["pick", str(fake_run)])
    # a damaged checkpoint is named
    with open(fake_run / "ckpt-e002.safetensors", "r+b") as f:
        f.write(b"N")
    assert "ckpt-e002.safetensors damaged (content differs" in _error(capsys, ["pick", str(fake_run)])


@pytest.mark.e2e
def test_pick_scores_every_checkpoint_and_resumes(tmp_path, capfd, tiny_run, tiny_encoders):
    out = tmp_path / "pick"
    assert main(_pick_args(tiny_run, out, tiny_encoders)) == 0
    printed = " ".join(capfd.readouterr().err.split())  # the console (stderr); rich wraps lines
    pick = json.loads((out / "pick.json").read_text())
    assert pick["epochs"] == [1, 2, 3]  # checkpoint_epochs [1, 2] + the last epoch
    assert pick["best_epoch"] in (1, 2, 3) and pick["checkpoint"].endswith(
        f"ckpt-e{pick['best_epoch']:03d}.safetensors"
    )
    assert "★ keep" in printed and "pick: keep " in printed and "pick: overfitting: " in printed
    # the demo set's budget: 2 prompts per class and unit, 2 images each; base images only for
    # the paired class (agnostic: 1 global + 2 per category, the demo run trains one category)
    manifest = pd.read_parquet(out / "images" / "e001" / "manifest.parquet")
    assert set(manifest["prompt_class"]) == {"trigger", "alter", "agnostic"}
    assert (
        manifest.groupby(["prompt_class", "category", "concept", "subclass"])["prompt_index"].max().max() <= 1
    )
    assert set(manifest["image_index"]) == {0, 1}
    base = pd.read_parquet(out / "images" / "base" / "manifest.parquet")
    assert set(base["prompt_class"]) == {"agnostic"}
    assert len(base) == len(manifest[manifest["prompt_class"] == "agnostic"])
    # the curves: four criteria × three epochs, the first epoch's paired difference 0
    table = pd.read_csv(out / "pick.csv")
    assert sorted(table["criterion"].unique()) == ["controllability", "diversity", "fidelity", "leakage"]
    assert len(table) == 4 * 3
    assert (table.loc[table["epoch"] == 1, "delta_first"] == 0).all()
    # resuming: nothing regenerated or rescored, the same files
    stamps = {p: p.stat().st_mtime_ns for p in [*out.rglob("*.png"), *(out / "scores").glob("*.parquet")]}
    before = (out / "pick.csv").read_bytes(), (out / "pick.json").read_bytes()
    assert main(_pick_args(tiny_run, out, tiny_encoders)) == 0
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    assert ((out / "pick.csv").read_bytes(), (out / "pick.json").read_bytes()) == before
    # another sampler: the images and scores are made again, under the new key
    assert main(_pick_args(tiny_run, out, tiny_encoders, "--sampler", "cfg=3.0")) == 0
    png = next(p for p in stamps if p.suffix == ".png")
    assert png.stat().st_mtime_ns != stamps[png]


def test_budget_items_take_the_first_prompts_and_seeds(demo_dataset_dir):
    from lyco_bench.data import load_dataset
    from lyco_bench.prompts import budget_items, expand_prompts, load_prompt_set

    ps, ds = load_prompt_set("demo"), load_dataset(demo_dataset_dir)
    full = expand_prompts(ps, ds, ["train", "trigger", "alter", "agnostic"], images_per_prompt=3)
    subset = budget_items(full, prompts_per_class=1, images_per_prompt=2)
    assert [i for i in full if i in subset] == subset  # a subset, in order
    by_unit = {}
    for item in subset:
        unit = (item.prompt_class, item.category, item.concept, item.subclass)
        by_unit.setdefault(unit, []).append((item.prompt_index, item.seed))
    for (prompt_class, *_), images in by_unit.items():
        if prompt_class == "train":  # the first 1 × 2 images: captions 0 and 1 mod n, seeds 1000, 1001
            assert [s for _, s in images] == [1000, 1001]
        else:  # prompt 0, seeds 1000 and 1001
            assert images == [(0, 1000), (0, 1001)]
    # every unit of the full set keeps something; the agnostic tiers of a category share prompt 0
    units = {(i.prompt_class, i.category, i.concept, i.subclass) for i in full if i.prompt_index == 0}
    assert set(by_unit) == units
    with pytest.raises(BadInput, match="at least 1"):
        budget_items(full, prompts_per_class=0, images_per_prompt=1)
