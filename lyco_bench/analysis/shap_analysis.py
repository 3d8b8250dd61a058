"""CatBoost + SHAP on scaled ranks (docs/protocol.md §6): which hyperparameters move each metric.

Features per checkpoint: Algo and Preset (categorical), Epoch, Capacity and Lr level, the last
two from what each algorithm declares (``CapacityRule``, ``lr_grid``: the paper's levels 1–4 and
1–3 for LoRA/LoHa/LoKr/native). One CatBoostRegressor per metric label predicts the scaled rank;
shap.TreeExplainer attributes each prediction to the features. An algorithm whose Capacity is a
constant (native fine-tuning) has its Capacity SHAP value folded into Algo (the paper's convention).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd

FEATURES = ["Algo", "Preset", "Epoch", "Capacity", "Lr level"]
CATEGORICAL = ["Algo", "Preset"]
CATBOOST_PARAMS = {"iterations": 300, "learning_rate": 0.1, "random_seed": 123, "nan_mode": "Min"}


def _lookup(values: pd.Series, table: Mapping[float, float]) -> pd.Series:
    """Map values through `table` (float-tolerant); NaN where a value is not in it."""
    out = pd.Series(np.nan, index=values.index)
    for key, level in table.items():
        out[np.isclose(values.astype(float), key, rtol=1e-6, atol=0)] = level
    return out


def _levels(values: pd.Series, table: Mapping[float, float], *, ascending: bool, start: int) -> pd.Series:
    """Levels from the paper's table. When the table matches none of the values (another study's
    grid), levels by order of the distinct values instead. Values outside a partly matching table
    are NaN, which CatBoost's nan_mode='Min' puts below every level."""
    known = _lookup(values, table)
    present = values.dropna()
    if present.empty or known[present.index].notna().any():
        return known
    order = sorted(present.unique(), reverse=not ascending)
    return values.map({v: start + i for i, v in enumerate(order)}).astype(float)


def algorithm_of(label: str):
    """The registered algorithm behind a results-table ``algo`` label (``lora``, ``lora+dora``, …),
    or None (the base model, an algorithm this installation lacks)."""
    from lyco_bench.adapters import get_algorithm
    from lyco_bench.errors import BadInput

    try:
        return get_algorithm(str(label).split("+")[0])
    except BadInput:
        return None


def capacity_level(table: pd.DataFrame) -> pd.Series:
    """Capacity per row from what each algorithm declares (its CapacityRule: the paper's levels for
    LoRA/LoHa/LoKr/native); an algorithm without a rule gets log10 of its trainable parameters."""
    out = pd.Series(np.nan, index=table.index)
    for algo, rows in table.groupby("algo", sort=True):
        cls = algorithm_of(algo)
        rule = cls.capacity if cls is not None else None
        if rule is not None and rule.constant is not None:
            out[rows.index] = rule.constant
        elif rule is not None and rule.setting in rows:
            values = pd.to_numeric(rows[rule.setting], errors="coerce")
            out[rows.index] = _levels(values, rule.levels, ascending=rule.ascending, start=rule.start)
        elif "trainable_params" in rows:
            out[rows.index] = np.log10(pd.to_numeric(rows["trainable_params"], errors="coerce").clip(lower=1))
    return out


def lr_level(table: pd.DataFrame) -> pd.Series:
    """Lr level per row: the algorithm's declared grid (the paper's three levels), else by order."""
    out = pd.Series(np.nan, index=table.index)
    for algo, rows in table.groupby("algo", sort=True):
        cls = algorithm_of(algo)
        grid = (cls.lr_grid if cls is not None else None) or ()
        paper = {lr: i + 1 for i, lr in enumerate(grid)}
        out[rows.index] = _levels(rows["lr"], paper, ascending=True, start=1)
    return out


def folds_capacity(algo: str) -> bool:
    """Whether an algorithm's Capacity is a constant whose SHAP value belongs to Algo (native)."""
    cls = algorithm_of(algo)
    return bool(cls is not None and cls.capacity is not None and cls.capacity.fold_into_algo)


def encode_features(table: pd.DataFrame) -> pd.DataFrame:
    """The five model features for each row of the long table (same index)."""
    return pd.DataFrame(
        {
            "Algo": table["algo"].astype(str),
            "Preset": table["preset"].fillna("").astype(str),
            "Epoch": table["epoch"].astype(float),
            "Capacity": capacity_level(table),
            "Lr level": lr_level(table),
        },
        index=table.index,
    )


@dataclass
class ShapFit:
    """One metric's fit: the features it saw, their SHAP values (n_rows, 5), the base value and
    the model's predictions (values.sum(1) + expected_value == prediction, folding included)."""

    label: str
    features: pd.DataFrame
    values: np.ndarray
    expected_value: float
    prediction: np.ndarray


