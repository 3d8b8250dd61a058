"""Which layers an adapter trains, and putting adapter modules into a UNet and a text encoder.

Presets (docs/protocol.md §1.1) are plug-ins (lyco_bench.adapters.presets): ``attn-only``,
``attn-mlp`` (default), ``full``, and an algorithm's own (``ia3`` in algorithms/ia3.py).

Module keys follow kohya/LyCORIS, per model family (lyco_bench.families: the family is read off
the denoiser's config, so callers pass modules only): SD1.x ``lora_unet_<module path, dots → _>``,
SDXL ``lora_unet_<SGM path>`` (``input_blocks_4_1_…``), and ``<prefix>_<path>`` for each text
encoder (``lora_te``; SDXL ``lora_te1``/``lora_te2``), where the text-encoder path starts at
``text_model.`` (the layout of transformers 4.x, which every existing file uses, also when the
loaded model is flat). ``text_encoder`` arguments take one module (SD1's ``lora_te``) or a
mapping prefix → module (``family.trainable_encoders(pipe)``).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError, field_validator, model_validator
from torch import nn

from lyco_bench.adapters.base import ALGORITHMS, get_algorithm
from lyco_bench.adapters.presets import PRESETS, LayerInfo
from lyco_bench.config import StrictModel
from lyco_bench.errors import BadInput
from lyco_bench.families import key_map_of

UNET_PREFIX = "lora_unet"
TE_PREFIX = "lora_te"
NORM_TYPES = (nn.GroupNorm, nn.LayerNorm)
TextEncoders = nn.Module | Mapping[str, nn.Module] | None
"""One text encoder (keys ``lora_te_…``) or several by key prefix (``{"lora_te1": …, "lora_te2": …}``)."""


DEFAULT_ALGO = "lora"
"""The algorithm of an ``adapter:`` block that names none (and of a study that has no block)."""

# AdapterSpec's own fields; every other key of an ``adapter:`` block is a setting of its algorithm
# (``conv_<setting>``: of the algorithm of k×k convolutions).
SPEC_FIELDS = ("algo", "conv_algo", "preset", "include", "exclude", "train_text_encoder", "train_norm")


class AdapterSpec(StrictModel):
    """What to train and how: one algorithm (or one for linear and one for k×k conv layers) with
    its own settings, and which layers.

    In a study or a run config the algorithm's settings are written flat beside ``algo``
    (``{algo: lora, dim: 8, alpha: 4, conv_dim: 4, preset: full}``); they are validated by the
    algorithm's ``Options`` and stored resolved, every default filled in.
    """

    algo: str = DEFAULT_ALGO
    """Algorithm for Linear and 1×1 conv layers (a name in ``ALGORITHMS``)."""
    options: dict[str, Any] = {}
    """The algorithm's settings (its ``Options``: dim, alpha, factor, …), all defaults resolved."""
    conv_algo: str | None = None
    """Algorithm for k×k (k > 1) conv layers; None → ``algo``."""
    conv_options: dict[str, Any] = {}
    """Settings for k×k conv layers (``conv_dim``, ``conv_alpha``, …): the linear settings with
    these changes when the algorithm is the same, as LyCORIS does; resolved like ``options``."""
    preset: str = "attn-mlp"
    """Which layers are trained: a name in ``lyco_bench.adapters.presets.PRESETS``."""
    include: list[str] = []
    """fnmatch patterns on module keys; when given, only matching modules are trained."""
    exclude: list[str] = []
    """fnmatch patterns on module keys that are never trained."""
    train_text_encoder: bool = True
    """Adapt the text encoder too (same layers as attn-mlp / attn-only)."""
    train_norm: bool = False
    """With a preset that allows it (``full``): also train the UNet's GroupNorm/LayerNorm weights
    (as the paper did)."""

    @model_validator(mode="before")
    @classmethod
    def _algorithm_settings(cls, data: Any) -> Any:
        """Flat keys → ``options`` / ``conv_options``, resolved by the algorithms' Options."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        options = dict(data.pop("options", None) or {})
        conv = dict(data.pop("conv_options", None) or {})
        for key in [k for k in data if k not in SPEC_FIELDS]:
            if key.startswith("conv_"):
                conv[key[len("conv_") :]] = data.pop(key)
            else:
                options[key] = data.pop(key)
        algo, conv_algo = data.get("algo", DEFAULT_ALGO), data.get("conv_algo")
        if isinstance(algo, str) and algo in ALGORITHMS:
            data["options"] = _resolve(algo, options)
            same = conv_algo in (None, algo)
            if isinstance(conv_algo, str | type(None)) and (same or conv_algo in ALGORITHMS):
                data["conv_options"] = _resolve(conv_algo or algo, {**(options if same else {}), **conv})
        return data

    @field_validator("preset")
    @classmethod
    def _known_preset(cls, value: str) -> str:
        if value not in PRESETS:
            raise ValueError(f"unknown preset {value!r} (known: {', '.join(sorted(PRESETS))})")
        return value

    @field_validator("algo", "conv_algo")
    @classmethod
    def _known_algorithm(cls, value: str | None) -> str | None:
        if value is not None and value not in ALGORITHMS:
            raise ValueError(f"unknown algorithm {value!r} (known: {', '.join(sorted(ALGORITHMS))})")
        return value

    def settings_for(self, layer: nn.Module) -> tuple[str, dict[str, Any]]:
        """(algo, settings) for one layer: k×k convs take the conv ones (as LyCORIS does)."""
        if isinstance(layer, nn.Conv2d) and max(layer.kernel_size) > 1:
            return self.conv_algo or self.algo, self.conv_options
        return self.algo, self.options

    def label(self) -> str:
        """How results name this algorithm (its ``label`` for these settings; ``a+b`` for a
        separate conv algorithm)."""
        name = ALGORITHMS[self.algo].label(ALGORITHMS[self.algo].Options(**self.options))
        if self.conv_algo not in (None, self.algo):
            name += "+" + self.conv_algo
        return name


def _resolve(algo: str, settings: dict[str, Any]) -> dict[str, Any]:
    """An algorithm's settings with its defaults filled in (ValueError naming what is wrong)."""
    cls = ALGORITHMS[algo]
    try:
        return cls.Options.model_validate(settings).model_dump(mode="json")
    except ValidationError as exc:
        err = exc.errors()[0]
        key = ".".join(str(p) for p in err["loc"]) or "settings"
        known = ", ".join(cls.Options.model_fields) or "none"
        if err["type"] == "extra_forbidden":
            raise ValueError(f"{key}: not a setting of {algo} (its settings: {known})") from None
        raise ValueError(f"{key}: {err['msg']} ({algo})") from None


