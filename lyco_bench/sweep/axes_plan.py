"""Planning the evaluation axes (lyco_bench.sweep.axes): each eval model's shared jobs, and the
jobs and identity of a varied checkpoint evaluation (what each axis costs: ``axes_cost``).

Shared work is planned once: an eval model's base images and their features serve every
checkpoint evaluated on it; multipliers and compressed files share the study model's. A varied
evaluation's generate spec holds what it varies — ``multiplier`` (λ ≠ 1), ``eval_model`` (the
model's identity: content hash or hub commit) or a ``checkpoint`` that is the extract job's id —
and its score job compares with the base images of the model it was generated on.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lyco_bench.errors import BadInput
from lyco_bench.sweep.assets import built_model
from lyco_bench.sweep.axes import Variant, base_images_name, eval_models
from lyco_bench.sweep.compress import extract_spec
from lyco_bench.sweep.jobs import ASSET_VERSIONS, Job, make_job
from lyco_bench.sweep.study import LoadedStudy

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


def eval_model_jobs(
    study: LoadedStudy, inputs: Any, prepare: dict[str, Job], *, base_jobs: Callable[..., list[Job]]
) -> dict[str, EvalModelJobs]:
    """Label → the jobs of each eval model (``base_jobs``: the planner's base images and encodes of a
    model); BadInput names the study field of a model that cannot be resolved or is not of the
    study model's family."""
    from lyco_bench.sweep.inputs import _model_identity

    out = {}
    ds_deps = [prepare["dataset"].id] if "dataset" in prepare else []
    for label, value in eval_models(study.study, source=study.source).items():
        where = f"{study.source}: eval_models.{label}"
        own: dict[str, Job] = {}
        folder = None
        if (built := built_model(value)) is not None:
            folder = f"{built[1].folder}@{label}"
            spec = {"asset": "model", "value": value, "version": ASSET_VERSIONS["model"]}
            own["model"] = make_job("prepare", folder, spec=spec, folder=folder)
        identity, _ = _model_identity(value, own, hasher=inputs.hasher, source=where)
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
        built_model(value) is not None
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
        for key in FAMILY_KEYS[part]:  # a key one config leaves to its default is not compared
            if key in a and key in b and _plain(a[key]) != _plain(b[key]):
                raise BadInput(
                    f"{where}: {value} is not of the study model's family ({part} {key}: "
                    f"{_plain(b[key])} vs {_plain(a[key])})"
                )


def _plain(value: Any) -> Any:
    """A config value as JSON holds it (tuples as lists)."""
    return list(value) if isinstance(value, tuple) else value


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
