"""Leakage and drift on concept-agnostic prompts: the tuned model against the base model.

``<agnostic>`` prompts carry no trigger, and the base model and every checkpoint draw them with
the same seeds, so each tuned image has a base twin (same prompt, same seed). Three measures on
image-encoder features (DINOv2 by default), all computed on the pairs only:

- ``intrusion``: image similarity of the tuned images to a concept's dataset minus that of their
  base twins — how much a concept shows up where nobody asked for it (0: no more than before);
- ``drift``: mean cosine distance 1 − cos(base, tuned) between twins — how much the model's
  answer to an unrelated prompt changed at all;
- ``kid``: the unbiased kernel inception distance (Bińkowski et al. 2018) between the base and
  tuned feature sets, at the small N a study generates: one estimate on the whole sets, no
  subsets.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F

from lyco_bench.metrics.fidelity import image_similarity
from lyco_bench.metrics.registry import Metric, Report, register_metric
from lyco_bench.metrics.values import NAN, NO_REFERENCE, MetricValue, paired_or_reason, sample_std


def intrusion_per_pair(reference: torch.Tensor, tuned: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
    """(P,) (tᵢ − bᵢ)·mean(r) of normalized features: each pair's share of :func:`intrusion`."""
    r = F.normalize(reference.double(), dim=1).mean(0)
    t, b = F.normalize(tuned.double(), dim=1), F.normalize(base.double(), dim=1)
    return (t - b) @ r


def intrusion(reference: torch.Tensor, tuned: torch.Tensor, base: torch.Tensor) -> float:
    """image_similarity(reference, tuned) − image_similarity(reference, base); tuned/base paired."""
    if tuned.shape != base.shape:
        raise ValueError("intrusion pairs row i of the tuned images with row i of the base images")
    return image_similarity(reference, tuned) - image_similarity(reference, base)


def drift_per_pair(base: torch.Tensor, tuned: torch.Tensor) -> torch.Tensor:
    """(P,) cosine distance 1 − cos(baseᵢ, tunedᵢ)."""
    if tuned.shape != base.shape:
        raise ValueError("drift pairs row i of the tuned images with row i of the base images")
    b, t = F.normalize(base.double(), dim=1), F.normalize(tuned.double(), dim=1)
    return 1.0 - (b * t).sum(1)


def drift(base: torch.Tensor, tuned: torch.Tensor) -> float:
    """Mean paired cosine distance between base and tuned images of the same prompt and seed."""
    return float(drift_per_pair(base, tuned).mean())


def polynomial_kernel(
    x: torch.Tensor, y: torch.Tensor, *, degree: int = 3, gamma: float | None = None, coef0: float = 1.0
) -> torch.Tensor:
    """(γ·x·yᵀ + c)^d, γ = 1/D by default (the KID kernel)."""
    gamma = 1.0 / x.shape[1] if gamma is None else gamma
    return (gamma * (x @ y.T) + coef0) ** degree


def kid(
    x: torch.Tensor, y: torch.Tensor, *, degree: int = 3, gamma: float | None = None, coef0: float = 1.0
) -> float:
    """Unbiased MMD² with the polynomial kernel k (Bińkowski et al. 2018, KID), sets (m, D), (n, D):

    1/(m(m−1)) Σ_{i≠j} k(xᵢ, xⱼ) + 1/(n(n−1)) Σ_{i≠j} k(yᵢ, yⱼ) − 2/(mn) Σ_{i,j} k(xᵢ, yⱼ).

    Unbiased, so it can be slightly negative when the two sets come from one distribution.
    """
    m, n = len(x), len(y)
    if m < 2 or n < 2:
        raise ValueError("kid needs at least 2 samples on each side")
    x, y = x.double(), y.double()
    kxx = polynomial_kernel(x, x, degree=degree, gamma=gamma, coef0=coef0)
    kyy = polynomial_kernel(y, y, degree=degree, gamma=gamma, coef0=coef0)
    kxy = polynomial_kernel(x, y, degree=degree, gamma=gamma, coef0=coef0)
    within_x = (kxx.sum() - kxx.diagonal().sum()) / (m * (m - 1))
    within_y = (kyy.sum() - kyy.diagonal().sum()) / (n * (n - 1))
    return float(within_x + within_y - 2.0 * kxy.sum() / (m * n))


def kid_of_features(base: torch.Tensor, tuned: torch.Tensor) -> float:
    """KID of L2-normalized features scaled to norm √D, i.e. the kernel (cos + 1)³: the standard
    kernel's γ = 1/D assumes features of norm ~√D, and these encoders' outputs have norm 1."""
    b, t = F.normalize(base.double(), dim=1), F.normalize(tuned.double(), dim=1)
    return kid(b, t, gamma=1.0)


# --- compute functions of the registry --------------------------------------------------------
def intrusion_rows(view) -> Iterator[MetricValue]:
    """Per reference concept and mode: the tuned images' similarity minus their base twins'."""
    pairs, reason = paired_or_reason(view)
    for key, ref_paths in view.unit.references:
        for mode in view.modes:
            if pairs is None:
                yield MetricValue(NAN, 0, reason=reason, subclass=key or None, mode=mode)
            elif not ref_paths:
                yield MetricValue(NAN, len(pairs), reason=NO_REFERENCE, subclass=key or None, mode=mode)
            else:
                ref = view.reference(ref_paths, mode)
                tuned = view.features(pairs["path"].tolist(), mode)
                base = view.features(pairs["path_base"].tolist(), mode, base=True)
                std = sample_std(intrusion_per_pair(ref, tuned, base))
                value = intrusion(ref, tuned, base)
                yield MetricValue(value, len(pairs), std=std, subclass=key or None, mode=mode)


def drift_rows(view) -> Iterator[MetricValue]:
    pairs, reason = paired_or_reason(view)
    if pairs is None:
        yield MetricValue(NAN, 0, reason=reason)
        return
    tuned = view.features(pairs["path"].tolist())
    base = view.features(pairs["path_base"].tolist(), base=True)
    per_pair = drift_per_pair(base, tuned)
    yield MetricValue(float(per_pair.mean()), len(pairs), std=sample_std(per_pair))


def kid_rows(view) -> Iterator[MetricValue]:
    pairs, reason = paired_or_reason(view)
    if pairs is None:
        yield MetricValue(NAN, 0, reason=reason)
        return
    if len(pairs) < 2:
        yield MetricValue(NAN, len(pairs), reason="fewer than 2 image pairs")
        return
    tuned = view.features(pairs["path"].tolist())
    base = view.features(pairs["path_base"].tolist(), base=True)
    yield MetricValue(kid_of_features(base, tuned), len(pairs))


# --- registry entries (docs/protocol.md §5) -----------------------------------------------------
# fmt: off
register_metric(
    Metric("intrusion", "preservation", False, ("reference", "base", "generated"), ("image",), ("agnostic",),
           compute=intrusion_rows, per_image=True, report=Report(column="leakage"),
           description="image similarity of <agnostic> images to a concept's dataset minus the base "
                       "model's on the same prompts and seeds (concept leakage)")
)
register_metric(
    Metric("drift", "preservation", False, ("base", "generated"), ("image",), ("agnostic",),
           compute=drift_rows, per_image=True,
           description="mean cosine distance between base and tuned <agnostic> images of the same seed")
)
register_metric(
    Metric("kid", "preservation", False, ("base", "generated"), ("image",), ("agnostic",),
           compute=kid_rows,
           description="unbiased KID (kernel (cos+1)³) between base and tuned <agnostic> images")
)
# fmt: on
