"""Fidelity: image similarity, squared centroid distance, Fréchet distance; two-concept composition.

Inputs are feature matrices, reference (R, D) and generated (G, D); rows are L2-normalized here
(a no-op for the encoders' already normalized output). The ``*_rows`` functions are the registry's
compute functions (see :mod:`lyco_bench.metrics.values`): one value per reference set and mode.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F

from lyco_bench.metrics.registry import FIDELITY_CLASSES, Metric, PanelAxis, Report, register_metric
from lyco_bench.metrics.values import NAN, NO_REFERENCE, MetricValue, sample_std


def image_similarity(reference: torch.Tensor, generated: torch.Tensor) -> float:
    """Mean cosine over all (reference, generated) pairs.

    (1/RG)·Σᵢ Σⱼ rᵢ·gⱼ = mean(r)·mean(g) for unit rows, so no R×G matrix is needed.
    """
    r, g = F.normalize(reference.double(), dim=1), F.normalize(generated.double(), dim=1)
    return float(r.mean(0) @ g.mean(0))


def image_similarity_per_image(reference: torch.Tensor, generated: torch.Tensor) -> torch.Tensor:
    """(G,) mean cosine of each generated image to the references: their mean is image_similarity."""
    r, g = F.normalize(reference.double(), dim=1), F.normalize(generated.double(), dim=1)
    return g @ r.mean(0)


def squared_centroid_distance(reference: torch.Tensor, generated: torch.Tensor) -> float:
    """‖mean(r) − mean(g)‖² of the normalized features; the centroids are not renormalized."""
    r, g = F.normalize(reference.double(), dim=1), F.normalize(generated.double(), dim=1)
    return float(((r.mean(0) - g.mean(0)) ** 2).sum())


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh(matrix)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_distance(x: torch.Tensor, y: torch.Tensor) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (Heusel et al. 2017):

    d² = ‖μx − μy‖² + tr(Σx + Σy − 2·(Σx·Σy)^{1/2}).

    ``scipy.linalg.sqrtm`` of Σx·Σy is used as in the standard FID; with fewer images than
    dimensions both covariances are singular and sqrtm may return non-finite or complex values,
    so then the trace comes from the equivalent symmetric form tr((Σx^{1/2} Σy Σx^{1/2})^{1/2}),
    whose eigenvalues are real and non-negative.
    """
    import scipy.linalg

    a = F.normalize(x.double(), dim=1).numpy()
    b = F.normalize(y.double(), dim=1).numpy()
    if len(a) < 2 or len(b) < 2:
        raise ValueError("frechet_distance needs at least 2 images on each side")
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)  # (D, D), unbiased
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # singular products: handled by the fallback below
        covmean = scipy.linalg.sqrtm(cov_a @ cov_b)
    trace_sqrt = None
    if np.all(np.isfinite(covmean)):
        tr = np.trace(covmean)
        if abs(np.imag(tr)) <= 1e-6 * max(1.0, abs(np.real(tr))) and np.max(np.abs(np.imag(covmean))) < 1e-3:
            trace_sqrt = float(np.real(tr))
    if trace_sqrt is None or trace_sqrt < 0:
        root_a = _psd_sqrt(cov_a)
        inner = root_a @ cov_b @ root_a
        trace_sqrt = float(np.sqrt(np.clip(np.linalg.eigvalsh((inner + inner.T) / 2), 0.0, None)).sum())
    value = float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2.0 * trace_sqrt)
    return max(value, 0.0)


# --- compute functions of the registry --------------------------------------------------------
def _per_reference(view, one: Callable) -> Iterator[MetricValue]:
    """``one(ref, gen, subclass, mode)`` for each reference set of the unit and each mode."""
    for key, ref_paths in view.unit.references:
        sub = key or None
        for mode in view.modes:
            if not ref_paths:
                yield MetricValue(NAN, view.n, reason=NO_REFERENCE, subclass=sub, mode=mode)
                continue
            yield one(view.reference(ref_paths, mode), view.generated(mode), sub, mode)


def image_similarity_rows(view) -> Iterator[MetricValue]:
    def one(ref, gen, sub, mode):
        std = sample_std(image_similarity_per_image(ref, gen))
        return MetricValue(image_similarity(ref, gen), len(gen), std=std, subclass=sub, mode=mode)

    return _per_reference(view, one)


def squared_centroid_distance_rows(view) -> Iterator[MetricValue]:
    def one(ref, gen, sub, mode):
        return MetricValue(squared_centroid_distance(ref, gen), len(gen), subclass=sub, mode=mode)

    return _per_reference(view, one)