@dataclass
class Target:
    """One layer to adapt: its file key, the module holding it and the attribute name there."""

    key: str
    parent: nn.Module
    attr: str
    layer: nn.Module
    text_encoder: bool


def unet_key(path: str) -> str:
    return f"{UNET_PREFIX}_{path.replace('.', '_')}"


def te_key(text_encoder: nn.Module, path: str, prefix: str = TE_PREFIX) -> str:
    # transformers ≥ 5 dropped the ``text_model`` wrapper; files keep the 4.x names.
    if not hasattr(text_encoder, "text_model"):
        path = f"text_model.{path}"
    return f"{prefix}_{path.replace('.', '_')}"


def text_encoders(text_encoder: TextEncoders) -> dict[str, nn.Module]:
    """Text encoders by key prefix (a single module is SD1's ``lora_te``)."""
    if text_encoder is None:
        return {}
    if isinstance(text_encoder, nn.Module):
        return {TE_PREFIX: text_encoder}
    return {prefix: module for prefix, module in text_encoder.items() if module is not None}


def _children_paths(root: nn.Module) -> Iterator[tuple[str, nn.Module, str, nn.Module]]:
    """(path, parent, attribute, module) for every module below ``root``, depth first."""
    for path, module in root.named_modules():
        if path:
            parent_path, _, attr = path.rpartition(".")
            yield path, root.get_submodule(parent_path), attr, module


