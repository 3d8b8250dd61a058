"""Scaled ranks (docs/protocol.md §6): within each (metric, category, concept, subclass) group every
checkpoint's value is ranked and scaled to [0, 1] by (rank − 1)/(n − 1).

Ranks run from worst to best, so a scaled rank of 1 is the best checkpoint of its group whatever
the metric's direction: similarities rank by value, distances and losses by −value (the paper's
"distance metrics are ranked reversed"). Ties share their average rank.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

import numpy as np
import pandas as pd

from lyco_bench.analysis.results import PATH_COLUMNS, metric_direction

GROUP_COLUMNS = ["label", *PATH_COLUMNS]


def scaled_ranks(table: pd.DataFrame, *, directions: Mapping[str, bool] | None = None) -> pd.Series:
    """Scaled rank of every row of the long table (NaN where the value is NaN or n < 2)."""
    signs = {m: 1.0 if metric_direction(m, directions) else -1.0 for m in table["metric"].unique()}
    oriented = table["value"].astype(float) * table["metric"].map(signs).astype(float)
    grouped = oriented.groupby([table[c] for c in GROUP_COLUMNS], sort=False)
    rank = grouped.rank(method="average")  # 1 = worst … n = best
    count = grouped.transform("count").astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        scaled = (rank - 1.0) / (count - 1.0)
    scaled[count < 2] = np.nan
    return scaled.rename("scaled_rank")


def leaf_mask(table: pd.DataFrame) -> pd.Series:
    """True for rows at the finest level present: a path (category, concept, subclass) is a leaf
    unless another path in the table extends it (the whole-checkpoint row extends to everything).

    The paper's SHAP analysis pools the per-(category, class, subclass) rankings; fitting on the
    leaves counts each group once instead of also counting its parents' means.
    """
    paths = {tuple(p) for p in table[PATH_COLUMNS].itertuples(index=False)}
    parents = set()
    for path in paths:
        depth = sum(1 for part in path if part)
        for cut in range(depth):
            parents.add(tuple(list(path[:cut]) + [""] * (3 - cut)))
    keys = pd.Series(list(map(tuple, table[PATH_COLUMNS].itertuples(index=False))), index=table.index)
    return ~keys.isin(parents)


def fit_mask(table: pd.DataFrame) -> pd.Series:
    """The rows the SHAP models are fitted on: the leaves at concept level or below.

    The paper (docs/protocol.md §6) ranks within (category, class, subclass) groups, a class being a concept. A
    category-level row is a mean over different concepts, not such a group, so it is left out;
    in the published CSV this keeps the anime and people concepts/subclasses (scene, stuffed_toy
    and style are published only as category means). A table without any concept rows falls
    back to its leaves.
    """
    leaves = leaf_mask(table)
    concept_leaves = leaves & (table["concept"] != "")
    return concept_leaves if concept_leaves.any() else leaves


def config_matches(config: str, tokens: Iterable[str | int]) -> bool:
    """Does a config name match any exclusion token: the full name or its number (`1007`)?"""
    for token in tokens:
        token = str(token)
        if token == config or re.search(rf"(^|-){re.escape(token)}(-|$)", config):
            return True
    return False


def exclude_configs(table: pd.DataFrame, tokens: Iterable[str | int]) -> pd.DataFrame:
    tokens = list(tokens)
    if not tokens:
        return table
    configs = table["config"].astype(str)
    dropped = {c for c in configs.unique() if config_matches(c, tokens)}
    return table[~configs.isin(dropped)]
