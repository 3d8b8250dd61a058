"""Computing the leaderboard (what leaderboard.csv and comparison.csv hold; rendering and writing
them: :mod:`lyco_bench.analysis.leaderboard`). See `lyco_bench.analysis.uncertainty` for the
statistics.

`compute_leaderboard` runs named steps with explicit data contracts:

1. ``_groups``: one row per (configuration, epoch) — a *group* — with its run attributes;
2. ``_reference_pairs`` / ``_contrast_pairs``: the (group, vs_group) pairs comparison.csv holds;
3. ``_label_statistics``: per label, the hierarchical bootstrap over its units — a *cell* per group
   (mean, CI, rank interval) and the paired statistics of the wanted pairs;
4. ``_main_ranks``: each group's mean rank over the headline labels;
5. ``_pareto_marks``: the Pareto-optimal groups on the Pareto axes (``choices.ReportChoices``);
6. ``_order``: the leaderboard order; 7. ``_long_table`` / ``_comparison_table``: the two tables.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import pandas as pd

from lyco_bench.analysis.choices import ReportChoices, headline_labels, pick_label, report_choices
from lyco_bench.analysis.results import metric_direction, setting_columns
from lyco_bench.analysis.uncertainty import (
    BootstrapSettings,
    holm,
    label_uncertainty,
    unit_arrays,
    unit_rows,
)
from lyco_bench.errors import BadInput

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


def id_columns(results: pd.DataFrame) -> list[str]:
    """config, algo, preset, lr, the algorithms' settings present in the table, epoch."""
    settings = [c for c in setting_columns(results) if c in results and results[c].notna().any()]
    return [*ID_COLUMNS[:-1], *settings, ID_COLUMNS[-1]]


def pareto_mask(*axes: np.ndarray) -> np.ndarray:
    """True where no other point is ≥ on every axis and > on one (every axis higher is better);
    points with a NaN coordinate are never marked."""
    points = np.column_stack(axes) if axes else np.zeros((0, 0))
    ok = ~np.isnan(points).any(axis=1)
    mask = np.zeros(len(points), dtype=bool)
    for i in np.flatnonzero(ok):
        dominated = ok & (points >= points[i]).all(axis=1) & (points > points[i]).any(axis=1)
        mask[i] = not dominated.any()
    return mask


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
    pareto_axes: tuple[str, ...] = ()
    """The labels of the Pareto marks (none: no mark; every axis needs a label in the results)."""
    n_resamples: dict[str, int] = field(default_factory=dict)

    def configs(self) -> pd.DataFrame:
        """One row per (config, epoch), in leaderboard order."""
        return self.table.drop_duplicates(["config", "epoch"]).reset_index(drop=True)


def _groups(results: pd.DataFrame) -> pd.DataFrame:
    """One row per (config, epoch) — the leaderboard's *groups*, indexed 0… in (config, epoch)
    order — with its run attributes, ``group_key`` and ``base`` (the base model's group)."""
    ids = id_columns(results)
    per_ckpt = results.drop_duplicates("checkpoint")
    key = _group_key(per_ckpt["config"], per_ckpt["epoch"])
    agg = {c: (c, "first") for c in ids if c not in ("config", "epoch")}
    groups = (
        per_ckpt.assign(group_key=key)
        .groupby("group_key", sort=False)
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
    choices: ReportChoices | None = None,
) -> Leaderboard:
    """Intervals, ranks and rank intervals of every label; comparisons with `reference` (None: the
    first configuration) and the named `contrasts` (comparison.csv); `labels` (default: the
    headline labels of `choices`, see `choices.headline_labels`) give the mean rank and the
    columns shown; the Pareto marks use the axes of `choices` (default: the registry's). Rows are
    sorted by how many of those labels a configuration has (most first), then by mean rank; the
    base model comes last, unranked."""
    if results.empty:
        raise BadInput("leaderboard: the results table is empty")
    choices = choices or report_choices()
    settings = bootstrap or BootstrapSettings()
    reference = check_reference(results, reference)
    main = list(labels) if labels is not None else headline_labels(results, choices)
    groups = _groups(results)
    fine_tuned = np.flatnonzero(~groups["base"])
    wanted = list(
        dict.fromkeys(
            _reference_pairs(groups, fine_tuned, reference) + _contrast_pairs(groups, fine_tuned, contrasts)
        )
    )  # fmt: skip  (checked before any bootstrap)
    meta = label_meta(results)
    stats = _label_statistics(results, groups, wanted, meta, settings, directions)
    if not stats.cells:
        raise BadInput("leaderboard: no defined value in the results table")
    cells = pd.DataFrame(stats.cells).join(meta, on="label")
    groups["mean_rank"], groups["n_main"] = _main_ranks(cells, main, len(groups))
    axes = _pareto_labels(results, choices)
    groups["pareto"] = _pareto_marks(cells, groups, axes, meta, directions)
    groups["order"] = _order(groups)
    return Leaderboard(
        table=_long_table(cells, groups, id_columns(results)),
        comparison=_comparison_table(stats.pairs, groups, meta, settings), labels=main,
        reference=reference, settings=settings, pareto_axes=axes, n_resamples=stats.n_resamples,
    )  # fmt: skip


