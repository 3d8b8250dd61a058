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
One resample draws the seeds with replacement; within each drawn seed, the concepts of each
category with replacement; within each drawn concept, its images *parametrically*: a normal draw
of variance ``std² / n_images`` around the concept's value (the images themselves are not in the
results table, only their mean and standard deviation).

Resampling every level of the raw values with replacement would count the lower levels twice: a
seed's mean already carries the spread of its concepts and images. So each level resamples its own
centred effects, rescaled to that level's variance component (method of moments, the balanced
one-way ANOVA estimates; Davison & Hinkley 1997 §3.8, Carpenter, Goldstein & Rasbash 2003):

- concept effects ``r = v − stratum mean`` × √(C/(C−1)), shrunk so that their pooled variance is
  ``σ²_concept = max(0, s²_r − mean(std²/n))`` (the images are drawn separately);
- seed effects ``m_s − m̄`` × √(S/(S−1)), shrunk to ``σ²_seed = max(0, s²_m − V_low)``, V_low being
  the variance a seed mean gets from its concepts and images.

The bootstrap variance of the mean is then, in expectation, ``s²_m / S`` (the classic seed-level
estimate) when the seed means vary more than their concepts and images explain, and the
lower-level estimate otherwise; with one seed, the interval covers concepts and images only.
Intervals are percentile intervals of the resampled means, with a fixed bootstrap seed per metric
label (reproducible reports, independent of which other labels are analysed). Common random
numbers: every configuration of a label is resampled with the same drawn seeds, concepts and
standard-normal image draws, so identical rows get identical intervals and tied ranks whatever
their name or position, and paired comparisons are sharper.

Where a level has a single unit (one seed; one concept or pair per category) it adds nothing to
the interval, which leaves that level's variance out (``Components.left_out``); a value with a
single unit at every level and no per-image spread has nothing to resample: no interval (n/a), no
p-value against another such value, and never a separated rank. With two or three
seeds the seed level has one or two degrees of freedom: read the intervals as indicative.

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

LEVEL = 0.95
N_RESAMPLES = 2000
BOOTSTRAP_SEED = 0
CHUNK_ELEMENTS = 1_500_000  # (groups × resamples × seeds × concepts) floats per block


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


