"""What a metric's compute function returns, and helpers shared by the compute functions.

A compute function receives a :class:`lyco_bench.metrics.scoring.UnitView` (one group of generated
images, one encoder kind) and yields :class:`MetricValue` objects; the scorer turns each into a
result row. The view's methods used here: ``unit``, ``kind``, ``n``, ``modes``, ``generated(mode)``,
``reference(paths, mode)``, ``features(paths, mode, base=)``, ``pairs()``, ``texts(texts)``,
``encoder()``, ``images_of(prompt_class, key)``, ``pair_sq_distances(pairs)``,
``streamed_stats()``, ``reference_stats(key, paths)``, ``base_classes``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

NAN = math.nan
NO_BASE = "no base-model images (--base-images)"
NO_PAIR = "no base-model image with the same prompt and seed"
NO_REFERENCE = "no reference images"


@dataclass(frozen=True)
class MetricValue:
    """One result row's numbers: ``subclass`` None = the unit's own, else the key written there."""

    value: float
    n: int
    std: float = NAN
    """Sample standard deviation (ddof=1) of the per-image (per-pair) values whose mean is
    ``value``; NaN for set statistics and for fewer than 2 values."""
    reason: str = ""
    subclass: str | None = None
    mode: str = ""


def sample_std(values: torch.Tensor | Sequence[float] | np.ndarray) -> float:
    """Standard deviation with ddof=1 in float64; NaN for fewer than 2 values."""
    x = values.double().cpu().numpy() if isinstance(values, torch.Tensor) else np.asarray(values, float)
    x = x.reshape(-1)
    return float(x.std(ddof=1)) if len(x) >= 2 else NAN


def paired_or_reason(view) -> tuple[object, str]:
    """(pairs, "") or (None, why not): the unit's images paired with the base model's."""
    pairs = view.pairs()
    if pairs is None:
        return None, NO_BASE
    if pairs.empty:
        return None, NO_PAIR
    return pairs, ""


__all__ = ["MetricValue", "sample_std", "paired_or_reason", "NAN", "NO_BASE", "NO_PAIR", "NO_REFERENCE"]
