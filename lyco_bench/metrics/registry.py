"""The metric registry: :class:`Metric` (what a metric declares) and :func:`register_metric`.

Each metric registers itself in the file of its computation (``register_metric(Metric(...))`` at the
bottom of ``fidelity.py``, ``leakage.py``, …); on first use :data:`METRICS` imports every metric
file of the package, then the modules or ``Metric`` objects that other packages declare under the
``lyco_bench.metrics`` entry point (:mod:`lyco_bench.registry`). The scorer, the planner and the analysis read only
:data:`METRICS`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal

from lyco_bench.metrics.values import MetricValue
from lyco_bench.registry import Registry, accept_instances

CRITERIA = ("fidelity", "controllability", "diversity", "preservation", "quality")
"""The criteria of docs/protocol.md §5, in report order; a plug-in may add its own (listed last)."""

PROMPT_CLASSES = ("train", "trigger", "alter", "style", "agnostic", "combine")
# Fidelity compares with the dataset: the concept's own classes and two-concept images (each
# concept). <style> images are judged by the style loss, <agnostic> ones by intrusion (which
# subtracts the base model's similarity, so that a concept-agnostic image is not rewarded for
# looking like the concept).
FIDELITY_CLASSES = ("train", "trigger", "alter", "combine")


@dataclass(frozen=True)
class PanelAxis:
    """One axis of a trade-off panel (the analysis' figures, docs/protocol.md §6): panel ``panel``
    (1, 2, …: left to right) plots this metric on ``axis`` in the first of ``classes`` present."""

    panel: int
    axis: Literal["x", "y"]
    classes: tuple[str, ...]
    fallback: bool = False
    """Plotted only where the panel's own metric for this axis is absent from the results."""


@dataclass(frozen=True)
class Report:
    """What the analysis and the leaderboard read from a metric (each overridable per study in the
    ``analysis:`` block): its place among the headline metrics, the Pareto axes and the panels."""

    headline: bool = False
    """A headline of its criterion: fitted by CatBoost/SHAP and sized in sample_size.csv by default,
    shown as a leaderboard column and counted in the mean rank."""
    variant: tuple[str, ...] = ()
    """Words each headline label's encoder or mode contains (``("dinov2", "resize")``: the DINOv2
    resize variant only); empty: every variant."""
    pareto: bool = False
    """An axis of the leaderboard's Pareto marks (every such axis at once, each metric's direction
    respected)."""
    classes: tuple[str, ...] = ()
    """Prompt classes to try in order where one label stands for the metric (a Pareto axis, a panel
    given in the ``analysis:`` block); empty: the classes it reports."""
    panels: tuple[PanelAxis, ...] = ()
    """The trade-off panels it is an axis of; where two metrics claim the same panel axis, the first
    in registry order keeps it (a plug-in adds a panel under a new number)."""
    column: str = ""
    """The report's first-view column it can stand for (one metric per column: the first headline
    one present, else the first present); empty: its criterion (``leakage`` splits off the
    preservation metrics that measure a concept's intrusion into trigger-free prompts)."""


@dataclass(frozen=True)
class Metric:
    name: str
    criterion: str
    """fidelity | controllability | diversity | preservation | quality"""
    higher_is_better: bool
    needs: tuple[str, ...]
    """Inputs: ``reference`` (dataset images, compared in every reference mode), ``generated``,
    ``base`` (the base model's images of the same prompt and seed: only paired images are read),
    ``text`` (the images' prompts, triggers replaced by descriptive words)."""
    encoders: tuple[str, ...]
    """Encoder kinds it reads; ``image`` stands for ``EncoderSettings.image_encoders`` (DINOv2)."""
    prompt_classes: tuple[str, ...] = PROMPT_CLASSES
    """Generated prompt classes it reads: the planner and the scorer encode nothing else."""
    compute: Callable[..., Iterable[MetricValue]] | None = None
    """(UnitView) → MetricValues: called once per unit of ``row_classes`` and encoder kind."""
    row_classes: tuple[str, ...] | None = None
    """Prompt classes it writes rows for (None: ``prompt_classes``); the others it only reads."""
    categories: Literal["all", "style"] = "all"
    """``style``: only the units of style categories (``EncoderSettings.style_categories``)."""
    texts: tuple[str, ...] = ()
    """Fixed texts it encodes besides the prompts (with its text encoder)."""
    per_image: bool = False
    """The value is a mean over images (or image pairs): rows carry their ``std``."""
    default: bool = True
    """Computed when no metric list is given (False: needs a large download, ask for it by name)."""
    experimental: bool = False
    description: str = ""
    report: Report = Report()
    """What the analysis and the leaderboard need from it (default: a column of leaderboard.csv
    only)."""

    @property
    def reports(self) -> tuple[str, ...]:
        return self.prompt_classes if self.row_classes is None else self.row_classes


METRICS: Registry[Metric] = Registry(
    "metric",
    entry_point="lyco_bench.metrics",
    packages=("lyco_bench.metrics",),
    # The package's modules that hold no metric (importing them would pull in heavy libraries).
    skip=frozenset(
        {"cache", "cli", "encoders", "features", "manifest", "registry", "scoring", "tiny", "units", "values"}
    ),
    accept=accept_instances(Metric, lambda obj: obj.name),
    order=lambda m: CRITERIA.index(m.criterion) if m.criterion in CRITERIA else len(CRITERIA),
)
"""Every registered metric by name, in report order (criterion, then registration), discovered on
first use: the package's metric files, then the ``lyco_bench.metrics`` entry points."""


def register_metric(metric: Metric) -> Metric:
    """Add ``metric`` to :data:`METRICS` (re-registering the same entry is a no-op)."""
    if not isinstance(metric, Metric):
        raise TypeError(f"register_metric takes a Metric, not {type(metric).__name__}")
    return METRICS.register(metric.name, metric)
