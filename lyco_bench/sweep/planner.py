"""Planning: a study → a graph of jobs whose ids are the identities of their outputs.

Kinds (docs/internals.md):

    prepare   build a tiny model / the demo dataset / tiny encoders into the store (only for
              ``tiny:`` / ``demo:`` studies)
    train     (configuration, seed) → one adapter file per checkpoint epoch
    generate  (checkpoint | base model) → images + manifest for the study's prompt classes
    encode    shared image sets (dataset, base-model images) → features in the shared cache
    score     checkpoint → its images' features (one shard per encoder and mode) + metric rows
    extract   checkpoint → its adapter SVD-extracted to a rank (a study's ``eval_compress``)

A checkpoint is generated and scored once per evaluation variant (lyco_bench.sweep.axes): the
default variant's ids are those of a study without evaluation axes.

A job id is ``<kind>-<readable>-<hash>``; the hash covers the job's ``spec``: every input that
changes its output (``lyco_bench.sweep.inputs``): settings as resolved after all defaults, the
content it reads (dataset bytes, prompt set, model and encoder weights and preprocessing, the
identity of upstream outputs) and its stage's output version. So a change anywhere makes exactly
the jobs that read it stale, a checkpoint's identity does not depend on which other epochs are
saved, and adding a configuration leaves every other id unchanged. Absolute paths never enter a
spec (a study moved to another store keeps its ids). Work shared by many checkpoints — base-model
images, dataset and base features — is one job; a checkpoint's own images are encoded by its
score job, which is the only reader of their features (VGG Grams of generated images are reduced
to style losses on the spot and never stored).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lyco_bench.errors import BadInput
from lyco_bench.families import family_identity
from lyco_bench.sweep.assets import built_encoders, built_model, model_rough_costs
from lyco_bench.sweep.axes import Variant, evaluations
from lyco_bench.sweep.inputs import RUN_HINT_FIELDS, StudyInputs, needed_kinds, resolve_inputs, run_identity
from lyco_bench.sweep.jobs import ASSET_VERSIONS, Job, make_job  # noqa: F401 - re-exported
from lyco_bench.sweep.sources import pin_encoders, pin_model
from lyco_bench.sweep.store import StudyStore
from lyco_bench.sweep.study import (
    LoadedStudy,
    ResolvedConfig,
    generated_dataset,
    generated_folder,
)
from lyco_bench.sweep.trajectory import budget_spec, trajectory_epochs

KINDS = ("prepare", "train", "extract", "generate", "encode", "score")

# Rough seconds per job on one GPU for a paper-sized study, used for the estimate of the work left
# until the store has recorded durations of its own.
ROUGH_COST_S = {"prepare": 30.0, "train": 3 * 3600.0, "extract": 60.0, "generate": 1800.0, "encode": 120.0,
                "score": 120.0}  # fmt: skip


def rough_costs(model: str) -> Mapping[str, float]:
    """Seconds per job kind before any is recorded, for the study's model (an asset prefix's model,
    built or shipped, declares its own: lyco_bench.sweep.assets)."""
    declared = model_rough_costs(str(model))
    return declared if declared is not None else ROUGH_COST_S


@dataclass
class Plan:
    """Jobs in a valid execution order (every job after its dependencies)."""

    study: LoadedStudy
    store: StudyStore
    jobs: list[Job]
    inputs: StudyInputs | None = None

    def by_id(self) -> dict[str, Job]:
        return {job.id: job for job in self.jobs}

    def of_kind(self, kind: str) -> list[Job]:
        return [job for job in self.jobs if job.kind == kind]

    def done_ids(self) -> set[str]:
        """Jobs whose done marker exists and whose outputs are intact.

        A generate job whose images were removed after scoring counts as done only while every
        job that reads its images is done too; otherwise it regenerates what is missing.
        """
        present = self.store.marker_ids()
        done = {job.id for job in self.jobs if job.id in present and self.store.is_done(job.id)}
        for job in self.of_kind("generate"):
            if job.id in done and (self.store.read_marker(job.id) or {}).get("pruned"):
                readers = [j.id for j in self.jobs if job.id in j.deps and j.kind == "score"]
                if not all(r in done for r in readers):
                    done.discard(job.id)
        return done


def _prepare_jobs(study: LoadedStudy) -> dict[str, Job]:
    """Asset jobs for built models/encoders (``tiny:``) and generated datasets (``demo:``), keyed
    by what they make (the prepare job is named by the store folder it builds)."""
    s = study.study
    jobs: dict[str, Job] = {}

    def asset(key: str, name: str, value: Any) -> Job:
        return make_job("prepare", name, spec={"asset": key, "value": value, "version": ASSET_VERSIONS[key]})

    model = built_model(s.model)
    if model is not None:
        jobs["model"] = asset("model", model[1].folder, s.model)
    if generated_dataset(s.dataset):
        jobs["dataset"] = asset("dataset", generated_folder(s.dataset), s.dataset)
    encoders = built_encoders(s.encoders)
    if encoders is not None:
        jobs["encoders"] = asset("encoders", encoders[1].folder, s.encoders)
    return jobs


def _sampling_spec(study: LoadedStudy, inputs: StudyInputs, classes: list[str] | None) -> dict[str, Any]:
    """What a generate job reads besides the weights (each key a reason when it changes)."""
    from lyco_bench.generation import OUTPUT_VERSION

    s = study.study
    return {
        **family_identity(inputs.family),
        "prompts": inputs.prompts,
        "dataset": inputs.dataset.prompts,  # <train> prompts are the dataset's captions
        "captions": s.captions,
        "classes": classes,
        "images_per_prompt": s.prompts.images_per_prompt,
        "sampler": inputs.sampler,
        "version": OUTPUT_VERSION,
    }


# Keys of a generate spec that choose which images are made, not how each one looks: a folder made
# under the same remaining keys keeps every image whose prompt and seed are unchanged.
SAMPLING_CONTENT_KEYS = ("prompts", "dataset", "captions", "classes", "images_per_prompt")


def _train_job(
    study: LoadedStudy,
    inputs: StudyInputs,
    config: ResolvedConfig,
    seed: int,
    deps: list[str],
    class_jobs: dict[int, Job],
) -> Job:
    from lyco_bench.training import OUTPUT_VERSION

    resolved = inputs.runs[config.name]
    run = {**run_identity(resolved), "seed": seed}
    spec = {
        **family_identity(inputs.family),
        "config": config.name,
        "run": run,
        "model": inputs.model,
        "dataset": inputs.dataset.content,
        "version": OUTPUT_VERSION,
        "checkpoint_epochs": sorted(study.study.checkpoint_epochs),
    }
    if study.study.checkpoint_every is not None:  # dense checkpoints (a trajectory); absent: ids as before
        spec["checkpoint_every"] = study.study.checkpoint_every
    class_job = class_jobs.get(resolved["num_class_images"]) if resolved["prior_loss_weight"] > 0 else None
    if class_job is not None:  # prior preservation reads the base model's class images
        spec["class_images"] = class_job.id
        deps = [*deps, class_job.id]
    return make_job(
        "train",
        f"{config.name}-s{seed}",
        spec=spec,
        deps=deps,
        config=config.name,
        seed=seed,
        class_images=class_job.params["count"] if class_job is not None else None,
        run_hints={key: resolved[key] for key in RUN_HINT_FIELDS if key in resolved},
        **_where(study),
    )


def _class_jobs(study: LoadedStudy, inputs: StudyInputs, deps: list[str]) -> dict[int, Job]:
    """Class images of the base model for prior preservation: one job per number of images asked
    for, shared by every configuration that asks for it (DreamBooth's class images)."""
    from lyco_bench.generation import OUTPUT_VERSION

    counts = sorted({r["num_class_images"] for r in inputs.runs.values() if r["prior_loss_weight"] > 0})
    jobs = {}
    for count in counts if inputs.class_prompts else ():
        spec = {
            **family_identity(inputs.family),
            "checkpoint": {"model": inputs.model},
            "class_prompts": inputs.class_prompts,
            "images_per_prompt": count,
            "sampler": inputs.sampler,
            "version": OUTPUT_VERSION,
        }
        jobs[count] = make_job(
            "generate", f"class-{count}", spec=spec, deps=deps, target="class", count=count, **_where(study)
        )
    return jobs


def _where(study: LoadedStudy) -> dict[str, Any]:
    """Job params (not hashed): the study's values that locate what a job reads."""
    s = study.study
    return {"model": s.model, "dataset": s.dataset, "prompt_set": s.prompts.set, "encoders": s.encoders}


def train_run_identity(train: Job) -> dict[str, Any]:
    """What every checkpoint of ``train`` depends on (not which epochs are saved)."""
    return {k: v for k, v in train.spec.items() if k not in ("kind", "checkpoint_epochs", "checkpoint_every")}


def checkpoint_identity(train: Job, epoch: int) -> dict[str, Any]:
    """What one saved epoch of ``train`` depends on."""
    return {**train_run_identity(train), "epoch": epoch}


def _encode_job(
    study: LoadedStudy, name: str, *, spec: dict[str, Any], enc: str, deps: list[str], target: str
) -> Job:
    return make_job("encode", name, spec=spec, deps=deps, encoder=enc, target=target, **_where(study))


def _shared_jobs(study: LoadedStudy, inputs: StudyInputs, prepare: dict[str, Job]) -> list[Job]:
    """Work every checkpoint shares: dataset features, base-model images and their features."""
    enc_dep = [prepare["encoders"].id] if "encoders" in prepare else []
    ds_dep = [prepare["dataset"].id] if "dataset" in prepare else []
    base_deps = [j.id for key, j in prepare.items() if key in ("model", "dataset")]
    jobs = []
    for enc in needed_kinds(inputs.metrics, inputs.scoring["image_encoders"], reads="reference"):
        spec = {"images": inputs.dataset.images, "encoder": inputs.encoders[enc], "scoring": inputs.scoring}
        jobs.append(
            _encode_job(study, f"dataset-{enc}", spec=spec, enc=enc, deps=ds_dep + enc_dep, target="dataset")
        )
    return jobs + base_jobs(study, inputs, prepare, identity=inputs.model, deps=base_deps)


def base_jobs(
    study: LoadedStudy,
    inputs: StudyInputs,
    prepare: dict[str, Job],
    *,
    identity: str,
    deps: list[str],
    label: str | None = None,
    **params: Any,
) -> list[Job]:
    """A base model's images (the study's model, or eval model ``label``; ``identity``: the
    model's) and their features for the paired metrics: one generate job, then its encodes."""
    from lyco_bench.sweep.axes import base_images_name

    s = study.study
    enc_dep = [prepare["encoders"].id] if "encoders" in prepare else []
    folder = base_images_name(label)
    base_classes = s.prompts.base_classes if s.prompts.base_classes is not None else s.prompts.classes
    base_spec = {"checkpoint": {"model": identity}, **_sampling_spec(study, inputs, base_classes)}
    where = {**_where(study), **params, **({"base_images": folder} if label is not None else {})}
    base_gen = make_job("generate", folder, spec=base_spec, deps=deps, target="base", **where)
    jobs = [base_gen]
    for enc in needed_kinds(inputs.metrics, inputs.scoring["image_encoders"], reads="base"):
        spec = {
            "images": base_gen.id,
            "encoder": inputs.encoders[enc],
            "metrics": inputs.metrics,
            "modes": base_modes(inputs.metrics, enc, inputs.scoring),  # what it encodes in: its identity
        }
        jobs.append(
            make_job("encode", f"{folder}-{enc}", spec=spec, deps=[base_gen.id, *enc_dep], encoder=enc,
                     target="base", **where)
        )  # fmt: skip
    return jobs


def base_modes(metrics: list[str], kind: str, scoring: dict[str, Any]) -> list[str]:
    """The modes in which the requested paired metrics read base images with encoder ``kind``: every
    reference mode when one of them compares those images with the dataset, else the images' own."""
    from lyco_bench.metrics import METRICS, metric_encoders
    from lyco_bench.metrics.encoders import ENCODERS

    if ENCODERS[kind].native:
        return ["native"]
    image_encoders = tuple(scoring["image_encoders"])
    reading = [
        METRICS[n] for n in metrics
        if "base" in METRICS[n].needs and kind in metric_encoders(METRICS[n], image_encoders)
    ]  # fmt: skip
    return list(scoring["modes"]) if any("reference" in m.needs for m in reading) else ["resize"]


def _checkpoint_jobs(
    study: LoadedStudy,
    inputs: StudyInputs,
    train: Job,
    epoch: int,
    *,
    prepare: dict[str, Job],
    shared: list[Job],
    name: str,
    variant: Variant,
    models: dict[str, Any],
    budget: dict[str, Any] | None = None,
) -> list[Job]:
    """[extract →] generate → score (which encodes the checkpoint's images) for one checkpoint of
    ``train``, evaluated as ``name``: its ``variant`` (lyco_bench.sweep.axes); ``models``: each
    eval model's jobs (``axes_plan.EvalModelJobs``); with ``budget``
    (lyco_bench.sweep.trajectory.budget_spec), its trajectory point: the budget's images only."""
    from lyco_bench.metrics import METRICS
    from lyco_bench.metrics.scoring import OUTPUT_VERSION

    s = study.study
    base_deps = [j.id for key, j in prepare.items() if key in ("model", "dataset")]
    where = {"config": train.params["config"], "evaluated": name, "rank": variant.rank, "seed": train.params["seed"],
             "epoch": epoch, **_where(study)} | ({"trajectory": True} if budget else {})  # fmt: skip
    readable = ("traj-" if budget else "") + f"{name}-s{train.params['seed']}-e{epoch:03d}"
    checkpoint = checkpoint_identity(train, epoch) | (
        {"rank": variant.rank} if variant.rank is not None else {}
    )
    jobs, gen_deps = [], [train.id, *base_deps]
    if variant.varies:  # the default variant (and DyLoRA's ranks) keep the params and ids they had
        from lyco_bench.sweep.axes_plan import variant_jobs

        checkpoint, extra, where, gen_deps, shared = variant_jobs(
            study, train, epoch, variant, checkpoint=checkpoint, where=where, deps=gen_deps, shared=shared,
            models=models,
        )  # fmt: skip
        jobs += extra
    classes = budget["classes"] if budget else s.prompts.classes
    gen_spec = {"checkpoint": checkpoint, **_sampling_spec(study, inputs, classes)}
    if budget:
        gen_spec["trajectory"] = {k: budget[k] for k in ("prompts_per_class", "images_per_prompt", "version")}
    if variant.multiplier != 1.0:
        gen_spec["multiplier"] = variant.multiplier
    if variant.model is not None:
        gen_spec["eval_model"] = models[variant.model].identity
    metrics = budget["metrics"] if budget else inputs.metrics
    gen = make_job("generate", readable, spec=gen_spec, deps=gen_deps, target="checkpoint", **where)
    base = next(j for j in shared if j.kind == "generate")
    reads_base = any("base" in METRICS[m].needs for m in metrics)
    score_spec = {
        "images": gen.id,
        "references": inputs.dataset.images,
        "base": base.id if reads_base else None,
        "encoders": inputs.encoders,
        "scoring": inputs.scoring,
        "metrics": metrics,
        "version": OUTPUT_VERSION,
    }
    enc_dep = [prepare["encoders"].id] if "encoders" in prepare else []
    score_deps = [gen.id, *(j.id for j in shared), *enc_dep, *base_deps]
    grid = (
        not budget and train.params["seed"] == s.seeds[0] and epoch == max(s.checkpoint_epochs)
    )  # in the report
    score = make_job("score", readable, spec=score_spec, deps=score_deps, images=s.images, grid=grid, **where)
    return [*jobs, gen, score]


def build_plan(
    study: LoadedStudy,
    store: StudyStore,
    *,
    inputs: StudyInputs | None = None,
    verify_images: bool = False,
    hasher: Any = None,
) -> Plan:
    """Expand a study into its jobs (shared jobs once), ordered so dependencies come first.

    ``inputs``: the study's resolved inputs; computed here when not given, by
    :func:`lyco_bench.sweep.inputs.resolve_inputs` (``verify_images``, ``hasher``), which
    validates the study — BadInput before anything is written — and hashes its dataset.
    """
    prepare = _prepare_jobs(study)
    if inputs is None:
        inputs = resolve_inputs(study, store, prepare=prepare, verify_images=verify_images, hasher=hasher)
    study = pin_model(study, inputs.model)  # workers load the hub commit the ids hashed (params only)
    study = pin_encoders(study, inputs.encoder_pins)  # and the encoders' commits their ids hold
    base_deps = [j.id for key, j in prepare.items() if key in ("model", "dataset")]
    shared = _shared_jobs(study, inputs, prepare)
    class_jobs = _class_jobs(study, inputs, base_deps)
    jobs = [*prepare.values(), *shared, *class_jobs.values()]
    models: dict[str, Any] = {}
    if study.study.eval_models:  # each eval model's base images and their features, shared
        from lyco_bench.sweep.axes_plan import eval_model_jobs

        models = eval_model_jobs(study, inputs, prepare, base_jobs=base_jobs)
        jobs += [j for m in models.values() for j in m.jobs]
    budget = budget_spec(study, inputs.metrics)  # None: no trajectory
    for config in study.configs:
        for seed in study.study.seeds:
            train = _train_job(study, inputs, config, seed, base_deps, class_jobs)
            jobs.append(train)
            for epoch in sorted(study.study.checkpoint_epochs):
                for name, variant in evaluations(study.study, config):
                    jobs += _checkpoint_jobs(
                        study, inputs, train, epoch, prepare=prepare, shared=shared, name=name,
                        variant=variant, models=models,
                    )  # fmt: skip
            for epoch in trajectory_epochs(study):  # the as-trained evaluations only
                for name, variant in evaluations(study.study, config):
                    if not variant.varies:
                        jobs += _checkpoint_jobs(
                            study, inputs, train, epoch, prepare=prepare, shared=shared, name=name,
                            variant=variant, models=models, budget=budget,
                        )  # fmt: skip
    plan = Plan(study=study, store=store, jobs=jobs, inputs=inputs)
    check_adapter_sizes(plan)
    return plan


def check_adapter_sizes(plan: Plan) -> None:
    """BadInput before any job runs when a configuration's rank is impossible for a layer of the
    study's model (built on the meta device: no weights read, nothing allocated)."""
    from lyco_bench.adapters import AdapterModule, AdapterSpec, get_algorithm
    from lyco_bench.adapters.inject import check_sizes, find_targets
    from lyco_bench.sweep.sizing import _meta_models

    models = None
    for config in plan.study.configs:
        spec = AdapterSpec(**plan.inputs.runs[config.name]["adapter"])
        if not issubclass(get_algorithm(spec.algo), AdapterModule):
            continue
        models = models or _meta_models(plan)
        if models is None:
            return  # the model's config is unknown here: the train job checks it
        try:
            check_sizes(find_targets(*models, spec), spec)
        except BadInput as e:
            raise BadInput(f"configuration {config.name}: {e}") from None


def estimate_left(
    plan: Plan, done: set[str], job_seconds: dict[str, float] | None = None
) -> tuple[dict[str, float], bool]:
    """Seconds of work left per kind, and whether any of it comes from recorded durations.

    A kind with no recorded duration costs each job its ``job_seconds`` (the cost model's GPU
    time: lyco_bench.sweep.costs) where given, else the rough per-kind figure."""
    recorded = plan.store.durations_by_kind(done)
    rough = rough_costs(plan.study.study.model)
    job_seconds = job_seconds or {}
    left: dict[str, float] = {}
    measured = False
    for job in plan.jobs:
        if job.id in done:
            continue
        durations = recorded.get(job.kind)
        if durations:
            measured = True
            cost = sum(durations) / len(durations)
        else:
            cost = job_seconds.get(job.id, rough[job.kind] * _image_share(plan, job))
        left[job.kind] = left.get(job.kind, 0.0) + cost
    return left, measured


def _image_share(plan: Plan, job: Job) -> float:
    """A trajectory point's images as a share of a full evaluation's (its rough cost scales so)."""
    if not job.params.get("trajectory") or plan.inputs is None:
        return 1.0
    full = sum(plan.inputs.images_per_class.values())
    return sum(plan.inputs.trajectory_images_per_class.values()) / full if full else 1.0


def study_relpath(store: StudyStore, path: Path) -> str:
    return str(Path(path).resolve().relative_to(store.root))
