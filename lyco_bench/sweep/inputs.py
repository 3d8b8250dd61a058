"""Everything a study's jobs read, validated before any job runs and turned into identities.

``resolve_inputs`` is what ``plan`` and ``run`` do first. It checks everything a later stage would
reject — each configuration's training settings as the trainer resolves them, the sampler, the
encoders and metrics, the prompt set and its expansion against the dataset, the model and
encoders being resolvable (and the model being one training supports) — so that a bad study
fails in one line before anything is written, not after hours of training.

It also returns the **identities** that job ids are made of: the settings as resolved after every
default, a content hash of the dataset (per use: what training reads, what prompts read, what
scoring reads), the prompt set's content, the model's and encoders' weights and preprocessing,
and each stage's output version. A job is valid only while all of these are unchanged.
"""

from __future__ import annotations

import shutil
import tempfile
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lyco_bench.errors import BadInput
from lyco_bench.families import DEFAULT_FAMILY
from lyco_bench.sweep.assets import built_encoders, built_model
from lyco_bench.sweep.hashing import FileHasher
from lyco_bench.sweep.study import LoadedStudy, generated_dataset
from lyco_bench.utils import default_device, stable_hash

# Settings of a run that do not change its checkpoints: where things are and how fast they go.
_RUN_LOCAL_FIELDS = {
    "model", "dataset", "cache_dir", "device", "skip_bad_images", "checkpoint_epochs", "checkpoint_every",
    "class_images",
}  # fmt: skip
# Settings added after job ids existed: at these values they leave a job's identity unchanged.
_LEFT_OUT_AT_DEFAULT = {"base_dtype": "float32", "cache_text_outputs": False}
RUN_HINT_FIELDS = ("gradient_checkpointing",)
"""Run settings that change memory and speed but not a checkpoint's numbers (tested exact):
outside the job id, passed to the worker in the train job's params."""
# Schedules whose lr at a step does not depend on the run's length: a checkpoint at epoch e is the
# same whatever the last epoch is.
LENGTH_FREE_SCHEDULES = ("constant", "constant_with_warmup")


@dataclass(frozen=True)
class DatasetIdentity:
    content: str
    """dataset.yaml, every image's and caption's path and bytes: what training reads."""
    prompts: str
    """dataset.yaml, captions and image paths (not their pixels): what prompt expansion reads."""
    images: str
    """dataset.yaml, image paths and bytes: the reference sets scoring reads."""


@dataclass
class StudyInputs:
    """A study's inputs, resolved and checked (see the module docstring)."""

    model: str
    dataset: DatasetIdentity
    prompts: str
    sampler: dict[str, Any]
    encoders: dict[str, str]
    """Encoder kind → identity, for the kinds some requested metric reads."""
    scoring: dict[str, Any]
    """Encoder settings that change scores besides the weights (modes, image encoders, style categories)."""
    metrics: list[str]
    runs: dict[str, dict[str, Any]]
    """Configuration name → its resolved training settings (what changes a checkpoint)."""
    images_per_class: dict[str, int] = field(default_factory=dict)
    """Images each checkpoint generates, per prompt class."""
    base_images_per_class: dict[str, int] = field(default_factory=dict)
    trajectory_images_per_class: dict[str, int] = field(default_factory=dict)
    """Images each trajectory point generates, per prompt class (empty: no trajectory)."""
    class_prompts: list[str] = field(default_factory=list)
    """The dataset's class prompts (prior preservation), sorted; concepts with a class_images
    folder bring their own images instead."""
    dataset_images: list[tuple[str, int, int]] = field(default_factory=list)
    """(category, width, height) of every dataset image (for the store's size estimate)."""
    hasher: FileHasher = field(default_factory=FileHasher)
    encoder_pins: dict[str, Any] = field(default_factory=dict)
    """``encoders:`` fields naming hub weights, rewritten to the commit their ids hold (``repo@sha``)."""
    family: str = DEFAULT_FAMILY
    """The model's family (lyco_bench.families); a non-default one enters the train and generate
    job ids (``family_identity``), the default adds nothing so that SD1.x ids stay as they were."""


