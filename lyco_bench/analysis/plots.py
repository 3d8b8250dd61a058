"""Figures (matplotlib Agg, PNG): SHAP beeswarms, the paper's three-panel trade-off plots per
category and factor (docs/protocol.md §6), and metric-vs-epoch curves. Same input → same PNG bytes."""

from __future__ import annotations

import contextlib
import contextvars
import re
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from lyco_bench.analysis.choices import Panel, pick_label
from lyco_bench.analysis.shap_analysis import CATEGORICAL, FEATURES, ShapFit, encode_features
from lyco_bench.utils import atomic_path

FACTORS = {"epoch": "Epoch", "preset": "Preset", "capacity": "Capacity", "lr": "Lr level"}
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "*")


def algo_marker(algo: str, algos: list[str]) -> str:
    """A marker per algorithm, by its place among the table's algorithms (sorted)."""
    return MARKERS[sorted(algos).index(algo) % len(MARKERS)] if algo in algos else "x"


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


_CAPTION: contextvars.ContextVar[str] = contextvars.ContextVar("figure_caption", default="")


@contextlib.contextmanager
def figure_caption(text: str) -> Iterator[None]:
    """Every figure written inside the block carries `text` as a footnote (e.g. which evaluation
    profile produced its numbers)."""
    token = _CAPTION.set(text)
    try:
        yield
    finally:
        _CAPTION.reset(token)


def _stamp(fig) -> None:
    """The caption of :func:`figure_caption`, if any, as a footnote."""
    if _CAPTION.get():
        fig.text(0.005, 0.003, _CAPTION.get(), fontsize=6, color="0.35", ha="left", va="bottom")


@contextlib.contextmanager
def _figure(path: Path, **kwargs) -> Iterator[object]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = plt.figure(**kwargs)
    try:
        yield fig
        _stamp(fig)
        with atomic_path(path) as tmp:
            # fixed metadata: no version string or date in the file, so reruns are byte-identical
            fig.savefig(tmp, format="png", dpi=100, metadata={"Software": None})
    finally:
        plt.close(fig)


def shap_beeswarm(fit: ShapFit, path: Path) -> Path:
    """shap.summary_plot (beeswarm) of one metric; categorical features coloured by level code."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import shap

    numeric = fit.features.copy()
    for col in CATEGORICAL:
        numeric[col] = pd.Categorical(numeric[col], categories=sorted(numeric[col].unique())).codes
    try:
        shap.summary_plot(
            fit.values, numeric.astype(float), feature_names=FEATURES, show=False, plot_size=(7, 4),
            rng=np.random.default_rng(0),  # the beeswarm jitters points: fixed for identical PNGs
        )  # fmt: skip
        fig = plt.gcf()
        fig.suptitle(fit.label, fontsize=9)
        _stamp(fig)
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=100, metadata={"Software": None}, bbox_inches="tight")
    finally:
        plt.close("all")
    return path


def category_values(table: pd.DataFrame) -> pd.DataFrame:
    """One value per (checkpoint, category, label): the category row where the table has one,
    else the mean of the category's finer rows."""
    rows = table[table["category"] != ""]
    direct = rows[rows["concept"] == ""]
    have = set(zip(direct["checkpoint"], direct["category"], direct["label"], strict=True))
    keys = list(zip(rows["checkpoint"], rows["category"], rows["label"], strict=True))
    finer = rows[[k not in have for k in keys]]
    cols = ["checkpoint", "category", "label", "metric", "prompt_class", "encoder", "mode"]
    finer = finer.groupby(cols, sort=True, dropna=False)["value"].mean().reset_index()
    merged = pd.concat([direct[[*cols, "value"]], finer], ignore_index=True)
    meta = table.drop_duplicates("checkpoint").set_index("checkpoint")
    feats = encode_features(meta)
    for col in ("config", "algo", "seed"):
        merged[col] = merged["checkpoint"].map(meta[col])
    for col in FEATURES[1:]:
        merged[col] = merged["checkpoint"].map(feats[col])
    return merged


def _defaults(points: pd.DataFrame) -> dict[str, dict[str, object]]:
    """Each algorithm's default setting of each factor: the value most of its configs share."""
    configs = points.drop_duplicates("config")
    out: dict[str, dict[str, object]] = {}
    for algo, rows in configs.groupby("algo", sort=True):
        out[algo] = {
            f: rows[f].mode(dropna=False).sort_values().iloc[0] for f in ("Preset", "Capacity", "Lr level")
        }
    return out


