"""Planning: a study → a graph of jobs with deterministic ids.

Kinds (DESIGN.md data flow):

    prepare   build a tiny model / the demo dataset / tiny encoders into the store (only for
              ``tiny:`` / ``demo:`` studies)
    train     (configuration, seed) → one adapter file per checkpoint epoch
    generate  (checkpoint | base model) → images + manifest for the study's prompt classes
    encode    (image set, encoder) → features in the shared, content-addressed cache
    score     checkpoint → metric rows (parquet)

A job id is ``<kind>-<readable>-<hash>`` where the hash covers the job's ``spec``: the settings
as the user wrote them (after the study's cascade) plus the ids of the jobs it depends on, so a
change anywhere upstream changes every id downstream, and adding a configuration adds jobs
without touching the ids of the others. Absolute paths never enter a spec (a study moved to
another store keeps its ids). Work shared by many checkpoints — base-model images, dataset
features — is one job.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lyco_bench.sweep.store import StudyStore
from lyco_bench.sweep.study import DEMO_PREFIX, TINY_PREFIX, LoadedStudy, ResolvedConfig
from lyco_bench.utils import stable_hash

KINDS = ("prepare", "train", "generate", "encode", "score")

# Rough seconds per job on one GPU for a paper-sized study, used for the estimate of the work left
# until the store has recorded durations of its own.
ROUGH_COST_S = {"prepare": 30.0, "train": 3 * 3600.0, "generate": 1800.0, "encode": 120.0, "score": 30.0}
# The same for a ``tiny:`` model on a laptop CPU (measured on the demo study, 2 cores).
TINY_COST_S = {"prepare": 5.0, "train": 10.0, "generate": 3.0, "encode": 1.0, "score": 2.0}


@dataclass(frozen=True)
class Job:
    """One unit of work. ``spec`` is hashed into the id; ``params`` only tell a worker where things are."""

    id: str
    kind: str
    name: str
    spec: dict[str, Any]
    deps: tuple[str, ...] = ()
    params: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "name": self.name,
            "spec": self.spec,
            "deps": list(self.deps),
            "params": self.params,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Job:
        return cls(
            id=data["id"],
            kind=data["kind"],
            name=data["name"],
            spec=data["spec"],
            deps=tuple(data["deps"]),
            params=data["params"],
        )


def make_job(
    kind: str, name: str, *, spec: dict[str, Any], deps: list[str] | None = None, **params: Any
) -> Job:
    """A job whose id hashes ``spec`` and ``deps``; ``params`` (not hashed) locate its files."""
    deps = sorted(set(deps or []))
    full_spec = {"kind": kind, **spec, "deps": deps}
    return Job(
        id=f"{kind}-{name}-{stable_hash(full_spec)}",
        kind=kind,
        name=name,
        spec=full_spec,
        deps=tuple(deps),
        params=params,
    )


@dataclass
class Plan:
    """Jobs in a valid execution order (every job after its dependencies)."""

    study: LoadedStudy
    store: StudyStore
    jobs: list[Job]

    def by_id(self) -> dict[str, Job]:
        return {job.id: job for job in self.jobs}

    def of_kind(self, kind: str) -> list[Job]:
        return [job for job in self.jobs if job.kind == kind]

    def done_ids(self) -> set[str]:
        """Jobs whose done marker exists and whose outputs are intact."""
        present = self.store.marker_ids()
        return {job.id for job in self.jobs if job.id in present and self.store.is_done(job.id)}


def _encoder_names(study: LoadedStudy, images: str) -> list[str]:
    from lyco_bench.sweep.stages import needed_encoders

    return needed_encoders(study.study, images)


def _prepare_jobs(study: LoadedStudy) -> dict[str, Job]:
    """Asset jobs for ``tiny:`` models/encoders and ``demo:`` datasets, keyed by what they make."""
    s = study.study
    jobs: dict[str, Job] = {}
    if s.model.startswith(TINY_PREFIX):
        jobs["model"] = make_job("prepare", "tiny-model", spec={"asset": "model", "value": s.model})
    if s.dataset.startswith(DEMO_PREFIX):
        jobs["dataset"] = make_job("prepare", "demo-dataset", spec={"asset": "dataset", "value": s.dataset})
    if any(isinstance(v, str) and v.startswith(TINY_PREFIX) for v in s.encoders.values()):
        jobs["encoders"] = make_job(
            "prepare", "tiny-encoders", spec={"asset": "encoders", "value": s.encoders}
        )
    return jobs


def _sample_spec(study: LoadedStudy, classes: list[str] | None) -> dict[str, Any]:
    s = study.study
    return {
        "model": s.model,
        "dataset": s.dataset,
        "prompt_set": s.prompts.set,
        "captions": s.captions,  # <train> prompts are the captions the model was trained on
        "classes": classes,
        "images_per_prompt": s.prompts.images_per_prompt,
        "sampler": s.sampler,
    }


def _train_job(study: LoadedStudy, config: ResolvedConfig, seed: int, deps: list[str]) -> Job:
    s = study.study
    spec = {
        "config": config.name,
        "model": s.model,
        "dataset": s.dataset,
        "captions": s.captions,
        "adapter": config.adapter,
        "training": config.training,
        "seed": seed,
        "checkpoint_epochs": sorted(s.checkpoint_epochs),
    }
    return make_job("train", f"{config.name}-s{seed}", spec=spec, deps=deps, config=config.name, seed=seed)


def _encode_job(
    name: str, *, images: str, enc: str, study: LoadedStudy, deps: list[str], **params: Any
) -> Job:
    spec = {"images": images, "encoder": enc, "encoders": study.study.encoders}
    if images == "dataset":
        spec["dataset"] = study.study.dataset
    return make_job("encode", name, spec=spec, deps=deps, encoder=enc, **params)


def _shared_jobs(study: LoadedStudy, prepare: dict[str, Job]) -> list[Job]:
    """Work every checkpoint shares: dataset features, base-model images and their features."""
    s = study.study
    enc_dep = [prepare["encoders"].id] if "encoders" in prepare else []
    ds_dep = [prepare["dataset"].id] if "dataset" in prepare else []
    base_deps = [j.id for key, j in prepare.items() if key in ("model", "dataset")]
    dataset_encodes = [
        _encode_job(
            f"dataset-{enc}", images="dataset", enc=enc, study=study, deps=ds_dep + enc_dep, target="dataset"
        )
        for enc in _encoder_names(study, "reference")
    ]
    base_classes = s.prompts.base_classes if s.prompts.base_classes is not None else s.prompts.classes
    base_gen = make_job(
        "generate", "base", spec=_sample_spec(study, base_classes), deps=base_deps, target="base"
    )
    base_encodes = [
        _encode_job(
            f"base-{enc}",
            images=base_gen.id,
            enc=enc,
            study=study,
            deps=[base_gen.id, *enc_dep],
            target="base",
        )
        for enc in _encoder_names(study, "base")
    ]
    return [*dataset_encodes, base_gen, *base_encodes]


def _checkpoint_jobs(
    study: LoadedStudy, train: Job, epoch: int, *, prepare: dict[str, Job], shared: list[Job]
) -> list[Job]:
    """generate → encode (per encoder) → score for one checkpoint of ``train``."""
    s = study.study
    enc_dep = [prepare["encoders"].id] if "encoders" in prepare else []
    base_deps = [j.id for key, j in prepare.items() if key in ("model", "dataset")]
    where = {"config": train.params["config"], "seed": train.params["seed"], "epoch": epoch}
    readable = f"{where['config']}-s{where['seed']}-e{epoch:03d}"
    gen_spec = {"train": train.id, "epoch": epoch, **_sample_spec(study, s.prompts.classes)}
    gen = make_job(
        "generate", readable, spec=gen_spec, deps=[train.id, *base_deps], target="checkpoint", **where
    )
    encodes = [
        _encode_job(f"{readable}-{enc}", images=gen.id, enc=enc, study=study, deps=[gen.id, *enc_dep],
                    target="checkpoint", **where)
        for enc in _encoder_names(study, "generated")
    ]  # fmt: skip
    score_spec = {"images": gen.id, "metrics": s.metrics, "encoders": s.encoders, "dataset": s.dataset}
    score_deps = [gen.id, *(j.id for j in encodes + shared), *base_deps]
    score = make_job("score", readable, spec=score_spec, deps=score_deps, **where)
    return [gen, *encodes, score]


def build_plan(study: LoadedStudy, store: StudyStore) -> Plan:
    """Expand a study into its jobs (shared jobs once), ordered so dependencies come first."""
    prepare = _prepare_jobs(study)
    base_deps = [j.id for key, j in prepare.items() if key in ("model", "dataset")]
    shared = _shared_jobs(study, prepare)
    jobs = [*prepare.values(), *shared]
    for config in study.configs:
        for seed in study.study.seeds:
            train = _train_job(study, config, seed, base_deps)
            jobs.append(train)
            for epoch in sorted(study.study.checkpoint_epochs):
                jobs += _checkpoint_jobs(study, train, epoch, prepare=prepare, shared=shared)
    return Plan(study=study, store=store, jobs=jobs)


def estimate_left(plan: Plan, done: set[str]) -> tuple[dict[str, float], bool]:
    """Seconds of work left per kind, and whether any of it comes from recorded durations."""
    recorded = plan.store.durations_by_kind(done)
    rough = TINY_COST_S if plan.study.study.model.startswith(TINY_PREFIX) else ROUGH_COST_S
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
            cost = rough[job.kind]
        left[job.kind] = left.get(job.kind, 0.0) + cost
    return left, measured


def study_relpath(store: StudyStore, path: Path) -> str:
    return str(Path(path).resolve().relative_to(store.root))
