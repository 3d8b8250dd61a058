"""Checkpoint trajectories and the best checkpoint (docs/protocol.md §7.6).

For every configuration, one curve per criterion — fidelity, controllability, diversity, leakage —
over its saved epochs: the mean with its hierarchical-bootstrap interval and, for each epoch, the
paired difference from the first checkpoint with its interval (lyco_bench.analysis.uncertainty:
same drawn seeds and concepts for both epochs). ``trajectory.csv`` holds them.

The best-checkpoint rule (:func:`pick_checkpoint`, parameters :class:`BestCheckpointRule`):

1. the fidelity maximum is the epoch(s) with the best fidelity mean (ties: all of them);
2. an epoch is a *fidelity candidate* when its fidelity mean lies within the maximum's interval
   (≥ its ci_low for a higher-is-better metric, ≤ ci_high otherwise; without an interval only the
   maximum's own value);
3. it *passes the guards* when neither controllability nor leakage got worse than at the first
   checkpoint by more than their tolerance (point estimates, in the metric's own units);
4. the best checkpoint is the earliest candidate that passes the guards; the other candidates that
   pass are reported as tied with it (the rule cannot tell them apart, and the earliest is
   cheaper and less adapted). When no candidate passes, the best is the epoch of best fidelity
   among those that pass (the first checkpoint always does), marked ``fallback``.

Overfitting (:func:`overfitting_of`): at the last checkpoint fidelity is still above the first
checkpoint's while controllability or diversity fell below the first checkpoint's by more than
their tolerance, the paired interval of that fall excluding zero.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from pydantic import Field, field_validator

from lyco_bench.analysis.choices import Axis, pick_label
from lyco_bench.analysis.results import metric_direction
from lyco_bench.analysis.uncertainty import BootstrapSettings, label_uncertainty, unit_arrays, unit_rows
from lyco_bench.config import StrictModel
from lyco_bench.utils import atomic_path

CURVE_CRITERIA = ("fidelity", "controllability", "diversity", "leakage")
GUARDS = ("controllability", "leakage")
OVERFIT_SIGNS = ("controllability", "diversity")
DEFAULT_TOLERANCE = {"controllability": 0.01, "diversity": 0.1, "leakage": 0.01}
TRAJECTORY_COLUMNS = [
    "config", "criterion", "metric", "label", "higher_is_better", "epoch", "mean", "ci_low", "ci_high",
    "n_seeds", "delta_first", "delta_ci_low", "delta_ci_high",
]  # fmt: skip


class BestCheckpointRule(StrictModel):
    """The best-checkpoint rule's parameters (a study's ``analysis.best_checkpoint`` block)."""

    fidelity: str | None = "image_similarity"
    """The metric each criterion's curve shows (its headline label); None leaves the criterion out."""
    controllability: str | None = "text_similarity"
    diversity: str | None = "vendi"
    leakage: str | None = "intrusion"
    tolerance: dict[str, float] = Field(default_factory=lambda: dict(DEFAULT_TOLERANCE))
    """How much worse than at the first checkpoint a criterion may get, in the metric's own units
    (controllability and leakage: the guards; controllability and diversity: overfitting). A
    number sets every criterion; a mapping overrides the defaults it names."""

    @field_validator("tolerance", mode="before")
    @classmethod
    def _tolerance(cls, value: object) -> object:
        if isinstance(value, int | float) and not isinstance(value, bool):
            value = dict.fromkeys(DEFAULT_TOLERANCE, float(value))
        if isinstance(value, dict):
            unknown = sorted(set(value) - set(DEFAULT_TOLERANCE))
            if unknown:
                raise ValueError(f"{unknown[0]!r} is not one of {', '.join(DEFAULT_TOLERANCE)}")
            if any(not isinstance(v, int | float) or v < 0 or v != v for v in value.values()):
                raise ValueError("tolerances are numbers ≥ 0")
            value = {**DEFAULT_TOLERANCE, **{k: float(v) for k, v in value.items()}}
        return value

    def metrics(self) -> dict[str, str]:
        """Criterion → metric name, for the criteria the rule reads."""
        return {c: getattr(self, c) for c in CURVE_CRITERIA if getattr(self, c)}


