"""Evaluation axes: what a study evaluates each trained checkpoint as, without training again.

A checkpoint is evaluated as one or more **variants**; a variant is (eval model, multiplier λ,
DyLoRA rank | compress rank), applied as W′ = W′₀ + λ·ΔW (docs/protocol.md, "Evaluation axes"):

- ``eval_multipliers``: λ ≠ 1 (``<config>-x<λ>``);
- ``eval_models``: another base model of the same family (``<config>@<label>``), whose paired
  metrics compare with that model's own base images;
- ``eval_compress``: the adapter SVD-extracted to rank k (``<config>-c<k>``, extraction is its
  own job: :mod:`lyco_bench.sweep.compress`);
- ``eval_ranks`` (DyLoRA): the first r rank components (``<config>-r<r>``); each rank stands for
  the as-trained evaluation, and the other axes vary from each rank.

Each axis varies one thing from the default variant (the study's model, λ = 1, the file as
trained), like the study's one-at-a-time variations: the default is always evaluated and keeps
the job ids it had before axes existed. Every variant is a row of its own on the leaderboard,
named as above, with the columns of :data:`AXIS_COLUMNS` saying what it varies.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lyco_bench.errors import BadInput
from lyco_bench.sweep.assets.base import ASSET_PREFIXES, AssetPrefix, ShippedModel, prefix_of

AXES = ("eval_ranks", "eval_multipliers", "eval_models", "eval_compress")
"""The study fields of the axes, in the order the plan's axis table lists them."""
AXIS_COLUMNS = {
    "eval_multipliers": "multiplier",
    "eval_models": "eval_model",
    "eval_compress": "compress_rank",
}
"""The results/leaderboard column naming each axis' value (DyLoRA's: ``eval_rank``)."""


@dataclass(frozen=True)
class Variant:
    """How one checkpoint is evaluated; the default (all fields default) is the file as trained,
    at λ = 1, on the study's model."""

    rank: int | None = None
    """DyLoRA: the first ``rank`` rank components (None: all)."""
    multiplier: float = 1.0
    model: str | None = None
    """Label of an eval model (None: the study's model)."""
    compress: int | None = None
    """The rank the adapter is SVD-extracted to (None: not extracted)."""

    @property
    def varies(self) -> bool:
        """Whether it differs from the file as trained (DyLoRA's rank aside): another model, λ or
        a compressed file; such variants add job params and spec keys, the others do not."""
        return self.multiplier != 1.0 or self.model is not None or self.compress is not None

    @property
    def axis(self) -> str | None:
        """The study field this variant comes from (None: the default evaluation)."""
        if self.compress is not None:
            return "eval_compress"
        if self.model is not None:
            return "eval_models"
        if self.multiplier != 1.0:
            return "eval_multipliers"
        return "eval_ranks" if self.rank is not None else None

    def suffix(self) -> str:
        """What the variant adds to its configuration's name (empty for the default)."""
        out = f"-r{self.rank}" if self.rank is not None else ""
        out += f"-c{self.compress}" if self.compress is not None else ""
        out += f"-x{self.multiplier:g}" if self.multiplier != 1.0 else ""
        return out + (f"@{self.model}" if self.model is not None else "")


def model_label(value: str) -> str:
    """A short name for a model value: ``tiny:3`` → ``tiny3``, ``world:`` (or the folder it ships)
    → ``world``, a path → its file or folder name without suffix, a hub id → its repository name."""
    kind = prefix_of(value) or _shipped_prefix(value)
    if kind is not None:
        return (
            kind.name + value[len(kind.prefix) :].replace(":", "")
            if value.startswith(kind.prefix)
            else kind.name
        )
    name = Path(value.split("@")[0] if not Path(value).exists() else value).name
    name = name.removesuffix(".safetensors")
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.") or "model"


def _shipped_prefix(value: str) -> AssetPrefix | None:
    """The asset prefix whose shipped model is the folder ``value`` names, else None."""
    for kind in ASSET_PREFIXES.values():
        if isinstance(kind.model, ShippedModel) and Path(value) == kind.model.folder():
            return kind
    return None