def resolve_inputs(
    study: LoadedStudy,
    store: Any,
    *,
    prepare: dict[str, Any] | None = None,
    verify_images: bool = False,
    hasher: FileHasher | None = None,
) -> StudyInputs:
    """Validate ``study`` against what its stages accept and compute its inputs' identities.

    ``prepare``: the study's asset jobs (``tiny:``/``demo:``) by asset; their ids stand for the
    content they build. ``verify_images``: decode every dataset image (``run``) instead of reading
    headers only (``plan``). BadInput names the study file and the key.
    """
    from lyco_bench.config import validate
    from lyco_bench.generation import SamplerSettings
    from lyco_bench.metrics.features import EncoderSettings

    s, src = study.study, study.source
    prepare = prepare or {}
    hasher = hasher or FileHasher()
    # `auto` precision resolves here, on the machine that plans: job ids hold the one used
    sampler = validate(SamplerSettings, s.sampler, source=f"{src}: sampler").resolved(default_device())
    settings = validate(EncoderSettings, s.encoders, source=f"{src}: encoders")
    metrics = resolve_metrics(s.metrics, source=src)
    kinds = needed_kinds(metrics, settings.image_encoders)
    model, family = _model_identity(s.model, prepare, hasher=hasher, source=src)
    sampler = _family_sampler(sampler, s.sampler, family, source=src)
    _check_cross_attention(study, family)
    encoders, encoder_pins = _encoder_identities(settings, kinds, s.encoders, prepare, source=src)
    runs = {c.name: _run_identity(study, c, store) for c in study.configs}
    with _dataset_folder(s.dataset, src) as dataset_root:
        dataset = _load_dataset(dataset_root, study, verify=verify_images)
        if generated_dataset(s.dataset):
            token = f"prepare:{prepare['dataset'].id}"
            dataset_id = DatasetIdentity(token, token, token)
        else:
            dataset_id = dataset_identity(dataset, hasher)
        prompt_id, counts, base_counts, styles = _prompt_identity(study, dataset)
        trajectory_counts = _trajectory_counts(study, dataset)
        class_prompts = _class_prompts(study, dataset, runs)
    return StudyInputs(
        model=model,
        family=family,
        dataset=dataset_id,
        prompts=prompt_id,
        sampler=sampler.model_dump(mode="json"),
        encoders=encoders,
        encoder_pins=encoder_pins,
        scoring={
            "modes": list(settings.modes),
            "image_encoders": list(settings.image_encoders),
            # Resolved here so that encoding the dataset and scoring agree on them.
            "style_categories": sorted(
                styles if settings.style_categories is None else settings.style_categories
            ),
            # The evaluation profile changes features and rows; the default adds no key, so that
            # the ids of studies written before profiles existed stay as they were.
            **({"profile": settings.profile} if settings.profile != "lyco" else {}),
        },
        metrics=metrics,
        runs=runs,
        images_per_class=counts,
        base_images_per_class=base_counts,
        trajectory_images_per_class=trajectory_counts,
        dataset_images=[(c.category, i.width, i.height) for c, i in dataset.items()],
        class_prompts=class_prompts,
        hasher=hasher,
    )


def resolve_metrics(names: list[str] | None, *, source: str) -> list[str]:
    """The metric names a study asks for (None: the registry's defaults but the experimental
    ones), in registry order."""
    from lyco_bench.metrics import METRICS

    if names is None:
        return [n for n, m in METRICS.items() if m.default and not m.experimental]
    unknown = [n for n in names if n not in METRICS]
    if unknown:
        raise BadInput(f"{source}: metrics: unknown metric {unknown[0]!r} (known: {', '.join(METRICS)})")
    return [n for n in METRICS if n in names]


def needed_kinds(
    metrics: list[str], image_encoders: tuple[str, ...], *, reads: str | None = None
) -> list[str]:
    """Encoder kinds the metrics read (from ``reads``: reference | base | generated; None: any)."""
    from lyco_bench.metrics import METRICS, metric_encoders
    from lyco_bench.metrics.encoders import ENCODERS

    kinds: set[str] = set()
    for name in metrics:
        metric = METRICS[name]
        if reads is None or reads in metric.needs:
            kinds.update(metric_encoders(metric, tuple(image_encoders)))
    return [k for k in ENCODERS if k in kinds]


def dataset_identity(dataset: Any, hasher: FileHasher) -> DatasetIdentity:
    """Content hashes of a loaded dataset (:class:`DatasetIdentity`)."""
    root = Path(dataset.root)
    spec = hasher(root / "dataset.yaml")
    images, captions = [], []
    for _, item in dataset.items():
        path = Path(item.path)
        rel = path.relative_to(root).as_posix()
        images.append((rel, hasher(path)))
        caption = path.with_suffix(".txt")
        captions.append((rel, hasher(caption) if caption.is_file() else ""))
    return DatasetIdentity(
        content=stable_hash({"spec": spec, "images": images, "captions": captions}, length=16),
        prompts=stable_hash(
            {"spec": spec, "images": [r for r, _ in images], "captions": captions}, length=16
        ),
        images=stable_hash({"spec": spec, "images": images}, length=16),
    )


