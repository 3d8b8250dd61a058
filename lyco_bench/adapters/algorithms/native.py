"""Native fine-tuning: a trainable copy of the layer's weight and bias (docs/protocol.md §1.1, "native").

    W = W0 + ΔW with ΔW = W − W0,   Δb = b − b0

The copy is initialized to W0 (ΔW = 0) and the forward is one F.linear / F.conv2d with it, so
training costs what plain fine-tuning costs, and AdamW's weight decay acts on W itself, as in
plain fine-tuning. The frozen W0 stays in the host model so ΔW can be saved and merged.
File keys (LyCORIS "full"): ``diff`` = ΔW and ``diff_b`` = Δb (when the layer has a bias).
It has no settings.
"""

from __future__ import annotations

import torch
from torch import nn

from lyco_bench.adapters.base import (
    AdapterModule,
    BaseLayer,
    CapacityRule,
    check_keys,
    check_shape,
    register_algorithm,
)
from lyco_bench.adapters.rows import RowLayout
from lyco_bench.errors import BadInput


@register_algorithm
class NativeModule(AdapterModule):
    """Plain fine-tuning of one Linear or Conv2d layer, stored as a weight difference."""

    algo = "native"
    aliases = ("full",)  # LyCORIS's name
    default_lr = 1e-6  # the paper's (§2)
    # One capacity for the whole algorithm (the paper's 4), folded into Algo by the analysis.
    capacity = CapacityRule(constant=4.0, fold_into_algo=True)
    lr_grid = (5e-7, 1e-6, 5e-6)  # the paper's lr levels for native fine-tuning (§6)
    file_keys = frozenset({"diff", "diff_b"})
    detect_keys = frozenset({"diff"})
    row_layout = RowLayout(rows=("diff", "diff_b"))
    grad_mode = "dense"

    def __init__(self, base: BaseLayer, options=None, *, multiplier: float = 1.0, **settings) -> None:
        super().__init__(base, options, multiplier=multiplier, **settings)
        self.weight = nn.Parameter(base.weight.detach().clone())
        self.bias = None if base.bias is None else nn.Parameter(base.bias.detach().clone())

    # --- maths -----------------------------------------------------------------------------
    def delta_weight(self) -> torch.Tensor:
        return self.weight - self.base.weight

    def delta_bias(self) -> torch.Tensor | None:
        return None if self.bias is None else self.bias - self.base.bias

    def bypass(self, x: torch.Tensor) -> torch.Tensor:
        return self.base_op(x, self.delta_weight(), None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.multiplier == 1:
            return self.base_op(x, self.weight, self.bias)  # one op: W = W0 + ΔW is the copy itself
        lam = self.multiplier
        bias = None if self.bias is None else self.base.bias + lam * self.delta_bias()
        return self.base_op(x, self.base.weight + lam * self.delta_weight(), bias)

    # --- file layout -------------------------------------------------------------------------
    def file_tensors(self) -> dict[str, torch.Tensor]:
        out = {"diff": self.delta_weight().detach()}
        if self.bias is not None:
            out["diff_b"] = self.delta_bias().detach()
        return out

    @classmethod
    def from_file_tensors(
        cls, base: BaseLayer, tensors: dict[str, torch.Tensor], *, name: str
    ) -> NativeModule:
        check_keys(name, tensors, cls.file_keys)
        if "diff" not in tensors:
            raise BadInput(f"{name}: native needs diff")
        check_shape(name, "diff", tensors["diff"], tuple(base.weight.shape))
        if "diff_b" in tensors:
            if base.bias is None:
                raise BadInput(f"{name}: diff_b given for a layer without a bias")
            check_shape(name, "diff_b", tensors["diff_b"], tuple(base.bias.shape))
        module = cls(base)
        with torch.no_grad():
            module.weight.add_(tensors["diff"].to(module.weight))
            if module.bias is not None and "diff_b" in tensors:
                module.bias.add_(tensors["diff_b"].to(module.bias))
        return module

    @classmethod
    def rank_bound(cls, tensors: dict[str, torch.Tensor]) -> int:
        diff = tensors["diff"]
        return int(min(diff.shape[0], diff[0].numel()))
