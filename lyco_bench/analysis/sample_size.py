"""sample_size.csv: the CI half-width each label achieved and the images a target half-width needs
(the hierarchical bootstrap of :mod:`lyco_bench.analysis.uncertainty`, docs/protocol.md §7)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from lyco_bench.analysis.uncertainty import (
    LEVEL,
    BootstrapSettings,
    label_uncertainty,
    unit_arrays,
    unit_rows,
    z_value,
)


def images_needed(
    target_half_width: float,
    *,
    image_var: float,
    total_var: float,
    images_now: float,
    level: float = LEVEL,
) -> float:
    """Images (in the unit `images_now` counts) a mean needs for a CI half-width `target`.

    The mean's variance is ``floor + image_var`` (floor: seeds and concepts, which more images do
    not shrink); image_var scales as 1/images. Solving z²·(floor + image_var·now/n) = δ² gives
    ``n = now·image_var / (δ²/z² − floor)``: with no floor and one unit of n images of standard
    deviation σ (image_var·now = σ²) this is ``n = (z·σ/δ)²``. inf when δ is at or below the
    floor's half-width; NaN when the image part is unknown (0)."""
    if not image_var > 0 or not images_now > 0:
        return math.nan
    z = z_value(level)
    floor = max(total_var - image_var, 0.0)
    room = (target_half_width / z) ** 2 - floor
    return math.inf if room <= 0 else images_now * image_var / room


TARGET_HALF_WIDTH = 0.01
SAMPLE_SIZE_COLUMNS = [
    "metric", "prompt_class", "encoder", "mode", "label", "n_configs", "n_seeds", "n_concepts",
    "images_per_unit", "image_std", "half_width", "floor_half_width", "target_half_width",
    "images_per_unit_needed", "images_per_prompt", "images_per_prompt_needed", "note",
]  # fmt: skip


def target_for(label: str, metric: str, target: float | dict[str, float]) -> float:
    """The target half-width of a label: a number for all, or {label or metric name: number}
    (a key "default" for the rest; TARGET_HALF_WIDTH without one)."""
    if not isinstance(target, dict):
        return float(target)
    for key in (label, metric, "default"):
        if key in target:
            return float(target[key])
    return TARGET_HALF_WIDTH


def sample_size_table(
    results: pd.DataFrame,
    labels: Sequence[str],
    *,
    settings: BootstrapSettings | None = None,
    target: float | dict[str, float] = TARGET_HALF_WIDTH,
    images_per_prompt: int | Mapping[str, int] | None = None,
) -> pd.DataFrame:
    """Per label: the CI half-width the study achieved (median over its fine-tuned configurations
    and epochs), the part seeds and concepts alone leave (`floor_half_width`), and the images a
    target half-width needs — per concept unit and, when `images_per_prompt` (the study's current
    setting: one number, or per prompt class as a prompt set gives them) is known, per prompt — from `images_needed` (n ≈ (1.96σ/δ)² without a floor). Needs
    the per-image ``std`` of the score rows; NaN with a note for set statistics (Vendi, centroid
    distance), which have none."""
    settings = settings or BootstrapSettings()
    z = z_value(settings.level)
    table = results[results["algo"] != "base"]
    units = unit_rows(table[table["label"].isin(list(labels))])
    key = units["config"].astype(str) + "|" + units["epoch"].astype(str)
    codes, uniques = pd.factorize(key, sort=True)
    units["_g"] = codes
    meta = table.drop_duplicates("label").set_index("label")
    records = []
    for label in labels:
        rows = units[units["label"] == label]
        if rows.empty:
            continue
        metric = str(meta.loc[label, "metric"])
        delta = target_for(label, metric, target)
        arrays = unit_arrays(rows, rows["_g"].to_numpy(), len(uniques))
        res = label_uncertainty(arrays, settings=settings, rng=settings.rng(label, "sample-size"))
        has = ~np.isnan(res.mean)
        half = (res.ci_high - res.ci_low)[has] / 2
        total = (half / z) ** 2
        image = res.image_var[has]
        n_unit = float(np.nanmedian(rows["n_images"])) if rows["n_images"].notna().any() else math.nan
        std = rows["std"].to_numpy(dtype=float)
        image_std = math.sqrt(np.nanmean(std**2)) if np.isfinite(std).any() else math.nan
        floor = z * np.sqrt(np.maximum(total - image, 0.0))
        need_unit = [images_needed(delta, image_var=i, total_var=t, images_now=n_unit, level=settings.level)
                     for i, t in zip(image, total, strict=True)]  # fmt: skip
        need_unit_med = float(np.median(need_unit)) if need_unit else math.nan
        need_prompt = math.nan
        per_prompt = (
            images_per_prompt.get(str(meta.loc[label, "prompt_class"]))
            if isinstance(images_per_prompt, Mapping) else images_per_prompt
        )  # fmt: skip
        if per_prompt and not math.isnan(need_unit_med) and n_unit > 0:
            need_prompt = need_unit_med * per_prompt / n_unit
        note = ""
        if not (image > 0).any():
            note = "no per-image std (a set statistic, or scores without std): more images cannot be sized"
        elif math.isinf(need_unit_med):
            note = "target at or below what seeds and concepts alone leave: more seeds or concepts"
        records.append(
            {"metric": metric, "prompt_class": meta.loc[label, "prompt_class"],
             "encoder": meta.loc[label, "encoder"], "mode": meta.loc[label, "mode"], "label": label,
             "n_configs": int(has.sum()), "n_seeds": int(np.max(res.n_seeds)) if has.any() else 0,
             "n_concepts": int(rows["unit"].nunique()), "images_per_unit": n_unit,
             "image_std": image_std, "half_width": float(np.median(half)) if has.any() else math.nan,
             "floor_half_width": float(np.median(floor)) if has.any() else math.nan,
             "target_half_width": delta, "images_per_unit_needed": _ceil(need_unit_med),
             "images_per_prompt": per_prompt if per_prompt else math.nan,
             "images_per_prompt_needed": _ceil(need_prompt), "note": note}
        )  # fmt: skip
    return pd.DataFrame(records, columns=SAMPLE_SIZE_COLUMNS)


def _ceil(value: float) -> float:
    return value if math.isnan(value) or math.isinf(value) else float(max(1, math.ceil(value - 1e-9)))