# --- the bootstrap -----------------------------------------------------------------------------
def _reduce(a: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Sum over each stratum along the last axis."""
    return np.add.reduceat(a, starts, axis=-1) if a.shape[-1] else a


def _div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(b > 0, a / np.where(b > 0, b, 1), 0.0)


@dataclass
class Components:
    """What resampling needs from a set of groups (no resample axis yet)."""

    point: np.ndarray  # (G,) the estimate: mean over seeds of mean over strata of mean over units
    seed_dev: np.ndarray  # (G, S) √(S/(S−1))·(m_s − m̄), 0 where the seed is missing
    res: np.ndarray  # (G, S, U) √(C/(C−1))·(v − stratum mean), 0 where missing
    within: np.ndarray  # (G, S, U) std²/n, 0 where missing
    valid: np.ndarray  # (G, S, U) bool
    shrink_seed: np.ndarray  # (G,) √(σ²_seed / s²_m)
    shrink_concept: np.ndarray  # (G,) √(σ²_concept / s²_r)
    n_seeds: np.ndarray  # (G,)
    image_var: np.ndarray  # (G,) the images' part of the variance of the point estimate
    max_units: np.ndarray  # (G,) the most units a stratum of a seed has (1: no concept level)

    def left_out(self) -> np.ndarray:
        """(G,) the variance levels a group's interval cannot cover: "" (none), "seed",
        "concept", "seed+concept", or "all" when nothing is resampled (a single unit at every
        level and no per-image spread): such a value has no interval."""
        seed, concept = self.n_seeds <= 1, self.max_units <= 1
        names = np.where(
            seed & concept, "seed+concept", np.where(seed, "seed", np.where(concept, "concept", ""))
        )
        return np.where(seed & concept & ~(self.image_var > 0), "all", names)

    def resampled(self) -> np.ndarray:
        """(G,) whether a group's resampled means can vary at all (not ``all`` left out)."""
        return self.left_out() != "all"


def components(values: np.ndarray, within: np.ndarray, starts: np.ndarray) -> Components:
    """Centred, rescaled effects and variance components of every group (module docstring)."""
    valid = ~np.isnan(values)
    v0 = np.where(valid, values, 0.0)
    w0 = np.where(valid, np.nan_to_num(within), 0.0)
    strata = np.repeat(np.arange(len(starts)), np.diff(np.append(starts, values.shape[-1])))
    count = _reduce(valid.astype(float), starts)  # (G, S, K)
    mean_k = _div(_reduce(v0, starts), count)
    resid = np.where(valid, v0 - mean_k[..., strata], 0.0)
    inflate = np.sqrt(_div(count, count - 1) * (count >= 2))  # √(C/(C−1)), 0 for a lone unit
    # concept level, pooled over seeds and strata
    df = np.maximum(count - 1, 0).sum(axis=(1, 2))
    s2_r = _div((resid**2).sum(axis=(1, 2)), df)
    multi = valid & (count >= 2)[..., strata]
    w_bar = _div(np.where(multi, w0, 0.0).sum(axis=(1, 2)), multi.sum(axis=(1, 2)).astype(float))
    sigma2_c = np.maximum(s2_r - w_bar, 0.0)
    shrink_c = np.sqrt(_div(sigma2_c, s2_r))
    # seed level
    ok_k = count > 0
    n_k = ok_k.sum(-1)  # strata per seed
    m = _div(np.where(ok_k, mean_k, 0.0).sum(-1), n_k.astype(float))  # (G, S)
    ok_s = n_k > 0
    n_s = ok_s.sum(-1)
    point = np.where(n_s > 0, _div(np.where(ok_s, m, 0.0).sum(-1), n_s.astype(float)), np.nan)
    dev = np.where(ok_s, m - np.nan_to_num(point)[:, None], 0.0)
    s2_m = _div((dev**2).sum(-1), (n_s - 1).astype(float))
    w_k = _div(_reduce(w0, starts), count)  # mean std²/n per stratum
    low_k = _div(np.where(count >= 2, sigma2_c[:, None, None], 0.0) + w_k, count)  # 0 where empty
    v_low_s = _div(low_k.sum(-1), (n_k**2).astype(float))
    v_low = _div(np.where(ok_s, v_low_s, 0.0).sum(-1), n_s.astype(float))
    sigma2_s = np.maximum(s2_m - v_low, 0.0)
    shrink_s = np.sqrt(_div(sigma2_s, s2_m))
    seed_dev = dev * np.sqrt(_div(n_s, n_s - 1) * (n_s >= 2))[:, None]
    # the images' share of the variance of the point estimate (no resampling)
    weight = _div(valid.astype(float), (count[..., strata] * n_k[..., None] * n_s[:, None, None]))
    image_var = (weight**2 * w0).sum(axis=(1, 2))
    return Components(
        point=point, seed_dev=seed_dev, res=resid * inflate[..., strata], within=w0, valid=valid,
        shrink_seed=shrink_s, shrink_concept=shrink_c, n_seeds=n_s, image_var=image_var,
        max_units=count.max(axis=(1, 2)) if count.size else np.zeros(len(point)),
    )  # fmt: skip


@dataclass
class Draws:
    """The resampled pieces of every group's mean, on shared seed and concept draws (G, B):
    T* = point + shrink_seed·seed + shrink_concept·concept + √image_var·z."""

    comp: Components
    seed: np.ndarray
    concept: np.ndarray
    image_var: np.ndarray

    def means(self, rng: np.random.Generator) -> np.ndarray:
        """(G, B) resampled means (NaN rows for groups without data)."""
        c = self.comp
        means = (
            c.point[:, None] + c.shrink_seed[:, None] * self.seed + c.shrink_concept[:, None] * self.concept
        )
        return means + _noise(self.image_var, rng)


def _noise(variance: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Normal draws of the given variances (G, B) (0 without drawing where no image variance is
    known). Common random numbers: one standard normal per resample, shared by every group, so
    that identical rows get identical draws whatever their name or position."""
    if not (variance > 0).any():
        return np.zeros_like(variance)
    return np.sqrt(variance) * rng.standard_normal(variance.shape[-1])[None, :]


def draw_indices(n_seeds: int, starts: np.ndarray, n_units: int, n_resamples: int, rng: np.random.Generator):
    """Seeds (B, S) with replacement; per drawn seed, units (B, S, U) with replacement within each
    stratum (slot u of stratum k gets a random unit of k)."""
    seed_idx = rng.integers(0, n_seeds, size=(n_resamples, n_seeds))
    unit_idx = np.empty((n_resamples, n_seeds, n_units), dtype=np.int64)
    bounds = np.append(starts, n_units)
    for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
        unit_idx[..., lo:hi] = lo + rng.integers(0, hi - lo, size=(n_resamples, n_seeds, hi - lo))
    return seed_idx, unit_idx


def resample(comp: Components, starts: np.ndarray, seed_idx: np.ndarray, unit_idx: np.ndarray) -> Draws:
    """Gather every group's effects on the shared draws (in blocks of resamples)."""
    n_groups, n_seeds, n_units = comp.valid.shape
    n_res = seed_idx.shape[0]
    strata = np.repeat(np.arange(len(starts)), np.diff(np.append(starts, n_units)))
    seed_t, concept_t, image_t = (np.zeros((n_groups, n_res)) for _ in range(3))
    block = max(1, CHUNK_ELEMENTS // max(1, n_groups * n_seeds * max(n_units, 1)))
    for lo in range(0, n_res, block):
        si, ui = seed_idx[lo : lo + block], unit_idx[lo : lo + block]
        rows = si[:, :, None]
        mask = comp.valid[:, rows, ui]  # (G, b, S, U)
        count = _reduce(mask.astype(float), starts)  # (G, b, S, K)
        n_k = (count > 0).sum(-1)  # (G, b, S)
        n_s = (n_k > 0).sum(-1)  # (G, b)
        weight = _div(mask.astype(float), count[..., strata] * n_k[..., None])
        per_seed = (weight * comp.res[:, rows, ui]).sum(-1)  # (G, b, S)
        per_seed_var = (weight**2 * comp.within[:, rows, ui]).sum(-1)
        dev = np.where(n_k > 0, comp.seed_dev[:, si], 0.0)
        seed_t[:, lo : lo + block] = _div(dev.sum(-1), n_s.astype(float))
        concept_t[:, lo : lo + block] = _div(per_seed.sum(-1), n_s.astype(float))
        image_t[:, lo : lo + block] = _div(per_seed_var.sum(-1), (n_s**2).astype(float))
    return Draws(comp=comp, seed=seed_t, concept=concept_t, image_var=image_t)


def hierarchical_bootstrap(
    values: np.ndarray,
    within: np.ndarray | None = None,
    starts: Sequence[int] | None = None,
    *,
    n_resamples: int = N_RESAMPLES,
    rng: np.random.Generator,
) -> np.ndarray:
    """Resampled means (G, B) of groups of units `values` (G, S seeds, U units; NaN = missing),
    `within` the image-level variance std²/n of each unit (None: none known), `starts` the first
    unit of each stratum (None: one stratum). See the module docstring."""
    values = np.asarray(values, dtype=float)
    if values.ndim == 2:
        values = values[None]
    within = (
        np.zeros_like(values) if within is None else np.broadcast_to(np.asarray(within, float), values.shape)
    )
    starts = np.array([0] if starts is None else list(starts), dtype=np.int64)
    comp = components(values, within, starts)
    seed_idx, unit_idx = draw_indices(values.shape[1], starts, values.shape[2], n_resamples, rng)
    return resample(comp, starts, seed_idx, unit_idx).means(rng)


def percentile_interval(draws: np.ndarray, level: float = LEVEL) -> tuple[np.ndarray, np.ndarray]:
    """The (1−α) percentile interval along the last axis."""
    tail = (1 - level) / 2
    lo, hi = np.quantile(draws, [tail, 1 - tail], axis=-1)
    return lo, hi


def bootstrap_p_value(draws: np.ndarray) -> np.ndarray:
    """Two-sided p-value of "the difference is 0" from resampled differences (last axis): the
    smallest α whose percentile interval excludes 0, with the +1 of a Monte Carlo p-value."""
    n = draws.shape[-1]
    below = (draws <= 0).sum(-1)
    above = (draws >= 0).sum(-1)
    return np.minimum(1.0, 2.0 * (np.minimum(below, above) + 1) / (n + 1))


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
