"""Leaderboard (mean ± std over seeds, direction-aware ranks, Pareto marks) and collect_results."""

from __future__ import annotations

import argparse

import numpy as np
import pandas as pd
import pytest

from lyco_bench.analysis.cli import register_cli
from lyco_bench.analysis.leaderboard import build_leaderboard, pareto_mask, write_leaderboard
from lyco_bench.analysis.results import collect_results, write_results
from lyco_bench.errors import BadInput

IMG, TXT, SCD = "image_similarity", "text_similarity", "squared_centroid_distance"
# per config: seed → (image similarity, text similarity, centroid distance) of the anime category
HAND = {
    "A": {23: (0.5, 0.3, 0.1), 24: (0.7, 0.3, 0.1)},
    "B": {23: (0.4, 0.5, 0.3), 24: (0.4, 0.5, 0.3)},
    "C": {23: (0.8, 0.2, 0.2), 24: (0.8, 0.2, 0.2)},
    "D": {23: (0.5, 0.25, 0.4), 24: (0.5, 0.25, 0.4)},
}
ALGOS = {"A": "lora", "B": "loha", "C": "lokr", "D": "lora"}


def score_rows(
    checkpoint: str, triple: tuple[float, float, float], *, scene_shift: float = 0.0
) -> list[dict]:
    rows = []
    for metric, value in zip((IMG, TXT, SCD), triple, strict=True):
        for category, concept, v in (
            ("anime", "", value),
            ("scene", "", value + (scene_shift if metric == IMG else 0.0)),
            ("anime", "abukuma", 100.0),  # finer rows: ignored where category rows exist
        ):
            rows.append(
                {"checkpoint": checkpoint, "category": category, "concept": concept, "subclass": "",
                 "prompt_class": "alter", "metric": metric, "encoder": "dinov2" if metric != TXT else "clip",
                 "mode": "resize" if metric != TXT else "", "value": v, "n_images": 4,
                 "prompt_set_version": "1", "reason": ""}
            )  # fmt: skip
    return rows


def hand_results(tmp_path) -> pd.DataFrame:
    tmp_path.mkdir(parents=True, exist_ok=True)
    files, runs = [], []
    for config, seeds in HAND.items():
        for seed, triple in seeds.items():
            ckpt = f"{config}-s{seed}-e010"
            shift = 0.2 if config == "A" else 0.0  # A: checkpoint means 0.6 and 0.8
            path = tmp_path / f"{ckpt}.parquet"
            pd.DataFrame(score_rows(ckpt, triple, scene_shift=shift)).to_parquet(path)
            files.append(path)
            runs.append(
                {"checkpoint": ckpt, "config": config, "algo": ALGOS[config], "preset": "attn-mlp", "lr": 5e-4,
                 "dim": 8.0, "alpha": 4.0, "factor": np.nan, "seed": seed, "epoch": 10,
                 "trainable_params": 1000 * (ord(config) - 64), "file_bytes": 4000 * (ord(config) - 64)}
            )  # fmt: skip
    base = tmp_path / "base.parquet"
    pd.DataFrame(score_rows("base", (0.9, 0.1, 0.05))).to_parquet(base)
    return collect_results([*files, base], pd.DataFrame(runs))


def test_collect_results_joins_runs_and_marks_base(tmp_path):
    results = hand_results(tmp_path)
    assert len(results) == 9 * 9
    base = results[results["checkpoint"] == "base"]
    assert set(base["algo"]) == {"base"} and set(base["config"]) == {"base"}
    a = results[(results["config"] == "A") & (results["seed"] == 24)]
    assert set(a["algo"]) == {"lora"} and set(a["epoch"]) == {10}
    assert "Image Similarity (dinov2-resize) (alter)" in set(results["label"])
    with pytest.raises(BadInput, match="missing.parquet"):
        collect_results([tmp_path / "missing.parquet"], pd.DataFrame({"checkpoint": []}))


def test_leaderboard_means_ranks_and_pareto(tmp_path):
    board = build_leaderboard(hand_results(tmp_path)).set_index("config")
    img, txt, scd = (
        "Image Similarity (dinov2-resize) (alter)", "Text Similarity (clip) (alter)",
        "Squared Centroid Distance (dinov2-resize) (alter)",
    )  # fmt: skip
    # A: per-checkpoint means over the two categories are 0.6 and 0.8 → 0.7 ± std(ddof=1) √0.02
    assert board.loc["A", f"{img} mean"] == pytest.approx(0.7)
    assert board.loc["A", f"{img} std"] == pytest.approx(np.sqrt(0.02))
    assert board.loc["B", f"{txt} std"] == pytest.approx(0.0)
    assert board.loc[["C", "A", "D", "B"], f"{img} rank"].tolist() == [1, 2, 3, 4]
    assert board.loc[["B", "A", "D", "C"], f"{txt} rank"].tolist() == [1, 2, 3, 4]
    # a distance: lowest is best
    assert board.loc[["A", "C", "B", "D"], f"{scd} rank"].tolist() == [1, 2, 3, 4]
    assert board.loc["A", "mean_rank"] == pytest.approx(5 / 3)
    # D (0.5, 0.25) is dominated by A (0.7, 0.3); the base model is a reference, never marked
    assert board["pareto"].to_dict() == {"A": True, "C": True, "B": True, "D": False, "base": False}
    assert np.isnan(board.loc["base", f"{img} rank"])
    assert list(board.index) == ["A", "C", "B", "D", "base"]  # by mean rank, base last
    assert board.loc["C", "trainable_params"] == 3000 and board.loc["C", "n_seeds"] == 2


def test_pareto_mask_hand_example():
    x = np.array([1.0, 2.0, 3.0, 2.0, np.nan, 3.0])
    y = np.array([3.0, 2.0, 1.0, 1.0, 9.0, 1.0])
    # (2,1) is dominated by (2,2); the two (3,1) are duplicates: neither dominates the other
    assert pareto_mask(x, y).tolist() == [True, True, True, False, False, True]


def test_write_leaderboard_files_and_cli(tmp_path):
    results = hand_results(tmp_path)
    paths = write_leaderboard(results, tmp_path / "lb")
    assert sorted(paths) == ["csv", "html", "md"] and all(p.is_file() for p in paths.values())
    md = paths["md"].read_text()
    assert "| A | lora | 10 |" in md and "0.7 ± 0.1414 (#2)" in md and "★" in md
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
    board = build_leaderboard(partial)
    assert board.set_index("config").loc["C", "mean_rank"] == pytest.approx(1.5)
    assert board["config"].tolist() == ["A", "B", "D", "C", "base"]
