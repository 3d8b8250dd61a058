"""Asset prefixes: what a study's ``model`` or an ``encoders`` field may name instead of real
weights (``tiny:``, ``world:``, …), each declared in its own file as an :class:`AssetPrefix`.

A prefix gives a role (the model, the encoders) one of two kinds of weights:

* **built** (:class:`BuiltModel`, :class:`BuiltEncoders`): a prepare job builds them into the
  store's assets folder (``tiny:`` → random tiny weights); jobs downstream key on that prepare
  job's id, and the planner sizes and costs them from the declaration before they exist;
* **shipped** (:class:`ShippedModel`, :class:`ShippedEncoders`): real weights that come with a
  package (``world:``); the study is rewritten at load to their folders, hashed like any other.

Built-ins live beside this file (``tiny.py``, ``world.py``); another package adds a prefix through
the ``lyco_bench.assets`` entry point (a module that registers on import, or an ``AssetPrefix``).
Generated *datasets* (``demo:``, ``world:``) are their own registry
(:mod:`lyco_bench.data.generated`). The sweep reads only these registries: nothing outside a
prefix's file names it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lyco_bench.errors import BadInput
from lyco_bench.registry import Registry, accept_instances


@dataclass(frozen=True)
class BuiltModel:
    """A model a prepare job builds into the store; the text after the prefix says which (``tiny:3``:
    seed 3; ``tiny:sdxl:3``: a model family's tiny build with seed 3 — the prefix's own grammar)."""

    folder: str
    """The store's assets folder it is built into (it names the prepare job)."""
    build: Callable[[Path, str], Any]
    """(empty folder, text after the prefix) → writes a diffusers folder there; same text → same bytes."""
    configs: Callable[[str], tuple[dict, dict, dict]]
    """(text after the prefix) → its (denoiser, text encoder, VAE) configs: sizing and costs before
    it is built."""
    rough_costs: Mapping[str, float] | None = None
    """Seconds per job kind before the store has recorded any (None: a GPU model's)."""
    family: Callable[[str], str] | None = None
    """(text after the prefix) → the model family it builds (lyco_bench.families; None: the default)."""

    def family_of(self, rest: str) -> str:
        from lyco_bench.families import DEFAULT_FAMILY

        return self.family(rest) if self.family is not None else DEFAULT_FAMILY


@dataclass(frozen=True)
class ShippedModel:
    """A diffusers folder shipped with a package; the study's ``model`` becomes its path at load."""

    folder: Callable[[], Path]
    rough_costs: Mapping[str, float] | None = None


@dataclass(frozen=True)
class BuiltEncoders:
    """Encoders a prepare job builds into the store; every field naming the prefix points there."""

    folder: str
    build: Callable[[Path], dict[str, Any]]
    """(empty folder) → EncoderSettings fields, paths inside the folder."""
    tiny: bool = True
    """The encoders' tiny builds: their declared feature sizes and FLOPs are the tiny ones."""


@dataclass(frozen=True)
class ShippedEncoders:
    """Encoder weights shipped with a package; a field naming the prefix becomes their path at load."""

    fields: Callable[[], dict[str, Any]]
    """EncoderSettings fields of the shipped weights (the weights fields and their companions)."""


@dataclass(frozen=True)
class AssetPrefix:
    prefix: str
    """What a value starts with (``tiny:``), ending in ``:``."""
    model: BuiltModel | ShippedModel | None = None
    encoders: BuiltEncoders | ShippedEncoders | None = None
    missing: Callable[[], str | None] | None = None
    """Why the shipped weights cannot be used (e.g. not built yet), else None."""
    title: str = ""
    """What ships the weights, for messages (``the world``); the prefix when empty."""

    @property
    def name(self) -> str:
        return self.prefix.rstrip(":")


ASSET_PREFIXES: Registry[AssetPrefix] = Registry(
    "asset prefix",
    entry_point="lyco_bench.assets",
    packages=("lyco_bench.sweep.assets",),
    skip=frozenset({"base"}),
    accept=accept_instances(AssetPrefix, lambda obj: obj.prefix),
)
"""Every asset prefix by its text, discovered on first use (:mod:`lyco_bench.registry`)."""


def register_asset_prefix(kind: AssetPrefix) -> AssetPrefix:
    if not isinstance(kind, AssetPrefix):
        raise TypeError(f"register_asset_prefix takes an AssetPrefix, not {type(kind).__name__}")
    if not kind.prefix.endswith(":"):
        raise ValueError(f"asset prefix {kind.prefix!r} must end with ':'")
    return ASSET_PREFIXES.register(kind.prefix, kind)