def frechet_distance_rows(view) -> Iterator[MetricValue]:
    def one(ref, gen, sub, mode):
        if len(gen) >= 2 and len(ref) >= 2:
            return MetricValue(frechet_distance(ref, gen), len(gen), subclass=sub, mode=mode)
        reason = "fewer than 2 generated or reference images"
        return MetricValue(NAN, len(gen), reason=reason, subclass=sub, mode=mode)

    return _per_reference(view, one)


# --- two concepts in one image (<combine>) ----------------------------------------------------
def composition_min(similarities: list[float]) -> float:
    """The weaker concept's image similarity: min over the pair (NaN if any is undefined)."""
    if not similarities or any(math.isnan(s) for s in similarities):
        return NAN
    return float(min(similarities))


def composition_drop(reference: torch.Tensor, single: torch.Tensor, combined: torch.Tensor) -> float:
    """Image similarity of a concept's own ``<trigger>`` images minus that of the ``<combine>`` ones."""
    return image_similarity(reference, single) - image_similarity(reference, combined)


def composition_min_rows(view) -> Iterator[MetricValue]:
    """Per mode: min over the two concepts of the combine images' similarity to each dataset."""
    for mode in view.modes:
        sims, reason = [], ""
        for key, ref_paths in view.unit.references:
            if not ref_paths:
                reason = f"{NO_REFERENCE} of {key}"
                break
            sims.append(image_similarity(view.reference(ref_paths, mode), view.generated(mode)))
        if reason:
            yield MetricValue(NAN, view.n, reason=reason, mode=mode)
        elif len(sims) < 2:
            yield MetricValue(NAN, view.n, reason="fewer than 2 concepts in the image", mode=mode)
        else:
            yield MetricValue(composition_min(sims), view.n, mode=mode)


def composition_drop_rows(view) -> Iterator[MetricValue]:
    """Per concept of the pair and mode: its single-concept <trigger> similarity minus the combine one."""
    for key, ref_paths in view.unit.references:
        single = view.images_of("trigger", key)
        for mode in view.modes:
            if not ref_paths:
                yield MetricValue(NAN, view.n, reason=NO_REFERENCE, subclass=key, mode=mode)
            elif not single:
                reason = "no <trigger> images of the concept"
                yield MetricValue(NAN, view.n, reason=reason, subclass=key, mode=mode)
            else:
                ref = view.reference(ref_paths, mode)
                value = composition_drop(ref, view.features(single, mode), view.generated(mode))
                yield MetricValue(value, view.n, subclass=key, mode=mode)


# --- registry entries (docs/protocol.md §5) -----------------------------------------------------
# fmt: off
register_metric(
    Metric("image_similarity", "fidelity", True, ("reference", "generated"), ("image",), FIDELITY_CLASSES,
           compute=image_similarity_rows, per_image=True,
           description="mean cosine over all (reference, generated) pairs",
           # docs/protocol.md §6: the paper's main fidelity figure, x of the first and third panel
           report=Report(headline=True, variant=("dinov2", "resize"), pareto=True, classes=("alter", "train", "trigger"),
                         panels=(PanelAxis(1, "x", ("alter",)), PanelAxis(3, "x", ("train",)))))
)
register_metric(
    Metric("squared_centroid_distance", "fidelity", False, ("reference", "generated"), ("image",),
           FIDELITY_CLASSES, compute=squared_centroid_distance_rows,
           description="‖mean(ref) − mean(gen)‖² of normalized features",
           report=Report(headline=True, variant=("dinov2", "resize"), panels=(PanelAxis(2, "x", ("trigger",)),)))
)
register_metric(
    Metric("frechet_distance", "fidelity", False, ("reference", "generated"), ("image",), FIDELITY_CLASSES,
           compute=frechet_distance_rows,
           description="Fréchet distance of Gaussians fitted to reference and generated features")
)
register_metric(
    Metric("composition_min", "fidelity", True, ("reference", "generated"), ("image",), ("combine",),
           compute=composition_min_rows,
           description="<combine>: the lower of the two concepts' image similarities")
)
register_metric(
    Metric("composition_drop", "fidelity", False, ("reference", "generated"), ("image",),
           ("combine", "trigger"), row_classes=("combine",), compute=composition_drop_rows,
           description="<combine>: each concept's <trigger> image similarity minus its combine one")
)
# fmt: on