def fit_shap(features: pd.DataFrame, target: pd.Series, *, label: str, thread_count: int = 1) -> ShapFit:
    """CatBoostRegressor(iterations=300, lr 0.1, seed 123, nan_mode='Min') + TreeExplainer."""
    import shap
    from catboost import CatBoostRegressor

    model = CatBoostRegressor(
        **CATBOOST_PARAMS,
        cat_features=CATEGORICAL,
        verbose=False,
        allow_writing_files=False,
        thread_count=thread_count,
    )
    x = features[FEATURES].reset_index(drop=True)
    model.fit(x, target.to_numpy(dtype=float))
    explainer = shap.TreeExplainer(model)
    values = np.asarray(explainer.shap_values(x), dtype=float)  # (n_rows, 5)
    folded = x["Algo"].map(folds_capacity).to_numpy(dtype=bool)
    algo_col, cap_col = FEATURES.index("Algo"), FEATURES.index("Capacity")
    values[folded, algo_col] += values[folded, cap_col]
    values[folded, cap_col] = 0.0
    expected = float(np.ravel(explainer.expected_value)[0])
    prediction = np.asarray(model.predict(x), dtype=float)
    return ShapFit(label=label, features=x, values=values, expected_value=expected, prediction=prediction)


def level_name(value: object) -> str:
    """`10.0` → `10`, `attn-only` stays, NaN → `nan`."""
    if isinstance(value, (float, np.floating)):
        if np.isnan(value):
            return "nan"
        if float(value).is_integer():
            return str(int(value))
    return str(value)


def level_means(fit: ShapFit) -> pd.DataFrame:
    """Mean and mean-|·| SHAP value per (feature, level) of one fit."""
    rows = []
    for j, feature in enumerate(FEATURES):
        levels = fit.features[feature].map(level_name)
        frame = pd.DataFrame({"level": levels, "shap": fit.values[:, j]})
        for level, group in frame.groupby("level", sort=True):
            rows.append(
                {
                    "metric": fit.label,
                    "feature": feature,
                    "level": level,
                    "mean_shap": float(group["shap"].mean()),
                    "mean_abs_shap": float(group["shap"].abs().mean()),
                }
            )
    return pd.DataFrame(rows, columns=["metric", "feature", "level", "mean_shap", "mean_abs_shap"])


def resample_rows(table: pd.DataFrame, rng: np.random.Generator) -> np.ndarray:
    """Positions of one hierarchical resample of fit rows: the training seeds with replacement
    (the same drawn seeds for every configuration), then per drawn seed each category's concepts
    with replacement; a drawn (seed, concept) brings all its rows (every configuration and epoch,
    subclass rows included)."""
    seeds = pd.to_numeric(table["seed"], errors="coerce").fillna(-1).to_numpy()
    units = (table["category"].astype(str) + "/" + table["concept"].astype(str)).to_numpy()
    cells = pd.DataFrame({"seed": seeds, "unit": units}).groupby(["seed", "unit"], sort=True).indices
    by_category: dict[str, list[str]] = {}
    for unit in sorted(set(units)):
        by_category.setdefault(unit.split("/")[0], []).append(unit)
    seed_values = np.array(sorted(set(seeds)))
    picked = []
    for seed in rng.choice(seed_values, size=len(seed_values)):
        for category in sorted(by_category):
            members = by_category[category]
            for unit in rng.choice(np.array(members, dtype=object), size=len(members)):
                picked.append(cells.get((seed, unit), np.array([], dtype=np.int64)))
    return np.concatenate(picked) if picked else np.array([], dtype=np.int64)


def refit_levels(
    rows: pd.DataFrame, target: pd.Series, *, label: str, n_refits: int, rng: np.random.Generator
) -> list[pd.DataFrame]:
    """`level_means` of CatBoost+SHAP refitted on `n_refits` hierarchical resamples of the rows."""
    out = []
    for _ in range(n_refits):
        idx = resample_rows(rows, rng)
        if len(idx) == 0 or rows.iloc[idx]["config"].nunique() < 2:
            continue
        fit = fit_shap(rows.iloc[idx], target.iloc[idx], label=label)
        out.append(level_means(fit))
    return out


LEVEL_COLUMNS = ["metric", "feature", "level", "mean_shap", "mean_abs_shap", "ci_low", "ci_high", "n_refits"]


def shap_levels(
    fits: list[ShapFit], refits: Mapping[str, list[pd.DataFrame]] | None = None, *, level: float = 0.95
) -> pd.DataFrame:
    """Mean and mean-|·| SHAP value per (metric, feature, level): the table behind the paper's findings (docs/protocol.md §6),
    with an interval for mean_shap from the refits on bootstrap resamples (`refit_levels`):
    mean_shap ± t(level, R−1) · (standard deviation of the R refits' values) — a normal interval
    with the bootstrap standard error, t widening it for the few refits a CPU budget allows (a
    percentile interval would need hundreds). NaN with fewer than 2 refits."""
    from scipy.stats import t as student_t

    frames = []
    for fit in fits:
        table = level_means(fit)
        draws = (refits or {}).get(fit.label, [])
        keys = ["feature", "level"]
        if len(draws) >= 2:
            stacked = pd.concat(draws, ignore_index=True)
            spread = stacked.groupby(keys)["mean_shap"].agg(["std", "count"])
            table = table.join(spread, on=keys)
            q = student_t.ppf(0.5 + level / 2, table["count"].clip(lower=2) - 1)
            half = q * table["std"]
            table["ci_low"], table["ci_high"] = table["mean_shap"] - half, table["mean_shap"] + half
            table["n_refits"] = table["count"].fillna(0).astype(int)
        else:
            table["ci_low"], table["ci_high"], table["n_refits"] = np.nan, np.nan, len(draws)
        frames.append(table[LEVEL_COLUMNS])
    if not frames:
        return pd.DataFrame(columns=LEVEL_COLUMNS)
    return pd.concat(frames, ignore_index=True)
