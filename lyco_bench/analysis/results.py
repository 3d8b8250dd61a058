"""The long results table every analysis step reads: one row per (checkpoint, category, concept,
subclass, prompt class, metric, encoder, mode), with the run's configuration alongside.

Two sources feed it: lyco-bench's own score files (`collect_results`) and the paper's published
wide CSV (`read_paper_csv`, docs/protocol.md §9), converted to the same long format so that ranks, SHAP,
plots and the leaderboard share one code path.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from lyco_bench.errors import BadInput
from lyco_bench.utils import atomic_path

SCORE_COLUMNS = [
    "checkpoint", "category", "concept", "subclass", "prompt_class", "metric", "encoder", "mode",
    "value", "std", "n_images", "prompt_set_version", "reason",
]  # fmt: skip
"""`std`: the per-image standard deviation of a value that is a mean over images (NaN for set
statistics and category means; NaN too in score files written before it existed)."""
NUMERIC_SCORE_COLUMNS = ("value", "std", "n_images")
RUN_COLUMNS = ["config", "algo", "preset", "lr", "seed", "epoch", "trainable_params", "file_bytes"]
"""Columns every run has; besides them a run carries its algorithm's declared settings (dim, α,
factor, …: ``setting_columns``), NaN where another algorithm has none."""
COST_COLUMNS = ["train_seconds", "peak_memory_bytes", "unmerged_overhead"]
"""What a checkpoint cost beyond its parameters and file: from its run record, wall-clock seconds
of training up to it and peak memory (CUDA max allocated on a GPU, the process's peak RSS on a
CPU); and the extra FLOPs of one UNet forward with the adapter unmerged (sweep.overhead). Not in
the results table `lyco-bench run` writes (a rerun reproduces its values, not measured times):
the report takes them apart (`write_report(costs=…)`, costs.csv). Never settings where a table
holds them: neither a SHAP feature nor a leaderboard identity column."""
PATH_COLUMNS = ["category", "concept", "subclass"]
PROFILE_COLUMN = "profile"
"""The evaluation profile that produced a row's value (docs/protocol.md §5.7): ``lyco``, ``paper``,
or ``paper-published`` for the paper's own CSVs; absent in tables written before profiles."""
PROFILE_CAPTIONS = {
    "paper-published": "numbers: the paper's published values (its own evaluation code; the `paper` profile computes the same)",
    "paper": "numbers: lyco-bench, evaluation profile `paper` (the paper's evaluation reproduced)",
    "lyco": "numbers: lyco-bench, evaluation profile `lyco` (lyco-bench's own preprocessing and averaging, not the paper's)",
}

# The paper's column names: `<Metric> (<encoder>-<mode>) (<in|out|trigger>)`, in = <train>, out = <alter>.
PAPER_CLASSES = {"in": "train", "out": "alter", "trigger": "trigger"}
PAPER_METRIC_NAMES = {
    "Image Similarity": "image_similarity",
    "Squared Centroid Distance": "squared_centroid_distance",
    "Text Similarity": "text_similarity",
    "Vendi": "vendi",
    # style_classes_style_losses.csv: style concepts' images vs their dataset (docs/protocol.md §9)
    "Style Loss": "style_loss_dataset",
    "Frechet Distance": "frechet_distance",
    "Fréchet Distance": "frechet_distance",
}
ENCODER_MODES = ("resize", "crop", "padding")
PAPER_SEEDS = {"a": 23, "b": 24, "c": 25}
_COLUMN_RE = re.compile(r"^(?P<name>[^()]+?)(?: \((?P<enc>[^()]+)\))? \((?P<cls>in|out|trigger)\)$")
_FOLDER_RE = re.compile(r"(?P<config>exp-\d+-.+)-(?P<seed>[abc])(?:-(?P<epoch>\d{6}))?$")


def metric_direction(metric: str, directions: Mapping[str, bool] | None = None) -> bool:
    """True when a higher value is better: `directions` first, then the metric's registry entry
    (the paper's metrics too: docs/protocol.md §5–6, "distance metrics are ranked reversed")."""
    if directions and metric in directions:
        return bool(directions[metric])
    from lyco_bench.metrics.registry import METRICS

    if metric in METRICS:
        return bool(METRICS[metric].higher_is_better)
    raise BadInput(
        f"metric {metric!r}: direction unknown (not in lyco_bench.metrics.METRICS); pass directions"
    )


