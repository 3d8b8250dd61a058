"""The leaderboard: for every (configuration, epoch) and metric label, the mean with a 95% CI from a
hierarchical bootstrap over seeds, concepts and images, its rank with a rank interval from paired
comparisons, parameter count, file size, mean rank and Pareto marks for fidelity (image
similarity) vs controllability (text similarity); and the paired comparison of every
configuration with a reference one. See `lyco_bench.analysis.uncertainty` for the statistics.

Files: leaderboard.csv (long: one row per configuration, epoch and metric label), comparison.csv
(one row per configuration, epoch and metric label against the reference), leaderboard.md and
leaderboard.html (the labels shown, one row per configuration and epoch).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd

from lyco_bench.analysis.results import check_not_empty, metric_direction, setting_columns
from lyco_bench.analysis.uncertainty import (
    BootstrapSettings,
    holm,
    label_uncertainty,
    unit_arrays,
    unit_rows,
)
from lyco_bench.errors import BadInput
from lyco_bench.utils import atomic_path, atomic_write_text

ID_COLUMNS = ["config", "algo", "preset", "lr", "epoch"]
"""Besides these, a row shows its algorithm's declared settings (results.setting_columns)."""
LONG_COLUMNS = [
    "config", "metric", "prompt_class", "encoder", "mode", "mean", "ci_low", "ci_high", "n_seeds",
    "rank", "rank_low", "rank_high",
]  # fmt: skip
"""The first columns of leaderboard.csv; after them: epoch, label, separated, the run's settings
(algo, preset, lr, the algorithm's settings), trainable_params, file_bytes, mean_rank, pareto."""
COMPARISON_COLUMNS = [
    "config", "epoch", "reference", "reference_epoch", "metric", "prompt_class", "encoder", "mode",
    "delta", "ci_low", "ci_high", "p_value", "p_holm", "verdict", "n_seeds", "label",
]  # fmt: skip
# Pareto axes (docs/protocol.md §6, the first trade-off plot): image vs text similarity on <alter> prompts.
FIDELITY = ("image_similarity", ("alter", "train", "trigger"))
CONTROLLABILITY = ("text_similarity", ("alter", "train", "trigger"))
PREFER = ("dinov2", "resize")  # the paper's main image features


def id_columns(results: pd.DataFrame) -> list[str]:
    """config, algo, preset, lr, the algorithms' settings present in the table, epoch."""
    settings = [c for c in setting_columns(results) if c in results and results[c].notna().any()]
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


def _group_key(config: pd.Series, epoch: pd.Series) -> pd.Series:
    ep = pd.to_numeric(epoch, errors="coerce")
    return config.astype(str) + "|" + ep.map(lambda e: "" if pd.isna(e) else f"{float(e):g}")


@dataclass
class Leaderboard:
    """What leaderboard.csv, comparison.csv, .md and .html are written from."""

    table: pd.DataFrame  # long, LONG_COLUMNS first, rows in leaderboard order
    comparison: pd.DataFrame  # COMPARISON_COLUMNS
    labels: list[str]  # the labels shown in .md/.html
    reference: str | None
    settings: BootstrapSettings
    pareto_axes: tuple[str | None, str | None] = (None, None)
    n_resamples: dict[str, int] = field(default_factory=dict)

    def configs(self) -> pd.DataFrame:
        """One row per (config, epoch), in leaderboard order."""
        return self.table.drop_duplicates(["config", "epoch"]).reset_index(drop=True)


def _groups(results: pd.DataFrame) -> pd.DataFrame:
    """One row per (config, epoch) with its run attributes; `_key` the group key."""
    ids = id_columns(results)
    per_ckpt = results.drop_duplicates("checkpoint")
    key = _group_key(per_ckpt["config"], per_ckpt["epoch"])
    agg = {c: (c, "first") for c in ids if c not in ("config", "epoch")}
    groups = (
        per_ckpt.assign(_key=key)
        .groupby("_key", sort=False)
        .agg(
            config=("config", "first"),
            epoch=("epoch", "first"),
            **agg,
            trainable_params=("trainable_params", "mean"),
            file_bytes=("file_bytes", "mean"),
        )  # fmt: skip
        .reset_index()
    )
    groups["base"] = groups["algo"].astype(str) == "base"
    return groups.sort_values(["config", "epoch"], kind="mergesort", na_position="first").reset_index(
        drop=True
    )


class Contrast(NamedTuple):
    """A paired comparison the study names: ``config`` (at ``epoch``; None: each of its epochs)
    minus ``vs`` (at ``vs_epoch``; None: the same epoch)."""

    config: str
    vs: str
    epoch: float | None = None
    vs_epoch: float | None = None


