"""CatBoost + SHAP on scaled ranks (PAPER.md §6): which hyperparameters move each metric.

Features per checkpoint: Algo and Preset (categorical), Epoch, Capacity (1–4) and Lr level (1–3).
One CatBoostRegressor per metric label predicts the scaled rank; shap.TreeExplainer attributes
each prediction to the features. For native fine-tuning Capacity is a constant of the algorithm,
so its SHAP value is folded into Algo (the paper's convention).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd

FEATURES = ["Algo", "Preset", "Epoch", "Capacity", "Lr level"]
CATEGORICAL = ["Algo", "Preset"]
CATBOOST_PARAMS = {"iterations": 300, "learning_rate": 0.1, "random_seed": 123, "nan_mode": "Min"}

# PAPER.md §6: capacity levels by algorithm (LoRA/LoHa by dim, LoKr by factor; native is 4).
PAPER_CAPACITY: dict[str, tuple[str, dict[float, int]]] = {
    "lora": ("dim", {8: 2, 32: 3}),
    "loha": ("dim", {4: 2, 16: 3}),
    "lokr": ("factor", {12: 1, 8: 2, 4: 3}),
}
NATIVE_CAPACITY = 4
LYCORIS_LRS = (1e-4, 5e-4, 1e-3)
NATIVE_LRS = (5e-7, 1e-6, 5e-6)


def _lookup(values: pd.Series, table: Mapping[float, int]) -> pd.Series:
    """Map values through `table` (float-tolerant); NaN where a value is not in it."""
    out = pd.Series(np.nan, index=values.index)
    for key, level in table.items():
        out[np.isclose(values.astype(float), key, rtol=1e-6, atol=0)] = level
    return out


def _levels(values: pd.Series, table: Mapping[float, int], *, ascending: bool, start: int) -> pd.Series:
    """Levels from the paper's table. When the table matches none of the values (another study's
    grid), levels by order of the distinct values instead. Values outside a partly matching table
    are NaN, which CatBoost's nan_mode='Min' puts below every level."""
    known = _lookup(values, table)
    present = values.dropna()
    if present.empty or known[present.index].notna().any():
        return known
    order = sorted(present.unique(), reverse=not ascending)
    return values.map({v: start + i for i, v in enumerate(order)}).astype(float)


def capacity_level(table: pd.DataFrame) -> pd.Series:
    out = pd.Series(np.nan, index=table.index)
    for algo, rows in table.groupby("algo", sort=True):
        if algo == "native":
            out[rows.index] = NATIVE_CAPACITY
            continue
        column, paper = PAPER_CAPACITY.get(str(algo), ("dim", {}))
        # a larger LoKr factor gives a smaller W1 ⊗ W2 split of each dim: fewer parameters
        out[rows.index] = _levels(
            rows[column], paper, ascending=column == "dim", start=1 if column == "factor" else 2
        )
    return out


def lr_level(table: pd.DataFrame) -> pd.Series:
    out = pd.Series(np.nan, index=table.index)
    for algo, rows in table.groupby("algo", sort=True):
        grid = NATIVE_LRS if algo == "native" else LYCORIS_LRS
        paper = {lr: i + 1 for i, lr in enumerate(grid)}
        out[rows.index] = _levels(rows["lr"], paper, ascending=True, start=1)
    return out


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
    native = (x["Algo"] == "native").to_numpy()
    algo_col, cap_col = FEATURES.index("Algo"), FEATURES.index("Capacity")
    values[native, algo_col] += values[native, cap_col]
    values[native, cap_col] = 0.0
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
