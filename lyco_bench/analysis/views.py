"""What the report shows of a leaderboard: the first view (one metric per criterion, the costs,
the Pareto marks), the full table (every metric label) and the Pareto view's points.

The first view has one column per criterion — fidelity, controllability, diversity, preservation,
leakage, quality — in the metric registry's order: each column is the first of its metrics that a
study's headline choices name (``choices.ReportChoices``: the registry's ``Report(headline=…)``
or the study's ``analysis.headline``) and the results hold, else its first metric present (so
leakage and quality appear where a study computes them); a metric's ``Report.column`` names its
column (default: its criterion). Cells carry their raw value as ``sort`` (the page sorts on it),
headers their full label, encoder and mode as ``title`` (a tooltip).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from lyco_bench.analysis.board import Leaderboard, pareto_mask
from lyco_bench.analysis.choices import Axis, ReportChoices, pick_label
from lyco_bench.analysis.leaderboard import fmt3, rank_text
from lyco_bench.analysis.results import COST_COLUMNS, metric_direction, metric_label
from lyco_bench.analysis.units import human_bytes, human_count, human_percent, human_seconds

COSTS = [
    ("trainable_params", "params", human_count, "trainable parameters of the adapter"),
    ("file_bytes", "size", human_bytes, "the saved adapter file"),
    ("train_seconds", "train time", human_seconds,
     "wall-clock training time up to this checkpoint (run record; GPU-seconds on one GPU)"),
    ("peak_memory_bytes", "peak memory", human_bytes,
     "peak training memory (run record: CUDA max allocated on a GPU, process peak RSS on a CPU)"),
    ("unmerged_overhead", "unmerged", human_percent,
     "extra FLOPs of one UNet forward with the adapter applied unmerged (base(x) + λ·bypass(x) per "
     "adapted layer), relative to the base model's; matrix products and convolutions at the "
     "study's image size, counted without weights (0 for native: it replaces the weights)"),
]  # fmt: skip
"""(column, header, unit, tooltip) of each cost the first view shows where the results hold it."""
PARETO_COST = "file_bytes"
"""The cost of the Pareto view: what a user stores and ships (lower is better)."""


def _metrics() -> Mapping:
    from lyco_bench.metrics.registry import METRICS

    return METRICS


def view_columns(table: pd.DataFrame, choices: ReportChoices) -> list[tuple[str, str]]:
    """(column, label) of the first view, one per column present, in registry order; ``table``:
    rows with label, metric and prompt_class (the results or the long leaderboard)."""
    metrics = _metrics()
    present = set(table["metric"])
    groups: dict[str, list[str]] = {}
    rank: dict[str, tuple[int, bool, int]] = {}
    criteria = list(dict.fromkeys(m.criterion for m in metrics.values()))
    for i, (name, metric) in enumerate(metrics.items()):
        if name in present:
            column = metric.report.column or metric.criterion
            groups.setdefault(column, []).append(name)
            # a column of its own (leakage) right after its criterion's (preservation)
            rank.setdefault(column, (criteria.index(metric.criterion), column != metric.criterion, i))
    labels = table.drop_duplicates("label")[["label", "metric", "prompt_class"]]
    out = []
    for column in sorted(groups, key=rank.__getitem__):
        names = groups[column]
        chosen = [n for n in names if n in choices.headline] or names
        for name in chosen:
            report = metrics[name].report
            axis = Axis(name, report.classes or metrics[name].prompt_classes, choices.headline.get(name, ()))
            label = pick_label(labels, axis)
            if label is not None:
                out.append((column, label))
                break
    return out


def label_header(board: Leaderboard, label: str, *, column: str = "") -> dict:
    """A metric column's header: the criterion ``column`` over the short name (metric and prompt
    class) in the first view, the short name over encoder-mode in the full table (where two
    variants of a metric sit side by side); the full label, encoder, mode and direction as the
    tooltip."""
    meta = board.table.drop_duplicates("label").set_index("label").loc[label]
    higher = metric_direction(str(meta["metric"]))
    short = metric_label(str(meta["metric"]), prompt_class=str(meta["prompt_class"]))
    parts = [
        f"encoder {meta['encoder']}" if meta["encoder"] else "",
        f"mode {meta['mode']}" if meta["mode"] else "",
    ]
    detail = ", ".join(p for p in parts if p)
    title = f"{label}{' — ' + detail if detail else ''}; {'higher' if higher else 'lower'} is better"
    variant = "-".join(str(v) for v in (meta["encoder"], meta["mode"]) if v)
    return {"text": column or short, "sub": short if column else variant, "title": title}


def _metric_cell(cells: pd.DataFrame, key: tuple) -> dict | str:
    if key not in cells.index:
        return "–"
    c = cells.loc[key]
    c = c.iloc[0] if isinstance(c, pd.DataFrame) else c
    tied = not pd.isna(c["rank"]) and not bool(c["separated"])
    left = "" if pd.isna(c.get("left_out")) else str(c.get("left_out"))
    interval = "[n/a]" if left == "all" else f"[{fmt3(c['ci_low'])}, {fmt3(c['ci_high'])}]"
    return {
        "text": fmt3(c["mean"]), "sub": interval, "note": rank_text(c["rank"], c["rank_low"], c["rank_high"]),
        "cls": "rank tied" if tied else "rank", "mark": "≈" if tied else "", "sort": float(c["mean"]),
    }  # fmt: skip


def _cost_columns(configs: pd.DataFrame) -> list[tuple[str, str, object, str]]:
    return [c for c in COSTS if c[0] in configs and configs[c[0]].notna().any()]


def view_rows(
    board: Leaderboard,
    columns: Sequence[tuple[str, str]],
    *,
    settings: Sequence[str] = (),
    full: bool = False,
    costs: pd.DataFrame | None = None,
) -> tuple[list[dict], list[list]]:
    """Header and rows, one per (config, epoch) in leaderboard order: config, algo, ``settings``,
    epoch, the metric ``columns`` ((criterion column, label); the column is left out of the header
    in the ``full`` table), the costs present (parameters and size from the leaderboard, the
    measured ``costs``: :func:`cost_table`), the Pareto mark and the mean rank."""
    configs = board.configs()
    if costs is not None and len(costs):
        keys = list(zip(configs["config"].astype(str), configs["epoch"].astype(float), strict=True))
        measured = costs.set_index(["config", "epoch"])
        for column in COST_COLUMNS:
            configs[column] = [measured[column].get(k, np.nan) for k in keys]
    shown = _cost_columns(configs)
    cells = board.table.set_index(["config", "epoch", "label"])
    marks = pareto_view_marks(board)
    # the first view writes the algorithm under the configuration's name: one column less to fit
    ids = [{"text": "config", "sub": "algo"}] if not full else [{"text": "config"}, {"text": "algo"}]
    header = [*ids, *({"text": s} for s in settings), {"text": "epoch"}]
    header += [label_header(board, lb, column="" if full else col) for col, lb in columns]
    header += [{"text": name, "title": tip} for _, name, _, tip in shown]
    header += [
        {"text": "Pareto", "title": pareto_title(board)},
        {"text": "mean rank", "title": "mean rank over the headline metric labels (leaderboard.csv)"},
    ]
    rows = []
    for i, r in configs.iterrows():
        name = str(r["config"])
        row: list = [name, str(r["algo"])] if full else [{"text": name, "sub": str(r["algo"]), "sort": name}]
        row += [_setting_cell(r.get(s)) for s in settings]
        row.append({"text": _epoch(r["epoch"]), "sort": _num(r["epoch"])})
        row += [_metric_cell(cells, (r["config"], r["epoch"], lb)) for _, lb in columns]
        row += [{"text": unit(r[c]), "sort": _num(r[c])} for c, _, unit, _ in shown]
        row.append({"text": marks[i], "sort": {"★": 2, "☆": 1}.get(marks[i], 0)})
        row.append({"text": fmt3(r["mean_rank"]), "sort": _num(r["mean_rank"])})
        rows.append(row)
    return header, rows


def _epoch(value: object) -> str:
    number = _num(value)
    return "–" if number is None else f"{number:g}"


def _num(value: object) -> float | None:
    number = pd.to_numeric(value, errors="coerce")
    return None if pd.isna(number) else float(number)


def _setting_cell(value: object) -> dict | str:
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return ""  # a setting the row's algorithm does not have
    number = _num(value)
    return {"text": fmt3(number), "sort": number} if number is not None else str(value)


def cost_table(costs: pd.DataFrame, name: str = "costs") -> pd.DataFrame:
    """The measured costs per (config, epoch): ``COST_COLUMNS`` averaged over seeds, with the
    number of checkpoints averaged; BadInput naming ``name`` without config, epoch or a cost."""
    from lyco_bench.errors import BadInput

    missing = [c for c in ("config", "epoch") if c not in costs]
    present = [c for c in COST_COLUMNS if c in costs]
    if missing or not present:
        need = missing or [" or ".join(COST_COLUMNS)]
        raise BadInput(f"{name}: no column {', '.join(need)} (columns: {list(costs.columns)})")
    table = costs.assign(
        config=costs["config"].astype(str), epoch=pd.to_numeric(costs["epoch"], errors="coerce")
    )
    table = table.assign(**{c: np.nan for c in COST_COLUMNS if c not in table})
    grouped = table.groupby(["config", "epoch"], sort=True)
    out = grouped[COST_COLUMNS].mean()
    out["n_checkpoints"] = grouped.size()
    return out.reset_index()


def pareto_points(board: Leaderboard) -> pd.DataFrame:
    """One row per fine-tuned (config, epoch): the means of the Pareto axes (``board.pareto_axes``),
    the Pareto cost, ``front`` (on the declared axes' front: leaderboard.csv's ``pareto``) and
    ``front_cost`` (on the front once the cost counts too, lower being better)."""
    configs = board.configs()
    configs = configs[configs["algo"].astype(str) != "base"].copy()
    means = board.table.pivot_table(
        index=["config", "epoch"], columns="label", values="mean", aggfunc="first"
    )
    coords = []
    for label in board.pareto_axes:
        configs[label] = [means.get(label, pd.Series(dtype=float)).get((c, e), np.nan)
                          for c, e in zip(configs["config"], configs["epoch"], strict=True)]  # fmt: skip
        metric = board.table.loc[board.table["label"] == label, "metric"].iloc[0]
        coords.append(configs[label].to_numpy(float) * (1.0 if metric_direction(str(metric)) else -1.0))
    cost = -pd.to_numeric(configs[PARETO_COST], errors="coerce").to_numpy(float)
    configs["front"] = configs["pareto"].astype(bool)
    has_cost = bool(coords) and not np.isnan(cost).all()
    configs["front_cost"] = pareto_mask(*coords, cost) if has_cost else False
    return configs.reset_index(drop=True)


def pareto_view_marks(board: Leaderboard) -> list[str]:
    """Per row of ``board.configs()``: ★ on the front of the Pareto axes, ☆ on it only once the
    file size counts too (a smaller file for what it gives up), else empty."""
    points = pareto_points(board).set_index(["config", "epoch"])
    marks = []
    for c, e in zip(board.configs()["config"], board.configs()["epoch"], strict=True):
        if (c, e) not in points.index:
            marks.append("")
            continue
        p = points.loc[(c, e)]
        marks.append("★" if bool(p["front"]) else "☆" if bool(p["front_cost"]) else "")
    return marks


def pareto_title(board: Leaderboard) -> str:
    axes = " vs ".join(board.pareto_axes)
    if not axes:
        return "no Pareto axes in these results"
    return f"★ Pareto-optimal for {axes}; ☆ Pareto-optimal only once the file size counts too (smaller is better)"


def full_columns(board: Leaderboard) -> list[tuple[str, str]]:
    """Every metric label of the leaderboard: ("", label) in registry order, then prompt class,
    then the label's own order."""
    order = {name: i for i, name in enumerate(_metrics())}
    meta = board.table.drop_duplicates("label")[["label", "metric", "prompt_class"]]
    keyed = sorted(meta.itertuples(index=False), key=lambda r: (order.get(r.metric, len(order)), r.label))
    return [("", r.label) for r in keyed]


def settings_shown(board: Leaderboard) -> list[str]:
    """The run settings of the full table: preset, lr and each algorithm's declared settings,
    where some row has them; the costs are columns of their own."""
    skip = {"config", "algo", "epoch", *(c[0] for c in COSTS), *COST_COLUMNS}
    long = board.table
    start = list(long.columns).index("left_out") + 1
    end = list(long.columns).index("trainable_params")
    return [c for c in long.columns[start:end] if c not in skip and long[c].notna().any()]
