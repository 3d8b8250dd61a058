"""experiments/sdxl.yaml, run to the end on the tiny SDXL with only sizes overridden, plus one
configuration of every other layer algorithm (and DoRA): trained, generated, scored, analysed and
on the leaderboard, through the SDXL family (two encoders, size conditioning, SGM file keys)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from lyco_bench.cli import main

pytestmark = pytest.mark.e2e  # a whole study: `make test-fast` skips it

ROOT = Path(__file__).resolve().parents[1]
SDXL = ROOT / "experiments" / "sdxl.yaml"
SHRUNK = [
    # stand-ins for SDXL 1.0, DINOv2/OpenCLIP/VGG19 and the paper's dataset
    "model=tiny:sdxl", "dataset=demo:", "encoders.dino=tiny:", "encoders.clip=tiny:", "encoders.vgg=tiny:",
    "encoders.dino_image_size=56", "encoders.vgg_short_side=32",
    # sizes: 1 seed, 1 checkpoint epoch, 1 image per prompt, 64 px (the tiny SDXL: 16 px multiples)
    "seeds=[23]", "checkpoint_epochs=[1]", "prompts.images_per_prompt=1",
    "training.resolution=64", "training.buckets={min: 32, max: 96, step: 16}", "training.batch_size=4",
    "training.gradient_checkpointing=false",
    "sampler.width=64", "sampler.height=64", "sampler.steps=2", "sampler.batch_size=16",
    # what a CPU has: no 8-bit AdamW, no bf16
    "training.optimizer=adamw", "training.mixed_precision=no",
]  # fmt: skip
# The layer algorithms the paper did not sweep, one configuration each (and LoRA with DoRA).
OTHERS = {
    "ia3": "{adapter: {algo: ia3, preset: ia3}, training: {lr: 5.0e-3}, default: 2001-ia3}",
    "glora": "{adapter: {algo: glora, dim: 4, alpha: 4}, training: {lr: 5.0e-4}, default: 2002-glora4}",
    "glokr": "{adapter: {algo: glokr, dim: 4, alpha: 4, factor: 4}, training: {lr: 5.0e-4}, default: 2003-glokr}",
    "dylora": "{adapter: {algo: dylora, dim: 8, alpha: 8, block_size: 4}, training: {lr: 5.0e-4}, default: 2004-dylora8}",
    "dora": "{adapter: {algo: lora, dim: 4, alpha: 2, dora: true}, training: {lr: 5.0e-4}, default: 2005-dora4}",
}  # fmt: skip


def test_sdxl_study_runs_to_the_end(tmp_path):
    store, reports = tmp_path / "store", tmp_path / "reports"
    others = [f"algorithms.{name}={block}" for name, block in OTHERS.items()]
    args = ["run", str(SDXL), *SHRUNK, *others, "--store", str(store), "--reports", str(reports), "--no-plots"]
    assert main(args) == 0
    table = pd.read_parquet(store / "sdxl" / "results.parquet")
    configs = set(table.loc[table["algo"] != "base", "config"])
    assert len(configs) == 26 + len(OTHERS)
    assert {"lora", "loha", "lokr", "native", "ia3", "glora", "glokr", "dylora"} <= set(table["algo"])
    assert set(table["prompt_class"]) == {"train", "trigger", "alter", "style"}
    assert (reports / "sdxl" / "index.html").is_file() and (reports / "sdxl" / "leaderboard.csv").is_file()
    board = pd.read_csv(reports / "sdxl" / "leaderboard.csv")
    assert len(board) > 0
    # The checkpoints are SDXL files: kohya's SGM UNet keys and both text encoders.
    from lyco_bench.adapters import load_adapter

    ckpt = store / "sdxl" / "runs" / "1001-lora8a4" / "23" / "ckpt-e001.safetensors"
    keys = load_adapter(ckpt).modules
    assert any(k.startswith("lora_unet_input_blocks_") for k in keys)
    assert any(k.startswith("lora_te1_") for k in keys) and any(k.startswith("lora_te2_") for k in keys)