def run_identity(run: dict[str, Any]) -> dict[str, Any]:
    """A resolved RunConfig (as JSON) without what does not change its checkpoints.

    Memory settings at their defaults are left out (the ids made before they existed stay);
    gradient checkpointing recomputes the same numbers, so it is held at false here and handed
    to the worker outside the id (:data:`RUN_HINT_FIELDS`, the train job's params).
    """
    out = {k: v for k, v in run.items() if k not in _RUN_LOCAL_FIELDS}
    if run.get("lr_scheduler") in LENGTH_FREE_SCHEDULES:
        out.pop("epochs", None)
    for key, default in _LEFT_OUT_AT_DEFAULT.items():
        if out.get(key, default) == default:
            out.pop(key, None)
    for key in RUN_HINT_FIELDS:
        if key in out:
            out[key] = False
    return out


# --- pieces --------------------------------------------------------------------------------


def _model_identity(
    value: str, prepare: dict[str, Any], *, hasher: FileHasher, source: str
) -> tuple[str, str]:
    """(identity, model family) of the study's model."""
    from lyco_bench.sweep.sources import resolve_model

    if (built := built_model(value)) is not None:  # built by its prepare job: the job's id names it
        return f"prepare:{prepare['model'].id}", built[1].family_of(value[len(built[0].prefix) :])
    try:
        resolved = resolve_model(value, hasher=hasher)
    except BadInput as exc:
        raise BadInput(f"{source}: {exc}") from None
    return resolved.identity, resolved.family


def _family_sampler(sampler: Any, written: dict[str, Any], family: str, *, source: str) -> Any:
    """The sampler settings with the model family's evaluation sampler where the study names none
    (lyco_bench.families: ``eval_sampler``; DDIM, the default, for SD1.x and SDXL), checked
    against the samplers the family has."""
    from lyco_bench.families import get_family

    fam = get_family(family)
    if "sampler" not in written and sampler.sampler != fam.eval_sampler:
        sampler = sampler.model_copy(update={"sampler": fam.eval_sampler})
    if sampler.sampler not in fam.samplers:
        raise BadInput(
            f"{source}: sampler.sampler: {sampler.sampler!r} is not a sampler of the {family} family "
            f"({', '.join(fam.samplers)})"
        )
    return sampler


def _check_cross_attention(study: LoadedStudy, family: str) -> None:
    """BadInput naming the configuration whose method needs the denoiser's cross-attention when
    the model's family has none (FLUX: hypernetworks)."""
    from lyco_bench.adapters import get_algorithm
    from lyco_bench.families import get_family

    if get_family(family).cross_attention:
        return
    for config in study.configs:
        cls = get_algorithm(str(config.adapter.get("algo", "lora")))
        if getattr(cls, "needs_cross_attention", False):
            raise BadInput(
                f"{study.source}: {config.key_path}: {cls.algo} transforms the denoiser's "
                f"cross-attention, which the {family} family does not have"
            )


def _encoder_identities(
    settings: Any, kinds: list[str], fields: dict[str, Any], prepare: dict[str, Any], *, source: str
) -> tuple[dict[str, str], dict[str, Any]]:
    """Kind → the id the feature cache keys on (weights' content + preprocessing version), and the
    fields naming hub weights pinned to the commit those ids hold (what workers then load)."""
    from lyco_bench.metrics.encoders import ENCODERS
    from lyco_bench.metrics.features import EncoderPool

    built = built_encoders(fields)
    tiny = built[2] if built is not None else []
    if tiny:
        # Built encoders do not exist until their prepare job builds them: its id names them.
        token = f"{built[0].name}@{prepare['encoders'].id}"
        settings = settings.model_copy(update={k: f"{token}/{k}" for k in tiny})
    pins: dict[str, Any] = {}
    for kind in kinds:
        if ENCODERS[kind].weights_field not in tiny:
            pin = ENCODERS[kind].pin or ENCODERS[kind].check_source
            try:
                pins.update(pin(settings) or {})
            except BadInput as exc:
                raise BadInput(f"{source}: {exc}") from None
    pool = EncoderPool(settings.model_copy(update=pins))
    return {kind: pool.id(kind) for kind in kinds}, pins


def _run_identity(study: LoadedStudy, config: Any, store: Any) -> dict[str, Any]:
    """The configuration's RunConfig as the trainer resolves it (BadInput naming the config)."""
    from lyco_bench.sweep.assets import run_config_for_settings

    try:
        run = run_config_for_settings(study.study, config, seed=study.study.seeds[0], store=store)
    except BadInput as exc:
        raise BadInput(f"{study.source}: {config.key_path}: {exc}") from None
    data = run.model_dump(mode="json")
    data.pop("seed")  # the train job adds its own seed
    _check_eval_ranks(study, config, run.adapter)
    return data