@dataclass(frozen=True)
class CurvePoint:
    """One epoch of a curve: mean and interval, and the paired difference from the first epoch."""

    epoch: int
    mean: float
    ci_low: float = float("nan")
    ci_high: float = float("nan")
    delta: float = 0.0  # this epoch − the first, paired
    delta_low: float = float("nan")
    delta_high: float = float("nan")


@dataclass(frozen=True)
class Curve:
    criterion: str
    label: str
    higher_is_better: bool
    points: tuple[CurvePoint, ...]  # ascending epochs

    def worse_by(self, point: CurvePoint) -> float:
        """How much worse ``point`` is than the first epoch (positive: worse)."""
        return -point.delta if self.higher_is_better else point.delta

    def significantly_worse(self, point: CurvePoint) -> bool:
        """The paired interval of the difference from the first epoch excludes 0, on the worse side."""
        lo, hi = (point.delta_low, point.delta_high)
        return bool(hi < 0) if self.higher_is_better else bool(lo > 0)


@dataclass(frozen=True)
class Pick:
    """The rule's outcome for one configuration, with the evidence it rests on."""

    best_epoch: int
    tied_epochs: tuple[int, ...]
    max_epochs: tuple[int, ...]
    fallback: bool
    overfitting: bool | None  # None: fewer than two epochs, or a criterion it reads is missing
    evidence: str
    overfitting_evidence: str


def _fmt(value: float) -> str:
    return "n/a" if not np.isfinite(value) else f"{value + 0.0:.4g}"  # + 0.0: no "-0"


def _interval(lo: float, hi: float) -> str:
    return f"[{_fmt(lo)}, {_fmt(hi)}]" if np.isfinite(lo) and np.isfinite(hi) else "[n/a]"


def pick_checkpoint(curves: Mapping[str, Curve], rule: BestCheckpointRule) -> Pick | None:
    """Apply the rule (module docstring) to one configuration's curves; None without fidelity."""
    fid = curves.get("fidelity")
    if fid is None or not fid.points:
        return None
    sign = 1.0 if fid.higher_is_better else -1.0
    oriented = np.array([sign * p.mean for p in fid.points])
    top = float(np.nanmax(oriented))
    maxima = [p for p, v in zip(fid.points, oriented, strict=True) if v == top]
    bound = maxima[0].ci_low if fid.higher_is_better else maxima[0].ci_high
    bound = sign * bound if np.isfinite(bound) else top
    candidates = [p.epoch for p, v in zip(fid.points, oriented, strict=True) if v >= min(bound, top)]
    passing, why_not = _guards(curves, rule)
    chosen = [e for e in candidates if e in passing]
    fallback = not chosen
    if fallback:
        best_value = max(v for p, v in zip(fid.points, oriented, strict=True) if p.epoch in passing)
        chosen = [
            p.epoch
            for p, v in zip(fid.points, oriented, strict=True)
            if p.epoch in passing and v == best_value
        ]
    best = chosen[0]
    point = {p.epoch: p for p in fid.points}
    m = maxima[0]
    parts = [
        f"{fid.label}: e{best} {_fmt(point[best].mean)} vs max "
        f"e{'='.join(f'{p.epoch}' for p in maxima)} {_fmt(m.mean)} {_interval(m.ci_low, m.ci_high)}"
    ]
    for criterion in GUARDS:
        curve = curves.get(criterion)
        p = next((q for q in curve.points if q.epoch == best), None) if curve is not None else None
        if p is not None:  # a criterion without a value at that epoch shows no evidence
            parts.append(
                f"{curve.label}: Δ vs e{curve.points[0].epoch} {_fmt(p.delta)} "
                f"{_interval(p.delta_low, p.delta_high)} (tolerance {rule.tolerance[criterion]:g})"
            )
    if fallback:
        parts.append("no epoch within the maximum's interval passes the guards: " + "; ".join(why_not))
    over, over_evidence = overfitting_of(curves, rule)
    return Pick(
        best_epoch=best, tied_epochs=tuple(chosen[1:]), max_epochs=tuple(p.epoch for p in maxima),
        fallback=fallback, overfitting=over, evidence="; ".join(parts), overfitting_evidence=over_evidence,
    )  # fmt: skip


