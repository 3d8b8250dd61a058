"""Uncertainty on cases with known answers: the hierarchical bootstrap (zero width for a constant,
the analytic width for known variance components, scipy's one-level bootstrap), rank intervals,
Holm's correction, the long leaderboard and comparison tables, the report, the sample-size formula."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from lyco_bench.analysis.leaderboard import (
    COMPARISON_COLUMNS,
    LONG_COLUMNS,
    compute_leaderboard,
    fmt3,
    write_leaderboard,
)
from lyco_bench.analysis.report import write_report
from lyco_bench.analysis.sample_size import images_needed, sample_size_table
from lyco_bench.analysis.uncertainty import (
    BootstrapSettings,
    bootstrap_p_value,
    hierarchical_bootstrap,
    holm,
    percentile_interval,
    rank_intervals,
    z_value,
)
from lyco_bench.errors import BadInput
from tests.helpers import synthetic_results

IMG = "Image Similarity (dinov2-resize) (alter)"
TXT = "Text Similarity (clip) (alter)"
FAST = BootstrapSettings(n_resamples=400)


# --- the bootstrap itself ----------------------------------------------------------------------
def test_constant_metric_has_a_zero_width_interval(tmp_path):
    values = np.full((3, 4), 0.7)  # 3 seeds × 4 concepts, all equal, no image noise
    draws = hierarchical_bootstrap(
        values, np.zeros_like(values), [0, 2], n_resamples=300, rng=np.random.default_rng(1)
    )
    lo, hi = percentile_interval(draws[0])
    assert lo == pytest.approx(0.7, abs=1e-12) and hi == pytest.approx(0.7, abs=1e-12)
    board = compute_leaderboard(synthetic_results(tmp_path, {"A": 0.0, "B": 0.0}), bootstrap=FAST)
    rows = board.table
    assert np.allclose(rows["ci_low"], rows["mean"]) and np.allclose(rows["ci_high"], rows["mean"])


def _synthetic_units(rng, S, K, C, n, sigma_seed, sigma_concept, sigma_image):
    """Nested model: v = 1 + seed effect + concept effect + mean of n images; std from the images."""
    seed = rng.normal(0, sigma_seed, (S, 1, 1))
    concept = rng.normal(0, sigma_concept, (S, K, C))
    images = rng.normal(0, sigma_image, (S, K, C, n))
    values = 1 + seed + concept + images.mean(-1)
    within = images.var(-1, ddof=1) / n
    return values.reshape(S, K * C), within.reshape(S, K * C)


@pytest.mark.parametrize(
    "design",
    [
        (10, 2, 4, 8, 0.03, 0.02, 0.05),  # every level contributes
        (1, 2, 10, 8, 0.0, 0.02, 0.05),  # one seed: concepts and images only
        (8, 2, 4, 16, 0.0, 0.0, 0.08),  # images only (the parametric level)
    ],
)
def test_hierarchical_bootstrap_width_matches_the_variance_components(design):
    S, K, C, n, ss, sc, si = design
    analytic = 2 * z_value() * np.sqrt(ss**2 / S + sc**2 / (S * K * C) + si**2 / (n * S * K * C))
    rng = np.random.default_rng(7)
    widths = []
    for _ in range(40):
        values, within = _synthetic_units(rng, S, K, C, n, ss, sc, si)
        lo, hi = percentile_interval(
            hierarchical_bootstrap(values, within, [0, C], n_resamples=400, rng=rng)[0]
        )
        widths.append(hi - lo)
    assert np.mean(widths) == pytest.approx(analytic, rel=0.15)


def test_one_level_case_agrees_with_scipy_bootstrap():
    """Seeds only (one unit each, no image noise): the seed means, rescaled by √(S/(S−1)),
    resampled — what scipy.stats.bootstrap's percentile interval does with those values."""
    from scipy.stats import bootstrap

    seeds = np.array([0.61, 0.58, 0.66, 0.70, 0.55, 0.63, 0.59, 0.68])
    s = len(seeds)
    ours = hierarchical_bootstrap(seeds[:, None], None, None, n_resamples=20000, rng=np.random.default_rng(3))
    lo, hi = percentile_interval(ours[0])
    rescaled = seeds.mean() + np.sqrt(s / (s - 1)) * (seeds - seeds.mean())
    ref = bootstrap(
        (rescaled,), np.mean, n_resamples=20000, method="percentile", rng=np.random.default_rng(4)
    )
    assert lo == pytest.approx(ref.confidence_interval.low, abs=0.004)
    assert hi == pytest.approx(ref.confidence_interval.high, abs=0.004)


