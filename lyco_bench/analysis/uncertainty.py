"""Uncertainty of every number the analysis compares: hierarchical bootstrap intervals, paired
differences, rank intervals and Holm's correction (the images a target precision needs:
:mod:`lyco_bench.analysis.sample_size`).

Replication units
-----------------
A leaderboard value is a mean over training **seeds** of a mean over **concepts** (categories
weighted equally: the mean over categories of the mean over their concepts, which is what the
category rows of lyco-bench's scores hold) of a mean over **images**. ``unit_rows`` picks, for each
(checkpoint, metric label), the concept-level rows (a category without them: its category row; a
checkpoint without category rows: its whole-checkpoint row). Each unit carries its value and, when
the score row has a ``std`` column (the per-image standard deviation of a value that is a mean over
images), its image-level sampling variance ``std² / n_images``; set statistics (Vendi, centroid
distance) have none, and their image noise is then part of the concept level.

The hierarchical bootstrap
--------------------------
:mod:`lyco_bench.analysis.bootstrap` draws seeds, concepts and images, each level rescaled to
its own variance component; intervals are percentile intervals of the resampled means.

Paired differences and ranks
----------------------------
Configurations share seeds and concepts (the same training seeds, the same prompts): a difference
between two configurations is bootstrapped with the *same* drawn seeds and concepts for both, its
levels rescaled to the difference's own variance components. The two checkpoints' images share
prompts and sampler seeds too, so their image noise is correlated and std²/n of each says nothing
about the noise of their difference: a difference has no parametric image level, its concept level
(the spread of the concept differences) carries the images' part as it is. A configuration missing
a drawn seed or concept skips it.

``rank_low = 1 + #{configurations significantly better}``,
``rank_high = n − #{configurations significantly worse}``: the ranks a configuration can hold given
the paired comparisons. "Significantly better": the two-sided paired bootstrap p-value
``min(1, 2·min(1 + #{Δ* ≤ 0}, 1 + #{Δ* ≥ 0}) / (B + 1))`` (the inversion of the percentile
interval) is at most ``α / (n − 1)`` and the point difference favours it. **Multiple comparisons:
Bonferroni over each configuration's n − 1 comparisons**, so each configuration's rank interval
holds with probability ≥ 1 − α (per row, not simultaneously for the whole table); the threshold is
the same for every pair, so "A is above B" reads the same from A's row and from B's. So that a pair
can reach it, a label with n configurations is resampled at least ``4 (n − 1) / α`` times.
A copy of a configuration has Δ* centred on 0 and ties with it; a rank is "separated" when the
configuration differs significantly from both neighbours in the ranking.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from lyco_bench.analysis.bootstrap import (
    CHUNK_ELEMENTS,
    LEVEL,
    N_RESAMPLES,
    Components,
    Draws,
    bootstrap_p_value,
    components,
    draw_indices,
    hierarchical_bootstrap,
    percentile_interval,
    resample,
)

__all__ = [
    "BOOTSTRAP_SEED", "CHUNK_ELEMENTS", "LEVEL", "N_RESAMPLES", "BootstrapSettings", "Components", "Draws",
    "LabelUncertainty", "UnitArrays", "bootstrap_p_value", "components", "draw_indices",
    "hierarchical_bootstrap", "holm", "label_uncertainty", "percentile_interval", "rank_intervals",
    "resample", "unit_arrays", "unit_rows", "z_value",
]  # fmt: skip

BOOTSTRAP_SEED = 0


@dataclass(frozen=True)
class BootstrapSettings:
    """How intervals are computed: resamples B, the bootstrap seed and the confidence level."""

    n_resamples: int = N_RESAMPLES
    seed: int = BOOTSTRAP_SEED
    level: float = LEVEL

    def __post_init__(self) -> None:
        from lyco_bench.errors import BadInput

        if self.n_resamples < 100:
            raise BadInput(f"bootstrap resamples: {self.n_resamples} (at least 100)")
        if not 0.5 <= self.level < 1:
            raise BadInput(f"confidence level: {self.level} (between 0.5 and 1)")

    @property
    def alpha(self) -> float:
        return 1.0 - self.level

    def rng(self, *keys: str) -> np.random.Generator:
        """A generator fixed by the bootstrap seed and `keys` (e.g. the metric label)."""
        return np.random.default_rng([self.seed, *(zlib.crc32(k.encode()) for k in keys)])

    def resamples_for(self, n_ranked: int) -> int:
        """B for a label ranking n configurations: enough that a pair can pass α/(n−1)."""
        return max(self.n_resamples, math.ceil(4 * max(n_ranked - 1, 1) / self.alpha))


def z_value(level: float = LEVEL) -> float:
    """The two-sided normal quantile (1.96 for 95%)."""
    from scipy.stats import norm

    return float(norm.ppf(0.5 + level / 2))


# --- the units ---------------------------------------------------------------------------------
UNIT_COLUMNS = [
    "checkpoint", "config", "epoch", "seed", "algo", "label", "metric", "encoder", "mode",
    "prompt_class", "category", "unit", "value", "within", "n_images", "std",
]  # fmt: skip


def unit_rows(results: pd.DataFrame) -> pd.DataFrame:
    """The replication units of every (checkpoint, label) (module docstring), NaN values dropped.

    ``unit`` names the concept (``category/concept``), ``within`` is ``std² / n_images`` (0 where
    the table has no finite ``std``), ``seed`` is -1 where the row has none (the base model)."""
    t = results[results["value"].notna()]
    level = np.select([t["category"] == "", t["concept"] == "", t["subclass"] == ""], [0, 1, 2], default=3)
    key_cl = pd.MultiIndex.from_frame(t[["checkpoint", "label"]].astype(str))
    key_cat = pd.MultiIndex.from_frame(t[["checkpoint", "label", "category"]].astype(str))
    concept = level == 2
    category = (level == 1) & ~key_cat.isin(key_cat[concept])
    whole = (level == 0) & ~key_cl.isin(key_cl[concept | category])
    finer = (level == 3) & ~key_cl.isin(key_cl[concept | category | whole])
    units = t[concept | category | whole | finer].copy()
    units["unit"] = units["category"] + "/" + units["concept"] + "/" + units["subclass"]
    n = pd.to_numeric(units["n_images"], errors="coerce") if "n_images" in units else np.nan
    std = pd.to_numeric(units["std"], errors="coerce") if "std" in units else pd.Series(np.nan, units.index)
    units["std"] = std
    within = std.astype(float) ** 2 / n
    units["within"] = within.where(np.isfinite(within) & (within >= 0), 0.0)
    units["seed"] = pd.to_numeric(units["seed"], errors="coerce").fillna(-1).astype(int)
    for col in UNIT_COLUMNS:
        if col not in units:
            units[col] = np.nan
    return units[UNIT_COLUMNS].reset_index(drop=True)


@dataclass
class UnitArrays:
    """One label's units as arrays: values/within (G groups, S seeds, U units), NaN = missing.
    Units are sorted by category, so each stratum (category) is a contiguous slice."""

    values: np.ndarray
    within: np.ndarray
    starts: np.ndarray  # (K,) first unit of each stratum
    seeds: list[int]
    units: list[str]
    n_images: np.ndarray  # (G, S, U)
    std: np.ndarray  # (G, S, U)

    @property
    def strata(self) -> np.ndarray:
        """(U,) stratum index of every unit."""
        counts = np.diff(np.append(self.starts, self.values.shape[-1]))
        return np.repeat(np.arange(len(self.starts)), counts)


def unit_arrays(rows: pd.DataFrame, group: pd.Series | np.ndarray, n_groups: int) -> UnitArrays:
    """`rows` (unit_rows of one label) into arrays; `group` (one per row) gives each row's group
    number 0..n_groups−1 (a group without rows is all NaN)."""
    g = np.asarray(group, dtype=int)
    seeds = sorted(rows["seed"].unique())
    order = rows[["category", "unit"]].drop_duplicates().sort_values(["category", "unit"])
    units = order["unit"].tolist()
    categories = order["category"].to_numpy()
    starts = np.flatnonzero(np.r_[True, categories[1:] != categories[:-1]]) if len(units) else np.array([0])
    s = pd.Index(seeds).get_indexer(rows["seed"])
    u = pd.Index(units).get_indexer(rows["unit"])
    shape = (n_groups, len(seeds), len(units))
    arrays = {}
    for name, col in (("values", "value"), ("within", "within"), ("n_images", "n_images"), ("std", "std")):
        a = np.full(shape, np.nan)
        a[g, s, u] = pd.to_numeric(rows[col], errors="coerce").to_numpy(dtype=float)
        arrays[name] = a
    arrays["within"] = np.where(np.isnan(arrays["values"]), np.nan, np.nan_to_num(arrays["within"]))
    return UnitArrays(starts=starts, seeds=seeds, units=units, **arrays)


def holm(p_values: Sequence[float]) -> np.ndarray:
    """Holm's step-down adjusted p-values (family: the non-NaN entries; NaN stays NaN).

    Sorted ascending p₍₁₎ ≤ … ≤ p₍ₘ₎: adjusted p₍ᵢ₎ = min(1, max_{j≤i} (m − j + 1)·p₍ⱼ₎)."""
    p = np.asarray(p_values, dtype=float)
    out = np.full(p.shape, np.nan)
    ok = np.flatnonzero(~np.isnan(p))
    if not len(ok):
        return out
    order = ok[np.argsort(p[ok], kind="stable")]
    m = len(order)
    adjusted = np.maximum.accumulate((m - np.arange(m)) * p[order])
    out[order] = np.minimum(adjusted, 1.0)
    return out


def rank_intervals(oriented: np.ndarray, significant: np.ndarray) -> dict[str, np.ndarray]:
    """Point ranks (1 = best, ties share the best rank), rank_low..rank_high and `separated`.

    `oriented`: (n,) point estimates, higher is better; `significant`: (n, n) symmetric, True
    where a pair differs significantly. i is better than j when significant and oriented[i] >
    oriented[j]; rank_low = 1 + #better than i, rank_high = n − #worse than i. `separated`: i
    differs significantly from both neighbours in the ranking (the one neighbour at either end;
    a configuration ranked alone is separated)."""
    x = np.asarray(oriented, dtype=float)
    n = len(x)
    better = np.asarray(significant, dtype=bool) & (x[:, None] > x[None, :])  # better[i, j]: i beats j
    rank = 1 + (x[None, :] > x[:, None]).sum(1)
    low = np.minimum(1 + better.sum(0), rank)
    high = np.maximum(n - better.sum(1), rank)
    order = np.argsort(-x, kind="stable")
    separated = np.zeros(n, dtype=bool)
    for pos, i in enumerate(order):
        neighbours = [order[p] for p in (pos - 1, pos + 1) if 0 <= p < n]
        separated[i] = all(significant[i, j] for j in neighbours)  # alone: nothing to confuse it with
    return {"rank": rank, "rank_low": low, "rank_high": high, "separated": separated}


# --- one label ---------------------------------------------------------------------------------
@dataclass
class LabelUncertainty:
    """Intervals of every group of one label, and the paired comparisons among the ranked ones."""

    mean: np.ndarray  # (G,)
    ci_low: np.ndarray
    ci_high: np.ndarray
    n_seeds: np.ndarray
    image_var: np.ndarray  # the images' share of the variance of the mean
    n_resamples: int
    left_out: np.ndarray | None = None  # (G,) Components.left_out: "all" = no interval (n/a)
    ranks: dict[str, np.ndarray] | None = None  # over `ranked` (positions into the groups)
    ranked: np.ndarray | None = None
    pairs: dict[tuple[int, int], dict[str, float]] | None = None  # (i, j) → delta (i − j), CI, p


def label_uncertainty(
    arrays: UnitArrays,
    *,
    settings: BootstrapSettings,
    rng: np.random.Generator,
    higher_is_better: bool = True,
    ranked: np.ndarray | None = None,
    compare: Sequence[tuple[int, int]] = (),
) -> LabelUncertainty:
    """CIs of every group; with `ranked` (a bool mask of groups), rank intervals among them from
    all their pairwise paired differences; `compare`: pairs (i, j) whose Δ = mean_i − mean_j,
    percentile CI and p-value are returned (both must be ranked groups)."""
    comp = components(arrays.values, arrays.within, arrays.starts)
    has = ~np.isnan(comp.point)
    ranked_idx = np.flatnonzero(has & (ranked if ranked is not None else False))
    n = len(ranked_idx)
    n_res = settings.resamples_for(n) if ranked is not None else settings.n_resamples
    seed_idx, unit_idx = draw_indices(
        arrays.values.shape[1], arrays.starts, arrays.values.shape[2], n_res, rng
    )
    draws = resample(comp, arrays.starts, seed_idx, unit_idx)
    means = draws.means(rng)
    lo, hi = percentile_interval(means, settings.level)
    interval = has & comp.resampled()  # a value from a single unit at every level has none
    out = LabelUncertainty(
        mean=comp.point, ci_low=np.where(interval, lo, np.nan), ci_high=np.where(interval, hi, np.nan),
        n_seeds=comp.n_seeds, image_var=comp.image_var, n_resamples=n_res, left_out=comp.left_out(),
    )  # fmt: skip
    if ranked is None:
        return out
    sign = 1.0 if higher_is_better else -1.0
    ii, jj = np.triu_indices(n, k=1)
    gi, gj = ranked_idx[ii], ranked_idx[jj]
    wanted = {tuple(p) for p in compare}
    significant = np.zeros((n, n), dtype=bool)
    threshold = settings.alpha / max(n - 1, 1)
    pairs: dict[tuple[int, int], dict[str, float]] = {}
    block = max(1, CHUNK_ELEMENTS // max(1, n_res))
    for lo_p in range(0, len(gi), block):
        a, b = gi[lo_p : lo_p + block], gj[lo_p : lo_p + block]
        # the two checkpoints' images share prompts and sampler seeds: their image noise is
        # correlated, so the difference's concept level carries it (no parametric draw)
        diff = components(arrays.values[a] - arrays.values[b], np.zeros_like(arrays.values[a]), arrays.starts)
        delta = (
            (comp.point[a] - comp.point[b])[:, None]
            + diff.shrink_seed[:, None] * (draws.seed[a] - draws.seed[b])
            + diff.shrink_concept[:, None] * (draws.concept[a] - draws.concept[b])
        )
        # a difference with nothing to resample (one seed, one unit per stratum) has no p-value
        p = np.where(diff.resampled(), bootstrap_p_value(delta), np.nan)
        sig = p <= threshold
        significant[ii[lo_p : lo_p + block], jj[lo_p : lo_p + block]] = sig
        for k, (x, y) in enumerate(zip(a, b, strict=True)):
            for key, s in (((x, y), 1.0), ((y, x), -1.0)):
                if key in wanted:
                    q_lo, q_hi = percentile_interval(s * delta[k], settings.level)
                    if np.isnan(p[k]):
                        q_lo = q_hi = np.nan
                    pairs[key] = {
                        "delta": float(s * (comp.point[x] - comp.point[y])), "ci_low": float(q_lo),
                        "ci_high": float(q_hi), "p_value": float(p[k]), "n_seeds": int(diff.n_seeds[k]),
                    }  # fmt: skip
    significant |= significant.T
    out.ranks = rank_intervals(sign * comp.point[ranked_idx], significant)
    out.ranks["separated"] &= interval[ranked_idx]  # never a separated rank without an interval
    out.ranked = ranked_idx
    out.pairs = pairs
    return out