def _guards(curves: Mapping[str, Curve], rule: BestCheckpointRule) -> tuple[set[int], list[str]]:
    """The epochs whose guards hold, and why each other one fails."""
    epochs = [p.epoch for p in curves["fidelity"].points]
    passing, why = set(epochs), []
    for criterion in GUARDS:
        curve = curves.get(criterion)
        for p in curve.points if curve is not None else ():
            if curve.worse_by(p) > rule.tolerance[criterion] and p.epoch in passing:
                passing.discard(p.epoch)
                why.append(f"e{p.epoch} {criterion} worse by {_fmt(curve.worse_by(p))}")
    return passing, why


def overfitting_of(curves: Mapping[str, Curve], rule: BestCheckpointRule) -> tuple[bool | None, str]:
    """The overfitting flag (module docstring) and its evidence; None when it cannot be judged."""
    fid = curves.get("fidelity")
    signs = [curves[c] for c in OVERFIT_SIGNS if c in curves]
    if fid is None or len(fid.points) < 2 or not signs:
        return None, "n/a: needs fidelity and controllability or diversity at two epochs or more"
    last = fid.points[-1]
    rising = fid.worse_by(last) < 0
    parts = [
        f"{fid.label}: e{last.epoch} − e{fid.points[0].epoch} {_fmt(last.delta)} {_interval(last.delta_low, last.delta_high)}"
    ]
    falling = False
    for curve in signs:
        p = curve.points[-1]
        beyond = curve.worse_by(p) > rule.tolerance[curve.criterion] and curve.significantly_worse(p)
        falling |= beyond
        parts.append(
            f"{curve.label}: {_fmt(p.delta)} {_interval(p.delta_low, p.delta_high)}"
            f" (tolerance {rule.tolerance[curve.criterion]:g}{', beyond' if beyond else ''})"
        )
    return bool(rising and falling), "; ".join(parts)


# --- curves from a results table ------------------------------------------------------------------
def _axis(metric: str) -> Axis:
    from lyco_bench.metrics import METRICS

    m = METRICS[metric]
    return Axis(metric, tuple(m.report.classes or m.reports), m.report.variant)


def trajectory_table(
    results: pd.DataFrame,
    *,
    rule: BestCheckpointRule | None = None,
    bootstrap: BootstrapSettings | None = None,
    prefer: Sequence[str] = ("dinov2", "resize"),
) -> pd.DataFrame:
    """``trajectory.csv``: one row per (configuration, criterion, epoch), TRAJECTORY_COLUMNS.

    Each criterion is the label of its metric picked as the report's axes are (its declared
    prompt classes and variant); the base model's rows are left out."""
    from lyco_bench.metrics import METRICS

    rule = rule or BestCheckpointRule()
    bootstrap = bootstrap or BootstrapSettings()
    tuned = results[results["algo"].astype(str) != "base"]
    rows = []
    for criterion, metric in rule.metrics().items():
        if metric not in METRICS:
            continue
        label = pick_label(tuned, _axis(metric), prefer)
        if label is None:
            continue
        higher = metric_direction(metric)
        units = unit_rows(tuned[tuned["label"] == label])
        for config, sub in units.groupby("config", sort=True):
            rows += _curve_rows(sub, config=str(config), criterion=criterion, metric=metric, label=label,
                                higher=higher, bootstrap=bootstrap)  # fmt: skip
    table = pd.DataFrame(rows, columns=TRAJECTORY_COLUMNS)
    return table.sort_values(["config", "criterion", "epoch"], kind="mergesort").reset_index(drop=True)


