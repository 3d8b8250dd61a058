"""Intervals where uncertainty cannot be estimated (n/a, what a one-unit level leaves out, never a
separated rank) and common random numbers (identical rows: identical intervals and tied ranks,
whatever the configuration's name or position), on a real scored configuration, every metric."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest

from lyco_bench.analysis.leaderboard import compute_leaderboard, write_leaderboard
from lyco_bench.analysis.report import write_report
from lyco_bench.analysis.results import collect_results
from lyco_bench.analysis.uncertainty import BootstrapSettings, components
from tests.helpers import tiny_encoder_settings, write_generation

FAST = BootstrapSettings(n_resamples=400)


@pytest.fixture(scope="module")
def real_scores(tmp_path_factory, demo_dataset_dir) -> pd.DataFrame:
    """One checkpoint of the scoring tests' generation scored with every default metric."""
    from lyco_bench.metrics.features import EncoderSettings
    from lyco_bench.metrics.scoring import score
    from tests.helpers import _manifest_rows

    root = tmp_path_factory.mktemp("real")
    rows = _manifest_rows()
    images = write_generation(root / "ck", rows, seed=1)
    base_rows = [dict(r, checkpoint="base") for r in rows if r["prompt_class"] in ("agnostic", "style")]
    base = write_generation(root / "base", base_rows, seed=2)
    settings = EncoderSettings(**tiny_encoder_settings(tmp_path_factory))
    return score(
        images_dir=images, dataset=demo_dataset_dir, base_images_dir=base, encoders=settings,
        cache_dir=root / "cache",
    )  # fmt: skip


