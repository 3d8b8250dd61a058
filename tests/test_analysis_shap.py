"""Feature encodings, native folding and `lyco-bench analyze --paper-csv` on a small CSV written in
the published format, with values built so that the SHAP signs are known in advance."""

from __future__ import annotations

import argparse
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from lyco_bench.analysis.cli import register_cli
from lyco_bench.analysis.results import parse_paper_column, read_paper_csv
from lyco_bench.analysis.shap_analysis import FEATURES, capacity_level, encode_features, fit_shap, lr_level
from lyco_bench.errors import BadInput

MAPPING = """Config,Algo,Preset,Lr,Dim,Alpha,Factor,Caption
exp-1001-sd15-lora8a4,lora,attn-mlp,0.0005,8,4,N/A,.txt
exp-1002-sd15-lora32a16,lora,attn-mlp,0.0005,32,16,N/A,.txt
exp-1005-sd15-lora8a4-attnonly,lora,attn-only,0.0005,8,4,N/A,.txt
exp-1006-sd15-lora8a4-lr1e-4,lora,attn-mlp,0.0001,8,4,N/A,.txt
exp-1007-sd15-lora8a4-lr5e-5,lora,attn-mlp,5e-05,8,4,N/A,.txt
exp-1011-sd15-loha4a2,loha,attn-mlp,0.0005,4,2,N/A,.txt
exp-1015-sd15-loha4a2-attnonly,loha,attn-only,0.0005,4,2,N/A,.txt
exp-1021-sd15-lokrf8,lokr,attn-mlp,0.0005,10000,1,8,.txt
exp-1022-sd15-lokrf4,lokr,attn-mlp,0.0005,10000,1,4,.txt
exp-1031-sd15-nt,full,attn-mlp,1e-06,N/A,N/A,N/A,.txt
exp-1034-sd15-nt-lr5e-6,full,attn-mlp,5e-06,N/A,N/A,N/A,.txt
"""
COLUMNS = [
    "Image Similarity (dinov2-l-fb-resize) (in)",
    "Squared Centroid Distance (dinov2-l-fb-resize) (in)",
    "Text Similarity (out)",
    "Vendi (dinov2-l-fb) (in)",
]
PATHS = ["", "/anime", "/anime/abukuma", "/anime/ikamusume", "/scene"]


def _values(config: str, seed: int, epoch: int, path: str) -> list[float]:
    attn_only = 1.0 if "attnonly" in config else 0.0
    jitter = (zlib.crc32(f"{config}{seed}{path}".encode()) % 1000) / 1e6  # tiny, deterministic
    offset = 0.01 * len(path)
    return [
        0.3 + 0.004 * epoch - 0.15 * attn_only + offset + jitter,  # fidelity grows with epochs
        0.5 - 0.005 * epoch + offset + jitter,  # distance shrinks with epochs (lower is better)
        0.4 - 0.003 * epoch + 0.1 * attn_only + jitter,  # text alignment falls with epochs
        5.0 - 0.02 * epoch + jitter,
    ]