def label_meta(results: pd.DataFrame) -> pd.DataFrame:
    """metric, prompt_class, encoder and mode of each label (indexed by label)."""
    return results.drop_duplicates("label").set_index("label")[["metric", "prompt_class", "encoder", "mode"]]


@dataclass
class LabelStatistics:
    """Per label: ``cells`` (one dict per group with a value: group, label, mean, ci_low, ci_high,
    n_seeds, rank, rank_low, rank_high, separated, left_out), ``pairs`` (one dict per compared
    pair: group, vs_group, label, higher, the paired statistics) and the resamples drawn."""

    cells: list[dict] = field(default_factory=list)
    pairs: list[dict] = field(default_factory=list)
    n_resamples: dict[str, int] = field(default_factory=dict)


def _label_statistics(
    results: pd.DataFrame,
    groups: pd.DataFrame,
    wanted: list[tuple[int, int]],
    meta: pd.DataFrame,
    settings: BootstrapSettings,
    directions: Mapping[str, bool] | None,
) -> LabelStatistics:
    """Bootstrap every label over its units: the fine-tuned groups ranked and compared (``wanted``
    pairs), the base model's group apart (intervals only)."""
    units = unit_rows(results)
    units["group"] = pd.Index(groups["group_key"]).get_indexer(_group_key(units["config"], units["epoch"]))
    units = units[units["group"] >= 0]
    out = LabelStatistics()
    parts = [(np.flatnonzero(~groups["base"]), True), (np.flatnonzero(groups["base"]), False)]
    for label, rows in sorted(units.groupby("label", sort=False), key=lambda kv: kv[0]):
        higher = metric_direction(meta.loc[label, "metric"], directions)
        for local, ranked in parts:
            if len(local):
                _part_statistics(
                    out, label, rows, local, len(groups), ranked, wanted if ranked else [], higher, settings
                )
    return out


def _part_statistics(
    out: LabelStatistics, label: str, rows: pd.DataFrame, local: np.ndarray, n_groups: int, ranked: bool,
    compare: list[tuple[int, int]], higher: bool, settings: BootstrapSettings,
) -> None:  # fmt: skip
    """One label over the groups ``local`` (all fine-tuned, ranked; or the base model's)."""
    position = np.full(n_groups, -1)
    position[local] = np.arange(len(local))
    mine = rows[position[rows["group"].to_numpy()] >= 0]
    arrays = unit_arrays(mine, position[mine["group"].to_numpy()], len(local))
    res = label_uncertainty(
        arrays, settings=settings, rng=settings.rng(label, "ranked" if ranked else "base"),
        higher_is_better=higher, ranked=np.ones(len(local), bool) if ranked else None, compare=compare,
    )  # fmt: skip
    if ranked:
        out.n_resamples[label] = res.n_resamples
    rank_cols = {c: np.full(len(local), np.nan) for c in ("rank", "rank_low", "rank_high")}
    separated = np.full(len(local), None, dtype=object)
    if res.ranks is not None:
        for c in rank_cols:
            rank_cols[c][res.ranked] = res.ranks[c]
        separated[res.ranked] = res.ranks["separated"]
    for k, g in enumerate(local):
        if np.isnan(res.mean[k]):
            continue
        out.cells.append(
            {"group": g, "label": label, "mean": res.mean[k], "ci_low": res.ci_low[k],
             "ci_high": res.ci_high[k], "n_seeds": int(res.n_seeds[k]),
             **{c: rank_cols[c][k] for c in rank_cols}, "separated": separated[k],
             "left_out": "" if res.left_out is None else str(res.left_out[k])}
        )  # fmt: skip
    for (i, j), stats in (res.pairs or {}).items():
        out.pairs.append({"group": local[i], "vs_group": local[j], "label": label, **stats, "higher": higher})