def eval_models(study: Any, *, source: str = "study") -> dict[str, str]:
    """Label → model value of each eval model (``world:`` resolved to the world's folder); BadInput
    for a label used twice or a model that is the study's own (always evaluated)."""
    given = study.eval_models
    pairs = list(given.items()) if isinstance(given, dict) else [(model_label(v), v) for v in given]
    out: dict[str, str] = {}
    own = model_label(study.model)
    for i, (label, value) in enumerate(pairs):
        key = label if isinstance(given, dict) else str(i)
        kind = prefix_of(value)
        if kind is not None and isinstance(kind.model, ShippedModel):
            value = str(kind.model.folder())
        if value == study.model:
            raise BadInput(f"{source}: eval_models.{key}: {value} is the study's model (always evaluated)")
        if label in out or label == own:
            raise BadInput(
                f"{source}: eval_models.{key}: the label {label!r} names two models; give them "
                "names (eval_models: {label: model, …})"
            )
        out[label] = value
    return out


def compresses(config: Any) -> bool:
    """Whether the configuration's checkpoints are weight adapters (ΔW per layer) that an SVD
    extraction can compress; textual inversion and hypernetworks are not."""
    from lyco_bench.adapters import AdapterModule, get_algorithm

    try:
        return issubclass(get_algorithm(config.adapter["algo"]), AdapterModule)
    except (BadInput, KeyError):
        return False  # an unknown algorithm is reported by the input checks


def evaluations(study: Any, config: Any) -> list[tuple[str, Variant]]:
    """(name on the leaderboard, variant) of every evaluation of one configuration: its as-trained
    evaluations (each DyLoRA rank), each varied along every axis, then its compressed files."""
    bases = [Variant(rank=r) for r in config.eval_ranks] or [Variant()]
    labels = list(eval_models(study)) if study.eval_models else []
    variants: list[Variant] = []
    for base in bases:
        variants.append(base)
        variants += [Variant(rank=base.rank, multiplier=m) for m in study.eval_multipliers if m != 1.0]
        variants += [Variant(rank=base.rank, model=label) for label in labels]
    if study.eval_compress and compresses(config):
        variants += [Variant(compress=k) for k in study.eval_compress]
    return [(config.name + v.suffix(), v) for v in variants]


def evaluation_names(study: Any, configs: list[Any], *, source: str) -> list[str]:
    """Every evaluation's name, in study order; BadInput when a variant's name is another's."""
    if study.eval_models:
        eval_models(study, source=source)  # its errors, named after the study file
    seen: dict[str, str] = {}
    for config in configs:
        for name, _ in evaluations(study, config):
            if name in seen:
                raise BadInput(
                    f"{source}: {config.key_path}: the evaluation {name!r} is also {seen[name]!r}'s; "
                    "rename the configuration"
                )
            seen[name] = config.name
    return list(seen)


def variant_pairs(study: Any, configs: list[Any]) -> list[tuple[str, str]]:
    """(varied evaluation, the as-trained evaluation it varies) of every configuration: the paired
    comparisons comparison.csv holds besides the study's own (DyLoRA's compressed file, whose
    as-trained row is a rank, has none)."""
    pairs = []
    for config in configs:
        named = dict(evaluations(study, config))
        trained = {v: n for n, v in named.items() if not v.varies}
        for name, variant in named.items():
            base = trained.get(Variant(rank=variant.rank))
            if variant.varies and base is not None:
                pairs.append((name, base))
    return pairs


def variant_columns(study: Any, variant: Variant, *, own_label: str) -> dict[str, Any]:
    """The axis columns of one results row: each axis the study sweeps, with this row's value
    (``compress_rank`` None for a file as trained); none for an axis the study does not sweep."""
    out: dict[str, Any] = {}
    if study.eval_multipliers:
        out["multiplier"] = variant.multiplier
    if study.eval_models:
        out["eval_model"] = variant.model if variant.model is not None else own_label
    if study.eval_compress:
        out["compress_rank"] = variant.compress
    return out


def base_images_name(label: str | None) -> str:
    """The folder under ``images/`` of a model's base images (``base``: the study's model)."""
    return "base" if label is None else f"base@{label}"


def base_images_dir(store: Any, params: dict[str, Any]) -> Path:
    """The base images a job reads or writes (its ``base_images`` param; the study model's when absent)."""
    return store.root / "images" / params.get("base_images", "base")


def extracted_path(store: Any, config: str, seed: int, epoch: int, rank: int) -> Path:
    """Where a checkpoint's adapter SVD-extracted to ``rank`` is written (with a ``.json`` record)."""
    return store.root / "extracted" / config / str(seed) / f"e{epoch:03d}-c{rank}.safetensors"