def _curve_rows(
    units: pd.DataFrame, *, config: str, criterion: str, metric: str, label: str, higher: bool,
    bootstrap: BootstrapSettings,
) -> list[dict]:  # fmt: skip
    epochs = sorted(int(e) for e in units["epoch"].unique())
    group = pd.Index(epochs).get_indexer(units["epoch"].astype(int))
    arrays = unit_arrays(units, group, len(epochs))
    n = len(epochs)
    out = label_uncertainty(
        arrays, settings=bootstrap, rng=bootstrap.rng("trajectory", label, config), higher_is_better=higher,
        ranked=np.ones(n, dtype=bool) if n > 1 else None, compare=[(i, 0) for i in range(1, n)],
    )  # fmt: skip
    rows = []
    for i, epoch in enumerate(epochs):
        pair = (out.pairs or {}).get((i, 0), {})
        first = i == 0
        rows.append({
            "config": config, "criterion": criterion, "metric": metric, "label": label,
            "higher_is_better": higher, "epoch": epoch, "mean": float(out.mean[i]),
            "ci_low": float(out.ci_low[i]), "ci_high": float(out.ci_high[i]), "n_seeds": int(out.n_seeds[i]),
            "delta_first": 0.0 if first else pair.get("delta", np.nan),
            "delta_ci_low": 0.0 if first else pair.get("ci_low", np.nan),
            "delta_ci_high": 0.0 if first else pair.get("ci_high", np.nan),
        })  # fmt: skip
    return rows


def curves_of(table: pd.DataFrame, config: str) -> dict[str, Curve]:
    """One configuration's curves from a trajectory table."""
    out = {}
    for criterion, rows in table[table["config"] == config].groupby("criterion", sort=False):
        rows = rows.sort_values("epoch")
        points = tuple(
            CurvePoint(int(r.epoch), float(r.mean), float(r.ci_low), float(r.ci_high), float(r.delta_first),
                       float(r.delta_ci_low), float(r.delta_ci_high))
            for r in rows.itertuples(index=False)
        )  # fmt: skip
        out[str(criterion)] = Curve(str(criterion), str(rows["label"].iloc[0]),
                                    bool(rows["higher_is_better"].iloc[0]), points)  # fmt: skip
    return out


PICK_COLUMNS = ["config", "best_epoch", "tied_epochs", "max_epochs", "fallback", "overfitting",
                "best_evidence", "overfitting_evidence"]  # fmt: skip


def picks_table(table: pd.DataFrame, rule: BestCheckpointRule | None = None) -> pd.DataFrame:
    """One row per configuration with a fidelity curve: PICK_COLUMNS (epochs lists joined by ";",
    ``overfitting`` empty where it cannot be judged)."""
    rule = rule or BestCheckpointRule()
    rows = []
    for config in sorted(table["config"].unique()):
        pick = pick_checkpoint(curves_of(table, config), rule)
        if pick is None:
            continue
        rows.append({
            "config": config, "best_epoch": pick.best_epoch,
            "tied_epochs": ";".join(map(str, pick.tied_epochs)), "max_epochs": ";".join(map(str, pick.max_epochs)),
            "fallback": pick.fallback, "overfitting": "" if pick.overfitting is None else pick.overfitting,
            "best_evidence": pick.evidence, "overfitting_evidence": pick.overfitting_evidence,
        })  # fmt: skip
    return pd.DataFrame(rows, columns=PICK_COLUMNS)


def write_csv(table: pd.DataFrame, path: Path) -> Path:
    """A table written atomically with the analysis' number format (same input → same bytes)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        table.to_csv(tmp, index=False, float_format="%.10g")
    return path
