"""experiments/flux.yaml run to the end on the tiny FLUX, only sizes and stand-ins overridden on the
command line: every configuration (LoRA, DoRA, LoHa, LoKr, native, DyLoRA, GLoRA, GLoKr, (IA)³ on
FLUX's fused layers) is trained by flow matching, sampled by flow-matching Euler, scored, analysed
and reaches the leaderboard.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from lyco_bench.cli import main

pytestmark = pytest.mark.e2e  # a whole study: `make test-fast` skips it

ROOT = Path(__file__).resolve().parents[1]
FLUX = ROOT / "experiments" / "flux.yaml"
SHRUNK = [
    # stand-ins for FLUX.1-dev, the evaluators and the paper's dataset
    "model=tiny:flux", "dataset=demo:", "encoders.dino=tiny:", "encoders.clip=tiny:", "encoders.vgg=tiny:",
    "encoders.dino_image_size=56", "encoders.vgg_short_side=32",
    # sizes: 1 seed, 1 checkpoint epoch, 1 image per prompt, 64 px
    "seeds=[23]", "checkpoint_epochs=[1]", "prompts.images_per_prompt=1",
    "training.resolution=64", "training.buckets={min: 32, max: 96, step: 16}", "training.batch_size=4",
    "training.warmup_steps=0", "sampler.width=64", "sampler.height=64", "sampler.steps=2",
    "sampler.batch_size=16",
    # what a CPU has: no 8-bit AdamW, no bf16
    "training.optimizer=adamw", "training.mixed_precision=no", "sampler.dtype=float32",
]  # fmt: skip
LAYER_ALGORITHMS = {"lora", "loha", "lokr", "native", "dylora", "glora", "glokr", "ia3"}


def test_flux_study_runs_to_the_leaderboard(tmp_path):
    import yaml

    store, reports = tmp_path / "store", tmp_path / "reports"
    code = main(["run", str(FLUX), *SHRUNK, "--store", str(store), "--reports", str(reports), "--no-plots"])
    assert code == 0
    study = yaml.safe_load(FLUX.read_text())
    declared = {a["default"] for a in study["algorithms"].values()}
    declared |= {v for a in study["algorithms"].values() for v in a.get("variations", {})}
    table = pd.read_parquet(store / "flux" / "results.parquet")
    assert set(table.loc[table["algo"] != "base", "config"]) == declared
    assert LAYER_ALGORITHMS <= set(table["algo"])
    assert set(table["prompt_class"]) == {"train", "trigger", "alter", "style"}
    board = pd.read_csv(reports / "flux" / "leaderboard.csv")
    assert declared <= set(board["config"])
    assert (reports / "flux" / "index.html").is_file()
