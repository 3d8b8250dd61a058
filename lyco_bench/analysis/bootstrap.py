"""The hierarchical bootstrap behind every interval of :mod:`lyco_bench.analysis.uncertainty`
(its docstring: replication units, paired differences and ranks): variance components per
level, resampled seeds and concepts, parametric image draws, percentile intervals and p-values.

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
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

LEVEL = 0.95
N_RESAMPLES = 2000
CHUNK_ELEMENTS = 1_500_000  # (groups × resamples × seeds × concepts) floats per block


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