def _contrast_pairs(
    groups: pd.DataFrame, local: np.ndarray, contrasts: Sequence[Contrast]
) -> list[tuple[int, int]]:
    """(group, other group) per contrast and epoch (local indices); BadInput for a configuration
    or epoch the results do not have."""
    sub = groups.iloc[local].reset_index(drop=True)
    at = {(str(c), float(e)): i for i, (c, e) in enumerate(zip(sub["config"], sub["epoch"], strict=True))}
    pairs = []
    for c in contrasts:
        epochs = [float(c.epoch)] if c.epoch is not None else sorted(
            float(e) for cfg, e in at if cfg == c.config
        )  # fmt: skip
        if not epochs or (c.config, epochs[0]) not in at:
            raise BadInput(f"analysis.contrasts: {c.config!r} at epoch {c.epoch} is not in the results")
        for epoch in epochs:
            other = (c.vs, float(c.vs_epoch) if c.vs_epoch is not None else epoch)
            if other not in at:
                raise BadInput(f"analysis.contrasts: {c.vs!r} at epoch {other[1]:g} is not in the results")
            pairs.append((at[(c.config, epoch)], at[other]))
    return pairs


def _reference_pairs(groups: pd.DataFrame, local: np.ndarray, reference: str | None) -> list[tuple[int, int]]:
    """(group, reference group) per fine-tuned group (local indices): the reference at the same
    epoch, else at its last epoch; and the reference's later epochs against its first (what more
    training does, paired by seed and concept)."""
    if reference is None:
        return []
    sub = groups.iloc[local].reset_index(drop=True)
    ref_rows = sub.index[sub["config"] == reference]
    if not len(ref_rows):
        return []
    by_epoch = dict(zip(sub.loc[ref_rows, "epoch"], ref_rows, strict=True))
    last = sub.loc[ref_rows].sort_values("epoch", kind="mergesort").index[-1]
    first = sub.loc[ref_rows].sort_values("epoch", kind="mergesort").index[0]
    longer = [(int(i), int(first)) for i in ref_rows if i != first]
    return longer + [
        (i, int(by_epoch.get(sub.loc[i, "epoch"], last)))
        for i in sub.index
        if sub.loc[i, "config"] != reference
    ]


def default_reference(results: pd.DataFrame) -> str | None:
    """The first fine-tuned configuration of the table (its sorted order)."""
    configs = sorted(results.loc[results["algo"] != "base", "config"].astype(str).unique())
    return configs[0] if configs else None


def check_reference(results: pd.DataFrame, reference: str | None) -> str | None:
    """BadInput unless `reference` names a fine-tuned configuration of the table (None → the first)."""
    if reference is None:
        return default_reference(results)
    configs = sorted(results.loc[results["algo"] != "base", "config"].astype(str).unique())
    if str(reference) not in configs:
        shown = ", ".join(configs[:8]) + (", …" if len(configs) > 8 else "")
        raise BadInput(
            f"analysis.reference: {reference!r} is not a fine-tuned configuration of the results ({shown})"
        )
    return str(reference)