def metric_label(metric: str, encoder: str = "", mode: str = "", prompt_class: str = "") -> str:
    """Column name of one metric variant, in the paper's style: `Image Similarity (dinov2-resize) (alter)`."""
    title = " ".join(word.capitalize() for word in metric.split("_"))
    enc = "-".join(part for part in (encoder, mode) if part)
    return title + (f" ({enc})" if enc else "") + (f" ({prompt_class})" if prompt_class else "")


def _normalize(table: pd.DataFrame) -> pd.DataFrame:
    for col in ("category", "concept", "subclass", "encoder", "mode", "prompt_class", "reason"):
        if col in table:
            table[col] = table[col].fillna("").astype(str)
    if "label" not in table:
        table["label"] = [
            metric_label(m, e, md, pc)
            for m, e, md, pc in zip(
                table["metric"], table["encoder"], table["mode"], table["prompt_class"], strict=True
            )
        ]
    return table


def collect_results(score_files: Sequence[str | Path], runs: pd.DataFrame) -> pd.DataFrame:
    """Concatenate score parquet files and join each row's run configuration by `checkpoint`.

    Score rows whose checkpoint is not in `runs` (the base model) keep `config = checkpoint` and
    `algo = "base"`: shown on the leaderboard as a reference, left out of CatBoost/SHAP.
    """
    frames = []
    for path in score_files:
        path = Path(path)
        if not path.is_file():
            raise BadInput(f"{path}: score file not found")
        frame = pd.read_parquet(path)
        missing = [c for c in ("checkpoint", "metric", "value") if c not in frame]
        if missing:
            raise BadInput(f"{path}: missing score columns {missing}")
        frames.append(frame)
    if not frames:
        raise BadInput("collect_results: no score files given")
    scores = pd.concat(frames, ignore_index=True)
    for col in SCORE_COLUMNS:
        if col not in scores:
            scores[col] = "" if col not in NUMERIC_SCORE_COLUMNS else np.nan
    if "checkpoint" not in runs:
        raise BadInput("runs: missing column 'checkpoint'")
    if runs["checkpoint"].duplicated().any():
        raise BadInput("runs: duplicate checkpoint rows")
    run_cols = list(runs.columns)
    table = scores.drop(columns=[c for c in run_cols if c in scores and c != "checkpoint"]).merge(
        runs[run_cols], on="checkpoint", how="left", validate="many_to_one"
    )
    for col in RUN_COLUMNS:
        if col not in table:
            table[col] = np.nan
    base = table["config"].isna()
    table["config"] = table["config"].astype(object)
    table.loc[base, "config"] = table.loc[base, "checkpoint"]
    table["algo"] = table["algo"].astype(object)
    table.loc[base, "algo"] = "base"
    return sort_table(_normalize(table))


def setting_columns(table: pd.DataFrame) -> list[str]:
    """The algorithm settings a results table carries (every run column but the common ones)."""
    common = {*SCORE_COLUMNS, *RUN_COLUMNS, *COST_COLUMNS, "label", PROFILE_COLUMN}
    return [c for c in table.columns if c not in common]


def profile_caption(table: pd.DataFrame) -> str:
    """Which evaluation profile produced a table's numbers, in words (the figures' footnote)."""
    if PROFILE_COLUMN not in table or table[PROFILE_COLUMN].isna().all():
        return "numbers: evaluation profile not recorded (a results table from before profiles)"
    names = sorted(set(table[PROFILE_COLUMN].dropna().astype(str)))
    return "; ".join(PROFILE_CAPTIONS.get(n, f"numbers: evaluation profile `{n}`") for n in names)


def sort_table(table: pd.DataFrame) -> pd.DataFrame:
    """A fixed row order (for byte-identical files whatever order the inputs came in)."""
    keys = [c for c in ("config", "seed", "epoch", "checkpoint", *PATH_COLUMNS, "label") if c in table]
    return table.sort_values(keys, kind="mergesort", na_position="first").reset_index(drop=True)


def write_results(results: pd.DataFrame, path: str | Path) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        sort_table(results.copy()).to_parquet(tmp, index=False)
    return path


