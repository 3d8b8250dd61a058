"""The science, end to end: a small study on the CPU world (experiments/demo.yaml cut to LoRA) shows
the LyCORIS paper's directions, each with a 95% interval that excludes zero (G3 of the world).

A change that breaks what the benchmark measures — a wrong adapter scale, a merge that does
nothing, a metric with the wrong sign, a comparison paired wrongly — moves one of these intervals
across zero and fails here. Runs the real `lyco-bench run` on the shipped world weights (~2 min).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from lyco_bench.cli import main

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "experiments" / "demo.yaml"
LORA_ONLY = [
    "algorithms={lora: {adapter: {algo: lora, dim: 8, alpha: 4, preset: attn-mlp}, training: {lr: 5.0e-3}, "
    "default: lora8a4, variations: {lora8a4-attnonly: {adapter: {preset: attn-only}}, "
    "lora8a4-lr5e-4: {training: {lr: 5.0e-4}}}}}",
    "analysis.contrasts=[]",
    "analysis.shap_refits=0",
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
    if metric == "image_similarity":
        rows = rows[rows["mode"] == "resize"]
    assert len(rows) == 1, rows
    return rows.iloc[0]


def test_more_epochs_raise_fidelity(comparison):
    d = _delta(comparison, "lora8a4", "image_similarity", "train", vs_epoch=10)
    assert d["ci_low"] > 0, d


def test_more_epochs_lower_controllability(comparison):
    d = _delta(comparison, "lora8a4", "text_similarity", "alter", vs_epoch=10)
    assert d["ci_high"] < 0, d


def test_more_epochs_move_further_from_the_base_style(comparison):
    d = _delta(comparison, "lora8a4", "style_loss_base", "style", vs_epoch=10)
    assert d["ci_low"] > 0, d


def test_attention_only_learns_less_than_attention_and_mlp(comparison):
    d = _delta(comparison, "lora8a4-attnonly", "image_similarity", "train")
    assert d["ci_high"] < 0, d


def test_the_low_learning_rate_learns_less(comparison):
    d = _delta(comparison, "lora8a4-lr5e-4", "image_similarity", "train")
    assert d["ci_high"] < 0, d