def prefix_of(value: Any) -> AssetPrefix | None:
    """The prefix ``value`` starts with, else None (a path or hub id: nothing is discovered)."""
    if not isinstance(value, str) or ":" not in value:
        return None
    return next((k for p, k in ASSET_PREFIXES.items() if value.startswith(p)), None)


def asset_seed(value: str, prefix: str) -> int:
    """The seed in ``tiny:3`` / ``demo:3`` (0 when omitted)."""
    rest = value[len(prefix) :]
    if rest == "":
        return 0
    try:
        return int(rest)
    except ValueError:
        raise BadInput(f"{value!r}: expected {prefix} or {prefix}<seed>") from None


# --- the model -----------------------------------------------------------------------------------
def built_model(value: Any) -> tuple[AssetPrefix, BuiltModel] | None:
    """The prefix and declaration of a model a prepare job builds, else None."""
    kind = prefix_of(value)
    if kind is not None and isinstance(kind.model, BuiltModel):
        return kind, kind.model
    return None


def model_rough_costs(value: str) -> Mapping[str, float] | None:
    """The declared seconds per job kind for the study's model (after load), else None."""
    built = built_model(value)
    if built is not None:
        return built[1].rough_costs
    for kind in ASSET_PREFIXES.values():
        if isinstance(kind.model, ShippedModel) and Path(value) == kind.model.folder():
            return kind.model.rough_costs
    return None


# --- the encoders --------------------------------------------------------------------------------
def built_encoders(fields: Mapping[str, Any]) -> tuple[AssetPrefix, BuiltEncoders, list[str]] | None:
    """The prefix whose encoders a prepare job builds, its declaration and the fields naming it;
    None when no field does. One study builds one set (BadInput naming both prefixes)."""
    found: dict[str, tuple[AssetPrefix, list[str]]] = {}
    for key, value in fields.items():
        kind = prefix_of(value)
        if kind is not None and isinstance(kind.encoders, BuiltEncoders):
            found.setdefault(kind.prefix, (kind, []))[1].append(key)
    if len(found) > 1:
        raise BadInput(f"encoders: {' and '.join(found)} both build encoders; a study builds one set")
    if not found:
        return None
    kind, keys = next(iter(found.values()))
    return kind, kind.encoders, keys


def tiny_weights(value: Any) -> bool:
    """Whether an encoder's weights field names a prefix that builds the encoders' tiny builds."""
    kind = prefix_of(value)
    return kind is not None and isinstance(kind.encoders, BuiltEncoders) and kind.encoders.tiny


# --- shipped weights: the study rewritten at load -------------------------------------------------
def resolve_shipped(model: str, encoders: dict[str, Any], *, source: str) -> tuple[str, dict[str, Any]]:
    """``model`` and ``encoders`` with every value naming a shipped prefix replaced by its weights'
    path (real local folders, hashed like any other: rebuilt weights make every job that read them
    stale); an encoder's other settings the study leaves out are the shipped ones."""
    fields = dict(encoders)
    for kind in ASSET_PREFIXES.values():
        ship_model = isinstance(kind.model, ShippedModel) and model == kind.prefix
        ship_keys = isinstance(kind.encoders, ShippedEncoders)
        keys = [k for k, v in fields.items() if ship_keys and v == kind.prefix]
        if ship_model or keys:
            fields.update(_shipped_fields(kind, keys, fields, source=source))
            if ship_model:
                model = str(kind.model.folder())
    return model, fields


def _shipped_fields(kind: AssetPrefix, keys: list[str], fields: dict[str, Any], *, source: str) -> dict:
    from lyco_bench.metrics.encoders import ENCODERS

    shipped = kind.encoders.fields() if keys else {}
    encoders = {e.weights_field: e for e in ENCODERS.values() if e.weights_field in shipped}
    for key in keys:
        if key not in encoders:
            ships = " and ".join(f"{e.title or e.name} ({f})" for f, e in encoders.items())
            raise BadInput(f"{source}: encoders.{key}: {kind.title or kind.prefix} ships {ships} only")
    problem = kind.missing() if kind.missing is not None else None
    if problem:
        raise BadInput(f"{source}: {kind.prefix} {problem}")
    out: dict[str, Any] = {}
    for key in keys:
        out[key] = shipped[key]
        for extra in encoders[key].settings.model_fields:
            if extra != key and extra in shipped and extra not in fields:
                out[extra] = shipped[extra]
    return out
