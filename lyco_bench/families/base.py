"""The model-family contract: everything that differs between SD1.x/SD2, SDXL, FLUX, … in one object.

A **family** is one :class:`ModelFamily` subclass in its own file, whose instance is registered
in :data:`FAMILIES` (built-ins: the modules of ``lyco_bench.families``; other packages: the
``lyco_bench.families`` entry point naming a module that calls :func:`register_family`, or a
``ModelFamily`` instance). Loading, training, generation, the adapter files and the sweep ask the
family of the loaded pipeline (:func:`family_of`) instead of assuming SD1.x. What a family
declares, and the hook each stage calls:

Loading (``lyco_bench.models.load_pipeline``)
    ``pipeline_classes``: the diffusers pipeline class names it loads (the first builds tiny models
    and reads single files); :meth:`claims_checkpoint` recognises a single ``.safetensors`` file by
    its keys; :meth:`claims_denoiser_config` recognises a folder or hub repo by its denoiser's
    config when ``model_index.json`` is ambiguous; :meth:`load_kwargs` are extra ``from_pretrained``
    arguments (SD1: no safety checker); :meth:`after_load` applies dtype rules (SDXL: a VAE that
    overflows in float16 stays float32 unless it is the fp16-fix VAE). Weights are safetensors only
    (the loader passes ``use_safetensors=True``; pickles are refused before a family is asked).
    :meth:`make_tiny` builds a random-weight model of the family offline, saved as a diffusers
    folder that goes through the same loader as a hub id (``make-tiny-model --family NAME``).

Text conditioning (training: ``lyco_bench.training.session``)
    ``text_encoders``: one :class:`TextEncoderSlot` per encoder (pipeline attribute, tokenizer
    attribute, file-key prefix, whether an adapter may train it, its Textual-Inversion key).
    :meth:`encode_prompts` tokenizes and encodes captions into the keyword arguments of
    :meth:`predict` (SD1: ``encoder_hidden_states``; SDXL: also the pooled embedding of the second
    encoder). The caller decides whether gradients flow (an adapter or TI on an encoder); a family
    with frozen encoders may cache their outputs, since the result depends on the captions alone.

Extra conditioning
    :meth:`extra_conditioning` turns each sample's :class:`ImageGeometry` (original size, crop
    top-left, target size: the bucketed image, as kohya computes them) into more keyword arguments
    of :meth:`predict` (SDXL: ``add_time_ids``; FLUX: guidance, image ids…). Default: none.

Training objective
    :meth:`objective` gives the family's :class:`Objective` for a loaded pipeline: given clean
    latents x0 (already scaled by :meth:`latent_scale`), noise ε and the run's noise generator, it
    draws timesteps and returns (model input x_t, timestep t, regression target). UNet families:
    DDPM ε- or v-prediction as the scheduler's ``prediction_type`` says; a flow-matching family
    returns ``x_t = (1−σ)·x0 + σ·ε`` and target ``ε − x0`` with its own timestep density. The draw
    order inside ``sample`` is part of the run's RNG contract (resuming is exact): change it only
    with the training ``OUTPUT_VERSION``.

The evaluation sampler
    ``eval_sampler``: the sampler a study's ``sampler:`` block defaults to for this family (UNet
    families: the paper's DDIM; the sweep fills it in when the study names none, so it is part of
    every generate job's identity); ``samplers``: the names it accepts (planning refuses another);
    :meth:`make_scheduler` builds one from the pipeline's noise schedule. :meth:`noise_shape` is the
    per-image initial noise generation draws (CPU generators, one per image: the same seed gives the
    same picture on any device), :meth:`pipeline_latents` turns it into the pipeline's ``latents=``
    argument (a family with packed latents packs it here). The training record names the family
    and its objective.

Module maps (``lyco_bench.adapters.inject``)
    Presets (``attn-only``, ``attn-mlp``, ``full``, ``full-lin``…) select layers of the denoiser
    by module class, as LyCORIS does: ``transformer_blocks`` names the classes whose layers count
    as "inside a transformer block" (SD/SDXL: ``Transformer2DModel``; a DiT family names its
    block classes), and :meth:`select` may overrule a preset for a family whose layer names differ
    (default: the preset's own answer).

File keys (kohya/LyCORIS names, read and written both ways)
    :meth:`denoiser_key` maps a diffusers module path to its file key (SD1: ``lora_unet_`` + the
    path; SDXL: the original SGM names, ``lora_unet_input_blocks_4_1_…``); :meth:`denoiser_aliases`
    lists other keys a file from another tool may use for the same layer (read only). Text-encoder
    keys are ``<slot.prefix>_<transformers-4 path>`` (``lora_te_…``; SDXL ``lora_te1_…``/``lora_te2_…``).
    :class:`KeyMap` bundles these for the adapter code, which never imports a family by name.

Identity (``lyco_bench.sweep``)
    A family's behaviour is code: ``version`` is bumped when a change alters what it trains or
    samples, and :func:`family_identity` puts ``name.vN`` into every job id of a non-default
    family. The default family (SD1.x/SD2) adds nothing, so the job ids of studies written before
    families existed are unchanged (their behaviour is covered by the stages' own versions).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from lyco_bench.errors import BadInput
from lyco_bench.registry import Registry, accept_instances

DEFAULT_FAMILY = "sd1"
"""The family of studies that name none and of models nothing else claims (SD1.x/SD2.x)."""


@dataclass(frozen=True)
class TextEncoderSlot:
    """One text encoder of a pipeline."""

    attr: str
    """Pipeline attribute of the encoder (``text_encoder``, ``text_encoder_2``)."""
    tokenizer: str
    """Pipeline attribute of its tokenizer."""
    prefix: str
    """File-key prefix of its adapter modules (``lora_te``, ``lora_te1``, ``lora_te2``)."""
    trainable: bool = True
    """Whether an adapter (``train_text_encoder``) may train it (FLUX's T5: no)."""
    ti_key: str = ""
    """Its key in a Textual-Inversion file of several encoders (SDXL: ``clip_l``/``clip_g``);
    empty for a family with one encoder (the SD1 layouts)."""
    textual_inversion: bool = True
    """Whether Textual Inversion adds an embedding to it (FLUX's T5: no; it reads the placeholder's
    text as written)."""


@dataclass(frozen=True)
class ImageGeometry:
    """How one training sample was cut from its image (pixels), for size conditioning."""

    original: tuple[int, int]
    """(width, height) of the image file."""
    crop: tuple[int, int]
    """(top, left) of the crop in the resized image (kohya's ``crop_top_left``)."""
    target: tuple[int, int]
    """(width, height) of the bucket trained on."""


class Objective:
    """A family's training objective (module docstring, "Training objective")."""

    name: str = ""
    """Recorded with the run: ``epsilon``, ``v_prediction``, ``flow_matching``…"""

    def sample(
        self, x0: torch.Tensor, noise: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(x_t, t, target) for clean latents ``x0`` and noise ``noise`` (CPU tensors, same shape);
        timesteps drawn from ``generator``."""
        raise NotImplementedError


@dataclass(frozen=True)
class KeyMap:
    """A family's module map and file keys, for the adapter code (module docstring, "Module maps",
    "File keys"), which gets it from the denoiser alone (:func:`key_map_of`)."""

    denoiser_key: Callable[[str], str]
    denoiser_aliases: Callable[[str], tuple[str, ...]]
    transformer_blocks: tuple[str, ...]
    select: Callable[[Any, Any], bool]
    family: str
    to_file: Callable[[dict, dict], dict] | None = None
    """Adapter tensors by layer key → the file's layout (None: the same); ``(tensors, modules)``
    with ``modules`` each module key's algorithm class (FLUX: fused BFL layers)."""
    from_file: Callable[[dict, dict, str], dict] | None = None
    """A file's tensors → tensors by layer key (None: the same); ``(tensors, modules, name)``."""


class ModelFamily:
    """One base-model family (module docstring). Subclasses set the class attributes and override
    the hooks that differ from SD1.x's; an instance is registered with :func:`register_family`."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    version: ClassVar[int] = 1
    pipeline_classes: ClassVar[tuple[str, ...]] = ()
    denoiser_attr: ClassVar[str] = "unet"
    text_encoders: ClassVar[tuple[TextEncoderSlot, ...]] = ()
    transformer_blocks: ClassVar[tuple[str, ...]] = ("Transformer2DModel",)
    eval_sampler: ClassVar[str] = "ddim"
    samplers: ClassVar[tuple[str, ...]] = ("ddim", "euler", "dpm++")
    cross_attention: ClassVar[bool] = True
    """Whether the denoiser has cross-attention to text (hypernetworks need it)."""

    # --- loading ---------------------------------------------------------------------------------
    def pipeline_class(self) -> type:
        import diffusers

        return getattr(diffusers, self.pipeline_classes[0])

    def claims_pipeline(self, class_name: str) -> bool:
        return class_name in self.pipeline_classes

    def claims_denoiser_config(self, config: Mapping[str, Any]) -> bool:
        """Whether a denoiser config (``unet/config.json``…) is of this family."""
        return False

    def claims_checkpoint(self, keys: Collection[str]) -> bool:
        """Whether a single-file checkpoint with these tensor names is of this family."""
        return False

    def load_kwargs(self) -> dict[str, Any]:
        """Extra ``from_pretrained`` / ``from_single_file`` arguments."""
        return {}

    def after_load(self, pipe: Any, dtype: torch.dtype) -> Any:
        """Dtype rules applied to a loaded pipeline (default: none)."""
        return pipe

    def make_tiny(self, out_dir: Path, *, seed: int) -> None:
        """Write a tiny random-weight pipeline of this family into the empty folder ``out_dir``
        (same seed → byte-identical files; the global RNG is left as it was)."""
        raise BadInput(f"family {self.name}: has no tiny model")

    # --- components ------------------------------------------------------------------------------
    def denoiser(self, pipe: Any) -> nn.Module:
        return getattr(pipe, self.denoiser_attr)

    def encoders(self, pipe: Any) -> dict[str, nn.Module]:
        """Every text encoder of ``pipe`` by file-key prefix (those the pipeline has)."""
        found = {s.prefix: getattr(pipe, s.attr, None) for s in self.text_encoders}
        return {k: v for k, v in found.items() if v is not None}

    def trainable_encoders(self, pipe: Any) -> dict[str, nn.Module]:
        """The text encoders an adapter may train, by file-key prefix."""
        allowed = {s.prefix for s in self.text_encoders if s.trainable}
        return {k: v for k, v in self.encoders(pipe).items() if k in allowed}

    def latent_multiple(self, pipe: Any) -> int:
        """Pixels a bucket side must be a multiple of (VAE factor × the denoiser's downsampling)."""
        vae = 2 ** (len(pipe.vae.config.block_out_channels) - 1)
        return vae * 2 ** (len(self.denoiser(pipe).config.block_out_channels) - 1)

    def latent_scale(self, pipe: Any) -> tuple[float, float]:
        """(shift, scale): training latents are ``(z − shift)·scale`` (SD: shift 0)."""
        shift = getattr(pipe.vae.config, "shift_factor", None) or 0.0
        return float(shift), float(pipe.vae.config.scaling_factor)

    # --- conditioning and the objective ----------------------------------------------------------
    def encode_prompts(self, pipe: Any, captions: list[str], device: torch.device) -> dict[str, Any]:
        """The keyword arguments of :meth:`predict` that come from the captions."""
        raise NotImplementedError

    def extra_conditioning(
        self, pipe: Any, geometry: list[ImageGeometry], device: torch.device
    ) -> dict[str, Any]:
        """More keyword arguments of :meth:`predict`, from each sample's geometry (default: none)."""
        return {}

    def objective(self, pipe: Any) -> Objective:
        raise NotImplementedError

    def predict(self, pipe: Any, x_t: torch.Tensor, t: torch.Tensor, cond: dict[str, Any]) -> torch.Tensor:
        """The denoiser's output for the objective's target."""
        raise NotImplementedError

    def make_scheduler(self, pipe: Any, sampler: str) -> Any:
        """A fresh evaluation scheduler named ``sampler`` (one of ``samplers``)."""
        raise NotImplementedError

    def noise_shape(self, pipe: Any, height: int, width: int) -> tuple[int, ...]:
        """Shape of one image's initial noise (default: the denoiser's latent channels × H/f × W/f)."""
        return (
            1,
            self.denoiser(pipe).config.in_channels,
            height // pipe.vae_scale_factor,
            width // pipe.vae_scale_factor,
        )

    def pipeline_latents(self, pipe: Any, noise: torch.Tensor) -> torch.Tensor:
        """The pipeline's ``latents=`` argument for a batch of initial noise (default: itself)."""
        return noise

    def pipeline_kwargs(self, pipe: Any, sampler: Any) -> dict[str, Any]:
        """More arguments of the pipeline call for these ``SamplerSettings`` (default: none; FLUX:
        T5's sequence length, and a negative prompt refused)."""
        return {}

    # --- module maps and file keys ---------------------------------------------------------------
    def select(self, preset: Any, info: Any) -> bool:
        """Whether ``preset`` trains this denoiser layer (a ``LayerInfo``)."""
        return bool(preset.unet(info))

    def denoiser_key(self, path: str, config: Mapping[str, Any]) -> str:
        """The file key of the denoiser layer at module path ``path`` (``config``: the denoiser's)."""
        return "lora_unet_" + path.replace(".", "_")

    def denoiser_aliases(self, path: str, config: Mapping[str, Any]) -> tuple[str, ...]:
        """Other keys files may name this layer by (read only)."""
        return ()

    def to_file(self, tensors: dict, modules: dict, denoiser: nn.Module) -> dict:
        """Adapter tensors keyed by layer (``denoiser_key``) → the file's layout, for a family whose
        files name layers that are not one-to-one with the denoiser's modules (FLUX's fused qkv).
        Default: the same tensors (``file_layout`` is False)."""
        return tensors

    def from_file(self, tensors: dict, modules: dict, denoiser: nn.Module, *, name: str) -> dict:
        """The inverse of :meth:`to_file`: a file's tensors → tensors keyed by layer."""
        return tensors

    file_layout: ClassVar[bool] = False
    """Whether :meth:`to_file` / :meth:`from_file` change anything (then the adapter code calls them)."""

    def key_map(self, denoiser: nn.Module | None = None) -> KeyMap:
        """The module map and file keys bound to one denoiser's config."""
        config = dict(getattr(denoiser, "config", None) or {})
        layout = self.file_layout and denoiser is not None
        return KeyMap(
            lambda path: self.denoiser_key(path, config),
            lambda path: self.denoiser_aliases(path, config),
            self.transformer_blocks,
            self.select,
            self.name,
            (lambda tensors, modules: self.to_file(tensors, modules, denoiser)) if layout else None,
            (lambda tensors, modules, name: self.from_file(tensors, modules, denoiser, name=name))
            if layout
            else None,
        )

    def __repr__(self) -> str:
        return f"<family {self.name}>"


FAMILIES: Registry[ModelFamily] = Registry(
    "family",
    entry_point="lyco_bench.families",
    packages=("lyco_bench.families",),
    skip=frozenset({"base"}),
    accept=accept_instances(ModelFamily, lambda obj: obj.name),
)
"""Every model family by name, discovered on first use (:mod:`lyco_bench.registry`)."""


def register_family(family: ModelFamily) -> ModelFamily:
    return FAMILIES.register(family.name, family)


def get_family(name: str) -> ModelFamily:
    if name not in FAMILIES:
        raise BadInput(f"family: unknown model family {name!r} (known: {', '.join(sorted(FAMILIES))})")
    return FAMILIES[name]


def family_of(pipe: Any) -> ModelFamily:
    """The family of a loaded pipeline (by its class; the default family when none claims it)."""
    class_name = type(pipe).__name__
    for family in FAMILIES.values():
        if family.claims_pipeline(class_name):
            return family
    return FAMILIES[DEFAULT_FAMILY]


def family_for_class(class_name: str, denoiser_config: Mapping[str, Any] | None = None) -> ModelFamily | None:
    """The family of a pipeline folder: by ``model_index.json``'s class, else by its denoiser config."""
    for family in FAMILIES.values():
        if family.claims_pipeline(class_name):
            return family
    if denoiser_config is not None:
        for family in FAMILIES.values():
            if family.claims_denoiser_config(denoiser_config):
                return family
    return None


def family_of_denoiser(denoiser: nn.Module | None) -> ModelFamily:
    """The family of a denoiser module by its config (the default family when none claims it, or
    for a module without a diffusers config)."""
    config = getattr(denoiser, "config", None)
    if config is not None:
        for family in FAMILIES.values():
            if family.claims_denoiser_config(dict(config)):
                return family
    return FAMILIES[DEFAULT_FAMILY]


def key_map_of(denoiser: nn.Module | None) -> KeyMap:
    """The module map and file keys for a denoiser's layers (:func:`family_of_denoiser`)."""
    return family_of_denoiser(denoiser).key_map(denoiser)


def family_of_checkpoint(keys: Collection[str]) -> ModelFamily | None:
    """The family of a single-file checkpoint by its tensor names (None: no family claims it)."""
    for family in FAMILIES.values():
        if family.claims_checkpoint(keys):
            return family
    return None


def family_identity(name: str) -> dict[str, str]:
    """What a family adds to a job's identity: nothing for the default family, else ``name.vN``."""
    if name == DEFAULT_FAMILY:
        return {}
    return {"family": f"{name}.v{get_family(name).version}"}
