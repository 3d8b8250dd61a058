"""After the jobs: collect every score into the results table, then analysis, leaderboard, report.

The results table is rebuilt from the score files each time (sorted, written atomically), so it
never holds duplicate rows and does not depend on the order in which jobs ran.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from lyco_bench.sweep.planner import Plan
from lyco_bench.sweep.stages import checkpoint_name


def trainable_parameter_count(ckpt: Path) -> int:
    """Trained numbers in an adapter file: every tensor except the per-module ``alpha`` scalars."""
    from safetensors import safe_open

    total = 0
    with safe_open(str(ckpt), framework="pt") as fh:
        for key in fh.keys():
            if key.endswith(".alpha") or key.endswith("alpha"):
                continue
            total += math.prod(fh.get_slice(key).get_shape())
    return total


def _adapter_columns(adapter: dict[str, Any]) -> dict[str, Any]:
    """algo/preset/dim/alpha/factor as the analysis expects them (NaN where a setting is unused)."""
    from lyco_bench.adapters import AdapterSpec

    spec = AdapterSpec(**adapter)
    algo = spec.algo
    nan = math.nan
    dim = alpha = factor = nan
    if algo in ("lora", "loha", "lokr"):
        dim = float(spec.dim)
        alpha = float(spec.alpha if spec.alpha is not None else spec.dim)
    if algo == "lokr":
        factor = float(spec.factor)
    return {"algo": algo, "preset": spec.preset, "dim": dim, "alpha": alpha, "factor": factor}


def runs_table(plan: Plan) -> Any:
    """One row per scored checkpoint: its configuration, seed, epoch, parameters and file size."""
    import pandas as pd

    from lyco_bench.training import checkpoint_path

    configs = {c.name: c for c in plan.study.configs}
    rows = []
    for job in plan.of_kind("score"):
        p = job.params
        config = configs[p["config"]]
        ckpt = checkpoint_path(plan.store.run_dir(p["config"], p["seed"]), p["epoch"])
        lr = config.training.get("lr", math.nan)
        rows.append(
            {
                "checkpoint": checkpoint_name(p["config"], p["seed"], p["epoch"]),
                "config": p["config"],
                **_adapter_columns(config.adapter),
                "lr": float(lr),
                "seed": int(p["seed"]),
                "epoch": int(p["epoch"]),
                "trainable_params": trainable_parameter_count(ckpt),
                "file_bytes": ckpt.stat().st_size,
            }
        )
    return pd.DataFrame(rows)


def collect(plan: Plan) -> Any:
    """The study's results table (written to ``<store>/<study>/results.parquet``)."""
    from lyco_bench.analysis import collect_results, write_results

    score_files = [
        plan.store.scores_path(j.params["config"], j.params["seed"], j.params["epoch"])
        for j in plan.of_kind("score")
    ]
    results = collect_results(score_files, runs_table(plan))
    write_results(results, plan.store.results_path)
    return results


def analyze_and_report(plan: Plan, results: Any, *, reports_dir: Path, plots: bool = True) -> Path:
    """Scaled ranks + CatBoost/SHAP + figures, leaderboard and ``reports/<study>/index.html``."""
    from lyco_bench.analysis import run_analysis, write_leaderboard, write_report

    settings = plan.study.study.analysis
    out_dir = Path(reports_dir) / plan.study.name
    analysis = run_analysis(
        results,
        out_dir / "analysis",
        exclude_configs=tuple(settings.get("exclude_configs", ())),
        shap_exclude_configs=tuple(settings.get("shap_exclude_configs", ())),
        plots=plots,
    )
    write_leaderboard(results, out_dir)
    # One grid row per configuration: its first seed at its last checkpoint, base model alongside.
    study = plan.study.study
    seed, epoch = study.seeds[0], max(study.checkpoint_epochs)
    manifests = {"base": plan.store.base_images_dir / "manifest.parquet"}
    for config in plan.study.configs:
        manifests[config.name] = plan.store.images_dir(config.name, seed, epoch) / "manifest.parquet"
    return write_report(
        study_name=plan.study.name,
        results=results,
        out_dir=out_dir,
        figures=analysis.figures,
        image_manifests=manifests,
        base_key="base",
    )