def _factor_subset(points: pd.DataFrame, factor: str) -> pd.DataFrame:
    defaults = _defaults(points)
    keep = []
    for _, row in points.iterrows():
        base = defaults[row["algo"]]
        others = [f for f in ("Preset", "Capacity", "Lr level") if f != FACTORS[factor]]
        keep.append(all(row[f] == base[f] or (pd.isna(row[f]) and pd.isna(base[f])) for f in others))
    return points[keep]


def tradeoff_figure(
    values: pd.DataFrame,
    *,
    category: str,
    factor: str,
    path: Path,
    prefer: Sequence[str],
    panels: Sequence[Panel],
) -> Path:
    """One panel per entry of ``panels`` (the metrics' declared trade-offs, docs/protocol.md §6)
    for one category; points are configs × epochs (mean over seeds), coloured by the varying
    factor, one marker per algorithm."""
    import matplotlib.pyplot as plt

    cat = values[values["category"] == category]
    with _figure(path, figsize=(5 * len(panels), 4.5)) as fig:
        axes = np.atleast_1d(fig.subplots(1, len(panels)))
        for ax, panel in zip(axes, panels, strict=True):
            ylab, note = _panel_y(cat, panel, prefer)
            xlab = pick_label(cat, panel.x, prefer)
            if ylab is None or xlab is None:
                ax.text(
                    0.5, 0.5, f"no data for {panel.y.metric} / {panel.x.metric}", ha="center", va="center",
                    transform=ax.transAxes,
                )  # fmt: skip
                ax.set_axis_off()
                continue
            wide = cat[cat["label"].isin([xlab, ylab])].pivot_table(
                index=["config", "algo", *FEATURES[1:]],
                columns="label",
                values="value",
                aggfunc="mean",
                dropna=False,
            )
            points = wide.reset_index().dropna(subset=[xlab, ylab])
            points = _factor_subset(points, factor) if len(points) else points
            _scatter(ax, points, x=xlab, y=ylab, factor=FACTORS[factor], cmap=plt.get_cmap("viridis"))
            ax.set_title(note, fontsize=7)
        fig.suptitle(f"{category}: trade-offs coloured by {factor}")
        fig.tight_layout()
    return path


def _panel_y(cat: pd.DataFrame, panel: Panel, prefer: Sequence[str]) -> tuple[str | None, str]:
    """The y label of ``panel`` and the note saying what stands in for a missing metric or class."""
    ylab = pick_label(cat, panel.y, prefer)
    if ylab is None and panel.y_fallback is not None:
        ylab = pick_label(cat, panel.y_fallback, prefer)
        return ylab, f"no {panel.y.metric} in the input: {panel.y_fallback.metric}" if ylab else ""
    if ylab is not None and cat.loc[cat["label"] == ylab, "prompt_class"].iloc[0] != panel.y.classes[0]:
        return ylab, f"no <{panel.y.classes[0]}> {panel.y.metric} in the input: {ylab}"
    return ylab, ""


def _scatter(ax, points: pd.DataFrame, *, x: str, y: str, factor: str, cmap) -> None:
    levels = sorted(points[factor].dropna().unique(), key=str)
    colors = {lv: cmap(i / max(len(levels) - 1, 1)) for i, lv in enumerate(levels)}
    algos = sorted(points["algo"].astype(str).unique())
    for (algo, level), group in points.groupby(["algo", factor], sort=True, dropna=False):
        ax.scatter(
            group[x], group[y], s=18 + group["Epoch"].to_numpy() / 2, marker=algo_marker(algo, algos),
            color=colors.get(level, "0.5"), label=legend_label(algo, factor, level), alpha=0.85,
        )  # fmt: skip
    ax.set_xlabel(x, fontsize=8)
    ax.set_ylabel(y, fontsize=8)
    readable_ticks(ax)
    if len(points):
        ax.legend(fontsize=6, loc="best")


def legend_label(algo: str, factor: str, level: object) -> str:
    """``lora Preset=attn-mlp``; the algorithm alone where it has no such setting (a model-level
    method records no preset: results hold only what each plug-in declares)."""
    if level is None or (not isinstance(level, str) and pd.isna(level)) or level == "":
        return str(algo)
    return f"{algo} {factor}={_fmt(level)}"