def test_bootstrap_p_value_and_holm_hand_example():
    assert bootstrap_p_value(np.zeros(99)) == 1.0  # no difference at all
    assert bootstrap_p_value(np.full(99, 0.1)) == pytest.approx(2 / 100)  # never ≤ 0: the smallest p
    # Holm: sorted 0.005, 0.01, 0.03, 0.04 × 4, 3, 2, 1 = 0.02, 0.03, 0.06, 0.04 → running max
    assert holm([0.01, 0.04, 0.03, 0.005]).tolist() == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, np.nan, 0.4]).tolist()[::2] == pytest.approx([0.8, 0.8])  # NaN: not in the family
    assert np.isnan(holm([0.5, np.nan])[1]) and holm([0.9, 0.8]).max() <= 1.0


def test_rank_interval_rule():
    # four configurations: 0 clearly best; 1 and 2 indistinguishable; 3 clearly worst
    x = np.array([0.9, 0.5, 0.5, 0.1])
    sig = np.ones((4, 4), dtype=bool)
    sig[1, 2] = sig[2, 1] = False
    np.fill_diagonal(sig, False)
    r = rank_intervals(x, sig)
    assert r["rank"].tolist() == [1, 2, 2, 4]
    assert r["rank_low"].tolist() == [1, 2, 2, 4] and r["rank_high"].tolist() == [1, 3, 3, 4]
    assert r["separated"].tolist() == [True, False, False, True]


# --- the leaderboard ---------------------------------------------------------------------------
def test_identical_configs_tie_and_a_clearly_better_one_ranks_above(tmp_path):
    results = synthetic_results(tmp_path, {"copy-a": 0.0, "copy-b": 0.0, "better": 0.2}, noise=0.02)
    board = compute_leaderboard(results, bootstrap=FAST).table.set_index(["config", "label"])
    a, b, best = (board.loc[(c, IMG)] for c in ("copy-a", "copy-b", "better"))
    assert (a["mean"], a["ci_low"], a["ci_high"]) == pytest.approx((b["mean"], b["ci_low"], b["ci_high"]))
    assert a["rank"] == b["rank"] == 2  # ties share the best rank
    assert a["rank_low"] <= b["rank_high"] and b["rank_low"] <= a["rank_high"]  # overlapping: tied
    assert a["rank_high"] == b["rank_high"] == 3 and not a["separated"] and not b["separated"]
    assert best["rank"] == best["rank_low"] == best["rank_high"] == 1  # strictly above both
    assert best["rank_high"] < a["rank_low"]


def test_long_csv_and_comparison_csv(tmp_path):
    results = synthetic_results(tmp_path / "in", {"ref": 0.0, "up": 0.1, "same": 0.0}, noise=0.01, std=0.05)
    paths = write_leaderboard(results, tmp_path / "out", bootstrap=FAST, reference="ref")
    long = pd.read_csv(paths["csv"])
    assert list(long.columns[: len(LONG_COLUMNS)]) == LONG_COLUMNS
    assert "std" not in long.columns  # a score column, not one of the run's settings
    assert {"epoch", "label", "separated", "algo", "preset", "lr", "mean_rank", "pareto"} <= set(long.columns)
    assert (
        len(long) == 3 * 2
        and not long.duplicated(["config", "metric", "prompt_class", "encoder", "mode"]).any()
    )
    comp = pd.read_csv(paths["comparison"]).set_index(["config", "metric"])
    assert list(pd.read_csv(paths["comparison"]).columns) == COMPARISON_COLUMNS
    assert set(comp["reference"]) == {"ref"}
    up, same = comp.loc[("up", "image_similarity")], comp.loc[("same", "image_similarity")]
    assert up["delta"] == pytest.approx(0.1) and up["ci_low"] > 0 and up["verdict"] == "better"
    assert up["p_holm"] == pytest.approx(min(1.0, 2 * up["p_value"]))  # Holm over the row's 2 metrics
    assert same["delta"] == pytest.approx(0.0) and same["p_value"] > 0.5 and pd.isna(same["verdict"])
    # default reference: the first configuration; an unknown one is refused before writing
    assert compute_leaderboard(results, bootstrap=FAST).reference == "ref"
    with pytest.raises(BadInput, match="analysis.reference: 'nope'"):
        write_leaderboard(results, tmp_path / "never", bootstrap=FAST, reference="nope")
    assert not (tmp_path / "never").exists()
    # reproducible: same bootstrap seed → same bytes; another seed → other resamples
    again = write_leaderboard(results, tmp_path / "again", bootstrap=FAST, reference="ref")
    assert again["csv"].read_bytes() == paths["csv"].read_bytes()
    other = write_leaderboard(
        results, tmp_path / "other", bootstrap=BootstrapSettings(400, seed=1), reference="ref"
    )
    assert other["csv"].read_bytes() != paths["csv"].read_bytes()


