"""The leaderboard: one row per (configuration, epoch) with mean ± std over seeds of every metric,
ranks that respect each metric's direction, parameter count and file size, and Pareto marks for
fidelity (image similarity) vs controllability (text similarity). CSV + Markdown + HTML."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from lyco_bench.analysis.results import check_not_empty, metric_direction
from lyco_bench.errors import BadInput
from lyco_bench.utils import atomic_path, atomic_write_text

ID_COLUMNS = ["config", "algo", "preset", "lr", "epoch"]
"""Besides these, a row shows its algorithm's declared settings (results.setting_columns)."""
# Pareto axes (PAPER.md §6 first trade-off panel): image vs text similarity on <alter> prompts.
FIDELITY = ("image_similarity", ("alter", "train", "trigger"))
CONTROLLABILITY = ("text_similarity", ("alter", "train", "trigger"))
PREFER = ("dinov2", "resize")  # the paper's main image features


def checkpoint_values(results: pd.DataFrame) -> pd.DataFrame:
    """One value per (checkpoint, label): the whole-checkpoint row if scored, else the mean over
    category rows, else the mean over all rows of that checkpoint and label."""
    level = np.where(results["category"] == "", 0, np.where(results["concept"] == "", 1, 2))
    table = results.assign(_level=level)
    top = table.groupby(["checkpoint", "label"], sort=False)["_level"].transform("min")
    table = table[table["_level"] == top]
    keys = ["checkpoint", "label", "metric"]
    values = table.groupby(keys, sort=True)["value"].mean().reset_index()
    runs = results.drop_duplicates("checkpoint").set_index("checkpoint")
    for col in [*id_columns(results), "seed", "trainable_params", "file_bytes"]:
        values[col] = values["checkpoint"].map(runs[col]) if col in runs else np.nan
    return values


def id_columns(results: pd.DataFrame) -> list[str]:
    """config, algo, preset, lr, the algorithms' settings present in the table, epoch."""
    from lyco_bench.analysis.results import setting_columns

    settings = [c for c in setting_columns(results) if results[c].notna().any()]
    return [*ID_COLUMNS[:-1], *settings, ID_COLUMNS[-1]]


