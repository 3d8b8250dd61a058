"""A study: one YAML file naming the model, data, prompts, metrics and the configurations to sweep.

A study lists per-algorithm defaults and the one-at-a-time variations of docs/protocol.md §3; every
configuration gets a name (``1001-lora8a4`` in experiments/paper.yaml). Settings cascade:

    study.training  <  algorithms.<block>.training  <  algorithms.<block>.variations.<name>.training
        <  a ``training.*`` override on the command line (it applies to every configuration)
    algorithms.<block>.adapter  <  algorithms.<block>.variations.<name>.adapter

Blocks that belong to other stages (``adapter``, ``training``, ``sampler``, ``encoders``) are
kept as plain mappings here and validated by those stages' own config classes in
:func:`validate_stage_settings`, so planning stays cheap and a job's hash depends only on what
the user wrote, not on another stage's defaults.
"""

from __future__ import annotations

import copy
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, field_validator, model_validator

from lyco_bench.config import StrictModel, load_config
from lyco_bench.errors import BadInput

if TYPE_CHECKING:
    from lyco_bench.analysis.choices import ReportChoices

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
TINY_PREFIX = "tiny:"
WORLD_PREFIX = "world:"
"""The CPU world (lyco_bench.world): its shipped base model and evaluators (its drawn dataset is a
generated dataset: lyco_bench.data.generated)."""


def _check_name(value: str, what: str) -> str:
    if not NAME_RE.match(value):
        raise ValueError(f"{what} {value!r} must be letters, digits, '.', '_' or '-' (it names a folder)")
    return value


class Variation(StrictModel):
    """One configuration: what differs from its algorithm block's defaults."""

    adapter: dict[str, Any] = Field(default_factory=dict)
    """Adapter settings overriding the block's (AdapterSpec fields: dim, alpha, factor, preset, …)."""
    training: dict[str, Any] = Field(default_factory=dict)
    """Training settings overriding the block's and the study's (lr, …)."""
    eval_ranks: list[int] | None = None
    """Ranks to evaluate the trained adapter at (its first r rank components, e.g. DyLoRA's), each
    a configuration of its own on the leaderboard (``<name>-r<rank>``); None: the block's."""
    description: str = ""


class AlgorithmBlock(StrictModel):
    """Defaults for one algorithm and its named configurations."""

    adapter: dict[str, Any] = Field(default_factory=dict)
    """AdapterSpec fields; ``algo`` defaults to the block's key."""
    training: dict[str, Any] = Field(default_factory=dict)
    default: str | None = None
    """Name of the configuration that uses the block's defaults unchanged (None: no such config)."""
    variations: dict[str, Variation] = Field(default_factory=dict)
    """Named configurations, each a change from the defaults."""
    eval_ranks: list[int] = Field(default_factory=list)
    """Ranks to evaluate each trained adapter at (empty: as trained); see Variation.eval_ranks."""

    @field_validator("eval_ranks")
    @classmethod
    def _ranks(cls, value: list[int]) -> list[int]:
        if any(r < 1 for r in value) or len(set(value)) != len(value):
            raise ValueError("ranks must be unique and ≥ 1")
        return sorted(value)

    @field_validator("default")
    @classmethod
    def _default_name(cls, value: str | None) -> str | None:
        return None if value is None else _check_name(value, "configuration name")

    @field_validator("variations")
    @classmethod
    def _variation_names(cls, value: dict[str, Variation]) -> dict[str, Variation]:
        for name in value:
            _check_name(name, "configuration name")
        return value


class PromptsSpec(StrictModel):
    """What is generated for each checkpoint (docs/protocol.md §4)."""

    set: str = "default"
    """Prompt set: a name under prompts/ or a path to a YAML file."""
    classes: list[str] | None = None
    """Prompt classes generated per checkpoint (None: every class of the set)."""
    base_classes: list[str] | None = None
    """Prompt classes generated once with the base model (None: the same as ``classes``)."""
    images_per_prompt: int | None = Field(default=None, ge=1)
    """Images per prompt (None: the prompt set's own counts)."""


