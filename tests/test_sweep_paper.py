"""The real experiments/paper.yaml, run to the end with only sizes overridden on the command line.

What cannot exist here is swapped for the tiny stand-ins (the model, the encoders, the dataset);
every configuration, preset, algorithm, metric, prompt class and analysis setting is the paper's.
All 26 configurations are trained, generated, scored and analysed.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from lyco_bench.cli import main

pytestmark = pytest.mark.e2e  # whole studies / subprocess runs: `make test-fast` skips them

ROOT = Path(__file__).resolve().parents[1]
PAPER = ROOT / "experiments" / "paper.yaml"
SHRUNK = [
    # stand-ins for SD1.5, DINOv2/OpenCLIP/VGG19 and the paper's dataset
    "model=tiny:", "dataset=demo:", "encoders.dino=tiny:", "encoders.clip=tiny:", "encoders.vgg=tiny:",
    "encoders.dino_image_size=56", "encoders.vgg_short_side=32",
    # sizes: 1 seed, 1 checkpoint epoch, 1 image per prompt, 64 px
    "seeds=[23]", "checkpoint_epochs=[1]", "prompts.images_per_prompt=1",
    "training.resolution=64", "training.buckets={min: 32, max: 96, step: 16}", "training.batch_size=4",
    "sampler.width=64", "sampler.height=64", "sampler.steps=2", "sampler.batch_size=16",
    # what a CPU has: no 8-bit AdamW, no bf16
    "training.optimizer=adamw", "training.mixed_precision=no",
]  # fmt: skip


def test_paper_study_runs_to_the_end(tmp_path):
    store, reports = tmp_path / "store", tmp_path / "reports"
    code = main(["run", str(PAPER), *SHRUNK, "--store", str(store), "--reports", str(reports), "--no-plots"])
    assert code == 0
    table = pd.read_parquet(store / "paper" / "results.parquet")
    configs = set(table.loc[table["algo"] != "base", "config"])
    assert len(configs) == 26
    assert set(table["algo"]) == {"lora", "loha", "lokr", "native"}
    assert set(table["metric"]) == {
        "image_similarity", "squared_centroid_distance", "text_similarity", "vendi", "style_loss_base",
    }  # fmt: skip
    assert set(table["prompt_class"]) == {"train", "trigger", "alter", "style"}
    # The analysis left out what the paper did, and the leaderboard and report exist.
    assert (reports / "paper" / "index.html").is_file() and (reports / "paper" / "leaderboard.csv").is_file()
    assert (reports / "paper" / "analysis" / "shap_levels.csv").is_file()
