"""Bad input as a table: (case, command, the one-line message it must give). Each row runs the
command through the CLI and checks exit code 2, exactly one ``error: …`` line holding the
fragment, and that nothing was written where the command writes. The next bad input found is
one more row in CASES.

Placeholders in a command: {model} {dataset} {study} {store} {adapter} {pickle} {images}
{clip_dir} {clip_pickle} {garbage} {bad_model} {dangling} {results} {results:<how>} {out} (a folder the command must not create)."""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lyco_bench.cli import main
from tests.helpers import micro_study

GEN = "generate --model {model} --dataset {dataset} --prompts demo --out {out}"
MERGE = "adapter merge --base {model} --out {out}"
PLAN = "plan {study} --store {out}"
SCORE = "score --images {images} --dataset {dataset} --out {out}/s.parquet --cache {out}/cache --metrics text_similarity"

# (case, command, fragment of the one error line)
CASES = [
    # numbers where they enter: finite, and within the float32 they are used in
    ("λ beyond float32", GEN + " --adapter {adapter}:1e39", "λ 1e39 overflows float32 (|λ| ≤ 3.4e38)"),
    ("λ -1e308 (finite as float64)", MERGE + " --adapter {adapter}:-1e308", "λ -1e308 overflows float32"),
    ("λ NaN", MERGE + " --adapter {adapter}:nan", "λ must be a finite number, not 'nan'"),
    ("--cfg inf", GEN + " --cfg inf", "generate: cfg: Input should be a finite number"),
    ("--cfg nan", GEN + " --cfg nan", "generate: cfg: Input should be a finite number"),
    ("study float beyond float32", PLAN + " training.lr=1e39", "training.lr: must be a finite number within float32"),
    ("study NaN", PLAN + " sampler.cfg=.nan", "sampler.cfg: must be a finite number within float32's range"),
    ("study inf noise offset", PLAN + " training.noise_offset=.inf", "training.noise_offset: must be a finite"),
    # overrides that mean what they say
    ("study-level lr over the blocks' own", PLAN + " training.lr=-5", "configuration lora2: lr: Input should be greater than 0"),
    ("override after the options", "run {study} --store {out} --no-analysis training.lr=-5", "configuration lora2: lr: "),
    # sizes derived from the model's layers, refused before anything is allocated or estimated
    ("rank 1e11", PLAN + " algorithms.lora.adapter.dim=100000000000", "adapter: dim 100000000000 for layer lora_unet_"),
    ("rank 1e11 in run", "run {study} --store {out} algorithms.lora.adapter.dim=100000000000", "(32×32) would allocate 25.6 TB of factors; a rank above 32 adds nothing (at most out + in·k·k = 64)"),
    ("conv rank 1e11", PLAN + " algorithms.lora.adapter.preset=full algorithms.lora.adapter.conv_dim=100000000000", "adapter: conv_dim 100000000000 for layer lora_unet_"),
    # evaluation axes (lyco_bench.sweep.axes)
    ("eval multiplier beyond float32", PLAN + " eval_multipliers=[1e39]", "eval_multipliers: 0: must be a finite number within float32"),
    ("eval model of another family", PLAN + ' eval_models=["world:"]', "is not of the study model's family (unet block_out_channels: [64, 128, 128] vs [32, 64])"),
    ("eval model missing", PLAN + " eval_models=[{out}/other]", "eval_models.other: model "),
    ("eval model is the study's", PLAN + " eval_models=[{model}]", "is the study's model (always evaluated)"),
    ("eval compress rank 0", PLAN + " eval_compress=[0]", "eval_compress: ranks must be unique and ≥ 1"),
    # pickles refused, never with advice to unpickle
    ("pickle as an adapter", MERGE + " --adapter {pickle}", "not a safetensors file"),
    ("OpenCLIP folder holding a pickle", SCORE + " --set clip={clip_dir}", "open_clip_pytorch_model.bin: refused: it holds pickled objects other than tensors"),
    ("clip_pretrained a pickle", SCORE + " --set clip=ViT-B-32 --set clip_pretrained={clip_pickle}", "clip.bin: refused: it holds pickled objects"),
    ("score: metrics with no rows", SCORE.replace("text_similarity", "composition_min"), "--metrics composition_min: no rows for "),
    # stores and results
    ("verify a folder that is no store", "verify {dataset}", "not a store (no <study>/jobs folder in it)"),
    ("results value inf", "leaderboard {results:inf} --out {out}", "row 3: value inf is not a finite number"),
    ("results epoch not a number", "leaderboard {results:epoch} --out {out}", "row 2: epoch ten is not a whole number"),
    ("results row twice", "analyze {results:duplicate} --out {out}", "row 40: a second row for checkpoint="),
    ("report of a table with inf", "report {results:inf} --out {out}", "row 3: value inf is not a finite number"),
    ("report, garbage manifest", "report {results} --out {out} --manifest a={garbage}", "garbage.bin: not a readable manifest.parquet ("),
    ("report, garbage sample size", "report {results} --out {out} --sample-size {garbage}", "garbage.bin: not a "),
    ("report, a manifest as sample size", "report {results} --out {out} --sample-size {dataset}/dataset.yaml", "dataset.yaml: not a sample_size.csv (no label column)"),
    ("report, missing figure folder", "report {results} --out {out} --figures {out}/figures", "figures: folder not found"),
    ("report, zero images per grid", "report {results} --out {out} --images-per-grid 0", "--images-per-grid 0: must be ≥ 1"),
    ("run, damaged model weights", "run {study} --store {out} --no-analysis model={bad_model}", "diffusion_pytorch_model.safetensors: damaged safetensors file ({short} bytes, its header says {full})"),
    ("dataset image a dangling symlink", "generate --model {model} --dataset {dangling} --prompts demo --out {out}", "zz-gone.png: unreadable image (a symbolic link to "),
    # flag values accepted and ignored before
    ("run, negative retries", "run {study} --store {out} --max-retries -1", "--max-retries -1: must be ≥ 0"),
    ("analyze, unknown configuration to exclude", "analyze {results} --no-plots --out {out} --exclude lora9", "--exclude lora9: matches no configuration of the results (lora2)"),
    ("analyze, unknown configuration to leave out of SHAP", "analyze {results} --no-plots --out {out} --shap-exclude 1007", "--shap-exclude 1007: matches no configuration"),
    ("analyze, zero images per prompt", "analyze {results} --no-plots --out {out} --images-per-prompt 0", "--images-per-prompt 0: must be ≥ 1"),
    ("inspect, width 0", "adapter inspect {adapter} --width 0", "--width 0: must be ≥ 1"),
    ("extract, threshold NaN", "adapter extract --base {model} --tuned {model} --rank 2 --threshold nan --out {out}/e.safetensors", "--threshold nan: must be a finite number ≥ 0"),
    ("extract, negative width", "adapter extract --base {model} --tuned {model} --rank 2 --width -3 --out {out}/e.safetensors", "--width -3: must be ≥ 1"),
    # dataset makers
    ("demo dataset, negative seed", "make-demo-dataset {out} --seed -1", "--seed -1: must be ≥ 0"),
    ("world dataset, negative seed", "make-world-dataset {out} --seed -1", "--seed -1: must be ≥ 0"),
]  # fmt: skip


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, tiny_model_dir, demo_dataset_dir) -> dict[str, Path]:
    """The good files the bad commands are built around (a micro study's finished store)."""
    from lyco_bench.metrics.tiny import make_tiny_encoders

    folder = tmp_path_factory.mktemp("bad-input-table")
    encoders = make_tiny_encoders(folder / "encoders", seed=0)
    study = micro_study(folder, model=str(tiny_model_dir), dataset=str(demo_dataset_dir), encoders=encoders)
    store = folder / "store"
    assert main(["run", str(study), "--store", str(store), "--no-analysis"]) == 0
    bad_pickle = folder / "weights.safetensors"
    bad_pickle.write_bytes(pickle.dumps({"lora_up.weight": [0.0] * 8}))
    bad_model = folder / "bad-model"  # the tiny model with its UNet weights cut short (a partial copy)
    shutil.copytree(tiny_model_dir, bad_model)
    weights = bad_model / "unet" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    dangling = folder / "dangling-dataset"  # the demo dataset with one image a broken symlink
    shutil.copytree(demo_dataset_dir, dangling)
    leaf = next(p.parent for p in sorted(dangling.rglob("*.png")))
    (leaf / "zz-gone.png").symlink_to(folder / "nowhere.png")
    garbage = folder / "garbage.bin"  # bytes no reader accepts (not UTF-8, no parquet magic)
    garbage.write_bytes(bytes(range(256)) * 4)
    results = store / "micro" / "results.parquet"
    import pathlib

    import torch

    clip_pickle = folder / "clip.bin"  # a pickled object torch.load(weights_only=True) refuses
    torch.save({"visual.proj": pathlib.PurePosixPath("/x")}, clip_pickle)
    clip_dir = folder / "open_clip"
    clip_dir.mkdir()
    (clip_dir / "open_clip_config.json").write_bytes(
        (Path(encoders["clip"]) / "open_clip_config.json").read_bytes()
    )
    (clip_dir / "open_clip_pytorch_model.bin").write_bytes(clip_pickle.read_bytes())
    return {
        "model": tiny_model_dir, "dataset": demo_dataset_dir, "study": study, "store": store,
        "adapter": store / "micro" / "runs" / "lora2" / "1" / "ckpt-e001.safetensors",
        "pickle": bad_pickle, "results": results, "folder": folder, "clip_pickle": clip_pickle,
        "clip_dir": clip_dir, "garbage": garbage, "bad_model": bad_model, "dangling": dangling, "images": store / "micro" / "images" / "lora2" / "1" / "e001",
    }  # fmt: skip