class ContrastSpec(StrictModel):
    """A paired comparison for comparison.csv: ``config`` minus ``vs``, paired by seed, concept and
    prompt (e.g. an algorithm's attention-only variation against its default, or a configuration's
    last epoch against its first)."""

    config: str
    vs: str
    epoch: int | None = None
    """The epoch of ``config`` (None: each of its checkpoint epochs)."""
    vs_epoch: int | None = None
    """The epoch of ``vs`` (None: the same epoch as ``config``)."""


class PanelSpec(StrictModel):
    """A trade-off panel: metric ``y`` against metric ``x``."""

    y: str
    x: str


class AnalysisSettings(StrictModel):
    """The analysis stage's settings (``lyco_bench.analysis``); None keeps the analysis default.
    None of them enters a job's identity: the analysis and the report are rewritten on every run."""

    exclude_configs: list[str | int] = Field(default_factory=list)
    """Configurations left out of everything (full names or their numbers)."""
    shap_exclude_configs: list[str | int] = Field(default_factory=list)
    """Configurations also left out of the CatBoost/SHAP fits."""
    reference: str | None = None
    """The configuration every other is compared with (comparison.csv); None: the first."""
    contrasts: list[ContrastSpec] = Field(default_factory=list)
    """More paired comparisons for comparison.csv (each with its CI, p-value and Holm correction)."""
    bootstrap_resamples: int | None = Field(default=None, ge=100)
    bootstrap_seed: int | None = None
    shap_refits: int | None = Field(default=None, ge=0)
    """CatBoost refits on bootstrap resamples per metric, for the SHAP level intervals."""
    target_half_width: float | dict[str, float] | None = None
    """The CI half-width sample_size.csv sizes images for (a number, or per metric name/label)."""
    headline: list[str] | None = Field(default=None, min_length=1)
    """Headline metrics (fitted by SHAP, sized in sample_size.csv, the leaderboard's columns and
    mean rank), each in the variant it declares; None: those the metrics declare (``Report``)."""
    pareto: list[str] | None = Field(default=None, min_length=2)
    """The leaderboard's Pareto axes (metric names); None: those the metrics declare."""
    panels: list[PanelSpec] | None = None
    """The trade-off figures' panels, left to right; None: those the metrics declare."""

    def choices(self) -> ReportChoices:
        """The reporting choices: the metric registry's declarations with these overrides
        (``lyco_bench.analysis.choices.ReportChoices``); BadInput names an unknown metric's field."""
        from lyco_bench.analysis.choices import report_choices

        panels = None if self.panels is None else [(p.y, p.x) for p in self.panels]
        return report_choices(headline=self.headline, pareto=self.pareto, panels=panels)


