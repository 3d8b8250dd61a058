"""The preset contract: a :class:`Preset` says, layer by layer, whether an adapter trains it.

A preset sees each Linear/Conv2d of the UNet as a :class:`LayerInfo` (its module path, the layer,
whether it lies inside a transformer block) and each Linear of the text encoder by its module path,
and answers yes or no; ``norm`` says whether ``train_norm`` may add the UNet's norm layers.
Built-ins live in this package, one file each; an algorithm's own preset lives in its file (ia3);
other packages declare theirs under the ``lyco_bench.presets`` entry point (a module that calls
:func:`register_preset`, or a ``Preset`` object).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from lyco_bench.registry import Registry, accept_instances

# Module names of the layers presets select (diffusers UNet, transformers CLIP text encoder).
ATTN_PROJECTIONS = ("to_q", "to_k", "to_v", "to_out.0")
TE_ATTN_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "out_proj")
TE_MLP = ("fc1", "fc2")


@dataclass(frozen=True)
class LayerInfo:
    """A UNet layer as a preset sees it."""

    path: str
    """Module path in the UNet (``down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q``)."""
    layer: nn.Module
    in_transformer_block: bool
    """Inside one of the denoiser's transformer blocks (the model family's block classes; SD/SDXL:
    Transformer2DModel: attention, feed-forward, proj_in/out)."""
    enclosing: tuple[str, ...] = ()
    """Class names of the modules that contain the layer, outermost first (LyCORIS selects layers
    by these: ``ResnetBlock2D``, ``TimestepEmbedding``…)."""

    @property
    def parts(self) -> list[str]:
        return self.path.split(".")

    def attention_projection(self, names: tuple[str, ...]) -> bool:
        """A Linear ``names`` projection (``to_out.0`` style names included) of attn1/attn2."""
        parts = self.parts
        if not isinstance(self.layer, nn.Linear) or not self.in_transformer_block:
            return False
        tail = ".".join(parts[-2:]) if parts[-1].isdigit() else parts[-1]
        owner = parts[-3] if parts[-1].isdigit() else parts[-2]
        return tail in names and owner in ("attn1", "attn2")


def te_layer(path: str) -> list[str] | None:
    """The module path's parts if it lies in a text-encoder layer (``…layers.N.…``), else None."""
    parts = path.split(".")
    return parts if len(parts) >= 2 and "layers" in parts else None


@dataclass(frozen=True)
class Preset:
    name: str
    unet: Callable[[LayerInfo], bool]
    """Whether this UNet Linear/Conv2d is trained."""
    text_encoder: Callable[[str], bool]
    """Whether this text-encoder Linear (by module path) is trained."""
    description: str
    norm: bool = False
    """``train_norm`` may add the UNet's GroupNorm/LayerNorm layers (the paper's ``full``)."""


PRESETS: Registry[Preset] = Registry(
    "preset",
    entry_point="lyco_bench.presets",
    packages=("lyco_bench.adapters.presets", "lyco_bench.adapters.algorithms"),
    skip=frozenset({"base"}),
    accept=accept_instances(Preset, lambda obj: obj.name),
)
"""Every preset by name, discovered on first use (:mod:`lyco_bench.registry`)."""


def register_preset(preset: Preset) -> Preset:
    return PRESETS.register(preset.name, preset)


def te_attention(path: str) -> bool:
    """Text-encoder self-attention q/k/v/out projections."""
    parts = te_layer(path)
    return parts is not None and parts[-2] == "self_attn" and parts[-1] in TE_ATTN_PROJECTIONS


def te_attention_mlp(path: str) -> bool:
    """Text-encoder self-attention projections and MLP (fc1, fc2)."""
    parts = te_layer(path)
    return te_attention(path) or (parts is not None and parts[-2] == "mlp" and parts[-1] in TE_MLP)