REQUIRED_COLUMNS = ("checkpoint", "metric", "value", "config", "algo", "epoch")


def read_results(path: str | Path) -> pd.DataFrame:
    """A results table written by :func:`write_results`; BadInput naming the file when it is not
    a readable parquet file (garbage, truncated, empty), lacks a required column or has no rows."""
    import pyarrow

    path = Path(path)
    if not path.is_file():
        raise BadInput(f"{path}: results table not found")
    try:
        table = pd.read_parquet(path)
    except (OSError, ValueError, pyarrow.ArrowException) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise BadInput(f"{path}: not a readable parquet file ({reason})") from None
    missing = [c for c in REQUIRED_COLUMNS if c not in table]
    if missing:
        raise BadInput(f"{path}: not a results table (no column {', '.join(map(repr, missing))})")
    check_not_empty(table, str(path))
    check_values(table, str(path))
    return _normalize(table)


# A results row is one value of one metric label for one checkpoint and concept (collect_results).
ROW_KEY = ("checkpoint", "category", "concept", "subclass", "label")


def check_values(table: pd.DataFrame, name: str) -> None:
    """BadInput naming the table, column and first bad row: ``value`` numbers, finite or NaN (a
    metric with no value, its ``reason`` said), ``epoch`` whole numbers, no row twice."""
    import numpy as np

    for column, whole in (("value", False), ("epoch", True)):
        numbers = pd.to_numeric(table[column], errors="coerce")
        bad = numbers.isna() & table[column].notna() | np.isinf(numbers.astype(float))
        if whole:
            bad |= numbers.notna() & (numbers != np.floor(numbers))
        if bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0])
            kind = "a whole number" if whole else "a finite number (or empty)"
            raise BadInput(f"{name}: row {row}: {column} {table[column].iloc[row]} is not {kind}")
    key = [c for c in ROW_KEY if c in table]
    if "label" in key:
        dup = table.duplicated(key)
        if dup.any():
            row = int(np.flatnonzero(dup.to_numpy())[0])
            raise BadInput(f"{name}: row {row}: a second row for {', '.join(f'{c}={table[c].iloc[row]!r}' for c in key[:2])} "
                           f"and {table['label'].iloc[row]!r} ({int(dup.sum())} duplicated rows)")  # fmt: skip


def check_not_empty(results: pd.DataFrame, name: str = "results") -> None:
    """BadInput before anything is written: a leaderboard or report of nothing is a mistake."""
    if results.empty:
        raise BadInput(f"{name}: the results table has no rows")


def parse_paper_column(column: str) -> dict[str, str]:
    """`Image Similarity (dinov2-l-fb-resize) (in)` → metric, encoder, mode, prompt_class."""
    match = _COLUMN_RE.match(column)
    if not match or match["name"] not in PAPER_METRIC_NAMES:
        raise BadInput(f"paper CSV column {column!r}: not `<Metric> (<encoder>-<mode>) (<in|out|trigger>)`")
    encoder, mode = match["enc"] or "", ""
    for candidate in ENCODER_MODES:
        if encoder.endswith("-" + candidate):
            encoder, mode = encoder[: -len(candidate) - 1], candidate
    return {
        "metric": PAPER_METRIC_NAMES[match["name"]],
        "encoder": encoder,
        "mode": mode,
        "prompt_class": PAPER_CLASSES[match["cls"]],
    }


def _parse_folder(folder: str, *, final_epoch: int, source: Path) -> dict:
    head, *path = folder.split("/")
    match = _FOLDER_RE.search(head)
    if not match or len(path) > 3:
        raise BadInput(
            f"{source}: Folder {folder!r} is not `…exp-<config>-<a|b|c>[-0000<epoch>][/category[/concept[/subclass]]]`"
        )
    path = path + [""] * (3 - len(path))
    epoch = int(match["epoch"]) if match["epoch"] else final_epoch
    return {
        "checkpoint": head,
        "config": match["config"],
        "seed": PAPER_SEEDS[match["seed"]],
        "epoch": epoch,
        **dict(zip(PATH_COLUMNS, path, strict=True)),
    }


