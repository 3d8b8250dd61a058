"""The study report: `reports/<study>/index.html`. Its first view is the leaderboard with one
metric per criterion and the costs (:mod:`lyco_bench.analysis.views`), sortable, its columns
choosable; every metric column one click away (All metrics), the Pareto view (fidelity vs
controllability, marker area ∝ file size), the comparisons, the precision table, the figures and
image grids (:mod:`lyco_bench.analysis.grids`: per checkpoint, or checkpoint × seed, multiplier …
side by side with the base model's images of the same prompts and seeds).

Self-contained: every file it links is copied inside the report directory and linked by a
relative path, so the folder can be zipped, moved or served as is.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd

from lyco_bench.analysis.choices import ReportChoices, headline_labels, report_choices
from lyco_bench.analysis.grids import (  # noqa: F401 - THUMB, MATCH_KEYS, make_grid, grid_rows_of: re-exported
    MATCH_KEYS,
    THUMB,
    GridSet,
    _why,
    grid_rows_of,
    make_grid,
    read_manifests,
    variant_grids,
    write_grids,
)
from lyco_bench.analysis.html import render_template
from lyco_bench.analysis.leaderboard import (
    Leaderboard,
    comparison_note,
    comparison_rows,
    compute_leaderboard,
    fmt3,
    legend,
    pareto_note,
    partial_section,
    write_leaderboard,
)
from lyco_bench.analysis.plots import pareto_figure
from lyco_bench.analysis.results import check_not_empty
from lyco_bench.analysis.trajectory_plot import TrajectoryOutputs, add_pick_columns
from lyco_bench.analysis.uncertainty import BootstrapSettings
from lyco_bench.analysis.views import (
    PARETO_COST,
    cost_table,
    full_columns,
    pareto_points,
    settings_shown,
    view_columns,
    view_rows,
)
from lyco_bench.errors import BadInput
from lyco_bench.utils import atomic_path, atomic_write_text


def _copy_figures(figures: Sequence[Path], out_dir: Path) -> list[dict[str, str]]:
    entries = []
    for fig in figures:
        fig = Path(fig)
        if not fig.is_file():
            raise BadInput(f"{fig}: figure not found")
        try:
            rel = fig.resolve().relative_to(out_dir.resolve())
        except ValueError:  # outside the report: copy it in so the report stays self-contained
            rel = Path("figures") / fig.name
            (out_dir / rel).parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(out_dir / rel) as tmp:
                shutil.copyfile(fig, tmp)
        entries.append({"src": rel.as_posix(), "caption": re.sub(r"[_-]+", " ", fig.stem)})
    return entries


def write_report(
    *,
    study_name: str,
    results: pd.DataFrame,
    out_dir: str | Path,
    figures: Sequence[Path] = (),
    image_manifests: Mapping[str, Path] | None = None,
    base_key: str = "base",
    images_per_grid: int = 8,
    directions=None,
    bootstrap: BootstrapSettings | None = None,
    reference: str | None = None,
    contrasts: Sequence = (),
    sample_size: str | Path | pd.DataFrame | None = None,
    choices: ReportChoices | None = None,
    grid_sets: Sequence[GridSet] = (),
    costs: pd.DataFrame | None = None,
    trajectory: TrajectoryOutputs | None = None,
) -> Path:
    """Write out_dir/index.html (+ leaderboard files, comparison.csv, figures/, grids/); returns
    the index path. `reference`: the configuration every other is compared with (None: the
    first); `contrasts`: more named comparisons (leaderboard.Contrast); `sample_size`: the
    analysis' sample_size.csv (or its table), shown when given; `choices`: headline labels and
    Pareto axes (default: the metric registry's declarations); `image_manifests`: one grid per
    key and prompt class, the ``base_key`` one underneath; `grid_sets`: side-by-side grids
    (grids.variant_grids), the ``base_key`` manifest as their last row; `costs`: what training
    each checkpoint cost (config, epoch, results.COST_COLUMNS; sweep.collect.run_costs), shown in
    the first view and written to costs.csv (measured: it differs between runs, the rest does not);
    `trajectory`: the checkpoint trajectories (trajectory_plot.write_trajectory): the leaderboard's
    best_epoch/overfitting columns, a best-checkpoint section with its evidence, the curves."""
    check_not_empty(results)
    out_dir = Path(out_dir)
    choices = choices or report_choices()
    main = headline_labels(results, choices)
    board = compute_leaderboard(
        results,
        directions=directions,
        labels=main,
        bootstrap=bootstrap,
        reference=reference,
        contrasts=contrasts,
        choices=choices,
    )  # fmt: skip  bad input (e.g. an unknown reference) fails before anything is written
    precision = _precision_rows(sample_size)
    image_manifests = read_manifests(image_manifests or {})  # checked before anything is written
    grid_sets = [g.loaded() for g in grid_sets]
    costs = cost_table(costs) if costs is not None else None
    out_dir.mkdir(parents=True, exist_ok=True)
    if trajectory is not None:
        board.table = add_pick_columns(board.table, trajectory.picks)
    write_leaderboard(results, out_dir, board=board)
    if costs is not None:
        with atomic_path(out_dir / "costs.csv") as tmp:
            costs.to_csv(tmp, index=False, float_format="%.10g")
    labels = [lb for lb in main if lb in set(board.table["label"])]
    c_header, c_rows = comparison_rows(board, labels)
    figure_entries = _copy_figures([*figures, *(trajectory.figures if trajectory else [])], out_dir)
    base = image_manifests.get(base_key)
    grids = [
        *(write_grids(image_manifests, out_dir, base_key=base_key, images_per_grid=images_per_grid)
          if image_manifests else []),
        *(g for s in grid_sets for g in variant_grids(s.image_sets, s.columns, out_dir, base=base,
                                                      group_by=s.group_by, images_per_row=images_per_grid)),
    ]  # fmt: skip
    html = render_template(
        "index.html.j2", study_name=study_name, summary=_summary(board, results, figure_entries, grids),
        **_leaderboard_views(board, choices, out_dir, costs), reference=board.reference,
        comparison_header=c_header, comparison_rows=c_rows, comparison_note=comparison_note(board),
        precision=precision, partial=partial_section(board), best=best_section(trajectory, out_dir), figures=figure_entries, grids=grids,
        has_base=base is not None, has_costs=costs is not None,
    )  # fmt: skip
    index = out_dir / "index.html"
    atomic_write_text(index, html)
    return index


def _summary(board: Leaderboard, results: pd.DataFrame, figures: Sequence, grids: Sequence) -> str:
    configs = board.configs()
    n_configs = configs.loc[configs["algo"] != "base", "config"].nunique()
    return (
        f"{n_configs} configurations, {results['checkpoint'].nunique()} checkpoints, "
        f"{results['label'].nunique()} metric columns, {len(figures)} figures, {len(grids)} image grids."
    )


def _leaderboard_views(
    board: Leaderboard, choices: ReportChoices, out_dir: Path, costs: pd.DataFrame | None
) -> dict:
    """The template's first view, full table and Pareto view (its figure written here)."""
    header, rows = view_rows(board, view_columns(board.table, choices), costs=costs)
    everything = full_columns(board)
    full_header, full_rows = view_rows(
        board, everything, settings=settings_shown(board), full=True, costs=costs
    )
    pareto = pareto_note(board).replace("★ Pareto", "★ = Pareto")
    figure, note = None, ""
    points = pareto_points(board)
    if len(board.pareto_axes) >= 2 and len(points):
        y, x = board.pareto_axes[0], board.pareto_axes[1]
        pareto_figure(points, x=x, y=y, cost=PARETO_COST, path=out_dir / "figures" / "pareto.png")
        figure = "figures/pareto.png"
        note = (
            f"{y} against {x}, one marker per configuration and epoch (mean over seeds), its area ∝ "
            f"file size. Named: Pareto-optimal — black edge (★) on these axes, dashed edge (☆) only "
            f"once a smaller file counts too."
        )
    return {
        "header": header, "rows": rows, "legend": legend(board) + pareto + " ☆: Pareto-optimal only once the file size counts too.",
        "full_header": full_header, "full_rows": full_rows, "n_full_labels": len(everything),
        "pareto_figure": figure, "pareto_note": note,
    }  # fmt: skip


def best_section(trajectory: TrajectoryOutputs | None, out_dir: Path) -> dict | None:
    """The best-checkpoint table: per configuration the picked epoch, its ties, the overfitting
    flag and the evidence of each (the compared values with their intervals)."""
    if trajectory is None or trajectory.picks.empty:
        return None
    rows = []
    for r in trajectory.picks.itertuples(index=False):
        over = {"True": "yes", "False": "no"}.get(str(r.overfitting), "n/a")
        best = f"e{r.best_epoch}" + (" (fallback)" if r.fallback else "")
        rows.append([r.config, best, str(r.tied_epochs).replace(";", ", ") or "—", r.best_evidence, over,
                     r.overfitting_evidence])  # fmt: skip
    links = []
    for path in trajectory.files:
        try:
            links.append(Path(path).resolve().relative_to(out_dir.resolve()).as_posix())
        except ValueError:
            continue
    header = ["config", "best epoch", "tied with", "evidence", "overfitting", "evidence"]
    return {"header": header, "rows": rows, "links": links}


PRECISION_COLUMNS = {
    "label": "metric",
    "n_seeds": "seeds",
    "images_per_unit": "images / concept",
    "image_std": "image std",
    "half_width": "CI half-width",
    "floor_half_width": "seeds+concepts floor",
    "target_half_width": "target",
    "images_per_prompt": "images / prompt",
    "images_per_prompt_needed": "images / prompt needed",
    "note": "note",
}


def _precision_rows(sample_size: str | Path | pd.DataFrame | None) -> dict | None:
    """The sample-size table as header + string rows (None when not given)."""
    if sample_size is None:
        return None
    try:
        table = sample_size if isinstance(sample_size, pd.DataFrame) else pd.read_csv(sample_size)
    except (OSError, ValueError) as e:  # unreadable, not text, not CSV
        raise BadInput(f"{sample_size}: not a readable sample_size.csv ({_why(e)})") from None
    if "label" not in table:
        raise BadInput(f"{sample_size}: not a sample_size.csv (no label column)")
    cols = [c for c in PRECISION_COLUMNS if c in table]
    rows = [[_precision_cell(c, r[c]) for c in cols] for _, r in table.iterrows()]
    return {"header": [PRECISION_COLUMNS[c] for c in cols], "rows": rows}


def _precision_cell(column: str, value: object) -> str:
    if column in ("label", "note"):
        return "" if pd.isna(value) else str(value)
    if column in ("n_seeds", "images_per_unit", "images_per_prompt", "images_per_prompt_needed"):
        return "–" if pd.isna(value) else "∞" if value == float("inf") else f"{float(value):.0f}"
    return fmt3(value)


def linked_files(index_html: Path) -> list[str]:
    """Every src/href the page links (anchors excluded)."""
    text = Path(index_html).read_text(encoding="utf-8")
    links = re.findall(r'(?:src|href)="([^"#][^"]*)"', text)
    return sorted(set(links))


def check_report_files(index_html: Path) -> list[str]:
    """Problems with a report's links: absolute paths, URLs, files missing or outside the folder."""
    root = Path(index_html).resolve().parent
    problems = []
    for link in linked_files(index_html):
        if re.match(r"^[a-z]+:", link) or link.startswith("/"):
            problems.append(f"{link}: not a relative path")
            continue
        target = (root / link).resolve()
        if root not in target.parents:
            problems.append(f"{link}: outside the report folder")
        elif not target.is_file():
            problems.append(f"{link}: missing")
    return problems