def _main_ranks(cells: pd.DataFrame, main: Sequence[str], n_groups: int) -> tuple[pd.Series, pd.Series]:
    """Per group: the mean rank over the ``main`` labels and how many of them it is ranked in."""
    per_group = cells[cells["label"].isin(main)].groupby("group")["rank"].agg(["mean", "count"])
    index = pd.RangeIndex(n_groups)
    return per_group["mean"].reindex(index), per_group["count"].reindex(index).fillna(0)


def _pareto_labels(results: pd.DataFrame, choices: ReportChoices) -> tuple[str, ...]:
    """One label per Pareto axis of ``choices`` present in the results; none unless two are."""
    labels = results.drop_duplicates("label")[["label", "metric", "prompt_class"]]
    picked = tuple(label for axis in choices.pareto if (label := pick_label(labels, axis)) is not None)
    return picked if len(picked) >= 2 else ()


def _pareto_marks(
    cells: pd.DataFrame,
    groups: pd.DataFrame,
    axes: Sequence[str],
    meta: pd.DataFrame,
    directions: Mapping[str, bool] | None,
) -> np.ndarray:
    """Pareto-optimal fine-tuned groups on the means of the ``axes`` labels, each oriented so that
    higher is better (its metric's direction)."""
    if not axes:
        return np.zeros(len(groups), dtype=bool)
    means = cells.pivot_table(index="group", columns="label", values="mean", aggfunc="first")
    ranked = ~groups["base"]
    coords = []
    for label in axes:
        sign = 1.0 if metric_direction(meta.loc[label, "metric"], directions) else -1.0
        column = means.get(label, pd.Series(dtype=float)).reindex(groups.index) * sign
        coords.append(column.where(ranked).to_numpy(dtype=float))
    return pareto_mask(*coords)


def _order(groups: pd.DataFrame) -> pd.Series:
    """Each group's place in the leaderboard: most main labels first, then by mean rank."""
    by = groups.assign(most=-groups["n_main"])
    order = by.sort_values(
        ["most", "mean_rank", "config", "epoch"], na_position="last", kind="mergesort"
    ).index
    return pd.Series(np.arange(len(order)), index=order)


def _long_table(cells: pd.DataFrame, groups: pd.DataFrame, ids: list[str]) -> pd.DataFrame:
    """leaderboard.csv's rows: the cells with their group's attributes, in leaderboard order."""
    extras = [c for c in ids if c not in ("config", "epoch")]
    g_cols = ["config", "epoch", *extras, "trainable_params", "file_bytes", "mean_rank", "pareto", "order"]
    long = cells.join(groups[g_cols], on="group")
    long = long.sort_values(["order", "label"], kind="mergesort").reset_index(drop=True)
    for c in ("rank", "rank_low", "rank_high"):
        long[c] = long[c].astype("Int64" if long[c].isna().any() else int)
    return long[[*LONG_COLUMNS, "epoch", "label", "separated", "left_out", *extras, "trainable_params",
                 "file_bytes", "mean_rank", "pareto"]]  # fmt: skip


def _comparison_table(
    pairs: list[dict], groups: pd.DataFrame, meta: pd.DataFrame, settings: BootstrapSettings
) -> pd.DataFrame:
    """Δ = configuration − reference per label, with its CI and p-value; Holm over the labels of
    compared pair of (configuration, epoch); verdict better/worse where the Holm p-value is ≤ α."""
    if not pairs:
        return pd.DataFrame(columns=COMPARISON_COLUMNS)
    comp = pd.DataFrame(pairs).join(meta, on="label")
    comp["config"] = groups.loc[comp["group"], "config"].to_numpy()
    comp["epoch"] = groups.loc[comp["group"], "epoch"].to_numpy()
    comp["reference"] = groups.loc[comp["vs_group"], "config"].to_numpy()
    comp["reference_epoch"] = groups.loc[comp["vs_group"], "epoch"].to_numpy()
    comp["order"] = groups.loc[comp["group"], "order"].to_numpy()
    comp["p_holm"] = comp.groupby(["group", "vs_group"])["p_value"].transform(
        lambda p: pd.Series(holm(p), index=p.index)
    )
    good = np.where(comp["higher"], comp["delta"] > 0, comp["delta"] < 0)
    comp["verdict"] = np.where(comp["p_holm"] <= settings.alpha, np.where(good, "better", "worse"), "")
    comp = comp.sort_values(["order", "label"], kind="mergesort").reset_index(drop=True)
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