def _results(tmp_path, scores: pd.DataFrame, configs: dict[str, float], seeds=(1, 2)) -> pd.DataFrame:
    """Configurations from one real score table: each row's value moved by the configuration's
    offset, a seed effect and a fixed per-row wobble (the same for every configuration)."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    wobble = np.sin(np.arange(len(scores)) * 1.7) * 0.01
    files, runs = [], []
    for config, offset in configs.items():
        source = config.removesuffix("-copy")
        for seed in seeds:
            ckpt = f"{config}-s{seed}-e001"
            shift = offset if source == config else configs[source]
            frame = scores.assign(
                checkpoint=ckpt, value=scores["value"] + shift + 0.003 * seed + wobble * seed
            )
            path = tmp_path / f"{ckpt}.parquet"
            frame.to_parquet(path)
            files.append(path)
            runs.append({"checkpoint": ckpt, "config": config, "algo": "lora", "preset": "attn-mlp",
                         "lr": 1e-3, "seed": seed, "epoch": 1, "trainable_params": 100, "file_bytes": 1000})  # fmt: skip
    return collect_results(files, pd.DataFrame(runs))


def test_identical_rows_identical_intervals_and_tied_ranks_every_metric(tmp_path, real_scores):
    # "m-copy" is an exact copy of "m" under another name, sorted elsewhere among the configurations
    results = _results(tmp_path, real_scores, {"a": 0.01, "m": 0.0, "z": -0.02, "m-copy": 0.0})
    board = compute_leaderboard(results, bootstrap=FAST).table.set_index(["config", "label"])
    labels = sorted(set(board.index.get_level_values("label")))
    assert len(labels) > 10  # every metric of the real table, per class, encoder and mode
    for label in labels:
        m, copy = board.loc[("m", label)], board.loc[("m-copy", label)]
        for col in ("mean", "ci_low", "ci_high", "rank", "rank_low", "rank_high", "left_out"):
            assert m[col] == copy[col] or (pd.isna(m[col]) and pd.isna(copy[col])), (label, col)
        assert not m["separated"] and not copy["separated"], label  # a copy ties with its original
    assert real_scores["std"].notna().any()  # per-image metrics (parametric image draws) are among them


def test_one_unit_at_every_level_has_no_interval_nor_separated_rank(tmp_path):
    runs, files = [], []
    tmp_path.mkdir(parents=True, exist_ok=True)
    for config, v in (("A", 0.90), ("B", 0.50), ("C", 0.70)):
        ckpt = f"{config}-s1-e001"
        frame = pd.DataFrame([
            # one <combine> pair, a set statistic (no std): nothing to resample at any level
            {"checkpoint": ckpt, "category": "x+y", "concept": "p+q", "subclass": "", "prompt_class": "combine",
             "metric": "vendi", "encoder": "dinov2", "mode": "", "value": v, "std": np.nan, "n_images": 4,
             "prompt_set_version": "1", "reason": ""},
            # one concept with a per-image spread: an interval over images only
            {"checkpoint": ckpt, "category": "x", "concept": "p", "subclass": "", "prompt_class": "trigger",
             "metric": "text_similarity", "encoder": "clip", "mode": "", "value": v / 3, "std": 0.05,
             "n_images": 8, "prompt_set_version": "1", "reason": ""},
        ])  # fmt: skip
        path = tmp_path / f"{ckpt}.parquet"
        frame.to_parquet(path)
        files.append(path)
        runs.append({"checkpoint": ckpt, "config": config, "algo": "lora", "preset": "attn-mlp", "lr": 1e-3,
                     "seed": 1, "epoch": 1, "trainable_params": 100, "file_bytes": 1000})  # fmt: skip
    results = collect_results(files, pd.DataFrame(runs))
    board = compute_leaderboard(results, bootstrap=FAST, labels=sorted(set(results["label"])))
    t = board.table
    vendi = t[t["metric"] == "vendi"]
    assert vendi["ci_low"].isna().all() and vendi["ci_high"].isna().all()
    assert (vendi["left_out"] == "all").all() and not vendi["separated"].any()
    assert (
        sorted(vendi["rank"]) == [1, 2, 3]
        and (vendi["rank_low"] == 1).all()
        and (vendi["rank_high"] == 3).all()
    )
    text = t[t["metric"] == "text_similarity"]
    assert text["ci_low"].notna().all() and (text["left_out"] == "seed+concept").all()
    # with one unit, the interval is the images' normal one: ± z·std/√n
    half = (text["ci_high"] - text["ci_low"]) / 2
    assert half.to_numpy() == pytest.approx(np.full(3, 1.96 * 0.05 / np.sqrt(8)), rel=0.15)
    comp = board.comparison
    assert comp["p_value"].isna().all() and comp["ci_low"].isna().all()  # differences: nothing resampled
    paths = write_leaderboard(results, tmp_path / "out", board=board)
    csv = pd.read_csv(paths["csv"], keep_default_na=False)
    assert set(csv.loc[csv["metric"] == "vendi", "ci_low"]) == {"n/a"}
    md, html = paths["md"].read_text(), paths["html"].read_text()
    assert "0.900 [n/a]" in md and "0.900 [n/a]" in html
    assert "Cells without a full interval" in md and "Cells without a full interval" in html
    assert "seed and concept variance left out" in md and "2 or more training seeds" in md
    index = write_report(results=results, out_dir=tmp_path / "report", study_name="one-seed").read_text()
    # the report's tables write the interval under the mean
    assert re.search(r'>0\.900 <span[^>]*>[^<]*</span><br><span class="sub">\[n/a\]</span>', index)
    assert "Cells without a full interval" in index


def test_left_out_levels_by_hand():
    nan = np.nan
    values = np.array([
        [[0.1, 0.2, nan], [0.3, 0.4, nan]],  # 2 seeds, a stratum of 2 units: full
        [[0.1, nan, nan], [0.2, nan, nan]],  # 2 seeds, 1 unit: concept left out
        [[0.1, 0.3, nan], [nan, nan, nan]],  # 1 seed, 2 units: seed left out
        [[0.5, nan, nan], [nan, nan, nan]],  # 1 seed, 1 unit, no image spread: nothing
    ])  # fmt: skip
    comp = components(values, np.zeros_like(values), np.array([0]))
    assert list(comp.left_out()) == ["", "concept", "seed", "all"]
    within = np.where(np.isnan(values), 0.0, 0.01)
    assert components(values, within, np.array([0])).left_out()[3] == "seed+concept"  # images only
