"""Planning the evaluation axes (lyco_bench.sweep.axes): each eval model's shared jobs, the jobs
and identity of a varied checkpoint evaluation, and what each axis costs (``plan``'s axis table).

Shared work is planned once: an eval model's base images and their features serve every
checkpoint evaluated on it; multipliers and compressed files share the study model's. A varied
evaluation's generate spec holds what it varies — ``multiplier`` (λ ≠ 1), ``eval_model`` (the
model's identity: content hash or hub commit) or a ``checkpoint`` that is the extract job's id —
and its score job compares with the base images of the model it was generated on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lyco_bench.errors import BadInput
from lyco_bench.sweep.axes import AXES, Variant, base_images_name, eval_models
from lyco_bench.sweep.compress import extract_spec
from lyco_bench.sweep.planner import ASSET_VERSIONS, Job, Plan, base_jobs, make_job
from lyco_bench.sweep.study import TINY_PREFIX, LoadedStudy

# UNet / text-encoder settings that fix the shapes of the layers an adapter adapts: an eval model
# must share them with the study's model ("the same family").
FAMILY_KEYS = {
    "unet": ("in_channels", "block_out_channels", "layers_per_block", "cross_attention_dim",
             "attention_head_dim", "down_block_types", "up_block_types", "transformer_layers_per_block"),
    "text": ("hidden_size", "intermediate_size", "num_hidden_layers"),
}  # fmt: skip


@dataclass
class EvalModelJobs:
    """One eval model: its identity, what workers load, and its jobs (prepare, base images, encodes)."""

    label: str
    value: str
    identity: str
    jobs: list[Job] = field(default_factory=list)
    folder: str | None = None
    """The store's asset folder of a ``tiny:`` model built by its prepare job."""

    @property
    def prepare(self) -> list[Job]:
        return [j for j in self.jobs if j.kind == "prepare"]

    @property
    def shared(self) -> list[Job]:
        """Its base images (first) and their features."""
        return [j for j in self.jobs if j.kind != "prepare"]


def eval_model_jobs(study: LoadedStudy, inputs: Any, prepare: dict[str, Job]) -> dict[str, EvalModelJobs]:
    """Label → the jobs of each eval model; BadInput names the study field of a model that cannot
    be resolved or is not of the study model's family."""
    from lyco_bench.sweep.inputs import _model_identity

    out = {}
    ds_deps = [prepare["dataset"].id] if "dataset" in prepare else []
    for label, value in eval_models(study.study, source=study.source).items():
        where = f"{study.source}: eval_models.{label}"
        own: dict[str, Job] = {}
        folder = None
        if value.startswith(TINY_PREFIX):
            folder = f"tiny-model@{label}"
            spec = {"asset": "model", "value": value, "version": ASSET_VERSIONS["model"]}
            own["model"] = make_job("prepare", folder, spec=spec, folder=folder)
        identity = _model_identity(value, own, hasher=inputs.hasher, source=where)
        _check_family(study.study.model, value, where)
        params = {"model": _pinned(value, identity), "eval_model": label}
        if folder is not None:
            params["model_folder"] = folder
        deps = [*(j.id for j in own.values()), *ds_deps]
        jobs = base_jobs(study, inputs, prepare, identity=identity, deps=deps, label=label, **params)
        out[label] = EvalModelJobs(label, params["model"], identity, [*own.values(), *jobs], folder)
    return out


def _pinned(value: str, identity: str) -> str:
    """A hub model named ``repo@commit``, the commit its identity holds (as ``sources.pin_model``)."""
    from lyco_bench.models import split_revision

    repo, _ = split_revision(value)
    pinned_repo, _, commit = identity.rpartition("@")
    if (
        value.startswith(TINY_PREFIX)
        or Path(value).expanduser().exists()
        or pinned_repo != repo
        or not commit
    ):
        return value
    return f"{repo}@{commit}"


def _check_family(model: str, value: str, where: str) -> None:
    """BadInput when both models' configs are known and a layer-shaping setting differs."""
    from lyco_bench.sweep.sizing import _model_configs

    ours, theirs = _model_configs(model), _model_configs(value)
    if ours is None or theirs is None:
        return  # not known before loading: generation checks every adapted layer's shape
    for part, a, b in (("unet", ours[0], theirs[0]), ("text", ours[1], theirs[1])):
        for key in FAMILY_KEYS[part]:
            if a.get(key) != b.get(key):
                raise BadInput(
                    f"{where}: {value} is not of the study model's family ({part} {key}: "
                    f"{b.get(key)} vs {a.get(key)})"
                )


def variant_jobs(
    study: LoadedStudy,
    train: Job,
    epoch: int,
    variant: Variant,
    *,
    checkpoint: dict[str, Any],
    where: dict[str, Any],
    deps: list[str],
    shared: list[Job],
    models: dict[str, EvalModelJobs],
) -> tuple[dict[str, Any], list[Job], dict[str, Any], list[str], list[Job]]:
    """What a varied evaluation of one checkpoint changes: (its checkpoint identity, the jobs it
    needs first — an extract job —, its params, its generate job's deps, the shared jobs its score
    reads, the base images first)."""
    where = {**where, "axis": variant.axis}
    extra: list[Job] = []
    if variant.multiplier != 1.0:
        where["multiplier"] = variant.multiplier
    if variant.model is not None:
        model = models[variant.model]
        where |= {
            "model": model.value,
            "eval_model": model.label,
            "base_images": base_images_name(model.label),
        }
        if model.folder is not None:
            where["model_folder"] = model.folder
        deps = [*deps, *(j.id for j in model.prepare)]
        shared = [*model.shared, *(j for j in shared if j.params.get("target") == "dataset")]
    if variant.compress is not None:
        p = train.params
        extract = make_job(
            "extract", f"{p['config']}-s{p['seed']}-e{epoch:03d}-c{variant.compress}",
            spec=extract_spec(checkpoint, variant.compress), deps=deps, config=p["config"], seed=p["seed"],
            epoch=epoch, model=where["model"], compress=variant.compress,
        )  # fmt: skip
        checkpoint = {"extracted": extract.id}
        where["compress"] = variant.compress
        deps = [*deps, extract.id]
        extra.append(extract)
    return checkpoint, extra, where, deps, shared


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
        row["seconds"] += cost[4] if cost else rough[job.kind]
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
        table.add_column(col, justify="left" if col in ("axis", "values") else "right", no_wrap=col == "axis")
    for r in rows:
        seconds = f"{r['seconds']:,.0f}" if r["seconds"] >= 10 else f"{r['seconds']:.3g}"
        table.add_row(r["axis"], r["values"], f"{r['evaluations']:,}", f"{r['images']:,}", f"{r['passes']:,}",
                      seconds)  # fmt: skip
    return table