def _wide_to_long(path: Path, *, final_epoch: int) -> pd.DataFrame:
    wide = pd.read_csv(path)
    if "Folder" not in wide:
        raise BadInput(f"{path}: no `Folder` column")
    if wide["Folder"].duplicated().any():
        raise BadInput(f"{path}: duplicate Folder rows")
    metric_cols = [c for c in wide.columns if c != "Folder"]
    parsed = {c: parse_paper_column(c) for c in metric_cols}
    keys = pd.DataFrame([_parse_folder(f, final_epoch=final_epoch, source=path) for f in wide["Folder"]])
    values = wide[metric_cols].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=float)  # (rows, metrics)
    long = keys.loc[np.repeat(np.arange(len(keys)), len(metric_cols))].reset_index(drop=True)
    long["label"] = np.tile(metric_cols, len(keys))
    for field in ("metric", "encoder", "mode", "prompt_class"):
        long[field] = np.tile([parsed[c][field] for c in metric_cols], len(keys))
    long["value"] = values.reshape(-1)
    return long.dropna(subset=["value"]).reset_index(drop=True)


def read_config_mapping(path: str | Path) -> pd.DataFrame:
    """config_mapping.csv → config, algo (LyCORIS's names → ours: full → native), preset, lr, dim,
    alpha, factor (the settings the paper's algorithms declare)."""
    path = Path(path)
    if not path.is_file():
        raise BadInput(f"{path}: config mapping not found")
    raw = pd.read_csv(path, na_values=["N/A"])
    missing = [c for c in ("Config", "Algo", "Preset", "Lr", "Dim", "Alpha", "Factor") if c not in raw]
    if missing:
        raise BadInput(f"{path}: missing columns {missing}")
    runs = pd.DataFrame(
        {
            "config": raw["Config"].astype(str),
            # the paper's algo names are LyCORIS's ("full" is native fine-tuning): the registry's aliases
            "algo": raw["Algo"].astype(str).map(_algorithm_name),
            "preset": raw["Preset"].astype(str),
            "lr": pd.to_numeric(raw["Lr"], errors="coerce"),
            "dim": pd.to_numeric(raw["Dim"], errors="coerce"),
            "alpha": pd.to_numeric(raw["Alpha"], errors="coerce"),
            "factor": pd.to_numeric(raw["Factor"], errors="coerce"),
        }
    )
    if runs["config"].duplicated().any():
        raise BadInput(f"{path}: duplicate Config rows")
    return runs


def _algorithm_name(name: str) -> str:
    from lyco_bench.adapters import get_algorithm

    try:
        return get_algorithm(name).algo
    except BadInput:
        return name


def read_paper_csv(
    metrics_csv: str | Path,
    config_mapping: str | Path,
    *,
    style_losses_csv: str | Path | None = None,
    final_epoch: int = 50,
) -> pd.DataFrame:
    """The published wide CSV(s) → the long results table (same columns as `collect_results`).

    `label` keeps each value's column name from the input CSV. A Folder without epoch suffix is
    the last epoch (`final_epoch`); seeds a/b/c are 23/24/25 (docs/protocol.md §9).
    """
    metrics_csv = Path(metrics_csv)
    if not metrics_csv.is_file():
        raise BadInput(f"{metrics_csv}: paper metrics CSV not found")
    frames = [_wide_to_long(metrics_csv, final_epoch=final_epoch)]
    if style_losses_csv is not None:
        style_path = Path(style_losses_csv)
        if not style_path.is_file():
            raise BadInput(f"{style_path}: style losses CSV not found")
        frames.append(_wide_to_long(style_path, final_epoch=final_epoch))
    long = pd.concat(frames, ignore_index=True)
    runs = read_config_mapping(config_mapping)
    unknown = sorted(set(long["config"]) - set(runs["config"]))
    if unknown:
        raise BadInput(f"{config_mapping}: no row for configs {unknown[:3]}")
    table = long.merge(runs, on="config", how="left", validate="many_to_one")
    table["checkpoint"] = [
        f"{c}-{s}-e{e:03d}" for c, s, e in zip(table["config"], table["seed"], table["epoch"], strict=True)
    ]
    for col in ("std", "n_images", "trainable_params", "file_bytes"):
        table[col] = np.nan
    table["prompt_set_version"] = "paper"
    table["reason"] = ""
    table[PROFILE_COLUMN] = "paper-published"
    return sort_table(_normalize(table))
