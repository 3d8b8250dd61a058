"""Metrics (docs/protocol.md §5): the registry ``METRICS``, the feature cache and ``score``.

The registry drives everything: each entry declares its criterion and direction
(``higher_is_better``), so ranks and SHAP signs need no special cases downstream; the encoders,
inputs and generated prompt classes it reads, so the planner and the scorer encode exactly what
some requested metric reads; and its compute function, which the scorer calls once per group of
images ("unit") and encoder kind. A new metric is one function (in the file of its criterion)
plus one ``register_metric(Metric(...))`` beside it (:mod:`lyco_bench.metrics.registry`); other
packages add theirs through the ``lyco_bench.metrics`` entry point. The scorer and the planner read
nothing else.

A compute function takes a :class:`lyco_bench.metrics.scoring.UnitView` and yields
:class:`lyco_bench.metrics.values.MetricValue` objects (value, n, std, reason, subclass, mode).
"""

from __future__ import annotations

from lyco_bench.metrics.cache import FeatureCache
from lyco_bench.metrics.registry import (
    CRITERIA,
    FIDELITY_CLASSES,
    METRICS,
    PROMPT_CLASSES,
    Metric,
    PanelAxis,
    Report,
    register_metric,
)
from lyco_bench.metrics.values import MetricValue

ENTRY_POINT_GROUP = METRICS.entry_point


def default_metrics(*, experimental: bool) -> list[str]:
    """The metrics computed when none are named: the ``default`` ones (experimental ones if asked)."""
    return [n for n, m in METRICS.items() if m.default and (experimental or not m.experimental)]


def metric_encoders(metric: Metric, image_encoders: tuple[str, ...]) -> tuple[str, ...]:
    """The concrete encoder kinds ``metric`` reads (``image`` expanded to ``image_encoders``)."""
    kinds: list[str] = []
    for kind in metric.encoders:
        kinds += list(image_encoders) if kind == "image" else [kind]
    return tuple(dict.fromkeys(kinds))


def score(**kwargs):
    """See :func:`lyco_bench.metrics.scoring.score` (imported lazily: it pulls in pandas)."""
    from lyco_bench.metrics.scoring import score as _score

    return _score(**kwargs)


def __getattr__(name: str):
    if name == "EncoderSettings":
        from lyco_bench.metrics.features import EncoderSettings

        return EncoderSettings
    raise AttributeError(name)


__all__ = [
    "METRICS", "Metric", "PanelAxis", "Report", "register_metric", "CRITERIA", "PROMPT_CLASSES", "FIDELITY_CLASSES", "ENTRY_POINT_GROUP", "MetricValue", "FeatureCache", "EncoderSettings", "score", "metric_encoders",
    "default_metrics",
]  # fmt: skip
