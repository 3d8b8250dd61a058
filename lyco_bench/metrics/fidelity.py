"""Fidelity (PAPER.md §5): image similarity, squared centroid distance, Fréchet distance.

Inputs are feature matrices, reference (R, D) and generated (G, D); rows are L2-normalized here
(a no-op for the encoders' already normalized output).
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
import torch.nn.functional as F


def image_similarity(reference: torch.Tensor, generated: torch.Tensor) -> float:
    """Mean cosine over all (reference, generated) pairs.

    (1/RG)·Σᵢ Σⱼ rᵢ·gⱼ = mean(r)·mean(g) for unit rows, so no R×G matrix is needed.
    """
    r, g = F.normalize(reference.double(), dim=1), F.normalize(generated.double(), dim=1)
    return float(r.mean(0) @ g.mean(0))


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