class Study(StrictModel):
    """A whole sweep (experiments/*.yaml)."""

    name: str
    description: str = ""
    model: str
    """Hub id, diffusers folder, single .safetensors file, ``tiny:`` (built into the store) or
    ``world:`` (the CPU world's pretrained base model, shipped with lyco-bench)."""
    dataset: str
    """Dataset folder, or ``demo:`` / ``world:`` (a drawn dataset, built into the store)."""
    captions: str = "tags"
    """Caption strategy: tags | trigger | all-tags (docs/protocol.md §2)."""
    prompts: PromptsSpec = Field(default_factory=PromptsSpec)
    sampler: dict[str, Any] = Field(default_factory=dict)
    """SamplerSettings fields (sampler, steps, cfg, width, height, seed_base, batch_size)."""
    encoders: dict[str, Any] = Field(default_factory=dict)
    """EncoderSettings fields (which DINOv2 / CLIP / VGG weights, ``tiny:`` for tiny random ones)."""
    metrics: list[str] | None = None
    """Metric names to compute (None: every non-experimental metric)."""
    seeds: list[int] = Field(min_length=1)
    checkpoint_epochs: list[int] = Field(min_length=1)
    training: dict[str, Any] = Field(default_factory=dict)
    """RunConfig fields shared by every configuration (batch size, resolution, lr schedule, …)."""
    algorithms: dict[str, AlgorithmBlock] = Field(min_length=1)
    analysis: AnalysisSettings = Field(default_factory=AnalysisSettings)
    """Settings passed to the analysis stage (exclusions, reference, bootstrap)."""
    max_retries: int = Field(default=1, ge=0)
    """How often a failed job is tried again before the run gives up on it."""
    images: Literal["keep", "grids", "none"] = "keep"
    """Generated images kept once a checkpoint is scored: ``keep`` all (as the paper did), only the
    report's ``grids`` (first seed, last epoch, 8 per prompt class), or ``none``. Features and
    scores stay; a checkpoint whose score goes stale regenerates what it lacks."""

    @field_validator("name")
    @classmethod
    def _study_name(cls, value: str) -> str:
        return _check_name(value, "study name")

    @field_validator("seeds", "checkpoint_epochs")
    @classmethod
    def _unique_sorted(cls, value: list[int]) -> list[int]:
        if len(set(value)) != len(value):
            raise ValueError("values must be unique")
        if any(v < 0 for v in value):
            raise ValueError("values must be ≥ 0")
        return value

    @model_validator(mode="after")
    def _unique_config_names(self) -> Study:
        seen: dict[str, str] = {}
        for block_name, block in self.algorithms.items():
            names = ([block.default] if block.default else []) + list(block.variations)
            for name in names:
                if name in seen:
                    raise ValueError(
                        f"configuration {name!r} defined in both {seen[name]!r} and {block_name!r}"
                    )
                seen[name] = block_name
        if not seen:
            raise ValueError("no configurations: give each algorithm block a `default` or `variations`")
        return self


@dataclass(frozen=True)
class ResolvedConfig:
    """One configuration with every cascade applied: what a train job needs besides the seed."""

    name: str
    block: str
    adapter: dict[str, Any]
    training: dict[str, Any]
    key_path: str = ""
    """Where it was defined in the YAML (for error messages)."""
    description: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    eval_ranks: tuple[int, ...] = ()
    """Ranks it is evaluated at (empty: as trained)."""

    def evaluations(self) -> list[tuple[str, int | None]]:
        """(name on the leaderboard, rank or None) of each evaluation of this configuration."""
        if not self.eval_ranks:
            return [(self.name, None)]
        return [(f"{self.name}-r{r}", r) for r in self.eval_ranks]


def deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """``base`` updated by ``update``, recursing into nested mappings; inputs are not modified."""
    out = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def forced_training(overrides: list[str]) -> dict[str, Any]:
    """The study-level ``training.*`` overrides, which apply to every configuration over the
    values its algorithm block and variation set (else ``training.lr=…`` would be shadowed by
    every block's own lr, and do nothing)."""
    from lyco_bench.config import apply_overrides

    training = [o for o in overrides if o.split("=", 1)[0].strip().startswith("training.")]
    return apply_overrides({}, training).get("training", {}) if training else {}


def resolve_configs(study: Study, *, forced: dict[str, Any] | None = None) -> list[ResolvedConfig]:
    """Every configuration of the study, in YAML order (block by block, default first); ``forced``
    training settings (study-level overrides) over every configuration's own."""
    configs = []
    for block_name, block in study.algorithms.items():
        adapter = {"algo": block_name, **block.adapter}
        training = deep_merge(study.training, block.training)
        if block.default:
            configs.append(
                ResolvedConfig(
                    name=block.default,
                    block=block_name,
                    adapter=adapter,
                    training=deep_merge(training, forced or {}),
                    key_path=f"algorithms.{block_name}",
                    eval_ranks=tuple(block.eval_ranks),
                )
            )
        for name, variation in block.variations.items():
            configs.append(
                ResolvedConfig(
                    name=name,
                    block=block_name,
                    adapter=deep_merge(adapter, variation.adapter),
                    training=deep_merge(deep_merge(training, variation.training), forced or {}),
                    key_path=f"algorithms.{block_name}.variations.{name}",
                    description=variation.description,
                    eval_ranks=tuple(
                        sorted(variation.eval_ranks if variation.eval_ranks is not None else block.eval_ranks)
                    ),
                )
            )
    return configs