def test_reference_later_epochs_are_compared_with_its_first(tmp_path):
    """More training, paired by seed and concept: the reference's epoch 2 against its epoch 1."""
    results = synthetic_results(tmp_path, {"ref": 0.0, "later": 0.05, "other": 0.0}, noise=0.01, std=0.05)
    later = results["config"] == "later"
    results.loc[later, "config"], results.loc[later, "epoch"] = "ref", 2
    comp = compute_leaderboard(results, bootstrap=FAST, reference="ref").comparison
    own = comp[(comp["config"] == "ref") & (comp["metric"] == "image_similarity")]
    assert len(own) == 1
    row = own.iloc[0]
    assert (row["epoch"], row["reference"], row["reference_epoch"]) == (2, "ref", 1)
    assert row["delta"] == pytest.approx(0.05) and row["ci_low"] > 0 and row["verdict"] == "better"
    # "other" (epoch 1) is compared with the reference at its own epoch
    assert set(comp.loc[comp["config"] == "other", "reference_epoch"]) == {1}


def test_report_renders_intervals_and_comparison(tmp_path):
    results = synthetic_results(tmp_path / "in", {"ref": 0.0, "up": 0.1, "same": 0.0}, noise=0.01, std=0.05)
    sizes = sample_size_table(results, [IMG, TXT], settings=FAST, target=0.01, images_per_prompt=2)
    index = write_report(
        study_name="unc", results=results, out_dir=tmp_path / "r", bootstrap=FAST, sample_size=sizes
    )
    html = index.read_text()
    row = pd.read_csv(tmp_path / "r" / "leaderboard.csv").set_index(["config", "label"]).loc[("up", IMG)]
    # the mean, its rank, and its interval underneath
    assert f">{fmt3(row['mean'])} <span" in html
    assert f'<br><span class="sub">[{fmt3(row["ci_low"])}, {fmt3(row["ci_high"])}]</span>' in html
    assert 'class="rank tied"' in html and 'class="rank"' in html  # grey where not separated
    assert 'id="comparison-table"' in html and 'class="better"' in html and "Holm" in html
    assert 'id="precision-table"' in html and (tmp_path / "r" / "comparison.csv").is_file()
    md = (tmp_path / "r" / "leaderboard.md").read_text()
    assert "≈#" in md and "▲p=" in md


# --- sample size -------------------------------------------------------------------------------
def test_sample_size_formula():
    z, sigma, delta = z_value(), 0.1, 0.01
    assert z == pytest.approx(1.959964, abs=1e-6)
    # one unit of n images, no seed/concept floor: n = (zσ/δ)² whatever n is now
    for now in (4, 50):
        n = images_needed(delta, image_var=sigma**2 / now, total_var=sigma**2 / now, images_now=now)
        assert n == pytest.approx((z * sigma / delta) ** 2)
    # a floor takes its share of the target: n = now·image_var / (δ²/z² − floor)
    floor = 0.5 * (delta / z) ** 2
    n = images_needed(delta, image_var=sigma**2 / 4, total_var=floor + sigma**2 / 4, images_now=4)
    assert n == pytest.approx(2 * (z * sigma / delta) ** 2)
    assert images_needed(delta, image_var=1e-6, total_var=1e-6 + 2 * (delta / z) ** 2, images_now=4) == np.inf
    assert np.isnan(images_needed(delta, image_var=0.0, total_var=1e-4, images_now=4))  # no per-image std


def test_sample_size_table(tmp_path):
    results = synthetic_results(tmp_path, {"A": 0.0, "B": 0.05}, noise=0.0, std=0.2, n_images=4)
    table = sample_size_table(results, [IMG, TXT], settings=FAST, target=0.01, images_per_prompt=2).set_index(
        "label"
    )
    img = table.loc[IMG]
    assert img["image_std"] == pytest.approx(0.2) and img["images_per_unit"] == 4 and img["n_seeds"] == 3
    # only images vary: the mean averages 3 seeds × 4 concepts × 4 images; floor ≈ 0
    assert img["half_width"] == pytest.approx(z_value() * 0.2 / np.sqrt(48), rel=0.15)
    assert img["floor_half_width"] < 0.3 * img["half_width"]
    per_unit = (z_value() * 0.2 / 0.01) ** 2 / 12  # the mean's 12 units share the images
    assert img["images_per_unit_needed"] == pytest.approx(per_unit, rel=0.35)
    assert img["images_per_prompt_needed"] == pytest.approx(img["images_per_unit_needed"] / 2, abs=1)
    # per prompt class, as a prompt set gives them (alter: 2 images per prompt; train: none here)
    by_class = sample_size_table(
        results, [IMG], settings=FAST, target=0.01, images_per_prompt={"alter": 2, "train": 5}
    ).iloc[0]
    assert by_class["images_per_prompt"] == 2
    assert by_class["images_per_prompt_needed"] == img["images_per_prompt_needed"]
    no_std = sample_size_table(synthetic_results(tmp_path / "n", {"A": 0.0}), [IMG], settings=FAST)
    assert np.isnan(no_std.loc[0, "images_per_unit_needed"]) and "std" in no_std.loc[0, "note"]
