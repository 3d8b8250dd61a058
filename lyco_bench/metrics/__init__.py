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

import importlib
import pkgutil

from lyco_bench.errors import BadInput
from lyco_bench.metrics.cache import FeatureCache
from lyco_bench.metrics.registry import (
    CRITERIA,
    FIDELITY_CLASSES,
    METRICS,
    PROMPT_CLASSES,
    Metric,
    register_metric,
)
from lyco_bench.metrics.values import MetricValue

ENTRY_POINT_GROUP = "lyco_bench.metrics"
# The package's modules that hold no metric (importing them would pull in heavy libraries).
_INFRASTRUCTURE = frozenset({"cache", "cli", "encoders", "features", "manifest", "registry", "scoring", "tiny", "values"})  # fmt: skip


def _load_metrics() -> None:
    """Import every metric file of this package (each registers its entries), then what other
    packages declare under the ``lyco_bench.metrics`` entry point: a module that registers its
    metrics on import (``name = "package.module"``) or a :class:`Metric` (``"package.module:OBJ"``)."""
    from importlib.metadata import entry_points

    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if not info.name.startswith("_") and info.name not in _INFRASTRUCTURE:
            importlib.import_module(f"{__name__}.{info.name}")
    for point in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda p: p.name):
        try:
            loaded = point.load()
        except Exception as exc:  # noqa: BLE001 - any import error of a plug-in is reported alike
            raise BadInput(
                f"metric plug-in {point.name} ({point.value}): cannot be imported ({exc})"
            ) from None
        if isinstance(loaded, Metric):
            register_metric(loaded)
        elif not hasattr(loaded, "__file__"):  # neither a Metric nor a module that registered some
            raise BadInput(f"metric plug-in {point.name} ({point.value}): not a Metric nor a module")


_load_metrics()


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
    "METRICS", "Metric", "register_metric", "CRITERIA", "PROMPT_CLASSES", "FIDELITY_CLASSES", "ENTRY_POINT_GROUP", "MetricValue", "FeatureCache", "EncoderSettings", "score", "metric_encoders",
    "default_metrics",
]  # fmt: skip
