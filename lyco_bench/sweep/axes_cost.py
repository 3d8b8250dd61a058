"""What each evaluation axis (lyco_bench.sweep.axes) costs: ``lyco-bench plan``'s axis table.

Each job's work is put on the axis it serves — a varied evaluation's extract, generate and score
jobs, an eval model's base images and their encodes — the rest (the as-trained evaluations, the
study model's base images, the dataset's features) on ``default``; training is left out (no
axis trains). Images and encoder passes are the cost model's units (lyco_bench.sweep.costs).
"""

from __future__ import annotations

from typing import Any

from lyco_bench.sweep.axes import AXES, eval_models
from lyco_bench.sweep.planner import Job, Plan


def axis_of(job: Job) -> str | None:
    """The axis a job's work is for (None: the study without axes)."""
    if job.kind == "extract":
        return "eval_compress"
    if job.params.get("eval_model") is not None:
        return "eval_models"
    return job.params.get("axis") or (
        "eval_ranks" if job.kind in ("generate", "score") and job.params.get("rank") is not None else None
    )


def axis_rows(plan: Plan, jobs_cost: dict[str, tuple] | None) -> list[dict[str, Any]]:
    """Per axis the study sweeps: its values, the checkpoint evaluations it adds, the images they
    generate, the encoder passes, and its seconds (GPU-seconds from the cost model ``jobs_cost``;
    without one, the planner's rough per-kind seconds); the as-trained evaluations first."""
    from lyco_bench.sweep.costs import _generated_images
    from lyco_bench.sweep.planner import rough_costs

    study = plan.study.study
    rough = rough_costs(study.model)
    n_encoders = max(len(plan.inputs.encoders), 1) if plan.inputs else 1
    rows: dict[str | None, dict[str, Any]] = {}
    for job in plan.jobs:
        if job.kind not in ("extract", "generate", "encode", "score") or job.params.get("target") == "class":
            continue
        axis = axis_of(job)
        row = rows.setdefault(axis, {"evaluations": 0, "images": 0, "passes": 0, "seconds": 0.0})
        cost = jobs_cost.get(job.id) if jobs_cost else None
        row["evaluations"] += job.kind == "score"
        if job.kind == "generate":
            row["images"] += cost[1] if cost else _generated_images(plan, job)
        elif job.kind in ("encode", "score"):
            row["passes"] += cost[1] if cost else n_encoders * _passes(plan, job)
        if jobs_cost is None:
            row["seconds"] += rough[job.kind]
        elif cost is not None:  # an extract job runs on the CPU (no GPU share): no GPU-seconds
            row["seconds"] += cost[4]
    out = []
    for axis in (None, *AXES):
        if axis in rows:
            values = "as trained" if axis is None else _values(plan, axis)
            out.append({"axis": axis or "default", "values": values, **rows[axis]})
    return out


def _passes(plan: Plan, job: Job) -> int:
    from lyco_bench.sweep.costs import _generated_images

    if job.kind == "score":
        return sum(plan.inputs.images_per_class.values())
    return (
        _generated_images(plan, job)
        if job.params.get("target") == "base"
        else len(plan.inputs.dataset_images)
    )


def _values(plan: Plan, axis: str) -> str:
    study = plan.study.study
    if axis == "eval_ranks":
        ranks = sorted({r for c in plan.study.configs for r in c.eval_ranks})
        return ", ".join(map(str, ranks))
    if axis == "eval_models":
        return ", ".join(eval_models(study))
    values = study.eval_multipliers if axis == "eval_multipliers" else study.eval_compress
    return ", ".join(f"{v:g}" for v in values if not (axis == "eval_multipliers" and v == 1.0))


def axis_table(plan: Plan, jobs_cost: dict[str, tuple] | None, *, unit: str) -> Any:
    """The plan's axis table (a rich Table), or None for a study without evaluation axes."""
    from rich.table import Table

    rows = axis_rows(plan, jobs_cost)
    if len(rows) < 2 and not (rows and rows[0]["axis"] != "default"):
        return None
    table = Table(title="evaluation axes: what each adds (shared base images and encodes included)")
    for col in ("axis", "values", "evaluations", "images", "encoder passes", unit):
        numeric = col not in ("axis", "values")
        table.add_column(
            col, justify="right" if numeric else "left", no_wrap=col != "values", min_width=len(col)
        )
    for r in rows:
        seconds = f"{r['seconds']:,.0f}" if r["seconds"] >= 10 else f"{r['seconds']:.3g}"
        table.add_row(r["axis"], r["values"], f"{r['evaluations']:,}", f"{r['images']:,}", f"{r['passes']:,}",
                      seconds)  # fmt: skip
    return table
