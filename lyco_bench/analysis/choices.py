"""Reporting choices as data: the headline metrics, the Pareto axes and the trade-off panels.

Each metric declares them in its registry entry (``Metric.report``, :mod:`lyco_bench.metrics.registry`);
a study may override any of the three in its ``analysis:`` block. The analysis, the leaderboard
and the figures read only a :class:`ReportChoices`, so a plug-in metric that declares itself a
headline reaches the SHAP fits, sample_size.csv and the leaderboard's columns without an edit here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import pandas as pd

from lyco_bench.errors import BadInput


@dataclass(frozen=True)
class Axis:
    """A metric on one axis: the label of the first of ``classes`` present in the results stands
    for it; ``prefer``: words (encoder, mode) its label should contain when several qualify."""

    metric: str
    classes: tuple[str, ...]
    prefer: tuple[str, ...] = ()


@dataclass(frozen=True)
class Panel:
    """One trade-off panel: ``y`` against ``x``; ``y_fallback`` stands in where ``y`` is absent."""

    y: Axis
    x: Axis
    y_fallback: Axis | None = None


@dataclass(frozen=True)
class ReportChoices:
    """``headline``: metric names → the words their headline labels contain (``Report.variant``);
    ``pareto``: the Pareto axes; ``panels``: the trade-off panels, left to right."""

    headline: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    pareto: tuple[Axis, ...] = ()
    panels: tuple[Panel, ...] = ()


def _registry() -> Mapping:
    from lyco_bench.metrics.registry import METRICS

    return METRICS


def _axis(name: str, metric, classes: Sequence[str] | None = None) -> Axis:
    """``metric`` on an axis: in ``classes``, else its declared ones, else the classes it reports."""
    chosen = tuple(classes) if classes else metric.report.classes or metric.reports
    return Axis(name, chosen, metric.report.variant)


def check_metric_names(names: Sequence[str] | Mapping[str, str], where: str) -> None:
    """BadInput naming ``where.<i>`` (``where.<key>`` for a mapping) for the first name that is
    not a registered metric."""
    metrics = _registry()
    items = names.items() if isinstance(names, Mapping) else enumerate(names)
    for i, name in items:
        if name not in metrics:
            known = ", ".join(metrics)
            raise BadInput(f"{where}.{i}: {name!r} is not a metric ({known})")


def report_choices(
    *,
    headline: Sequence[str] | None = None,
    pareto: Sequence[str] | None = None,
    panels: Sequence[tuple[str, str]] | None = None,
) -> ReportChoices:
    """The registry's declarations, with a study's overrides (metric names; panels as (y, x))."""
    metrics = _registry()
    for names, where in ((headline, "analysis.headline"), (pareto, "analysis.pareto")):
        check_metric_names(names or (), where)
    for i, pair in enumerate(panels or ()):
        check_metric_names(dict(zip(("y", "x"), pair, strict=True)), f"analysis.panels.{i}")
    if headline is None:
        headline = [n for n, m in metrics.items() if m.report.headline]
    if pareto is None:
        pareto = [n for n, m in metrics.items() if m.report.pareto]
    if panels is None:
        chosen = _declared_panels(metrics)
    else:
        chosen = tuple(Panel(_axis(y, metrics[y]), _axis(x, metrics[x])) for y, x in panels)
    return ReportChoices(
        headline={n: metrics[n].report.variant for n in headline},
        pareto=tuple(_axis(n, metrics[n]) for n in pareto),
        panels=chosen,
    )


def _declared_panels(metrics: Mapping) -> tuple[Panel, ...]:
    """The panels the metrics declare (``Report.panels``), by panel number; a panel needs both axes."""
    sides: dict[int, dict[str, Axis]] = {}
    for name, metric in metrics.items():
        for side in metric.report.panels:
            key = side.axis + ("_fallback" if side.fallback else "")
            sides.setdefault(side.panel, {}).setdefault(key, _axis(name, metric, side.classes))
    return tuple(
        Panel(s["y"], s["x"], s.get("y_fallback")) for _, s in sorted(sides.items()) if "x" in s and "y" in s
    )


def headline_labels(table: pd.DataFrame, choices: ReportChoices | None = None) -> list[str]:
    """The labels of the headline metrics (each in its declared variant: every word in its encoder
    or mode), in every prompt class present; every label when none qualifies (e.g. a study with
    only a tiny test encoder)."""
    choices = choices or report_choices()
    labels = table.drop_duplicates("label")[["label", "metric", "encoder", "mode"]]
    chosen = []
    for row in labels.itertuples(index=False):
        words = choices.headline.get(row.metric)
        if words is not None and all(w in str(row.encoder) or w == row.mode for w in words):
            chosen.append(row.label)
    return sorted(chosen) if chosen else sorted(labels["label"])


def pick_label(values: pd.DataFrame, axis: Axis, prefer: Sequence[str] = ()) -> str | None:
    """The label of ``axis.metric`` in the first of ``axis.classes`` present, preferring labels with
    the most ``prefer`` words (then ``axis.prefer`` words), then the first in sorted order."""
    for prompt_class in axis.classes:
        cands = values[(values["metric"] == axis.metric) & (values["prompt_class"] == prompt_class)]
        labels = sorted(cands["label"].unique())
        if labels:
            words = tuple(prefer) or axis.prefer
            return sorted(labels, key=lambda lb: -sum(word in lb for word in words))[0]
    return None