@dataclass(frozen=True)
class LoadedStudy:
    """A validated study and where it came from."""

    study: Study
    source: str
    configs: list[ResolvedConfig]

    @property
    def name(self) -> str:
        return self.study.name


def load_study(path: str | os.PathLike, overrides: list[str] | None = None) -> LoadedStudy:
    """Read and validate a study YAML (plus ``key=value`` overrides); BadInput names file and key."""
    study = _absolute_paths(_resolve_world(load_config(Study, path, overrides or []), source=str(path)))
    configs = resolve_configs(study, forced=forced_training(overrides or []))
    reference = study.analysis.reference
    names = [name for config in configs for name, _ in config.evaluations()]
    if reference is not None and reference not in names:
        raise BadInput(
            f"{path}: analysis.reference: {reference!r} is not a configuration ({', '.join(names[:6])}, …)"
        )
    analysis = study.analysis
    if analysis.headline is not None or analysis.pareto is not None or analysis.panels is not None:
        try:  # the metric registry is read only when a study overrides a reporting choice
            analysis.choices()
        except BadInput as exc:
            raise BadInput(f"{path}: {exc}") from None
    for i, contrast in enumerate(study.analysis.contrasts):
        for key in ("config", "vs"):
            if getattr(contrast, key) not in names:
                raise BadInput(
                    f"{path}: analysis.contrasts.{i}.{key}: {getattr(contrast, key)!r} is not a configuration"
                )
        for key in ("epoch", "vs_epoch"):
            if getattr(contrast, key) is not None and getattr(contrast, key) not in study.checkpoint_epochs:
                raise BadInput(
                    f"{path}: analysis.contrasts.{i}.{key}: {getattr(contrast, key)} is not a checkpoint epoch"
                )
    return LoadedStudy(study=study, source=str(path), configs=configs)


def generated_dataset(value: str) -> str | None:
    """The prefix of a dataset drawn by a prepare job (``demo:``, ``world:``, …), else None."""
    from lyco_bench.data.generated import generated_dataset as kind_of

    kind = kind_of(value)
    return kind.prefix if kind is not None else None


def generated_folder(value: str) -> str:
    """The store's assets folder a generated dataset ``value`` is drawn into."""
    from lyco_bench.data.generated import GENERATED_DATASETS

    return GENERATED_DATASETS[generated_dataset(value)].folder


def draw_generated_dataset(value: str, out: Path) -> Path:
    """Draw the generated dataset ``value`` (with its seed) into ``out``."""
    from lyco_bench.data.generated import GENERATED_DATASETS

    prefix = generated_dataset(value)
    return GENERATED_DATASETS[prefix].draw(out, asset_seed(value, prefix))


def _resolve_world(study: Study, *, source: str) -> Study:
    """``world:`` as the model or an encoder → the world's shipped weights (a real local folder,
    hashed like any other: a rebuilt world makes every job that read it stale)."""
    fields = dict(study.encoders)
    world_fields = [k for k, v in fields.items() if v == WORLD_PREFIX]
    if study.model != WORLD_PREFIX and not world_fields:
        return study
    from lyco_bench.metrics.encoders import ENCODERS
    from lyco_bench.world import encoder_settings, model_dir, weights_dir

    shipped_fields = encoder_settings()  # the world's encoders: their fields, paths under weights_dir()
    shipped = [e for e in ENCODERS.values() if e.weights_field in shipped_fields]
    for key in world_fields:
        if key not in [e.weights_field for e in shipped]:
            ships = " and ".join(f"{e.title or e.name} ({e.weights_field})" for e in shipped)
            raise BadInput(f"{source}: encoders.{key}: the world ships {ships} only")

    if not (weights_dir() / "BUILD.json").is_file():
        raise BadInput(f"{source}: world: the world's weights are missing ({weights_dir()}); "
                       "rebuild them with `lyco-bench make-world`")  # fmt: skip
    for key in world_fields:
        kind = next(e for e in shipped if e.weights_field == key)
        fields[key] = shipped_fields[key]
        for extra in (f for f in kind.settings.model_fields if f != key and f in shipped_fields):
            fields.setdefault(extra, shipped_fields[extra])
    model = str(model_dir()) if study.model == WORLD_PREFIX else study.model
    return study.model_copy(update={"model": model, "encoders": fields})


