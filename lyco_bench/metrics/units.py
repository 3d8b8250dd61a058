"""The groups a checkpoint's images are scored in (docs: :mod:`lyco_bench.metrics.scoring`): one
:class:`Unit` per concept and subclass of each prompt class, ``<combine>`` pairs and ``<agnostic>``
tiers with the reference image sets each is compared with, and the category rows (the mean of the
concept-level values) computed from the scored rows."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from lyco_bench.errors import BadInput
from lyco_bench.metrics.manifest import member_keys

ROW_COLUMNS = [
    "checkpoint", "category", "concept", "subclass", "prompt_class", "metric", "encoder", "mode", "value",
    "std", "n_images", "prompt_set_version", "reason",
]  # fmt: skip


@dataclass
class Unit:
    """One group of generated images and the reference image sets it is compared with."""

    prompt_class: str
    category: str
    concept: str
    subclass: str
    rows: pd.DataFrame
    references: list[tuple[str, list[Path]]] = field(default_factory=list)
    """(key written to ``subclass`` for per-reference rows, or "" for the unit's own; image paths)."""


def _reference_paths(dataset, key: str, *, source: str) -> list[Path]:
    parts = key.split("/")
    leaves = dataset.find(
        parts[0], parts[1] if len(parts) > 1 else None, parts[2] if len(parts) > 2 else None
    )
    if not leaves:
        raise BadInput(f"{source}: concept {key!r} is not in dataset {dataset.root}")
    return [Path(item.path) for leaf in leaves for item in leaf.images]


def make_units(df: pd.DataFrame, dataset, *, source: str) -> list[Unit]:
    """The groups to score, in a fixed order (prompt class, category, concept, subclass)."""
    units = []
    for (pc, cat, concept), rows in df.groupby(["prompt_class", "category", "concept"], sort=True):
        if pc == "agnostic" or not concept:
            keys = [c.key.rsplit("/", 1)[0] if c.subclass else c.key for c in dataset.concepts]
            keys = sorted({k for k in keys if not cat or k.split("/")[0] == cat})
            paths = {k: _reference_paths(dataset, k, source=source) for k in keys}
            for tier, tier_rows in rows.groupby("subclass", sort=True):  # "" = no tier
                refs = [(f"{tier}:{k}" if tier else k, paths[k]) for k in keys]
                units.append(Unit(pc, cat, concept, tier, tier_rows, refs))
            continue
        members = sorted({k for _, r in rows.iterrows() for k in member_keys(r)})
        if pc == "combine" or "+" in concept:
            refs = [(k, _reference_paths(dataset, k, source=source)) for k in members]
            units.append(Unit(pc, cat, concept, "", rows, refs))
            continue
        own = f"{cat}/{concept}"
        units.append(Unit(pc, cat, concept, "", rows, [("", _reference_paths(dataset, own, source=source))]))
        for sub, sub_rows in rows[rows["subclass"] != ""].groupby("subclass", sort=True):
            refs = [("", _reference_paths(dataset, f"{own}/{sub}", source=source))]
            units.append(Unit(pc, cat, concept, sub, sub_rows, refs))
    return units


def subclassed(unit: Unit) -> bool:
    """Whether ``unit`` is a subclass of a concept (not a ``<combine>`` pair nor an agnostic tier)."""
    return (
        bool(unit.subclass)
        and unit.prompt_class != "agnostic"
        and bool(unit.concept)
        and (unit.prompt_class != "combine" and "+" not in unit.concept)
    )


def infer_style_categories(df: pd.DataFrame) -> list[str]:
    """Categories with concept images but no ``<style>`` prompts, when the manifest has some."""
    concept_rows = df[(df["concept"] != "") & (df["prompt_class"] != "combine")]
    with_style = set(concept_rows.loc[concept_rows["prompt_class"] == "style", "category"])
    if not with_style:
        return ["style", "styles"]
    return sorted(set(concept_rows["category"]) - with_style)


def category_rows(rows: pd.DataFrame) -> pd.DataFrame:
    """Per (category, class, metric, encoder, mode): the mean of the concept-level values."""
    concept_level = rows[
        (rows["concept"] != "") & ((rows["subclass"] == "") | (rows["prompt_class"] == "combine"))
    ]
    out = []
    keys = ["category", "prompt_class", "metric", "encoder", "mode"]
    for key, grp in concept_level.groupby(keys, sort=True):
        values = grp["value"].to_numpy(dtype=float)
        defined = ~np.isnan(values)
        row = dict(zip(keys, key, strict=True))
        row.update(concept="", subclass="", n_images=int(grp.loc[defined, "n_images"].sum()))
        row["value"] = float(values[defined].mean()) if defined.any() else math.nan
        row["reason"] = "" if defined.any() else "no concept with a defined value"
        row["std"] = math.nan  # a mean over concepts: the concept rows carry the within-unit spread
        row["prompt_set_version"] = ",".join(sorted(set(",".join(grp["prompt_set_version"]).split(","))))
        out.append(row)
    return pd.DataFrame(out, columns=[c for c in ROW_COLUMNS if c != "checkpoint"])
