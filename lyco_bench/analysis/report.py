"""The study report: `reports/<study>/index.html` with the leaderboard, the figures and image grids
(one PNG per checkpoint × prompt class, the base model's images for the same prompts underneath).

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
from lyco_bench.analysis.html import render_template
from lyco_bench.analysis.leaderboard import (
    comparison_note,
    comparison_rows,
    compute_leaderboard,
    display_rows,
    fmt3,
    legend,
    pareto_note,
    partial_section,
    write_leaderboard,
)
from lyco_bench.analysis.plots import slug
from lyco_bench.analysis.results import check_not_empty
from lyco_bench.analysis.trajectory_plot import TrajectoryOutputs, add_pick_columns
from lyco_bench.analysis.uncertainty import BootstrapSettings
from lyco_bench.errors import BadInput
from lyco_bench.utils import atomic_path, atomic_write_text

THUMB = 128  # grid cell size in pixels
MATCH_KEYS = ["prompt_class", "category", "concept", "subclass", "prompt_index", "image_index"]


def _why(e: Exception) -> str:
    """The first line of an exception's message (a reader's errors span lines), else its type."""
    lines = str(e).strip().splitlines()
    return lines[0][:200] if lines else type(e).__name__


def _read_manifest(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise BadInput(f"{path}: generation manifest not found")
    try:
        manifest = pd.read_parquet(path)
    except (OSError, ValueError) as e:  # pyarrow's ArrowInvalid is a ValueError
        raise BadInput(f"{path}: not a readable manifest.parquet ({_why(e)})") from None
    missing = [c for c in ("file", "prompt_class") if c not in manifest]
    if missing:
        raise BadInput(f"{path}: manifest lacks columns {missing}")
    for col in MATCH_KEYS:
        if col not in manifest:
            manifest[col] = "" if col not in ("prompt_index", "image_index") else 0
    manifest[["category", "concept", "subclass"]] = manifest[["category", "concept", "subclass"]].fillna("")
    if not all(isinstance(f, str) and f for f in manifest["file"]):
        raise BadInput(f"{path}: manifest column file holds a value that is not a file name")
    manifest["path"] = [path.parent / f for f in manifest["file"]]
    return manifest.sort_values(MATCH_KEYS, kind="mergesort").reset_index(drop=True)


def _thumb(path: Path):
    from PIL import Image, ImageOps

    from lyco_bench.data.images import open_image_checked

    with open_image_checked(path) as img:
        img = ImageOps.contain(img.convert("RGB"), (THUMB, THUMB))  # up- or down-scaled to fit
        cell = Image.new("RGB", (THUMB, THUMB), "white")
        cell.paste(img, ((THUMB - img.width) // 2, (THUMB - img.height) // 2))
    return cell


def make_grid(rows: Sequence[Sequence[Path | None]], path: Path) -> Path:
    """Paste thumbnails into a grid PNG (rows × columns; None leaves a grey cell)."""
    from PIL import Image

    n_cols = max(len(r) for r in rows)
    grid = Image.new("RGB", (n_cols * THUMB, len(rows) * THUMB), (235, 235, 235))
    for i, row in enumerate(rows):
        for j, image_path in enumerate(row):
            if image_path is not None:
                grid.paste(_thumb(image_path), (j * THUMB, i * THUMB))
    with atomic_path(path) as tmp:
        grid.save(tmp, format="PNG")
    return path


def grid_rows_of(manifest: pd.DataFrame, images_per_grid: int) -> list[tuple[str, pd.DataFrame]]:
    """(prompt class, the manifest rows drawn in its grid): the first images in MATCH_KEYS order."""
    ordered = manifest.sort_values(MATCH_KEYS, kind="mergesort")
    return [(str(pc), rows.head(images_per_grid)) for pc, rows in ordered.groupby("prompt_class", sort=True)]


def _present(path: Path | None) -> Path | None:
    """An image removed after scoring (a study's ``images: grids|none``) is drawn as a grey cell."""
    return path if path is not None and Path(path).is_file() else None


def read_manifests(image_manifests: Mapping[str, Path | pd.DataFrame]) -> dict[str, pd.DataFrame]:
    """Each KEY's manifest read and checked (BadInput naming the file), in key order."""
    return {
        key: p if isinstance(p, pd.DataFrame) else _read_manifest(Path(p))
        for key, p in sorted(image_manifests.items())
    }


def write_grids(
    image_manifests: Mapping[str, Path | pd.DataFrame],
    out_dir: Path,
    *,
    base_key: str = "base",
    images_per_grid: int = 8,
) -> list[dict[str, str]]:
    """One grid per (key, prompt class); returns [{"src", "caption"}] with paths relative to out_dir.
    A value is a manifest.parquet path, or its table as :func:`read_manifests` returns it."""
    manifests = read_manifests(image_manifests)
    base = manifests.pop(base_key, None)
    base_index = (
        {tuple(r[k] for k in MATCH_KEYS): r["path"] for _, r in base.iterrows()} if base is not None else {}
    )
    grids = []
    for key, manifest in manifests.items():
        for prompt_class, chosen in grid_rows_of(manifest, images_per_grid):
            top = [_present(p) for p in chosen["path"]]
            grid_rows = [top]
            if base is not None:
                grid_rows.append(
                    [_present(base_index.get(tuple(r[k] for k in MATCH_KEYS))) for _, r in chosen.iterrows()]
                )
            rel = Path("grids") / f"{slug(key)}__{slug(str(prompt_class))}.png"
            make_grid(grid_rows, out_dir / rel)
            grids.append({"src": rel.as_posix(), "caption": f"{key} · <{prompt_class}>"})
    return grids


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
    trajectory: TrajectoryOutputs | None = None,
) -> Path:
    """Write out_dir/index.html (+ leaderboard files, comparison.csv, figures/, grids/); returns
    the index path. `reference`: the configuration every other is compared with (None: the
    first); `contrasts`: more named comparisons (leaderboard.Contrast); `sample_size`: the analysis' sample_size.csv (or its table), shown when given;
    `choices`: headline labels and Pareto axes (default: the metric registry's declarations);
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
    out_dir.mkdir(parents=True, exist_ok=True)
    if trajectory is not None:
        board.table = add_pick_columns(board.table, trajectory.picks)
    write_leaderboard(results, out_dir, board=board)
    labels = [lb for lb in main if lb in set(board.table["label"])]
    header, rows = display_rows(board, labels)
    c_header, c_rows = comparison_rows(board, labels)
    figure_entries = _copy_figures([*figures, *(trajectory.figures if trajectory else [])], out_dir)
    grids = (
        write_grids(image_manifests, out_dir, base_key=base_key, images_per_grid=images_per_grid)
        if image_manifests
        else []
    )
    configs = board.configs()
    n_configs = configs.loc[configs["algo"] != "base", "config"].nunique()
    summary = (
        f"{n_configs} configurations, {results['checkpoint'].nunique()} checkpoints, "
        f"{results['label'].nunique()} metric columns, {len(figure_entries)} figures, {len(grids)} image grids."
    )
    pareto = pareto_note(board).replace("★ Pareto", "★ = Pareto")
    html = render_template(
        "index.html.j2", study_name=study_name, summary=summary, header=header, rows=rows,
        legend=legend(board) + pareto, reference=board.reference, comparison_header=c_header,
        comparison_rows=c_rows, comparison_note=comparison_note(board), precision=precision,
        partial=partial_section(board), best=best_section(trajectory, out_dir),
        figures=figure_entries, grids=grids, has_base=bool(image_manifests and base_key in image_manifests),
    )  # fmt: skip
    index = out_dir / "index.html"
    atomic_write_text(index, html)
    return index


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
