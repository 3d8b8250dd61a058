"""The published metrics (skipped where absent): the SHAP signs that the paper's findings
(docs/protocol.md §6) predict, read off shap_levels.csv. Only the six metric columns asserted on are fitted."""

from __future__ import annotations

import pandas as pd
import pytest

from lyco_bench.analysis.pipeline import PAPER_EXCLUDE, PAPER_SHAP_EXCLUDE, run_analysis
from lyco_bench.analysis.results import read_paper_csv

pytestmark = pytest.mark.e2e  # whole studies / subprocess runs: `make test-fast` skips them

IMG_IN = "Image Similarity (dinov2-l-fb-resize) (in)"
IMG_OUT = "Image Similarity (dinov2-l-fb-resize) (out)"
SCD_IN = "Squared Centroid Distance (dinov2-l-fb-resize) (in)"
TXT_IN = "Text Similarity (in)"
TXT_OUT = "Text Similarity (out)"
VENDI_OUT = "Vendi (dinov2-l-fb) (out)"


@pytest.fixture(scope="module")
def paper_shap(paper_dir, tmp_path_factory) -> pd.Series:
    table = read_paper_csv(paper_dir / "ddim_sd15_metrics_mean.csv", paper_dir / "config_mapping.csv")
    # published format: 21 LyCORIS configs × 3 seeds × 3 epochs, 12 rows each, 63 metric columns
    assert table["checkpoint"].nunique() == 189 and table["label"].nunique() == 63
    out = tmp_path_factory.mktemp("paper-analysis")
    outputs = run_analysis(
        table, out, metrics=[IMG_IN, IMG_OUT, SCD_IN, TXT_IN, TXT_OUT, VENDI_OUT],
        exclude_configs=PAPER_EXCLUDE, shap_exclude_configs=PAPER_SHAP_EXCLUDE, plots=False,
    )  # fmt: skip
    assert outputs.n_fitted == 6
    levels = pd.read_csv(outputs.shap_levels, dtype={"level": str}).set_index(["metric", "feature", "level"])
    # finding 1 with its bootstrap interval (CatBoost refitted on resampled seeds and concepts)
    assert levels.loc[(IMG_IN, "Epoch", "50"), "ci_low"] > 0 > levels.loc[(IMG_IN, "Epoch", "10"), "ci_high"]
    return levels["mean_shap"]


def test_more_epochs_fidelity_up_alignment_and_diversity_down(paper_shap):
    """Finding 1: more epochs → fidelity up; text alignment and diversity down."""
    s = paper_shap
    assert s[(IMG_IN, "Epoch", "50")] > 0 > s[(IMG_IN, "Epoch", "10")]
    assert s[(SCD_IN, "Epoch", "50")] > 0 > s[(SCD_IN, "Epoch", "10")]  # closer centroid = better rank
    assert s[(TXT_IN, "Epoch", "10")] > 0 > s[(TXT_IN, "Epoch", "50")]
    assert s[(VENDI_OUT, "Epoch", "10")] > 0 > s[(VENDI_OUT, "Epoch", "50")]


def test_attn_only_loses_fidelity_gains_alignment(paper_shap):
    """Finding 5: attn-only → image similarity drops, other metrics improve."""
    s = paper_shap
    assert s[(IMG_IN, "Preset", "attn-only")] < 0
    assert s[(IMG_OUT, "Preset", "attn-only")] < 0
    assert s[(TXT_OUT, "Preset", "attn-only")] > 0
    assert s[(TXT_IN, "Preset", "attn-only")] > 0


def test_algorithm_order_and_low_lr(paper_shap):
    """Finding 3: image similarity LoKr > LoRA > LoHa, reversed on text similarity; finding 2: a
    too-low lr costs fidelity; finding 6: more capacity acts like more training."""
    s = paper_shap
    assert s[(IMG_IN, "Algo", "lokr")] > s[(IMG_IN, "Algo", "lora")] > s[(IMG_IN, "Algo", "loha")]
    assert s[(TXT_OUT, "Algo", "loha")] > s[(TXT_OUT, "Algo", "lora")]
    assert s[(TXT_OUT, "Algo", "loha")] > s[(TXT_OUT, "Algo", "lokr")]
    assert s[(IMG_OUT, "Lr level", "1")] < 0 < s[(IMG_OUT, "Lr level", "3")]
    assert s[(IMG_OUT, "Capacity", "3")] > 0 > s[(TXT_OUT, "Capacity", "3")]
