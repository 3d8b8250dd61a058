"""(IA)³: a learned vector that rescales a layer's activations (Liu et al. 2022, "Few-Shot
Parameter-Efficient Fine-Tuning is Better and Cheaper than In-Context Learning", §3.3).

One vector w per layer, l = 1 + λ·w (λ the multiplier), applied on one side of the frozen layer:

    output scaling   y = l ⊙ (W0·x + b)        ΔW = diag(w)·W0,   Δb = w ⊙ b0      w: [out]
    input scaling    y = W0·(l ⊙ x) + b        ΔW = W0·diag(w),   Δb = none        w: [in]

(for Conv2d the vector scales the output or input channels; zero padding keeps input scaling
exact). The paper rescales keys, values and the feed-forward hidden activation; in a UNet and a
CLIP text encoder that is the output of attn1/attn2 ``to_k``/``to_v`` and ``k_proj``/``v_proj``
and the input of ``ff.net.2`` and ``mlp.fc2`` (the ``ia3`` preset).

Parametrization: LyCORIS's. The learned tensor is w with l = 1 + λ·w and w = 0 at init (ΔW = 0,
as for every other algorithm here); PEFT learns l itself, initialized to 1. The two have the same
gradient (dL/dw = dL/dl) and the same function for l = 1 + w; they differ in what a multiplier
means (λ scales w, so λ = 0 is the base model and λ·ΔW is linear in λ) and in weight decay (it
pulls w towards 0, i.e. l towards 1, not l towards 0). Files keep LyCORIS's layout, so its tools
read them: ``weight`` = w (shape [C] for Linear, [1, C, 1, 1] for Conv2d) and ``on_input``
(int64 scalar, 1 for input scaling).

Bias and merging: with l linear in λ, W0 + λ·ΔW and b0 + λ·Δb reproduce the forward exactly.
Output scaling scales the bias too, as the paper's l ⊙ (Wx + b), PEFT's forward and merge and
LyCORIS's bypass forward do; LyCORIS's default (rebuild) forward and merge, and therefore A1111
and ComfyUI, scale W only and leave b unscaled, which differs by λ·w ⊙ b0 on layers with a bias
(not the UNet's to_k/to_v, which have none; the text encoder's k_proj/v_proj have one).

LyCORIS 4.x cannot reload IA3 files (its ``make_module_from_state_dict`` takes the vector alone
while the loader passes ``weight`` and ``on_input``, a TypeError); they load here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from lyco_bench.adapters.base import (
    AdapterModule,
    AlgorithmOptions,
    BaseLayer,
    check_keys,
    check_shape,
    register_algorithm,
)
from lyco_bench.adapters.presets.base import LayerInfo, Preset, register_preset, te_layer
from lyco_bench.errors import BadInput

# Layers that read a feed-forward block's hidden activation (UNet transformer blocks, CLIP text
# encoder): (IA)³ scales their input, as LyCORIS's ia3 preset does.
FEEDFORWARD_KEY_SUFFIXES = ("_ff_net_2", "_mlp_fc2")


class IA3Options(AlgorithmOptions):
    """(IA)³ settings: only which side of the layer the vector scales."""

    on_input: bool | None = None
    """Scale the layer's input, W0·(l ⊙ x) + b, instead of its output, l ⊙ (W0·x + b). Unset:
    automatic — input for the layers that read a feed-forward block's hidden activation (UNet
    ``ff.net.2``, text-encoder ``mlp.fc2``), output for every other layer (LyCORIS's ia3 preset)."""


@register_algorithm
class IA3Module(AdapterModule):
    """(IA)³ on one Linear or Conv2d layer: l = 1 + λ·w scales its output (or input) channels."""

    algo = "ia3"
    Options = IA3Options
    file_keys = frozenset({"weight", "on_input"})
    detect_keys = frozenset({"on_input"})  # LyCORIS's detection key; ``weight`` alone is ambiguous
    default_lr = 5e-3  # the (IA)³ reference learning rate the benchmark uses
    merges_exactly = True

    def __init__(self, base: BaseLayer, options=None, *, multiplier: float = 1.0, **settings) -> None:
        super().__init__(base, options, multiplier=multiplier, **settings)
        # Unset without a layer key (see layer_settings): output scaling, LyCORIS's module default.
        self.on_input = bool(self.options.on_input)
        w0 = base.weight
        channels = w0.shape[1] if self.on_input else w0.shape[0]
        # The learned w (l = 1 + λ·w), in LyCORIS's file shape: [C] or [1, C, 1, 1]; zero at init.
        self.vector = self._new(*((1, channels, 1, 1) if self.is_conv else (channels,)))
        torch.nn.init.zeros_(self.vector)

    @classmethod
    def layer_settings(cls, key: str, settings: Mapping[str, Any]) -> dict[str, Any]:
        """The settings for the layer with file key ``key``: ``on_input`` unset becomes True for
        the layers that read a feed-forward hidden activation (``…_ff_net_2``, ``…_mlp_fc2``) and
        False elsewhere."""
        settings = dict(settings)
        if settings.get("on_input") is None:
            settings["on_input"] = key.endswith(FEEDFORWARD_KEY_SUFFIXES)
        return settings

    # --- maths -----------------------------------------------------------------------------
    def _channel(self, v: torch.Tensor) -> torch.Tensor:
        """The vector shaped to broadcast over an activation's channel axis (last for Linear,
        the one before H, W for Conv2d)."""
        return v.view(-1, 1, 1) if self.is_conv else v.view(-1)

    def _weight_axis(self, v: torch.Tensor) -> torch.Tensor:
        """The vector shaped to broadcast over W0's out (output scaling) or in (input) axis."""
        w0 = self.base.weight
        shape = [1] * w0.dim()
        shape[1 if self.on_input else 0] = -1
        return v.reshape(shape)

    def delta_weight(self) -> torch.Tensor:
        return self._weight_axis(self.vector) * self.base.weight

    def delta_bias(self) -> torch.Tensor | None:
        b0 = self.base.bias
        if self.on_input or b0 is None:
            return None
        return self.vector.view(-1) * b0

    def bypass(self, x: torch.Tensor) -> torch.Tensor:
        """ΔW·x without bias, as elementwise scalings: w ⊙ (W0·x) or W0·(w ⊙ x)."""
        if self.on_input:
            return self.base_op(x * self._channel(self.vector).to(x.dtype), self.base.weight, None)
        y = self.base_op(x, self.base.weight, None)
        return y * self._channel(self.vector).to(y.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """One base op and one elementwise product with l = 1 + λ·w: l ⊙ base(x) or base(l ⊙ x)."""
        if self.multiplier == 0:
            return self.base(x)
        scale = self._channel(self.vector) * self.multiplier + 1
        if self.on_input:
            return self.base(x * scale.to(x.dtype))
        y = self.base(x)
        return y * scale.to(y.dtype)

    # --- file layout -------------------------------------------------------------------------
    def file_tensors(self) -> dict[str, torch.Tensor]:
        return {
            "weight": self.vector.detach(),
            "on_input": torch.tensor(int(self.on_input), dtype=torch.int64),
        }

    @classmethod
    def from_file_tensors(cls, base: BaseLayer, tensors: dict[str, torch.Tensor], *, name: str) -> IA3Module:
        check_keys(name, tensors, cls.file_keys)
        vector, flag = tensors.get("weight"), tensors.get("on_input")
        if vector is None or flag is None:
            raise BadInput(f"{name}: ia3 needs weight and on_input")
        if flag.numel() != 1 or flag.reshape(()).item() not in (0, 1):
            raise BadInput(f"{name}: on_input must be a scalar 0 or 1, got {flag.tolist()}")
        on_input = bool(flag.reshape(()).item())
        module = cls(base, on_input=on_input)
        # LyCORIS writes [C] for Linear and [1, C, 1, 1] for Conv2d; accept either layout.
        channels = module.vector.numel()
        check_shape(name, "weight", vector.reshape(-1) if vector.numel() == channels else vector, (channels,))
        with torch.no_grad():
            module.vector.copy_(vector.reshape(module.vector.shape))
        return module

    @classmethod
    def rank_bound(cls, tensors: dict[str, torch.Tensor]) -> int:
        """rank(ΔW) ≤ the number of nonzero entries of w; for input scaling of a k×k conv that is
        times k², which the file does not hold (NotImplementedError: unknown)."""
        vector = tensors["weight"]
        if bool(tensors["on_input"].reshape(()).item()) and vector.dim() == 4:
            raise NotImplementedError("the kernel size of an input-scaled conv is not in the file")
        return int(torch.count_nonzero(vector))

    @classmethod
    def parameter_count(cls, tensors: dict[str, torch.Tensor]) -> int:
        return int(tensors["weight"].numel())  # ``on_input`` is a flag, not a parameter


# --- the ``ia3`` preset: the layers (IA)³ rescales (Liu et al. 2022; LyCORIS's ia3 preset) --------
def _ia3_unet(info: LayerInfo) -> bool:
    """attn1/attn2 to_k/to_v and ff.net.2 (a Linear) of the UNet's transformer blocks."""
    if info.parts[-3:] == ["ff", "net", "2"]:
        return info.in_transformer_block and isinstance(info.layer, torch.nn.Linear)
    return info.attention_projection(("to_k", "to_v"))


def _ia3_text_encoder(path: str) -> bool:
    """Text-encoder self_attn k_proj/v_proj and mlp.fc2."""
    parts = te_layer(path)
    if parts is None:
        return False
    return (parts[-2] == "self_attn" and parts[-1] in ("k_proj", "v_proj")) or parts[-2:] == ["mlp", "fc2"]


register_preset(
    Preset(
        name="ia3",
        unet=_ia3_unet,
        text_encoder=_ia3_text_encoder,
        description="keys, values and the feed-forward hidden activation, as (IA)³ rescales them",
    )
)
