"""The science, end to end: a small study on the CPU world (experiments/demo.yaml cut to LoRA) shows
the LyCORIS paper's fidelity directions — more epochs and a higher learning rate learn the concept
better — each with a 95% interval that excludes zero.

The paper's other directions (text similarity on <alter> falling with epochs, style loss vs the
base rising, attn-only below attn-mlp) do not show in this world at the demo's training length:
its models are not trained into the overfitting regime where they appear (README, "What the demo
finds"), so they are not asserted.

A change that breaks what the benchmark measures — a wrong adapter scale, a merge that does
nothing, a metric with the wrong sign, a comparison paired wrongly — moves one of these intervals
across zero and fails here. Runs the real `lyco-bench run` on the shipped world weights (~2 min).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from lyco_bench.cli import main

pytestmark = pytest.mark.e2e  # whole studies / subprocess runs: `make test-fast` skips them

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "experiments" / "demo.yaml"
LORA_ONLY = [
    "algorithms={lora: {adapter: {algo: lora, dim: 8, alpha: 4, preset: attn-mlp}, training: {lr: 5.0e-3}, "
    "default: lora8a4, variations: {lora8a4-attnonly: {adapter: {preset: attn-only}}, "
    "lora8a4-lr5e-4: {training: {lr: 5.0e-4}}}}}",
    "analysis.contrasts=[]",
    "analysis.shap_refits=0",
    "checkpoint_every=null",  # the findings read the full evaluation only: no trajectory jobs
    "trajectory=null",
    "eval_multipliers=[]",  # nor the strength axis
]


@pytest.fixture(scope="module")
def comparison(tmp_path_factory) -> pd.DataFrame:
    tmp = tmp_path_factory.mktemp("world-study")
    code = main(
        ["run", str(DEMO), *LORA_ONLY, "--store", str(tmp / "store"), "--reports", str(tmp / "reports")]
    )
    assert code == 0
    return pd.read_csv(tmp / "reports" / "demo" / "comparison.csv")


def _delta(comp: pd.DataFrame, config: str, metric: str, prompt_class: str, *, vs_epoch: int = 30):
    rows = comp[
        (comp["config"] == config) & (comp["epoch"] == 30) & (comp["reference"] == "lora8a4")
        & (comp["reference_epoch"] == vs_epoch) & (comp["metric"] == metric)
        & (comp["prompt_class"] == prompt_class)
    ]  # fmt: skip
    rows = rows[rows["mode"].isna() | (rows["mode"] == "resize")]
    assert len(rows) == 1, rows
    return rows.iloc[0]


def test_more_epochs_raise_fidelity(comparison):
    """The paper: image similarity rises with epochs; the concept's images move closer to the
    dataset's centroid."""
    assert _delta(comparison, "lora8a4", "image_similarity", "train", vs_epoch=10)["ci_low"] > 0
    assert _delta(comparison, "lora8a4", "squared_centroid_distance", "train", vs_epoch=10)["ci_high"] < 0


def test_the_low_learning_rate_learns_less(comparison):
    """The paper: the lowest learning rate gives the lowest image similarity."""
    assert _delta(comparison, "lora8a4-lr5e-4", "image_similarity", "train")["ci_high"] < 0
    assert _delta(comparison, "lora8a4-lr5e-4", "squared_centroid_distance", "train")["ci_low"] > 0
