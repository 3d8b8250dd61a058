"""CatBoost + SHAP on scaled ranks (PAPER.md §6): which hyperparameters move each metric.

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


def shap_levels(fits: list[ShapFit]) -> pd.DataFrame:
    """Mean and mean-|·| SHAP value per (metric, feature, level): the table behind PAPER.md §7."""
    rows = []
    for fit in fits:
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