def broken_results(good: Path, how: str, folder: Path) -> Path:
    table = pd.read_parquet(good)
    if how == "inf":
        table.loc[3, "value"] = np.inf
    elif how == "epoch":
        table["epoch"] = table["epoch"].astype(str)
        table.loc[2, "epoch"] = "ten"
    elif how == "duplicate":
        table = pd.concat([table, table.iloc[[5]]], ignore_index=True)
    path = folder / f"results-{how}.parquet"
    table.to_parquet(path)
    return path


def command(template: str, inputs: dict[str, Path], out: Path) -> list[str]:
    argv = []
    for word in template.split():
        for key in (
            "model",
            "dataset",
            "study",
            "store",
            "adapter",
            "pickle",
            "images",
            "clip_dir",
            "clip_pickle",
            "garbage",
            "bad_model",
            "dangling",
            "results",
        ):
            word = word.replace("{" + key + "}", str(inputs[key]))
        if word.startswith("{results:"):
            word = str(broken_results(inputs["results"], word[len("{results:") : -1], out.parent))
        argv.append(word.replace("{out}", str(out)))
    return argv


@pytest.mark.parametrize(("case", "template", "fragment"), CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_and_writes_nothing(inputs, tmp_path, capsys, case, template, fragment):
    out = tmp_path / "out"
    argv = command(template, inputs, out)
    capsys.readouterr()
    assert main(argv) == 2, case
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    if "{short}" in fragment:  # the damaged model's sizes, derived from the good file's
        full = (inputs["model"] / "unet" / "diffusion_pytorch_model.safetensors").stat().st_size
        fragment = fragment.replace("{short}", str(full - 100)).replace("{full}", str(full))
    assert fragment in err[0], err[0]
    assert "weights_only=False" not in err[0]
    assert not out.exists(), f"{case}: wrote {out}"


def test_run_into_a_store_whose_study_folder_is_read_only(inputs, tmp_path, capsys, monkeypatch):
    """The store's root is writable but its study's jobs folder is not (a store copied read-only):
    one line naming it, before study.json or any job is written."""
    import os

    jobs = tmp_path / "store" / "micro" / "jobs"
    jobs.mkdir(parents=True)
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: Path(p) != jobs and real_access(p, mode, **kw))
    capsys.readouterr()
    assert main(["run", str(inputs["study"]), "--store", str(tmp_path / "store"), "--no-analysis"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: --store {tmp_path / 'store'}: {jobs} is not writable"]
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == [
        "store", "store/micro", "store/micro/jobs"
    ]  # fmt: skip
