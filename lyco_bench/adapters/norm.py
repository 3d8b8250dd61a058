"""A norm layer's affine parameters trained as a difference (LyCORIS ``norm`` module: file keys
``w_norm`` and ``b_norm``); the ``full`` preset uses it when ``train_norm``."""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from lyco_bench.errors import BadInput


class NormAdapter(nn.Module):
    """γ = γ0 + λ·Δγ, β = β0 + λ·Δβ for a GroupNorm/LayerNorm (Δ = 0 at init)."""

    algo: ClassVar[str] = "norm"
    file_keys: ClassVar[frozenset[str]] = frozenset({"w_norm", "b_norm"})
    detect_keys: ClassVar[frozenset[str]] = frozenset({"w_norm"})

    def __init__(self, base: nn.GroupNorm | nn.LayerNorm, *, multiplier: float = 1.0) -> None:
        super().__init__()
        if not isinstance(base, (nn.GroupNorm, nn.LayerNorm)) or base.weight is None:
            raise TypeError(f"{type(base).__name__} cannot be adapted as a norm layer")
        self._base = [base]  # not registered: the frozen base stays in the host model only
        self.multiplier = multiplier
        self.w_norm = nn.Parameter(torch.zeros_like(base.weight))
        self.b_norm = nn.Parameter(torch.zeros_like(base.bias)) if base.bias is not None else None

    @property
    def base(self) -> nn.GroupNorm | nn.LayerNorm:
        return self._base[0]

    def delta_weight(self) -> torch.Tensor:
        return self.w_norm

    def delta_bias(self) -> torch.Tensor | None:
        return self.b_norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        base = self.base
        weight = base.weight + self.multiplier * self.w_norm
        bias = None if base.bias is None else base.bias + self.multiplier * self.b_norm
        if isinstance(base, nn.GroupNorm):
            return F.group_norm(x, base.num_groups, weight, bias, base.eps)
        return F.layer_norm(x, base.normalized_shape, weight, bias, base.eps)

    def file_tensors(self) -> dict[str, torch.Tensor]:
        out = {"w_norm": self.w_norm}
        if self.b_norm is not None:
            out["b_norm"] = self.b_norm
        return out

    @classmethod
    def from_file_tensors(
        cls, base: nn.Module, tensors: dict[str, torch.Tensor], *, name: str
    ) -> NormAdapter:
        if not isinstance(base, (nn.GroupNorm, nn.LayerNorm)) or base.weight is None:
            raise BadInput(f"{name}: norm weights for a {type(base).__name__} layer")
        module = cls(base)
        for key, param in (("w_norm", module.w_norm), ("b_norm", module.b_norm)):
            if key not in tensors:
                continue
            if param is None or tuple(tensors[key].shape) != tuple(param.shape):
                want = None if param is None else tuple(param.shape)
                raise BadInput(f"{name}: {key} has shape {tuple(tensors[key].shape)}, the base needs {want}")
            with torch.no_grad():
                param.copy_(tensors[key].to(param.dtype))
        return module

    @staticmethod
    def rank_bound(tensors: dict[str, torch.Tensor]) -> int:
        return 1
