"""Which leaderboard cells lack a full interval, what their interval leaves out, and what would
give them one (docs/protocol.md §7).

A leaderboard value is a mean over seeds of a mean over concepts (per category) of a mean over
images; the bootstrap resamples each level that has more than one unit. A level with a single unit
(one training seed; one concept or ``<combine>`` pair in every category) adds nothing to the
interval, which then leaves that level's variance out; a value with a single unit at every level
and no per-image spread (a set statistic such as Vendi of one concept, one seed) has nothing to
resample: no interval (``n/a``) and never a separated rank.
"""

from __future__ import annotations

import pandas as pd

LEFT_OUT_TEXT = {
    "seed": "seed variance left out",
    "concept": "concept variance left out",
    "seed+concept": "seed and concept variance left out",
    "all": "n/a: nothing to resample",
}
"""The leaderboard's ``left_out`` values (uncertainty.Components.left_out) in words."""

NEEDS = {
    "seed": "2 or more training seeds",
    "concept": "2 or more concepts (or pairs) in a category",
    "seed+concept": "2 or more training seeds and 2 or more concepts in a category",
    "all": "2 or more training seeds, or 2 or more concepts in a category, or a per-image metric",
}
"""What would give each kind of cell a (fuller) interval."""

COLUMNS = ["config", "epoch", "label", "left_out", "n_seeds", "needs"]


def partial_cells(table: pd.DataFrame) -> pd.DataFrame:
    """The rows of a leaderboard table (``leaderboard.csv``) whose interval is not full, with
    what it leaves out and what would give a full interval."""
    if "left_out" not in table:
        return pd.DataFrame(columns=COLUMNS)
    left = table["left_out"].fillna("").astype(str)
    rows = table[left != ""].copy()
    rows["needs"] = rows["left_out"].map(NEEDS)
    rows["left_out"] = rows["left_out"].map(LEFT_OUT_TEXT)
    return rows[COLUMNS].reset_index(drop=True)


def partial_note(cells: pd.DataFrame) -> str:
    """One line summing up the cells without a full interval."""
    if cells.empty:
        return "Every interval covers seeds, concepts and images."
    n_na = int((cells["left_out"] == LEFT_OUT_TEXT["all"]).sum())
    return (
        f"{len(cells)} cells have an interval that leaves a level's variance out (a single unit at that "
        f"level), {n_na} of them no interval at all (n/a: a single unit at every level); the last "
        f"column says what would give them a full interval."
    )


def partial_rows(cells: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the Markdown/HTML table of :func:`partial_cells`."""
    header = ["config", "epoch", "metric", "interval", "seeds", "a full interval needs"]
    rows = [
        [str(r["config"]), "" if pd.isna(r["epoch"]) else f"{float(r['epoch']):g}", str(r["label"]),
         str(r["left_out"]), str(r["n_seeds"]), str(r["needs"])]
        for _, r in cells.iterrows()
    ]  # fmt: skip
    return header, rows
