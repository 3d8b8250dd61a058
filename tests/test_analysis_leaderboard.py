"""Leaderboard (long table: mean with a bootstrap CI, direction-aware ranks and rank intervals,
mean rank, Pareto marks; the compact Markdown/HTML view) and collect_results."""

from __future__ import annotations

import argparse

import numpy as np
import pandas as pd
import pytest

from lyco_bench.analysis.cli import register_cli
from lyco_bench.analysis.leaderboard import LONG_COLUMNS, build_leaderboard, pareto_mask, write_leaderboard
from lyco_bench.analysis.results import collect_results, write_results
from lyco_bench.analysis.uncertainty import BootstrapSettings
from lyco_bench.errors import BadInput
from tests.helpers import TXT, hand_results


def test_collect_results_joins_runs_and_marks_base(tmp_path):
    results = hand_results(tmp_path)
    assert len(results) == 9 * 12
    base = results[results["checkpoint"] == "base"]
    assert set(base["algo"]) == {"base"} and set(base["config"]) == {"base"}
    a = results[(results["config"] == "A") & (results["seed"] == 24)]
    assert set(a["algo"]) == {"lora"} and set(a["epoch"]) == {10}
    assert "Image Similarity (dinov2-resize) (alter)" in set(results["label"])
    with pytest.raises(BadInput, match="missing.parquet"):
        collect_results([tmp_path / "missing.parquet"], pd.DataFrame({"checkpoint": []}))


IMG_L, TXT_L, SCD_L = (
    "Image Similarity (dinov2-resize) (alter)", "Text Similarity (clip) (alter)",
    "Squared Centroid Distance (dinov2-resize) (alter)",
)  # fmt: skip


def test_leaderboard_means_ranks_and_pareto(tmp_path):
    board = build_leaderboard(hand_results(tmp_path), bootstrap=BootstrapSettings(n_resamples=500))
    assert list(board.columns[: len(LONG_COLUMNS)]) == LONG_COLUMNS
    cell = board.set_index(["config", "label"])
    # A: per-checkpoint means over the two categories are 0.6 and 0.8 → 0.7
    assert cell.loc[("A", IMG_L), "mean"] == pytest.approx(0.7)
    assert cell.loc[("A", IMG_L), "ci_low"] < 0.7 < cell.loc[("A", IMG_L), "ci_high"]
    assert cell.loc[("B", TXT_L), "mean"] == pytest.approx(0.5)
    ranks = {lb: cell.xs(lb, level="label")["rank"] for lb in (IMG_L, TXT_L, SCD_L)}
    assert ranks[IMG_L].loc[["C", "A", "D", "B"]].tolist() == [1, 2, 3, 4]
    assert ranks[TXT_L].loc[["B", "A", "D", "C"]].tolist() == [1, 2, 3, 4]
    assert ranks[SCD_L].loc[["A", "C", "B", "D"]].tolist() == [1, 2, 3, 4]  # a distance: lowest is best
    low, high = cell["rank_low"], cell["rank_high"]
    assert ((low <= cell["rank"]) & (cell["rank"] <= high)).dropna().all()
    # C, D, B repeat exactly over seeds and differ by constants: strictly ordered, separated
    assert high[("C", IMG_L)] < low[("D", IMG_L)] and high[("D", IMG_L)] < low[("B", IMG_L)]
    configs = board.drop_duplicates("config").set_index("config")
    assert configs.loc["A", "mean_rank"] == pytest.approx(5 / 3)
    # D (0.5, 0.25) is dominated by A (0.7, 0.3); the base model is a reference, never marked
    assert configs["pareto"].to_dict() == {"A": True, "C": True, "B": True, "D": False, "base": False}
    assert pd.isna(cell.loc[("base", IMG_L), "rank"]) and cell.loc[("base", IMG_L), "n_seeds"] == 1
    assert list(configs.index) == ["A", "C", "B", "D", "base"]  # by mean rank, base last
    assert configs.loc["C", "trainable_params"] == 3000 and configs.loc["C", "n_seeds"] == 2


def test_pareto_mask_hand_example():
    x = np.array([1.0, 2.0, 3.0, 2.0, np.nan, 3.0])
    y = np.array([3.0, 2.0, 1.0, 1.0, 9.0, 1.0])
    # (2,1) is dominated by (2,2); the two (3,1) are duplicates: neither dominates the other
    assert pareto_mask(x, y).tolist() == [True, True, True, False, False, True]


def test_write_leaderboard_files_and_cli(tmp_path):
    results = hand_results(tmp_path)
    paths = write_leaderboard(results, tmp_path / "lb")
    assert all(p.is_file() for p in paths.values())
    assert sorted(paths) == ["comparison", "csv", "html", "md"]
    md = paths["md"].read_text()
    assert "| A | lora | 10 |" in md and "| 0.700 [" in md and "★" in md
    # B repeats exactly over seeds, its concepts ±0.01: clearly last, separated (no ≈)
    assert "| 0.400 [0.393, 0.407] #4 |" in md
    assert "0.700 [0.555, 0.845] ≈#2 (1–2)" in md  # A varies over seeds: C may be below it
    assert "<table" in paths["html"].read_text()
    write_results(results, tmp_path / "results.parquet")
    parser = argparse.ArgumentParser()
    register_cli(parser.add_subparsers())
    args = parser.parse_args(
        ["leaderboard", str(tmp_path / "results.parquet"), "--out", str(tmp_path / "cli")]
    )
    assert args.func(args) == 0
    assert (tmp_path / "cli" / "leaderboard.csv").read_bytes() == paths["csv"].read_bytes()


def test_rows_missing_main_metrics_sort_after_complete_ones(tmp_path):
    results = hand_results(tmp_path)
    # C loses its text similarity: its mean rank over the two left (1 and 2) would lead the table
    partial = results[~((results["config"] == "C") & (results["metric"] == TXT))]
    board = build_leaderboard(partial, bootstrap=BootstrapSettings(n_resamples=200))
    configs = board.drop_duplicates("config")
    assert configs.set_index("config").loc["C", "mean_rank"] == pytest.approx(1.5)
    assert configs["config"].tolist() == ["A", "B", "D", "C", "base"]