def write_paper_files(root: Path) -> tuple[Path, Path]:
    """A metrics CSV + config mapping in the published format (docs/protocol.md §9)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "config_mapping.csv").write_text(MAPPING)
    configs = [line.split(",")[0] for line in MAPPING.splitlines()[1:]]
    rows = []
    for config in configs:
        for seed in "ab":
            for epoch, suffix in ((10, "-000010"), (30, "-000030"), (50, "")):
                folder = f"ddim-v1-5-pruned-emaonly-{config}-{seed}{suffix}"
                for path in PATHS:
                    rows.append([folder + path, *_values(config, ord(seed), epoch, path)])
    pd.DataFrame(rows, columns=["Folder", *COLUMNS]).to_csv(root / "metrics.csv", index=False)
    return root / "metrics.csv", root / "config_mapping.csv"


def run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="lyco-bench")
    register_cli(parser.add_subparsers())
    args = parser.parse_args(argv)
    return args.func(args)


def test_parse_paper_columns():
    assert parse_paper_column("Image Similarity (dinov2-l-fb-resize) (in)") == {
        "metric": "image_similarity", "encoder": "dinov2-l-fb", "mode": "resize", "prompt_class": "train",
    }  # fmt: skip
    assert parse_paper_column("Vendi (clip-L-14) (out)")["encoder"] == "clip-L-14"
    assert parse_paper_column("Text Similarity (trigger)")["prompt_class"] == "trigger"
    with pytest.raises(BadInput, match="Sharpness"):
        parse_paper_column("Sharpness (in)")


def test_read_paper_csv_long_format(tmp_path):
    metrics, mapping = write_paper_files(tmp_path)
    table = read_paper_csv(metrics, mapping)
    assert len(table) == 11 * 2 * 3 * len(PATHS) * len(COLUMNS)
    row = table[(table["config"] == "exp-1031-sd15-nt") & (table["epoch"] == 50) & (table["seed"] == 24)]
    assert set(row["algo"]) == {"native"} and set(row["preset"]) == {"attn-mlp"}
    one = row[(row["category"] == "anime") & (row["concept"] == "abukuma") & (row["label"] == COLUMNS[0])]
    assert one["value"].tolist() == pytest.approx(
        [_values("exp-1031-sd15-nt", ord("b"), 50, "/anime/abukuma")[0]]
    )
    bad = tmp_path / "bad.csv"
    bad.write_text("Folder,Text Similarity (in)\nnot-a-checkpoint,0.1\n")
    with pytest.raises(BadInput, match="not-a-checkpoint"):
        read_paper_csv(bad, mapping)


def test_capacity_and_lr_levels():
    table = pd.DataFrame(
        {
            "algo": ["lora", "lora", "loha", "loha", "lokr", "lokr", "lokr", "native", "native", "native"],
            "dim": [8, 32, 4, 16, 10000, 10000, 10000, np.nan, np.nan, np.nan],
            "factor": [np.nan] * 4 + [12, 8, 4] + [np.nan] * 3,
            "lr": [1e-4, 1e-3, 5e-4, 1e-3, 1e-4, 5e-4, 1e-3, 5e-7, 1e-6, 5e-6],
        }
    )
    assert capacity_level(table).tolist() == [2, 3, 2, 3, 1, 2, 3, 4, 4, 4]
    assert lr_level(table).tolist() == [1, 3, 2, 3, 1, 2, 3, 1, 2, 3]
    # another study's grid (none of the paper's values): levels by order of the distinct values
    other = pd.DataFrame({"algo": ["lora"] * 3, "dim": [2, 4, 2], "factor": np.nan, "lr": [1e-2, 3e-2, 1e-2]})
    assert capacity_level(other).tolist() == [2, 3, 2]
    assert lr_level(other).tolist() == [1, 2, 1]
    # partly matching: the value outside the paper's grid is NaN (CatBoost nan_mode='Min')
    partial = pd.DataFrame({"algo": ["lora"] * 2, "dim": [8, 8], "factor": np.nan, "lr": [5e-5, 1e-4]})
    assert np.isnan(lr_level(partial)[0]) and lr_level(partial)[1] == 1


def test_native_capacity_folded_into_algo():
    rng = np.random.default_rng(0)
    n = 120
    algo = np.where(np.arange(n) % 3 == 0, "native", "lora")
    table = pd.DataFrame(
        {"algo": algo, "preset": "attn-mlp", "epoch": rng.choice([10, 30, 50], n),
         "dim": np.where(algo == "lora", rng.choice([8, 32], n), np.nan), "factor": np.nan,
         "lr": np.where(algo == "lora", 5e-4, 1e-6)}
    )  # fmt: skip
    feats = encode_features(table)
    target = pd.Series(feats["Capacity"] / 4 + feats["Epoch"] / 100 + rng.normal(0, 0.01, n))
    fit = fit_shap(feats, target, label="toy")
    native = (fit.features["Algo"] == "native").to_numpy()
    assert np.all(fit.values[native, FEATURES.index("Capacity")] == 0.0)
    assert np.any(fit.values[~native, FEATURES.index("Capacity")] != 0.0)
    # folding moves attribution between columns, never changes the sum (SHAP additivity)
    torch.testing.assert_close(
        torch.tensor(fit.values.sum(axis=1) + fit.expected_value),
        torch.tensor(fit.prediction),
        rtol=1e-6,
        atol=1e-6,
    )


@pytest.fixture(scope="module")
def analyzed(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("paper-small")
    metrics, _ = write_paper_files(root / "paper")
    assert (
        run_cli(["analyze", "--paper-csv", str(metrics), "--metrics", "all", "--out", str(root / "out")]) == 0
    )
    return root / "out"


@pytest.mark.e2e
def test_analyze_shap_levels_signs(analyzed):
    levels = pd.read_csv(analyzed / "shap_levels.csv", dtype={"level": str})
    assert list(levels.columns) == [
        "metric", "feature", "level", "mean_shap", "mean_abs_shap", "ci_low", "ci_high", "n_refits",
    ]  # fmt: skip
    # bootstrap refits (5 by default): an interval around every level's mean SHAP value
    assert (levels["n_refits"] == 5).all()
    assert ((levels["ci_low"] <= levels["mean_shap"]) & (levels["mean_shap"] <= levels["ci_high"])).all()
    assert set(levels["metric"]) == set(COLUMNS)
    assert set(levels["feature"]) == set(FEATURES)
    shap = levels.set_index(["metric", "feature", "level"])["mean_shap"]
    img, dist, text = COLUMNS[0], COLUMNS[1], COLUMNS[2]
    assert shap[(img, "Epoch", "50")] > 0 > shap[(img, "Epoch", "10")]
    # the built-in epoch effect stands out of the resampling noise: its interval excludes 0
    ci = levels.set_index(["metric", "feature", "level"])
    assert ci.loc[(img, "Epoch", "50"), "ci_low"] > 0 > ci.loc[(img, "Epoch", "10"), "ci_high"]
    assert shap[(dist, "Epoch", "50")] > 0 > shap[(dist, "Epoch", "10")]  # ranked reversed
    assert shap[(text, "Epoch", "10")] > 0 > shap[(text, "Epoch", "50")]
    assert shap[(img, "Preset", "attn-only")] < 0 < shap[(text, "Preset", "attn-only")]
    # native rows: Capacity carries nothing, Algo carries it
    native_cap = levels[(levels["feature"] == "Capacity") & (levels["level"] == "4")]
    assert len(native_cap) == len(COLUMNS) and (native_cap["mean_abs_shap"] == 0).all()
    # 1007 (lr 5e-5) left out by default, 1003/1013/1023 absent anyway: lr levels stay 1–3
    assert set(levels.loc[levels["feature"] == "Lr level", "level"]) == {"1", "2", "3"}
    assert set(levels.loc[levels["feature"] == "Algo", "level"]) == {"lora", "loha", "lokr", "native"}


@pytest.mark.e2e
def test_analyze_outputs_and_determinism(analyzed, tmp_path):
    ranks = pd.read_csv(analyzed / "scaled_ranks.csv")
    assert not ranks["config"].str.contains("1007").any()
    assert ranks["scaled_rank"].between(0, 1).all()
    figures = sorted(p.name for p in (analyzed / "figures").glob("*.png"))
    assert "tradeoff_anime_epoch.png" in figures and "tradeoff_scene_preset.png" in figures
    assert sum(name.startswith("shap_") for name in figures) == len(COLUMNS)
    assert sum(name.startswith("epochs_") for name in figures) == len(COLUMNS)
    # same input → byte-identical tables and figures
    metrics = analyzed.parent / "paper" / "metrics.csv"
    assert (
        run_cli(["analyze", "--paper-csv", str(metrics), "--metrics", COLUMNS[0], "--out", str(tmp_path)])
        == 0
    )
    first = pd.read_csv(analyzed / "shap_levels.csv")
    again = pd.read_csv(tmp_path / "shap_levels.csv")
    pd.testing.assert_frame_equal(first[first["metric"] == COLUMNS[0]].reset_index(drop=True), again)
    for name in ("shap_image-similarity-dinov2-l-fb-resize-in.png", "tradeoff_anime_lr.png"):
        assert (tmp_path / "figures" / name).read_bytes() == (analyzed / "figures" / name).read_bytes()


def test_analyze_bad_input(tmp_path):
    metrics, _ = write_paper_files(tmp_path / "paper")
    with pytest.raises(BadInput, match="--metrics"):
        run_cli(
            ["analyze", "--paper-csv", str(metrics), "--metrics", "Nope (in)", "--out", str(tmp_path / "o")]
        )
    with pytest.raises(BadInput, match="config mapping"):
        run_cli(
            [
                "analyze",
                "--paper-csv",
                str(metrics),
                "--config-mapping",
                str(tmp_path / "x.csv"),
                "--out",
                "o",
            ]
        )
    assert not (tmp_path / "o").exists()
