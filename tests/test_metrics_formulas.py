"""Each metric against values computed by hand on small fixed feature sets."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.testing import assert_close

from lyco_bench.metrics import METRICS
from lyco_bench.metrics.controllability import text_similarity
from lyco_bench.metrics.diversity import vendi_per_group, vendi_score
from lyco_bench.metrics.encoders import gram_features
from lyco_bench.metrics.fidelity import frechet_distance, image_similarity, squared_centroid_distance
from lyco_bench.metrics.preservation import (
    GramStats,
    style_loss_distribution,
    style_loss_from_stats,
    style_loss_paired,
)
from lyco_bench.metrics.quality import clip_iqa

E = torch.eye(4, dtype=torch.float64)


def test_registry_declarations():
    """The paper's metrics (the columns of its published tables) are registered; every metric
    declares a direction — check_metric's known answer verifies it for each one
    (tests/test_conformance.py) — and a compute function; experimental metrics join the defaults
    only when asked, non-default ones never."""
    from lyco_bench.analysis.results import PAPER_METRIC_NAMES
    from lyco_bench.metrics import default_metrics

    assert set(PAPER_METRIC_NAMES.values()) <= set(METRICS)
    assert all(isinstance(m.higher_is_better, bool) and callable(m.compute) for m in METRICS.values())
    plain, everything = set(default_metrics(experimental=False)), set(default_metrics(experimental=True))
    assert everything - plain == {n for n, m in METRICS.items() if m.experimental and m.default}
    assert not everything & {n for n, m in METRICS.items() if not m.default}
    assert plain >= set(PAPER_METRIC_NAMES.values())  # a study naming no metrics gets the paper's


def test_image_similarity_known_vectors():
    ref = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    gen = torch.tensor([[1.0, 0.0], [3.0, 4.0]])  # second row normalizes to (0.6, 0.8)
    # pairs: 1, 0.6, 0, 0.8 → mean 0.6
    assert_close(image_similarity(ref, gen), 0.6)
    assert_close(image_similarity(gen, gen), (1 + 0.6 + 0.6 + 1) / 4)


def test_squared_centroid_distance_known_points():
    ref = torch.tensor([[1.0, 0.0], [0.0, 1.0]])  # centroid (0.5, 0.5), not renormalized
    gen = torch.tensor([[2.0, 0.0]])  # normalized (1, 0)
    assert_close(squared_centroid_distance(ref, gen), 0.25 + 0.25)
    assert squared_centroid_distance(ref, ref) == 0.0


def test_vendi_hand_values():
    assert_close(vendi_score(E), 4.0)  # orthogonal → n
    assert_close(vendi_score(torch.ones(5, 3)), 1.0)  # identical → 1
    two_clusters = torch.stack([E[0], E[0], E[1], E[1]])  # K/n eigenvalues (1/2, 1/2, 0, 0)
    assert_close(vendi_score(two_clusters), 2.0)
    uneven = torch.stack([E[0], E[0], E[1]])  # eigenvalues (2/3, 1/3)
    h = -(2 / 3 * math.log(2 / 3) + 1 / 3 * math.log(1 / 3))
    assert_close(vendi_score(uneven), math.exp(h))
    assert_close(vendi_score(uneven, q=2), 1 / ((2 / 3) ** 2 + (1 / 3) ** 2))  # 9/5


def test_vendi_matches_package_and_dual_form():
    from vendi_score import vendi

    x = torch.randn(7, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    xn = (x / x.norm(dim=1, keepdim=True)).numpy()
    # n > D takes the dual path; the kernel path must agree with it
    assert_close(vendi_score(x), float(vendi.score_K(xn @ xn.T)), rtol=1e-9, atol=1e-9)
    for q in (0.5, 2.0):
        w = np.linalg.eigvalsh(xn @ xn.T / 7)
        w = w[w > 1e-12]
        expected = (w**q).sum() ** (1 / (1 - q))  # Hill number of order q
        assert_close(vendi_score(x, q=q), float(expected), rtol=1e-9, atol=1e-9)


def test_vendi_per_group_averages_groups_of_two_or_more():
    feats = torch.stack([E[0], E[1], E[2], E[0], E[0], E[3]])
    value, used = vendi_per_group(feats, ["a", "a", "a", "b", "b", "c"])  # a → 3, b → 1, c skipped
    assert used == 2
    assert_close(value, 2.0)
    assert math.isnan(vendi_per_group(feats[:2], ["a", "b"])[0])


def test_frechet_distance_of_gaussian_samples_vs_closed_form():
    gen = torch.Generator().manual_seed(0)
    n, d = 20000, 3
    sd_a, sd_b = torch.tensor([0.1, 0.2, 0.05]), torch.tensor([0.15, 0.1, 0.05])
    mu_a, mu_b = torch.tensor([5.0, 0.0, 0.0]), torch.tensor([5.0, 0.5, 0.0])
    a = (mu_a + sd_a * torch.randn(n, d, generator=gen)).double()
    b = (mu_b + sd_b * torch.randn(n, d, generator=gen)).double()
    # Closed form of the samples' own moments (normalization happens inside, so apply it here too)
    an, bn = a / a.norm(dim=1, keepdim=True), b / b.norm(dim=1, keepdim=True)
    ca, cb = np.cov(an.numpy(), rowvar=False), np.cov(bn.numpy(), rowvar=False)
    wa, va = np.linalg.eigh(ca)
    ra = (va * np.sqrt(np.clip(wa, 0, None))) @ va.T
    tr = np.sqrt(np.clip(np.linalg.eigvalsh(ra @ cb @ ra), 0, None)).sum()
    expected = float(((an.mean(0) - bn.mean(0)) ** 2).sum()) + np.trace(ca) + np.trace(cb) - 2 * tr
    assert_close(frechet_distance(a, b), expected, rtol=1e-6, atol=1e-9)
    # Unit-vector version of diagonal Gaussians: direction (5, y, z)/|·| ≈ (1, y/5, z/5) for small y, z.
    approx = (0.5 / 5) ** 2 + sum(((sa - sb) / 5) ** 2 for sa, sb in zip(sd_a[1:], sd_b[1:], strict=True))
    assert_close(frechet_distance(a, b), float(approx), rtol=0.1, atol=1e-4)


def test_frechet_distance_few_images_is_finite_and_zero_for_identical_sets():
    x = torch.randn(3, 16, generator=torch.Generator().manual_seed(1))
    assert frechet_distance(x, x) == pytest.approx(0.0, abs=1e-9)
    y = torch.randn(4, 16, generator=torch.Generator().manual_seed(2))
    value = frechet_distance(x, y)
    assert math.isfinite(value) and value > 0
    with pytest.raises(ValueError):
        frechet_distance(x[:1], y)


def test_text_similarity_pairs_rows_without_scaling_or_clamp():
    img = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    txt = torch.tensor([[-1.0, 0.0], [0.0, 1.0]])  # cosines −1 and 1; no ×100, no clamp at 0
    assert_close(text_similarity(img, txt), 0.0)
    assert_close(text_similarity(img, torch.tensor([[3.0, 4.0], [3.0, 4.0]])), (0.6 + 0.8) / 2)


def test_clip_iqa_softmax_over_antonyms():
    img = torch.tensor([[1.0, 0.0]])
    good, bad = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    # softmax(s·[1, 0])₀ = 1 / (1 + e^{−s})
    assert_close(clip_iqa(img, good, bad, logit_scale=2.0), 1 / (1 + math.exp(-2.0)))
    assert_close(clip_iqa(img, good, good, logit_scale=100.0), 0.5)


def test_gram_features_fixed_tensor():
    fm = torch.tensor([[1.0, 2.0], [3.0, 4.0]]).view(1, 2, 1, 2)  # (B=1, C=2, H=1, W=2)
    # G = F·Fᵀ/(C·H·W) = [[5, 11], [11, 25]] / 4 ; packed: diagonal, √2 × off-diagonal
    packed = gram_features([fm])
    assert_close(packed, torch.tensor([[1.25, 2.75 * math.sqrt(2), 6.25]]))
    full = torch.tensor([[1.25, 2.75], [2.75, 6.25]])
    assert_close(packed.pow(2).sum(), full.pow(2).sum())  # packing keeps squared L2
    two = gram_features([fm, torch.ones(1, 1, 2, 2)])  # second layer: G = [[4/4]] = 1
    assert_close(two, torch.tensor([[1.25, 2.75 * math.sqrt(2), 6.25, 1.0]]))


def test_style_losses_hand_values():
    base = torch.tensor([[0.0, 0.0], [1.0, 1.0]])
    tuned = torch.tensor([[1.0, 2.0], [1.0, 0.0]])
    assert_close(style_loss_paired(base, tuned), (5.0 + 1.0) / 2)
    a = torch.tensor([[0.0, 0.0], [2.0, 0.0]])  # μ (1, 0), var 1
    b = torch.tensor([[0.0, 3.0], [0.0, 1.0]])  # μ (0, 2), var 1
    assert_close(style_loss_distribution(a, b), (1.0 + 4.0) + 1.0 + 1.0)
    # = the mean squared distance over all cross pairs: (9 + 1 + 13 + 5) / 4
    assert_close(style_loss_distribution(a, b), 7.0)
    streamed = GramStats.of(a[:1]) + GramStats.of(a[1:])
    assert_close(style_loss_from_stats(streamed, GramStats.of(b)), 7.0)
