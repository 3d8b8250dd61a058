"""Scaled ranks, row selection and exclusions (lyco_bench/analysis/ranks.py) on hand examples."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from lyco_bench.analysis.ranks import config_matches, exclude_configs, fit_mask, leaf_mask, scaled_ranks
from lyco_bench.analysis.results import metric_direction, metric_label
from lyco_bench.errors import BadInput


def _rows(
    metric: str, values: list[float], *, category: str = "anime", label: str | None = None
) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "checkpoint": [f"ck{i}" for i in range(len(values))],
            "label": label or metric,
            "metric": metric,
            "category": category,
            "concept": "",
            "subclass": "",
            "value": values,
        }
    )


def test_scaled_ranks_similarity_with_tie():
    # ranks by value (1 = worst): 0.1→1, 0.2→2, the two 0.3 share (3+4)/2 = 3.5; scaled (r-1)/(4-1)
    table = _rows("image_similarity", [0.1, 0.3, 0.3, 0.2])
    got = torch.tensor(scaled_ranks(table).to_numpy())
    want = torch.tensor([0.0, 2.5 / 3, 2.5 / 3, 1 / 3], dtype=torch.float64)
    torch.testing.assert_close(got, want)


def test_scaled_ranks_distance_reversed_and_nan():
    # lower is better: 1.0 is best (scaled 1), 3.0 worst (0), the 2.0 tie shares the middle; NaN
    # is not counted in n (n = 4)
    table = _rows("squared_centroid_distance", [1.0, 3.0, 2.0, np.nan, 2.0])
    got = torch.tensor(scaled_ranks(table).to_numpy())
    want = torch.tensor([1.0, 0.0, 0.5, np.nan, 0.5], dtype=torch.float64)
    torch.testing.assert_close(got, want, equal_nan=True)


def test_scaled_ranks_groups_are_separate():
    # the same checkpoints in two categories and two metric labels: four independent rankings
    a = _rows("vendi", [1.0, 2.0, 3.0], category="anime")
    b = _rows("vendi", [3.0, 2.0, 1.0], category="scene")
    c = _rows("vendi", [5.0, 5.0, 9.0], category="anime", label="Vendi (other)")
    d = _rows("vendi", [7.0], category="style")  # n = 1: no ranking possible
    got = scaled_ranks(pd.concat([a, b, c, d], ignore_index=True)).to_numpy()
    want = np.array([0.0, 0.5, 1.0, 1.0, 0.5, 0.0, 0.25, 0.25, 1.0, np.nan])
    np.testing.assert_allclose(got, want)


def test_directions_override_and_unknown():
    assert metric_direction("squared_centroid_distance") is False
    assert metric_direction("image_similarity") is True
    assert metric_direction("image_similarity", {"image_similarity": False}) is False
    with pytest.raises(BadInput, match="made_up"):
        metric_direction("made_up_metric")
    table = _rows("made_up_metric", [1.0, 2.0])
    np.testing.assert_allclose(scaled_ranks(table, directions={"made_up_metric": False}), [1.0, 0.0])


def test_metric_label_paper_style():
    assert (
        metric_label("image_similarity", "dinov2", "resize", "alter")
        == "Image Similarity (dinov2-resize) (alter)"
    )
    assert metric_label("text_similarity", "", "", "train") == "Text Similarity (train)"
    assert metric_label("vendi", "dinov2", "", "trigger") == "Vendi (dinov2) (trigger)"


def _paths(paths: list[tuple[str, str, str]]) -> pd.DataFrame:
    return pd.DataFrame(paths, columns=["category", "concept", "subclass"])


def test_leaf_and_fit_masks():
    table = _paths(
        [
            ("", "", ""),  # whole checkpoint
            ("anime", "", ""),
            ("anime", "abukuma", ""),
            ("anime", "abukuma", "toid outfit"),
            ("anime", "ikamusume", ""),
            ("scene", "", ""),
        ]
    )
    assert leaf_mask(table).tolist() == [False, False, False, True, True, True]
    # category means are not (category, class, subclass) groups: scene drops out of the fit
    assert fit_mask(table).tolist() == [False, False, False, True, True, False]
    only_categories = _paths([("", "", ""), ("anime", "", ""), ("scene", "", "")])
    assert fit_mask(only_categories).tolist() == [False, True, True]


def test_config_exclusion_tokens():
    assert config_matches("exp-1007-sd15-lora8a4-lr5e-5", ["1007"])
    assert not config_matches("exp-10070-sd15-lora", ["1007"])
    assert config_matches("lora-dim8", ["lora-dim8"])
    assert config_matches("lora-dim8", ["lora"])  # a token matches any dash-separated part
    assert not config_matches("lora-dim8", ["dim"])
    table = pd.DataFrame({"config": ["exp-1001-a", "exp-1003-b", "exp-1007-c"], "value": [1, 2, 3]})
    assert exclude_configs(table, [1003, "1007"])["config"].tolist() == ["exp-1001-a"]
    assert exclude_configs(table, [])["config"].tolist() == table["config"].tolist()
