"""The leaderboard: for every (configuration, epoch) and metric label, the mean with a 95% CI from a
hierarchical bootstrap over seeds, concepts and images, its rank with a rank interval from paired
comparisons, parameter count, file size, mean rank and Pareto marks on the Pareto axes the
metrics declare (by default fidelity, image similarity, vs controllability, text similarity);
and the paired comparison of every configuration with a reference one. Computed by
:mod:`lyco_bench.analysis.board` (re-exported here); this module renders and writes it. See
`lyco_bench.analysis.uncertainty` for the statistics.

Files: leaderboard.csv (long: one row per configuration, epoch and metric label), comparison.csv
(one row per configuration, epoch and metric label against the reference), leaderboard.md and
leaderboard.html (the labels shown, one row per configuration and epoch).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from lyco_bench.analysis.board import (  # noqa: F401 - the leaderboard's public names, in one place
    COMPARISON_COLUMNS,
    ID_COLUMNS,
    LONG_COLUMNS,
    Contrast,
    Leaderboard,
    build_leaderboard,
    check_reference,
    compute_leaderboard,
    default_reference,
    id_columns,
    pareto_mask,
)
from lyco_bench.analysis.choices import ReportChoices
from lyco_bench.analysis.coverage import LEFT_OUT_TEXT, partial_cells, partial_note, partial_rows
from lyco_bench.analysis.html import render_template
from lyco_bench.analysis.results import check_not_empty
from lyco_bench.analysis.uncertainty import BootstrapSettings
from lyco_bench.analysis.units import human_bytes, human_count
from lyco_bench.utils import atomic_path, atomic_write_text


# --- display -----------------------------------------------------------------------------------
def _fmt(value: float) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)) or pd.isna(value):
        return "–"
    return f"{value:.4g}"


def fmt3(value: float, *, signed: bool = False) -> str:
    """3 significant digits, without exponents between 1e-3 and 1e6 (`0.972`, `1230`, `-0.0041`)."""
    if value is None or pd.isna(value):
        return "–"
    value = float(value)
    if math.isinf(value):
        return "∞" if value > 0 else "−∞"
    sign = "+" if signed and value > 0 else ""
    if value == 0:
        return "0"
    magnitude = math.floor(math.log10(abs(value)))
    if -3 <= magnitude < 6:
        decimals = max(0, 2 - magnitude)
        rounded = round(value, decimals)
        if rounded != 0 and math.floor(math.log10(abs(rounded))) > magnitude:  # 0.9996 → 1.00
            decimals = max(0, decimals - 1)
        return sign + f"{rounded:.{decimals}f}"
    return sign + f"{value:.2e}"


def interval_text(mean: float, low: float, high: float, *, signed: bool = False) -> str:
    """`mean [low, high]` at 3 significant digits."""
    return f"{fmt3(mean, signed=signed)} [{fmt3(low, signed=signed)}, {fmt3(high, signed=signed)}]"


def cell_interval_text(mean: float, low: float, high: float, left_out: object) -> str:
    """`mean [low, high]`; `mean [n/a]` without an interval; what a partial one leaves out."""
    left = "" if left_out is None or pd.isna(left_out) else str(left_out)
    if left == "all":
        return f"{fmt3(mean)} [n/a]"
    text = interval_text(mean, low, high)
    return f"{text} ({LEFT_OUT_TEXT[left]})" if left else text


def rank_text(rank: float, low: float, high: float) -> str:
    """`#2` when the interval is a single rank, else `#2 (1–4)`."""
    if pd.isna(rank):
        return ""
    if low == high:
        return f"#{int(rank)}"
    return f"#{int(rank)} ({int(low)}–{int(high)})"


def display_rows(board: Leaderboard, labels: Sequence[str]) -> tuple[list[str], list[list]]:
    """Header and cells of the compact table (Markdown/HTML), one row per (config, epoch): a
    label's cell is {"text": "mean [low, high]", "note": rank, "cls": "rank" or "rank tied"};
    `tied` where the rank is not separated from its neighbours."""
    header = ["config", "algo", "epoch", "params", "size", "pareto", "mean rank", *labels]
    cells = board.table.set_index(["config", "epoch", "label"])
    rows = []
    for _, r in board.configs().iterrows():
        row: list = [
            str(r["config"]), str(r["algo"]), _fmt(r["epoch"]), human_count(r["trainable_params"]),
            human_bytes(r["file_bytes"]), "★" if r["pareto"] else "", _fmt(r["mean_rank"]),
        ]  # fmt: skip
        for label in labels:
            key = (r["config"], r["epoch"], label)
            if key not in cells.index:
                row.append("–")
                continue
            c = cells.loc[key]
            c = c.iloc[0] if isinstance(c, pd.DataFrame) else c
            tied = not pd.isna(c["rank"]) and not bool(c["separated"])
            row.append(
                {"text": cell_interval_text(c["mean"], c["ci_low"], c["ci_high"], c.get("left_out")),
                 "note": rank_text(c["rank"], c["rank_low"], c["rank_high"]),
                 "cls": "rank tied" if tied else "rank", "mark": "≈" if tied else ""}
            )  # fmt: skip
        rows.append(row)
    return header, rows


def comparison_rows(board: Leaderboard, labels: Sequence[str]) -> tuple[list[str], list[list]]:
    """One row per compared (config, epoch): per label `Δ [low, high]` and the Holm p-value,
    the cell marked better/worse where that p-value is ≤ α."""
    header = ["config", "epoch", "vs", *labels]
    comp = board.comparison
    rows = []
    if comp.empty:
        return header, rows
    cells = comp.set_index(["config", "epoch", "reference", "reference_epoch", "label"])
    keys = ["config", "epoch", "reference", "reference_epoch"]
    for (config, epoch, reference, ref_epoch), _ in comp.groupby(keys, sort=False):
        vs = str(reference) + ("" if ref_epoch == epoch else f" (epoch {_fmt(ref_epoch)})")
        row: list = [str(config), _fmt(epoch), vs]
        for label in labels:
            key = (config, epoch, reference, ref_epoch, label)
            if key not in cells.index:
                row.append("–")
                continue
            c = cells.loc[key]
            verdict = str(c["verdict"])
            row.append(
                {"text": interval_text(c["delta"], c["ci_low"], c["ci_high"], signed=True)
                 if not pd.isna(c["ci_low"]) else f"{fmt3(c['delta'], signed=True)} [n/a]",
                 "note": f"p={c['p_holm']:.2g}" if not pd.isna(c["p_holm"]) else "nothing resampled", "cls": verdict or "ns",
                 "mark": {"better": "▲", "worse": "▼"}.get(verdict, ""), "td": verdict}
            )  # fmt: skip
        rows.append(row)
    return header, rows


def cell_text(cell: object) -> str:
    if isinstance(cell, Mapping):
        note = f" {cell.get('mark', '')}{cell['note']}" if cell.get("note") else ""
        return f"{cell['text']}{note}"
    return str(cell)


def to_markdown(header: list[str], rows: list[list]) -> str:
    esc = [[cell_text(c).replace("|", "\\|") for c in row] for row in [header, *rows]]
    lines = ["| " + " | ".join(esc[0]) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in esc[1:]]
    return "\n".join(lines) + "\n"


def legend(board: Leaderboard) -> str:
    """What the numbers mean (Markdown and HTML share it)."""
    s = board.settings
    n = sorted(set(board.n_resamples.values()))
    resamples = f"{n[0]}" if len(n) == 1 else f"{n[0]}–{n[-1]}" if n else str(s.n_resamples)
    return (
        f"mean [{s.level:.0%} CI]: hierarchical bootstrap over training seeds, concepts and images "
        f"({resamples} resamples, bootstrap seed {s.seed}); with few seeds the intervals are indicative. "
        f"#rank (1 = best, respecting each metric's direction) and (low–high): the ranks a configuration can "
        f"hold given paired comparisons with every other one (Bonferroni over its n − 1 comparisons); "
        f"≈ (grey): not separated from a neighbour in the ranking. Mean rank and ★ use the means. "
        f"n/a: a value from a single unit at every level (one seed, one concept or pair per category, "
        f"no per-image spread) has no interval and no separated rank; a level with a single unit "
        f"leaves its variance out, as the cell says."
    )


def render_html_table(
    header: list[str], rows: list[list], *, title: str, note: str = "", extra: Sequence[Mapping] = ()
) -> str:
    """The leaderboard page; `extra`: more tables ({id, title, note, header, rows}) below it."""
    return render_template(
        "leaderboard.html.j2", title=title, header=header, rows=rows, note=note, extra=list(extra)
    )


def partial_section(board: Leaderboard) -> dict:
    """The cells without a full interval, as a table section (Markdown, HTML, the report)."""
    cells = partial_cells(board.table)
    header, rows = partial_rows(cells)
    title = "Cells without a full interval"
    return {"id": "partial", "title": title, "note": partial_note(cells), "header": header, "rows": rows}


def write_leaderboard(
    results: pd.DataFrame,
    out_dir: str | Path,
    *,
    directions: Mapping[str, bool] | None = None,
    labels: Sequence[str] | None = None,
    bootstrap: BootstrapSettings | None = None,
    reference: str | None = None,
    contrasts: Sequence[Contrast] = (),
    board: Leaderboard | None = None,
    choices: ReportChoices | None = None,
) -> dict[str, Path]:
    """leaderboard.csv (every metric, long), comparison.csv (every metric against `reference`),
    leaderboard.md and .html (the `labels` shown; default: the headline labels of `choices`, see
    `choices.headline_labels`). `board`: an already computed `compute_leaderboard`."""
    check_not_empty(results)
    out_dir = Path(out_dir)
    if board is None:
        board = compute_leaderboard(
            results, directions=directions, labels=labels, bootstrap=bootstrap, reference=reference,
            contrasts=contrasts, choices=choices,
        )  # fmt: skip
    shown = [lb for lb in board.labels if lb in set(board.table["label"])]
    header, rows = display_rows(board, shown)
    paths = {
        "csv": out_dir / "leaderboard.csv",
        "comparison": out_dir / "comparison.csv",
        "md": out_dir / "leaderboard.md",
        "html": out_dir / "leaderboard.html",
    }
    with atomic_path(paths["csv"]) as tmp:
        csv = board.table.astype({"ci_low": object, "ci_high": object})
        csv.loc[csv["left_out"] == "all", ["ci_low", "ci_high"]] = "n/a"  # no interval, not a missing one
        csv.to_csv(tmp, index=False, float_format="%.10g")
    with atomic_path(paths["comparison"]) as tmp:
        board.comparison.to_csv(tmp, index=False, float_format="%.10g")
    note = legend(board) + pareto_note(board, " (both higher is better)")
    c_header, c_rows = comparison_rows(board, shown)
    md = "# Leaderboard\n\n" + note + "\n\n" + to_markdown(header, rows)
    if c_rows:
        md += f"\n## Against {board.reference}\n\n{comparison_note(board)}\n\n" + to_markdown(
            c_header, c_rows
        )
    partial = partial_section(board)
    if partial["rows"]:
        md += f"\n## {partial['title']}\n\n{partial['note']}\n\n" + to_markdown(
            partial["header"], partial["rows"]
        )
    atomic_write_text(paths["md"], md)
    html = render_html_table(
        header, rows, title="Leaderboard", note=note, extra=[partial] if partial["rows"] else []
    )
    atomic_write_text(paths["html"], html)
    return paths


def pareto_note(board: Leaderboard, suffix: str = "") -> str:
    """`` ★ Pareto-optimal for A vs B.`` (empty without Pareto axes); `suffix` before the stop, for
    two axes (``(both higher is better)``) or ``each`` for more."""
    axes = board.pareto_axes
    if not axes:
        return ""
    suffix = suffix.replace("both", "each") if len(axes) > 2 else suffix
    return f" ★ Pareto-optimal for {' vs '.join(axes)}{suffix}."


def comparison_note(board: Leaderboard) -> str:
    return (
        f"Δ = configuration − {board.reference} (same epoch, else the reference's last), paired by seed, "
        f"concept and prompt, [{board.settings.level:.0%} CI]; p: two-sided bootstrap p-value, Holm-corrected "
        f"across the metrics of each row (comparison.csv: every metric); ▲ better / ▼ worse where that "
        f"p ≤ {board.settings.alpha:g}, respecting each metric's direction."
    )