def _absolute_paths(study: Study) -> Study:
    """Local paths in a study, made absolute against the current directory, so that they mean the
    same in every worker, whatever its own directory (docs/internals.md, "Paths in a study").

    A value is a local path when it exists as one (model, dataset, encoder weights; ``~`` expanded),
    or, for the prompt set, when it is a prompt set file (a path, or a bare name found in
    ``./prompts/``; the package's own sets stay names). Hub ids, tags, ``tiny:``/``demo:``/``world:``
    and paths that do not exist are left as written (a missing path is then reported as written).
    Job ids hash content, never these strings: writing a path another way changes no job id.
    """
    update: dict[str, Any] = {"model": _absolute(study.model)}
    if not generated_dataset(study.dataset):
        update["dataset"] = _absolute(study.dataset)
    from lyco_bench.metrics.encoders import encoder_path_fields

    path_fields = encoder_path_fields()  # settings that may name a local file or folder
    update["encoders"] = {
        k: _absolute(v) if k in path_fields and isinstance(v, str) else v for k, v in study.encoders.items()
    }
    prompt_set = _absolute_prompt_set(study.prompts.set)
    if prompt_set != study.prompts.set:
        update["prompts"] = study.prompts.model_copy(update={"set": prompt_set})
    return study.model_copy(update=update)


def _absolute(value: str) -> str:
    path = Path(value).expanduser()
    return os.path.abspath(path) if path.exists() else value


def _absolute_prompt_set(value: str) -> str:
    from lyco_bench.prompts import PROMPTS_DIR, find_prompt_set

    try:
        found = find_prompt_set(value)
    except BadInput:
        return value  # reported by the prompt set's own check
    if Path(found).resolve().parent == PROMPTS_DIR.resolve():
        return value  # one of the package's sets: the same by name in every worker
    return os.path.abspath(found)


def resolve_local_path(value: str, *, study_dir: Path, assets_name: str, prefix: str) -> str:
    """``tiny:``/``demo:`` → the asset folder in the store; anything else is returned unchanged."""
    if value.startswith(prefix):
        return str(study_dir / "assets" / assets_name)
    return value


def asset_seed(value: str, prefix: str) -> int:
    """The seed in ``tiny:3`` / ``demo:3`` (0 when omitted)."""
    rest = value[len(prefix) :]
    if rest == "":
        return 0
    try:
        return int(rest)
    except ValueError:
        raise BadInput(f"{value!r}: expected {prefix} or {prefix}<seed>") from None


def tiny_model(value: str) -> tuple[str, int]:
    """(family, seed) of a built model: ``tiny:`` / ``tiny:3`` (the default family, SD1.x) or
    ``tiny:sdxl`` / ``tiny:sdxl:3`` (a model family's tiny build, lyco_bench.families)."""
    from lyco_bench.families import DEFAULT_FAMILY, get_family

    rest = value[len(TINY_PREFIX) :]
    head, _, seed = rest.partition(":")
    if head and not head.lstrip("-").isdigit():
        try:
            get_family(head)
        except BadInput as exc:
            raise BadInput(f"model {value!r}: {exc}") from None
        return head, asset_seed(f"{TINY_PREFIX}{seed}", TINY_PREFIX)
    return DEFAULT_FAMILY, asset_seed(value, TINY_PREFIX)