def _check_eval_ranks(study: LoadedStudy, config: Any, adapter: Any) -> None:
    """Evaluation ranks need an algorithm whose factors are ordered by rank, and ranks ≤ its dim."""
    from lyco_bench.adapters import get_algorithm

    if not config.eval_ranks:
        return
    where = f"{study.source}: {config.key_path}: eval_ranks"
    cls = get_algorithm(adapter.algo)
    if not cls.truncates():
        raise BadInput(f"{where}: {adapter.algo} factors are not ordered by rank; they cannot be truncated")
    dim = adapter.options.get("dim")
    if dim is not None and max(config.eval_ranks) > dim:
        raise BadInput(f"{where}: rank {max(config.eval_ranks)} is above the trained rank {dim}")


@contextmanager
def _dataset_folder(value: str, source: str):
    """The dataset folder to check prompts against; ``demo:``/``world:`` are drawn into a temporary
    folder."""
    from lyco_bench.sweep.study import draw_generated_dataset

    if not generated_dataset(value):
        yield Path(value)
        return
    tmp = Path(tempfile.mkdtemp(prefix="lyco-bench-demo-"))
    try:
        yield draw_generated_dataset(value, tmp / "dataset")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _load_dataset(root: Path, study: LoadedStudy, *, verify: bool) -> Any:
    from lyco_bench.data import load_dataset

    s = study.study
    if not root.is_dir():
        raise BadInput(f"{study.source}: dataset: {s.dataset}: no such dataset folder")
    skip = bool(s.training.get("skip_bad_images", False))
    try:
        return load_dataset(root, skip_bad_images=skip, verify_images=verify)
    except BadInput as exc:
        raise BadInput(f"{study.source}: dataset: {exc}") from None


def _class_prompts(study: LoadedStudy, dataset: Any, runs: dict[str, dict[str, Any]]) -> list[str]:
    """Class prompts for prior preservation; BadInput when a configuration asks for it and a
    concept has neither a class prompt nor a class_images folder."""
    prompts = sorted({c.class_prompt for c in dataset.concepts if c.class_images is None and c.class_prompt})
    asking = [name for name, run in runs.items() if run.get("prior_loss_weight", 0) > 0]
    missing = [c.key for c in dataset.concepts if c.class_images is None and not c.class_prompt]
    if asking and missing:
        config = next(c for c in study.configs if c.name == asking[0])
        raise BadInput(
            f"{study.source}: {config.key_path}: prior preservation needs a class_prompt (or a "
            f"class_images folder) for concept {missing[0]} in dataset.yaml"
        )
    return prompts


def prompt_set_identity(prompt_set: Any) -> str:
    """A prompt set's content (template files read in), without where it was read from."""
    return stable_hash(prompt_set.model_dump(mode="json", exclude={"source", "description"}), length=16)


def _trajectory_counts(study: LoadedStudy, dataset: Any) -> dict[str, int]:
    """Images per prompt class of a trajectory point (lyco_bench.sweep.trajectory), for the costs."""
    from lyco_bench.prompts import budget_items, expand_prompts, load_prompt_set
    from lyco_bench.sweep.trajectory import budget_spec

    budget = budget_spec(study, [])
    if budget is None:
        return {}
    s = study.study
    items = expand_prompts(load_prompt_set(s.prompts.set), dataset, classes=budget["classes"],
                           images_per_prompt=s.prompts.images_per_prompt, caption_strategy=s.captions)  # fmt: skip
    items = budget_items(items, prompts_per_class=budget["prompts_per_class"],
                         images_per_prompt=budget["images_per_prompt"])  # fmt: skip
    return dict(Counter(item.prompt_class for item in items))


def _prompt_identity(
    study: LoadedStudy, dataset: Any
) -> tuple[str, dict[str, int], dict[str, int], list[str]]:
    """The prompt set's identity, images per class for a checkpoint and for the base model, and
    the dataset categories the set treats as styles."""
    from lyco_bench.prompts import expand_prompts, load_prompt_set

    s = study.study
    try:
        prompt_set = load_prompt_set(s.prompts.set)
        counts = []
        base_classes = s.prompts.base_classes if s.prompts.base_classes is not None else s.prompts.classes
        for classes in (s.prompts.classes, base_classes):
            items = expand_prompts(
                prompt_set,
                dataset,
                classes=classes,
                images_per_prompt=s.prompts.images_per_prompt,
                caption_strategy=s.captions,
            )
            counts.append(dict(Counter(item.prompt_class for item in items)))
        styles = [c for c in dataset.categories if prompt_set.category(c).is_style]
    except BadInput as exc:
        raise BadInput(f"{study.source}: prompts: {exc}") from None
    return prompt_set_identity(prompt_set), counts[0], counts[1], styles