def pareto_mask(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """True where no other point is ≥ in both coordinates and > in one (both higher is better)."""
    ok = ~(np.isnan(x) | np.isnan(y))
    mask = np.zeros(len(x), dtype=bool)
    for i in np.flatnonzero(ok):
        dominated = ok & (x >= x[i]) & (y >= y[i]) & ((x > x[i]) | (y > y[i]))
        mask[i] = not dominated.any()
    return mask


def _axis_label(labels: pd.DataFrame, metric: str, classes: Sequence[str]) -> str | None:
    from lyco_bench.analysis.plots import pick_label

    return pick_label(labels, metric, classes, PREFER)


def build_leaderboard(
    results: pd.DataFrame,
    *,
    directions: Mapping[str, bool] | None = None,
    labels: Sequence[str] | None = None,
) -> pd.DataFrame:
    """The wide leaderboard table. Every metric column gets mean, std and rank; `mean_rank`
    averages the ranks of `labels` (default: the paper's main family, `default_metric_labels`).
    Rows are sorted by how many of those they have (most first), then by mean rank; the base
    model comes last, unranked."""
    from lyco_bench.analysis.pipeline import default_metric_labels

    if results.empty:
        raise BadInput("leaderboard: the results table is empty")
    values = checkpoint_values(results)
    ids = ["config", "epoch"]  # a config name fixes algo, preset, lr, dim, alpha, factor
    grouped = values.groupby([*ids, "label"], sort=True, dropna=False)["value"]
    stats = grouped.agg(["mean", "std"]).unstack("label")
    stats.columns = [f"{label} {stat}" for stat, label in stats.columns]
    extra = values.groupby(ids, sort=True, dropna=False).agg(
        trainable_params=("trainable_params", "mean"),
        file_bytes=("file_bytes", "mean"),
        n_seeds=("seed", "nunique"),
    )
    ids = id_columns(results)
    attrs = values.drop_duplicates("config").set_index("config")[ids[1:-1]]
    board = stats.join(extra).reset_index().join(attrs, on="config")
    board = board[[*ids, *[c for c in board.columns if c not in ids]]]

    all_labels = results.drop_duplicates("label")[["label", "metric", "prompt_class"]]
    ranked = board["algo"] != "base"
    for label, metric in sorted(zip(all_labels["label"], all_labels["metric"], strict=True)):
        col = f"{label} mean"
        if col in board:
            oriented = board[col] if metric_direction(metric, directions) else -board[col]
            board[f"{label} rank"] = oriented.where(ranked).rank(method="min", ascending=False)
    main = labels if labels is not None else default_metric_labels(results)
    rank_cols = [f"{lb} rank" for lb in main if f"{lb} rank" in board]
    board["mean_rank"] = board[rank_cols].mean(axis=1)
    board["_n_ranked"] = -board[rank_cols].notna().sum(axis=1)
    board["pareto"] = False
    fid, ctl = _axis_label(all_labels, *FIDELITY), _axis_label(all_labels, *CONTROLLABILITY)
    if fid and ctl:
        sign = {
            m: 1.0 if metric_direction(m, directions) else -1.0 for m in (FIDELITY[0], CONTROLLABILITY[0])
        }
        x = (board[f"{fid} mean"] * sign[FIDELITY[0]]).where(ranked).to_numpy(dtype=float)
        y = (board[f"{ctl} mean"] * sign[CONTROLLABILITY[0]]).where(ranked).to_numpy(dtype=float)
        board["pareto"] = pareto_mask(x, y)
    board.attrs["pareto_axes"] = (fid, ctl)
    board = board.sort_values(
        ["_n_ranked", "mean_rank", "config", "epoch"], na_position="last", kind="mergesort"
    )
    return board.drop(columns="_n_ranked").reset_index(drop=True)


def _fmt(value: float) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "–"
    return f"{value:.4g}"


def display_rows(board: pd.DataFrame, labels: Sequence[str]) -> tuple[list[str], list[list[str]]]:
    """Header and string cells of the compact table (Markdown/HTML): `mean ± std (#rank)`."""
    header = ["config", "algo", "epoch", "params", "MB", "pareto", "mean rank", *labels]
    rows = []
    for _, r in board.iterrows():
        cells = [
            str(r["config"]), str(r["algo"]), _fmt(r["epoch"]), _fmt(r["trainable_params"]),
            _fmt(r["file_bytes"] / 1e6), "★" if r["pareto"] else "", _fmt(r["mean_rank"]),
        ]  # fmt: skip
        for label in labels:
            rank = r.get(f"{label} rank", np.nan)
            rank_text = f" (#{int(rank)})" if not pd.isna(rank) else ""
            cells.append(f"{_fmt(r[f'{label} mean'])} ± {_fmt(r[f'{label} std'])}{rank_text}")
        rows.append(cells)
    return header, rows


def to_markdown(header: list[str], rows: list[list[str]]) -> str:
    esc = [[c.replace("|", "\\|") for c in row] for row in [header, *rows]]
    lines = ["| " + " | ".join(esc[0]) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in esc[1:]]
    return "\n".join(lines) + "\n"


def render_html_table(header: list[str], rows: list[list[str]], *, title: str) -> str:
    from lyco_bench.analysis.report import render_template

    return render_template("leaderboard.html.j2", title=title, header=header, rows=rows)


def write_leaderboard(
    results: pd.DataFrame,
    out_dir: str | Path,
    *,
    directions: Mapping[str, bool] | None = None,
    labels: Sequence[str] | None = None,
) -> dict[str, Path]:
    """leaderboard.csv (every metric), .md and .html (the `labels` shown; default: the paper's
    main family, see `default_metric_labels`)."""
    from lyco_bench.analysis.pipeline import default_metric_labels

    check_not_empty(results)
    out_dir = Path(out_dir)
    shown = list(labels) if labels is not None else default_metric_labels(results)
    board = build_leaderboard(results, directions=directions, labels=shown)
    header, rows = display_rows(board, [lb for lb in shown if f"{lb} mean" in board])
    paths = {
        "csv": out_dir / "leaderboard.csv",
        "md": out_dir / "leaderboard.md",
        "html": out_dir / "leaderboard.html",
    }
    with atomic_path(paths["csv"]) as tmp:
        board.to_csv(tmp, index=False, float_format="%.10g")
    fid, ctl = board.attrs["pareto_axes"]
    note = f"★ Pareto-optimal for {fid} vs {ctl} (both higher is better).\n\n" if fid and ctl else ""
    atomic_write_text(paths["md"], "# Leaderboard\n\n" + note + to_markdown(header, rows))
    atomic_write_text(paths["html"], render_html_table(header, rows, title="Leaderboard"))
    return paths