def readable_ticks(ax, nbins: int = 5) -> None:
    """At most ``nbins`` ticks per axis, and values that differ only in the 4th digit or later
    written as an offset (``+9.72e-1`` in the corner, short labels on the ticks) instead of long
    labels that run into each other: matplotlib's default offset threshold (4 shared digits)
    leaves 0.97215 … 0.97230 written out in full."""
    import matplotlib
    from matplotlib.ticker import MaxNLocator, ScalarFormatter

    for axis in (ax.xaxis, ax.yaxis):
        axis.set_major_locator(MaxNLocator(nbins=nbins, min_n_ticks=2))
        # the formatter reads the threshold when built: an offset once two leading digits are shared
        with matplotlib.rc_context({"axes.formatter.offset_threshold": 2}):
            formatter = ScalarFormatter(useOffset=True)
        formatter.set_powerlimits((-3, 4))
        axis.set_major_formatter(formatter)


def _fmt(value: object) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def epoch_curves(values: pd.DataFrame, *, label: str, path: Path) -> Path:
    """Metric vs epoch, one line per configuration (mean over categories and seeds, ± std over seeds)."""
    rows = values[values["label"] == label]
    per_ckpt = rows.groupby(["config", "algo", "seed", "Epoch"], sort=True)["value"].mean().reset_index()
    with _figure(path, figsize=(7, 4.5)) as fig:
        ax = fig.subplots()
        algos = sorted(per_ckpt["algo"].astype(str).unique())
        for (config, algo), group in per_ckpt.groupby(["config", "algo"], sort=True):
            stats = group.groupby("Epoch", sort=True)["value"].agg(["mean", "std"]).fillna(0.0)
            ax.errorbar(
                stats.index, stats["mean"], yerr=stats["std"], marker=algo_marker(algo, algos),
                capsize=2, linewidth=1, markersize=4, label=str(config),
            )  # fmt: skip
        ax.set_xlabel("epoch")
        ax.set_ylabel(label, fontsize=8)
        readable_ticks(ax)
        ax.legend(fontsize=5, ncol=2, loc="best")
        fig.tight_layout()
    return path


def pareto_figure(points: pd.DataFrame, *, x: str, y: str, cost: str, path: Path) -> Path:
    """The Pareto view: ``y`` (fidelity) against ``x`` (controllability), one marker per
    (configuration, epoch), its area ∝ ``cost`` (the file size), one marker per algorithm; filled
    black edge and name: on the front of ``x`` and ``y`` (``front``); dashed edge and name: on it
    only once the cost counts (``front_cost``)."""
    values = pd.to_numeric(points[cost], errors="coerce")
    scale = float(values.max()) if values.notna().any() and values.max() > 0 else 1.0
    areas = 30 + 270 * (values.fillna(0) / scale).to_numpy()
    algos = sorted(points["algo"].astype(str).unique())
    with _figure(path, figsize=(7, 5)) as fig:
        ax = fig.subplots()
        for i, (_, p) in enumerate(points.iterrows()):
            edge, style = (
                ("black", "solid")
                if p["front"]
                else ("0.3", "dashed")
                if p["front_cost"]
                else ("none", "solid")
            )
            ax.scatter(
                [p[x]], [p[y]], s=areas[i], marker=algo_marker(str(p["algo"]), algos), alpha=0.7,
                color=f"C{algos.index(str(p['algo'])) % 10}", edgecolors=edge, linestyles=style,
                label=str(p["algo"]),
            )  # fmt: skip
            if p["front"] or p["front_cost"]:
                ax.annotate(f"{p['config']} e{_fmt(p['epoch'])}", (p[x], p[y]), fontsize=6,
                            xytext=(4, 4), textcoords="offset points")  # fmt: skip
        handles, labels = ax.get_legend_handles_labels()
        unique = dict(zip(labels, handles, strict=True))
        if unique:
            ax.legend(unique.values(), unique.keys(), fontsize=7, loc="best", markerscale=0.6)
        ax.margins(0.15)  # room for the names of the points at the edges
        ax.set_xlabel(x, fontsize=8)
        ax.set_ylabel(y, fontsize=8)
        readable_ticks(ax)
        ax.set_title(
            f"marker area ∝ {cost}; named: Pareto-optimal (dashed: only once {cost} counts)", fontsize=7
        )
        fig.tight_layout()
    return path