def find_targets(unet: nn.Module | None, text_encoder: TextEncoders, spec: AdapterSpec) -> list[Target]:
    """The layers ``spec`` adapts, denoiser first, each in module-definition order."""
    preset = PRESETS[spec.preset]
    targets: list[Target] = []
    if unet is not None:
        keys = key_map_of(unet)
        classes = {p: type(m).__name__ for p, m in unet.named_modules() if p}
        blocks = [p + "." for p, name in classes.items() if name in keys.transformer_blocks]
        for path, parent, attr, layer in _children_paths(unet):
            wanted = False
            if isinstance(layer, (nn.Linear, nn.Conv2d)):
                parts = path.split(".")
                enclosing = tuple(classes[".".join(parts[:i])] for i in range(1, len(parts)))
                info = LayerInfo(path, layer, any(path.startswith(b) for b in blocks), enclosing)
                wanted = keys.select(preset, info)
            elif spec.train_norm and preset.norm and isinstance(layer, NORM_TYPES):
                wanted = layer.weight is not None
            if wanted:
                targets.append(Target(keys.denoiser_key(path), parent, attr, layer, text_encoder=False))
    for prefix, encoder in text_encoders(text_encoder).items() if spec.train_text_encoder else ():
        for path, parent, attr, layer in _children_paths(encoder):
            if isinstance(layer, nn.Linear) and preset.text_encoder(path):
                targets.append(Target(te_key(encoder, path, prefix), parent, attr, layer, text_encoder=True))
    return [t for t in targets if _passes_filters(t.key, spec)]


def _passes_filters(key: str, spec: AdapterSpec) -> bool:
    if spec.include and not any(fnmatch.fnmatchcase(key, p) for p in spec.include):
        return False
    return not any(fnmatch.fnmatchcase(key, p) for p in spec.exclude)


def layer_index(
    unet: nn.Module | None, text_encoder: TextEncoders, *, aliases: bool = True
) -> dict[str, nn.Module]:
    """Every adaptable layer (Linear, Conv2d, GroupNorm, LayerNorm) by file key.

    With ``aliases``, text-encoder layers are also listed under the flat transformers-5 name
    (``lora_te_encoder_…``) and denoiser layers under the other names their family reads (SDXL:
    the diffusers path), so that files written by other tools load too.
    """
    kinds = (nn.Linear, nn.Conv2d, *NORM_TYPES)
    index: dict[str, nn.Module] = {}
    if unet is not None:
        keys = key_map_of(unet)
        for path, layer in unet.named_modules():
            if path and isinstance(layer, kinds):
                index[keys.denoiser_key(path)] = layer
                for alias in keys.denoiser_aliases(path) if aliases else ():
                    index.setdefault(alias, layer)
    for prefix, encoder in text_encoders(text_encoder).items():
        for path, layer in encoder.named_modules():
            if path and isinstance(layer, kinds):
                index[te_key(encoder, path, prefix)] = layer
                if aliases:
                    index.setdefault(f"{prefix}_{path.replace('.', '_')}", layer)
    return index


def inject(unet: nn.Module | None, text_encoder: TextEncoders, spec: AdapterSpec):
    """Replace each target layer with its adapter module; returns the :class:`AdapterNetwork`.

    Every parameter of both models is frozen; only the adapter parameters train. The caller
    seeds torch before calling (initialization uses the global RNG, in target order).
    """
    from lyco_bench.adapters.base import AdapterModule
    from lyco_bench.adapters.network import AdapterNetwork
    from lyco_bench.adapters.norm import NormAdapter

    if not issubclass(get_algorithm(spec.algo), AdapterModule):
        raise BadInput(
            f"adapter: {spec.algo} is a model-level method, not a layer algorithm: it attaches to a pipeline"
        )
    targets = find_targets(unet, text_encoder, spec)
    if not targets:
        raise BadInput(f"adapter: preset {spec.preset!r} with include/exclude selects no module")
    check_sizes(targets, spec)  # before any factor is allocated
    for model in (unet, *text_encoders(text_encoder).values()):
        if model is not None:
            model.requires_grad_(False)
    modules: dict[str, nn.Module] = {}
    for target in targets:
        if isinstance(target.layer, NORM_TYPES):
            modules[target.key] = NormAdapter(target.layer)
            continue
        algo, settings = spec.settings_for(target.layer)
        cls = get_algorithm(algo)
        modules[target.key] = cls(target.layer, cls.layer_settings(target.key, settings))
    return AdapterNetwork(targets=targets, modules=modules, spec=spec, key_map=key_map_of(unet))


def check_sizes(targets: list[Target], spec: AdapterSpec) -> None:
    """BadInput naming the first target layer whose settings ask for impossible sizes."""
    for target in targets:
        if isinstance(target.layer, NORM_TYPES):
            continue
        algo, settings = spec.settings_for(target.layer)
        conv = isinstance(target.layer, nn.Conv2d) and max(target.layer.kernel_size) > 1
        field = "conv_dim" if conv else "dim"
        get_algorithm(algo).check_size(target.key, target.layer, settings, field=field)