def compute_leaderboard(
    results: pd.DataFrame,
    *,
    directions: Mapping[str, bool] | None = None,
    labels: Sequence[str] | None = None,
    bootstrap: BootstrapSettings | None = None,
    reference: str | None = None,
    contrasts: Sequence[Contrast] = (),
) -> Leaderboard:
    """Intervals, ranks and rank intervals of every label; comparisons with `reference` (None: the
    first configuration) and the named `contrasts` (comparison.csv); `labels` (default: the paper's main family, `default_metric_labels`)
    give the mean rank and the columns shown. Rows are sorted by how many of those labels a
    configuration has (most first), then by mean rank; the base model comes last, unranked."""
    from lyco_bench.analysis.pipeline import default_metric_labels

    if results.empty:
        raise BadInput("leaderboard: the results table is empty")
    settings = bootstrap or BootstrapSettings()
    reference = check_reference(results, reference)
    main = list(labels) if labels is not None else default_metric_labels(results)
    groups = _groups(results)
    key_index = pd.Index(groups["_key"])
    fine_tuned = np.flatnonzero(~groups["base"])
    wanted = list(
        dict.fromkeys(
            _reference_pairs(groups, fine_tuned, reference) + _contrast_pairs(groups, fine_tuned, contrasts)
        )
    )  # fmt: skip  (checked before any bootstrap)
    units = unit_rows(results)
    units["_g"] = key_index.get_indexer(_group_key(units["config"], units["epoch"]))
    units = units[units["_g"] >= 0]
    meta = results.drop_duplicates("label").set_index("label")[["metric", "prompt_class", "encoder", "mode"]]
    records, comparisons, n_resamples = [], [], {}
    parts = [(np.flatnonzero(~groups["base"]), True), (np.flatnonzero(groups["base"]), False)]
    for label, rows in sorted(units.groupby("label", sort=False), key=lambda kv: kv[0]):
        metric = meta.loc[label, "metric"]
        higher = metric_direction(metric, directions)
        for local, ranked in parts:
            if not len(local):
                continue
            position = np.full(len(groups), -1)
            position[local] = np.arange(len(local))
            mine = rows[position[rows["_g"].to_numpy()] >= 0]
            arrays = unit_arrays(mine, position[mine["_g"].to_numpy()], len(local))
            compare = wanted if ranked else []
            res = label_uncertainty(
                arrays, settings=settings, rng=settings.rng(label, "ranked" if ranked else "base"),
                higher_is_better=higher, ranked=np.ones(len(local), bool) if ranked else None,
                compare=compare,
            )  # fmt: skip
            if ranked:
                n_resamples[label] = res.n_resamples
            rank_cols = {c: np.full(len(local), np.nan) for c in ("rank", "rank_low", "rank_high")}
            separated = np.zeros(len(local), dtype=object)
            separated[:] = None
            if res.ranks is not None:
                for c in rank_cols:
                    rank_cols[c][res.ranked] = res.ranks[c]
                separated[res.ranked] = res.ranks["separated"]
            for k, g in enumerate(local):
                if np.isnan(res.mean[k]):
                    continue
                records.append(
                    {"_g": g, "label": label, "mean": res.mean[k], "ci_low": res.ci_low[k],
                     "ci_high": res.ci_high[k], "n_seeds": int(res.n_seeds[k]),
                     **{c: rank_cols[c][k] for c in rank_cols}, "separated": separated[k],
                     "left_out": "" if res.left_out is None else str(res.left_out[k])}
                )  # fmt: skip
            for (i, j), stats in (res.pairs or {}).items():
                comparisons.append(
                    {"_g": local[i], "_ref": local[j], "label": label, **stats, "_higher": higher}
                )
    long = pd.DataFrame(records)
    if long.empty:
        raise BadInput("leaderboard: no defined value in the results table")
    long = long.join(meta, on="label")
    # mean rank over the main labels, Pareto marks on the point estimates
    in_main = long["label"].isin(main)
    per_group = long[in_main].groupby("_g")["rank"].agg(["mean", "count"])
    groups["mean_rank"] = per_group["mean"].reindex(groups.index)
    groups["_n_ranked"] = -per_group["count"].reindex(groups.index).fillna(0)
    groups["pareto"] = False
    all_labels = results.drop_duplicates("label")[["label", "metric", "prompt_class"]]
    fid, ctl = _axis_label(all_labels, *FIDELITY), _axis_label(all_labels, *CONTROLLABILITY)
    if fid and ctl:
        means = long.pivot_table(index="_g", columns="label", values="mean", aggfunc="first")
        sign = {
            m: 1.0 if metric_direction(m, directions) else -1.0 for m in (FIDELITY[0], CONTROLLABILITY[0])
        }
        ranked_groups = ~groups["base"]
        x = (means.get(fid, pd.Series(dtype=float)).reindex(groups.index) * sign[FIDELITY[0]]).where(
            ranked_groups
        )
        y = (means.get(ctl, pd.Series(dtype=float)).reindex(groups.index) * sign[CONTROLLABILITY[0]]).where(
            ranked_groups
        )
        groups["pareto"] = pareto_mask(x.to_numpy(dtype=float), y.to_numpy(dtype=float))
    order = groups.sort_values(
        ["_n_ranked", "mean_rank", "config", "epoch"], na_position="last", kind="mergesort"
    ).index
    groups["_order"] = pd.Series(np.arange(len(order)), index=order)
    extras = [c for c in id_columns(results) if c not in ("config", "epoch")]
    g_cols = ["config", "epoch", *extras, "trainable_params", "file_bytes", "mean_rank", "pareto", "_order"]
    long = long.join(groups[g_cols], on="_g")
    long = long.sort_values(["_order", "label"], kind="mergesort").reset_index(drop=True)
    for c in ("rank", "rank_low", "rank_high"):
        long[c] = long[c].astype("Int64" if long[c].isna().any() else int)
    table = long[[*LONG_COLUMNS, "epoch", "label", "separated", "left_out", *extras, "trainable_params",
                  "file_bytes", "mean_rank", "pareto"]]  # fmt: skip
    return Leaderboard(
        table=table, comparison=_comparison_table(comparisons, groups, meta, settings), labels=main,
        reference=reference, settings=settings, pareto_axes=(fid, ctl), n_resamples=n_resamples,
    )  # fmt: skip


