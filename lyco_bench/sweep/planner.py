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
    kind: str, name: str, spec: dict[str, Any], *, deps: list[str] | None = None, **params: Any
) -> Job:
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
        jobs["model"] = make_job("prepare", "tiny-model", {"asset": "model", "value": s.model})
    if s.dataset.startswith(DEMO_PREFIX):
        jobs["dataset"] = make_job("prepare", "demo-dataset", {"asset": "dataset", "value": s.dataset})
    if any(isinstance(v, str) and v.startswith(TINY_PREFIX) for v in s.encoders.values()):
        jobs["encoders"] = make_job("prepare", "tiny-encoders", {"asset": "encoders", "value": s.encoders})
    return jobs


def _sample_spec(study: LoadedStudy, classes: list[str] | None) -> dict[str, Any]:
    s = study.study
    return {
        "model": s.model,
        "dataset": s.dataset,
        "prompt_set": s.prompts.set,
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
    return make_job("train", f"{config.name}-s{seed}", spec, deps=deps, config=config.name, seed=seed)


def _score_deps(gen: Job, encodes: list[Job], shared: list[str]) -> list[str]:
    return [gen.id, *(job.id for job in encodes), *shared]


def build_plan(study: LoadedStudy, store: StudyStore) -> Plan:
    """Expand a study into its jobs (shared jobs once), ordered so dependencies come first."""
    s = study.study
    prepare = _prepare_jobs(study)
    encoders = _encoder_names(study, "generated")
    metrics = s.metrics
    base_deps = [j.id for key, j in prepare.items() if key in ("model", "dataset")]
    enc_dep = [prepare["encoders"].id] if "encoders" in prepare else []
    ds_dep = [prepare["dataset"].id] if "dataset" in prepare else []
    jobs: list[Job] = list(prepare.values())

    # Shared work: dataset features per encoder, and the base model's images + their features.
    dataset_encodes = [
        make_job(
            "encode",
            f"dataset-{enc}",
            {"images": "dataset", "dataset": s.dataset, "encoder": enc, "encoders": s.encoders},
            deps=ds_dep + enc_dep,
            encoder=enc,
            target="dataset",
        )
        for enc in _encoder_names(study, "reference")
    ]
    base_classes = s.prompts.base_classes if s.prompts.base_classes is not None else s.prompts.classes
    base_gen = make_job("generate", "base", _sample_spec(study, base_classes), deps=base_deps, target="base")
    base_encodes = [
        make_job(
            "encode",
            f"base-{enc}",
            {"images": base_gen.id, "encoder": enc, "encoders": s.encoders},
            deps=[base_gen.id, *enc_dep],
            encoder=enc,
            target="base",
        )
        for enc in _encoder_names(study, "base")
    ]
    jobs += dataset_encodes + [base_gen] + base_encodes
    shared_score_deps = [j.id for j in dataset_encodes + base_encodes] + [base_gen.id]

    for config in study.configs:
        for seed in s.seeds:
            train = _train_job(study, config, seed, base_deps)
            jobs.append(train)
            for epoch in sorted(s.checkpoint_epochs):
                where = {"config": config.name, "seed": seed, "epoch": epoch}
                readable = f"{config.name}-s{seed}-e{epoch:03d}"
                gen = make_job(
                    "generate",
                    readable,
                    {"train": train.id, "epoch": epoch, **_sample_spec(study, s.prompts.classes)},
                    deps=[train.id, *base_deps],
                    target="checkpoint",
                    **where,
                )
                encodes = [
                    make_job(
                        "encode",
                        f"{readable}-{enc}",
                        {"images": gen.id, "encoder": enc, "encoders": s.encoders},
                        deps=[gen.id, *enc_dep],
                        encoder=enc,
                        target="checkpoint",
                        **where,
                    )
                    for enc in encoders
                ]
                score = make_job(
                    "score",
                    readable,
                    {"images": gen.id, "metrics": metrics, "encoders": s.encoders, "dataset": s.dataset},
                    deps=_score_deps(gen, encodes, shared_score_deps) + ds_dep,
                    **where,
                )
                jobs += [gen, *encodes, score]
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
