"""The trajectory outputs: trajectory.csv, best_checkpoint.csv, the leaderboard's ``best_epoch`` /
``overfitting`` columns, and the figure — each criterion against the epoch, one line per
configuration with its interval as a band, the picked checkpoint starred, an overfitting
configuration dashed."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from lyco_bench.analysis.plots import _figure, slug
from lyco_bench.analysis.trajectory import (
    CURVE_CRITERIA,
    BestCheckpointRule,
    picks_table,
    trajectory_table,
    write_csv,
)
from lyco_bench.analysis.uncertainty import BootstrapSettings

MAX_LINES = 6  # more configurations of one algorithm than this: one figure per block of them


def readable_axis(ax) -> None:
    """Few ticks, integer epochs, and an offset or scientific notation on y so that values which
    differ only in the 4th digit do not print as one long string per tick."""
    from matplotlib.ticker import MaxNLocator, ScalarFormatter

    ax.xaxis.set_major_locator(MaxNLocator(nbins=6, integer=True))
    ax.yaxis.set_major_locator(MaxNLocator(nbins=5))
    formatter = ScalarFormatter(useOffset=True, useMathText=True)
    formatter.set_powerlimits((-3, 4))
    ax.yaxis.set_major_formatter(formatter)
    ax.tick_params(labelsize=7)


def trajectory_figures(
    table: pd.DataFrame, picks: pd.DataFrame, out_dir: Path, *, algos: dict[str, str] | None = None
) -> list[Path]:
    """figures/trajectory[-<algo>][-N].png: a panel per criterion present in ``table``
    (trajectory.csv); with ``algos`` (config → algorithm), one figure per algorithm, each with at
    most MAX_LINES configurations, so that bands stay readable."""
    configs = sorted(table["config"].unique())
    algos = algos or {}
    groups: dict[str, list[str]] = {}
    for config in configs:
        groups.setdefault(algos.get(config, ""), []).append(config)
    paths = []
    for algo, members in sorted(groups.items()):
        blocks = [members[i : i + MAX_LINES] for i in range(0, len(members), MAX_LINES)]
        for n, block in enumerate(blocks):
            name = "-".join(["trajectory", *([slug(algo)] if algo and len(groups) > 1 else []),
                             *([str(n + 1)] if len(blocks) > 1 else [])])  # fmt: skip
            paths.append(_figure_of(table[table["config"].isin(block)], picks, out_dir / f"{name}.png"))
    return paths


def _figure_of(table: pd.DataFrame, picks: pd.DataFrame, path: Path) -> Path:
    criteria = [c for c in CURVE_CRITERIA if c in set(table["criterion"])]
    best = dict(zip(picks["config"], picks["best_epoch"], strict=True)) if len(picks) else {}
    over = set(picks.loc[picks["overfitting"].astype(str) == "True", "config"]) if len(picks) else set()
    path.parent.mkdir(parents=True, exist_ok=True)
    cols = 2 if len(criteria) > 1 else 1
    rows = (len(criteria) + cols - 1) // cols
    with _figure(path, figsize=(5.2 * cols, 3.4 * rows + 0.6)) as fig:
        axes = fig.subplots(rows, cols, squeeze=False).ravel()
        for ax, criterion in zip(axes, criteria, strict=False):
            part = table[table["criterion"] == criterion]
            for i, (config, curve) in enumerate(part.groupby("config", sort=True)):
                curve = curve.sort_values("epoch")
                color = f"C{i % 10}"
                style = "--" if config in over else "-"
                ax.plot(curve["epoch"], curve["mean"], style, color=color, marker="o", markersize=3,
                        linewidth=1, label=str(config) + (" (overfitting)" if config in over else ""))  # fmt: skip
                ax.fill_between(curve["epoch"], curve["ci_low"], curve["ci_high"], color=color, alpha=0.15,
                                linewidth=0)  # fmt: skip
                pick = curve[curve["epoch"] == best.get(config)]
                ax.plot(pick["epoch"], pick["mean"], "*", color=color, markersize=11, markeredgecolor="k")
            arrow = "↑" if bool(part["higher_is_better"].iloc[0]) else "↓"
            ax.set_title(f"{criterion} {arrow}: {part['label'].iloc[0]}", fontsize=8)
            ax.set_xlabel("epoch", fontsize=8)
            readable_axis(ax)
        for ax in axes[len(criteria) :]:
            ax.set_visible(False)
        handles, labels = axes[0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="lower center", ncol=min(4, max(1, len(labels))), fontsize=7,
                   frameon=False)  # fmt: skip
        fig.suptitle("Checkpoint trajectories (band: 95% interval; ★ picked checkpoint)", fontsize=9)
        fig.tight_layout(rect=(0, 0.06 + 0.02 * ((len(labels) - 1) // 4), 1, 0.96))
    return path


@dataclass
class TrajectoryOutputs:
    """What the analysis wrote about checkpoint trajectories (the report shows it)."""

    table: pd.DataFrame  # trajectory.csv
    picks: pd.DataFrame  # best_checkpoint.csv (trajectory.PICK_COLUMNS)
    files: list[Path]
    figures: list[Path]


def write_trajectory(
    results: pd.DataFrame,
    out_dir: Path,
    *,
    rule: BestCheckpointRule | None = None,
    bootstrap: BootstrapSettings | None = None,
    plots: bool = True,
) -> TrajectoryOutputs | None:
    """out_dir/trajectory.csv, out_dir/best_checkpoint.csv and figures/trajectory.png from a results
    table (a study's trajectory points, or its checkpoint epochs); None when no configuration has
    two epochs."""
    tuned = results[results["algo"].astype(str) != "base"]
    epochs = tuned.groupby("config")["epoch"].nunique()
    if not len(epochs) or epochs.max() < 2:
        return None
    rule = rule or BestCheckpointRule()
    table = trajectory_table(
        tuned[tuned["config"].isin(epochs[epochs >= 2].index)], rule=rule, bootstrap=bootstrap
    )
    if table.empty:
        return None
    picks = picks_table(table, rule)
    files = [write_csv(table, out_dir / "trajectory.csv"), write_csv(picks, out_dir / "best_checkpoint.csv")]
    algos = dict(zip(tuned["config"].astype(str), tuned["algo"].astype(str), strict=True))
    figures = trajectory_figures(table, picks, out_dir / "figures", algos=algos) if plots else []
    return TrajectoryOutputs(table=table, picks=picks, files=files, figures=figures)


def add_pick_columns(board_table: pd.DataFrame, picks: pd.DataFrame) -> pd.DataFrame:
    """leaderboard.csv with ``best_epoch`` and ``overfitting`` per configuration (empty where the
    rule was not applied: the base model, a single epoch)."""
    by_config = (
        picks.set_index("config") if len(picks) else pd.DataFrame(columns=["best_epoch", "overfitting"])
    )
    out = board_table.copy()
    best = out["config"].map(by_config["best_epoch"]) if len(picks) else pd.Series(pd.NA, index=out.index)
    out["best_epoch"] = best.astype("Int64")
    out["overfitting"] = out["config"].map(by_config["overfitting"]).fillna("") if len(picks) else ""
    return out