def _comparison_table(
    comparisons: list[dict], groups: pd.DataFrame, meta: pd.DataFrame, settings: BootstrapSettings
) -> pd.DataFrame:
    """Δ = configuration − reference per label, with its CI and p-value; Holm over the labels of
    compared pair of (configuration, epoch); verdict better/worse where the Holm p-value is ≤ α."""
    if not comparisons:
        return pd.DataFrame(columns=COMPARISON_COLUMNS)
    comp = pd.DataFrame(comparisons).join(meta, on="label")
    comp["config"] = groups.loc[comp["_g"], "config"].to_numpy()
    comp["epoch"] = groups.loc[comp["_g"], "epoch"].to_numpy()
    comp["reference"] = groups.loc[comp["_ref"], "config"].to_numpy()
    comp["reference_epoch"] = groups.loc[comp["_ref"], "epoch"].to_numpy()
    comp["_order"] = groups.loc[comp["_g"], "_order"].to_numpy()
    comp["p_holm"] = comp.groupby(["_g", "_ref"])["p_value"].transform(
        lambda p: pd.Series(holm(p), index=p.index)
    )
    good = np.where(comp["_higher"], comp["delta"] > 0, comp["delta"] < 0)
    comp["verdict"] = np.where(comp["p_holm"] <= settings.alpha, np.where(good, "better", "worse"), "")
    comp = comp.sort_values(["_order", "label"], kind="mergesort").reset_index(drop=True)
    return comp[COMPARISON_COLUMNS]


def build_leaderboard(
    results: pd.DataFrame,
    *,
    directions: Mapping[str, bool] | None = None,
    labels: Sequence[str] | None = None,
    bootstrap: BootstrapSettings | None = None,
    reference: str | None = None,
) -> pd.DataFrame:
    """The long leaderboard table (leaderboard.csv): see `compute_leaderboard`."""
    return compute_leaderboard(
        results, directions=directions, labels=labels, bootstrap=bootstrap, reference=reference
    ).table


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
    from lyco_bench.analysis.coverage import LEFT_OUT_TEXT

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
    header = ["config", "algo", "epoch", "params", "MB", "pareto", "mean rank", *labels]
    cells = board.table.set_index(["config", "epoch", "label"])
    rows = []
    for _, r in board.configs().iterrows():
        row: list = [
            str(r["config"]), str(r["algo"]), _fmt(r["epoch"]), _fmt(r["trainable_params"]),
            _fmt(r["file_bytes"] / 1e6), "★" if r["pareto"] else "", _fmt(r["mean_rank"]),
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
    from lyco_bench.analysis.report import render_template

    return render_template(
        "leaderboard.html.j2", title=title, header=header, rows=rows, note=note, extra=list(extra)
    )


def partial_section(board: Leaderboard) -> dict:
    """The cells without a full interval, as a table section (Markdown, HTML, the report)."""
    from lyco_bench.analysis.coverage import partial_cells, partial_note, partial_rows

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
) -> dict[str, Path]:
    """leaderboard.csv (every metric, long), comparison.csv (every metric against `reference`),
    leaderboard.md and .html (the `labels` shown; default: the paper's main family, see
    `default_metric_labels`). `board`: an already computed `compute_leaderboard`."""
    check_not_empty(results)
    out_dir = Path(out_dir)
    if board is None:
        board = compute_leaderboard(
            results, directions=directions, labels=labels, bootstrap=bootstrap, reference=reference,
            contrasts=contrasts,
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
    fid, ctl = board.pareto_axes
    note = legend(board)
    if fid and ctl:
        note += f" ★ Pareto-optimal for {fid} vs {ctl} (both higher is better)."
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


def comparison_note(board: Leaderboard) -> str:
    return (
        f"Δ = configuration − {board.reference} (same epoch, else the reference's last), paired by seed, "
        f"concept and prompt, [{board.settings.level:.0%} CI]; p: two-sided bootstrap p-value, Holm-corrected "
        f"across the metrics of each row (comparison.csv: every metric); ▲ better / ▼ worse where that "
        f"p ≤ {board.settings.alpha:g}, respecting each metric's direction."
    )
