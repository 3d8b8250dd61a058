"""GLoRA: a learned transform of the frozen weight plus a low-rank term (Chavan et al. 2023).

    ΔW = (α/r)·(W0·a1·a2 + b1·b2),   a1: [in, r],  a2: [r, in],  b1: [out, r],  b2: [r, in·k·k]

W0·a1·a2 changes the frozen weight relative to itself (a rank-r transform of its input space);
b1·b2 is a LoRA. ΔW depends on W0, is linear in each factor and merges exactly.

Conv layers (as LyCORIS): a1·a2 mixes the input channels at every kernel position,
ΔW[o, j, :, :] = (α/r)·Σ_i W0[o, i, :, :]·(a1·a2)[i, j], so a1, a2 are 1×1 convs; b2 is a k×k conv
with the base's stride, padding and dilation and b1 a 1×1 conv. rank(ΔW) ≤ r·k·k + r (ΔW
flattened to [out, in·k·k]: W0·a1 keeps the kernel axes). LyCORIS accepts ``use_tucker`` for
GLoRA but clears it before use (and cannot load a ``bm.weight``), so there is no Tucker option.

Init (as LyCORIS): a1, b1 Kaiming-uniform, a2 = b2 = 0, so ΔW = 0 at step 0.

File keys (LyCORIS ≥ 3): ``a1.weight`` [in, r], ``a2.weight`` [r, in], ``b1.weight`` [out, r],
``b2.weight`` [r, in(, k, k)], ``alpha``; conv factors are 4-D conv weights. Older LyCORIS (2.x,
Linear and 1×1 conv only) named the factors the other way round — a1 [r, in], a2 [in, r],
b1 [r, in], b2 [out, r], ΔW = (α/r)·(W0·a2·a1 + b2·b1) — and is read by shape; shapes that fit
both (r = in = out) are read as the current layout, which is what LyCORIS writes now.

Bypass, without W0·x: with U = W0·a1 ([out, r], once per call, a k×k conv weight [out, r, k, k]
for conv), ΔW·x = (α/r)·(U·(a2·x) + b1·(b2·x)) — a LoRA of rank 2r whose up factor is [U | b1]
(one pair of thin products for Linear and 1×1 conv).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from lyco_bench.adapters.base import (
    LYCORIS_LR_GRID,
    MEMORY_WEIGHT,
    AdapterModule,
    BaseLayer,
    CapacityRule,
    alpha_tensor,
    check_keys,
    check_shape,
    matmul_cost,
    read_alpha,
    register_algorithm,
    tokens,
)
from lyco_bench.adapters.options import RankOptions
from lyco_bench.errors import BadInput

_FACTORS = ("a1.weight", "a2.weight", "b1.weight", "b2.weight")


class GLoRAOptions(RankOptions):
    """GLoRA settings; defaults dim 8, α 4."""

    dim: int = Field(8, ge=1)
    """Rank r of each of the two products a1·a2 and b1·b2."""
    alpha: float = 4.0
    """α of the scale α/r; left out: 4 with the default rank, else dim (scale 1). 8/4 is the
    benchmark's LoRA pair: GLoRA's additive half b1·b2 is then exactly the default LoRA at the
    same learning rate, and the W0-relative half takes steps of the same scale, so the lr grid
    and the comparison with LoRA isolate what the W0·a1·a2 term adds."""


@register_algorithm
class GLoRAModule(AdapterModule):
    """GLoRA for Linear and Conv2d."""

    algo = "glora"
    Options = GLoRAOptions
    file_keys = frozenset({*_FACTORS, "alpha"})
    detect_keys = frozenset(_FACTORS)
    grad_mode = "bypass"
    # LoRA's Capacity levels (the paper's, §6): the same rank is the same level.
    capacity = CapacityRule("dim", {8: 2, 32: 3})
    lr_grid = LYCORIS_LR_GRID

    def __init__(self, base: BaseLayer, options=None, *, multiplier: float = 1.0, **settings) -> None:
        super().__init__(base, options, multiplier=multiplier, **settings)
        self.dim = int(self.options.dim)
        self.alpha = float(self.options.alpha)
        self.scale = self.alpha / self.dim
        w = base.weight
        out_ch, in_ch, k = w.shape[0], w.shape[1], tuple(w.shape[2:])
        one = (1, 1) if self.is_conv else ()
        r = self.dim
        self.a1 = self._new(in_ch, r, *one)
        self.a2 = self._new(r, in_ch, *one)
        self.b1 = self._new(out_ch, r, *one)
        self.b2 = self._new(r, in_ch, *k)
        self.init_(self.a1, nn.init.kaiming_uniform_, a=math.sqrt(5))
        self.init_(self.b1, nn.init.kaiming_uniform_, a=math.sqrt(5))
        nn.init.zeros_(self.a2)
        nn.init.zeros_(self.b2)

    @property
    def pointwise(self) -> bool:
        """Linear or 1×1 conv: ΔW is one matrix product [U | b1]·[a2; b2]."""
        return not self.is_conv or tuple(self.base.weight.shape[2:]) == (1, 1)

    # --- maths -----------------------------------------------------------------------------
    def w0_a1(self) -> torch.Tensor:
        """U = W0·a1: (out, r) for Linear, (out, r, kh, kw) for conv (the kernel axes kept)."""
        a1 = self.a1.flatten(1)  # a1: (in, r)
        w0 = self.base.weight.to(a1.dtype)  # a half-precision base (base_dtype) in the factors' dtype
        if not self.is_conv:
            return w0 @ a1
        return torch.einsum("oihw,ir->orhw", w0, a1)

    def _pair(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(up [out, 2r], down [2r, in]) with ΔW = s·up·down (Linear and 1×1 conv)."""
        up = torch.cat([self.w0_a1().flatten(1), self.b1.flatten(1)], dim=1)
        down = torch.cat([self.a2.flatten(1), self.b2.flatten(1)], dim=0)
        return up, down

    def delta_weight(self) -> torch.Tensor:
        w0 = self.base.weight
        if self.pointwise:
            up, down = self._pair()
            return ((up * self.scale) @ down).view_as(w0)
        wa = torch.einsum("orhw,ri->oihw", self.w0_a1() * self.scale, self.a2.flatten(1))
        wb = (self.b1.flatten(1) * self.scale) @ self.b2.flatten(1)  # (out, in·k·k)
        return wa + wb.view_as(w0)

    def merged_weight(self) -> torch.Tensor:
        if not self.pointwise:
            return super().merged_weight()
        w0 = self.base.weight.to(self.a1.dtype)
        up, down = self._pair()
        # W0 + λs·[U | b1]·[a2; b2] in one pass over the weight
        merged = torch.addmm(w0.view(w0.shape[0], -1), up, down, alpha=self.multiplier * self.scale)
        return merged.view_as(w0)

    def bypass(self, x: torch.Tensor) -> torch.Tensor:
        b = self.base
        if not self.is_conv:
            up, down = self._pair()
            return F.linear(F.linear(x, down), up * self.scale)  # (…, in) → (…, 2r) → (…, out)
        conv = dict(stride=b.stride, padding=b.padding, dilation=b.dilation)
        if self.pointwise:
            up, down = self._pair()
            h = F.conv2d(x, down.view(*down.shape, 1, 1), None, **conv)  # (B, 2r, H', W')
            return F.conv2d(h, (up * self.scale).view(*up.shape, 1, 1))  # (B, out, H', W')
        # a half: 1×1 a2 on the input, then U = W0·a1 as a k×k conv from r channels
        ya = F.conv2d(F.conv2d(x, self.a2), self.w0_a1() * self.scale, None, **conv)
        # b half: k×k b2 to r channels, then 1×1 b1
        yb = F.conv2d(F.conv2d(x, self.b2, None, **conv), self.b1 * self.scale)
        return ya.add_(yb)

    def prefers_merged(self, x: torch.Tensor) -> bool:
        w = self.base.weight
        n = tokens(x, self)
        out_ch, in_ch, fan_in = w.shape[0], w.shape[1], w[0].numel()
        kk, r = fan_in // in_ch, self.dim
        u = matmul_cost(out_ch * kk, in_ch, r)  # W0·a1, needed by both ways
        rebuild = u + matmul_cost(out_ch, 2 * r, fan_in) + MEMORY_WEIGHT * out_ch * fan_in
        if self.pointwise:
            pair = matmul_cost(n, fan_in, 2 * r) + matmul_cost(n, 2 * r, out_ch)
        else:
            n_in = x.numel() // in_ch  # input positions (before stride)
            pair = matmul_cost(n_in, in_ch, r) + matmul_cost(n, r * kk, out_ch)
            pair += matmul_cost(n, fan_in, r) + matmul_cost(n, r, out_ch)
        pair += u
        add = MEMORY_WEIGHT * n * out_ch
        if torch.is_grad_enabled():
            # as LoRA: merged builds W0 + λΔW in forward and backward and re-runs the thin
            # products once for dL/dθ; the bypass runs them for forward, dL/dθ and dL/dx
            return 2 * rebuild < pair + add
        return rebuild < pair + add

    # --- file layout -------------------------------------------------------------------------
    def file_tensors(self) -> dict[str, torch.Tensor]:
        return {
            "a1.weight": self.a1.detach(),
            "a2.weight": self.a2.detach(),
            "b1.weight": self.b1.detach(),
            "b2.weight": self.b2.detach(),
            "alpha": alpha_tensor(self.alpha),
        }

    @classmethod
    def from_file_tensors(
        cls, base: BaseLayer, tensors: dict[str, torch.Tensor], *, name: str
    ) -> GLoRAModule:
        check_keys(name, tensors, cls.file_keys)
        missing = [key for key in _FACTORS if key not in tensors]
        if missing:
            raise BadInput(f"{name}: glora needs {', '.join(_FACTORS)} (missing {missing[0]})")
        for key in _FACTORS:
            if tensors[key].dim() < 2:
                raise BadInput(f"{name}: {key} must be at least 2-D, got shape {tuple(tensors[key].shape)}")
        w = base.weight
        out_ch, in_ch, fan_in = w.shape[0], w.shape[1], w[0].numel()
        flat = {key: tensors[key].flatten(1) for key in _FACTORS}
        if not _fits_current(flat, out_ch, in_ch, fan_in) and _fits_old(flat, out_ch, in_ch, fan_in):
            flat = _old_to_current(flat)
        dim = int(flat["a2.weight"].shape[0])
        expected = {
            "a1.weight": (in_ch, dim),
            "a2.weight": (dim, in_ch),
            "b1.weight": (out_ch, dim),
            "b2.weight": (dim, fan_in),
        }
        for key, shape in expected.items():
            check_shape(name, key, flat[key], shape)
        module = cls(base, dim=dim, alpha=read_alpha(tensors, dim, name=name))
        with torch.no_grad():
            for key in _FACTORS:
                param = getattr(module, key.split(".")[0])
                param.copy_(flat[key].reshape(param.shape))
        return module

    @classmethod
    def rank_bound(cls, tensors: dict[str, torch.Tensor]) -> int:
        flat = {key: tensors[key].flatten(1) for key in _FACTORS}
        if not _consistent_current(flat) and _consistent_old(flat):
            flat = _old_to_current(flat)
        a1, a2, b1, b2 = (flat[key] for key in _FACTORS)
        in_ch, r = a1.shape
        out_ch, fan_in = b1.shape[0], b2.shape[1]
        kk = max(1, fan_in // in_ch)
        rank_a = min(r, in_ch)  # rank(a1·a2); W0·a1·a2 keeps k·k kernel positions
        rank_b = min(r, out_ch, fan_in)
        return int(min(out_ch, fan_in, rank_a * kk + rank_b))


def _fits_current(flat: dict[str, torch.Tensor], out_ch: int, in_ch: int, fan_in: int) -> bool:
    r = flat["a2.weight"].shape[0]
    want = {
        "a1.weight": (in_ch, r),
        "a2.weight": (r, in_ch),
        "b1.weight": (out_ch, r),
        "b2.weight": (r, fan_in),
    }
    return all(tuple(flat[key].shape) == shape for key, shape in want.items())


def _fits_old(flat: dict[str, torch.Tensor], out_ch: int, in_ch: int, fan_in: int) -> bool:
    """Older LyCORIS's layout (Linear and 1×1 conv only): a1 [r, in], a2 [in, r], b1 [r, in], b2 [out, r]."""
    r = flat["a1.weight"].shape[0]
    want = {
        "a1.weight": (r, in_ch),
        "a2.weight": (in_ch, r),
        "b1.weight": (r, in_ch),
        "b2.weight": (out_ch, r),
    }
    return fan_in == in_ch and all(tuple(flat[key].shape) == shape for key, shape in want.items())


def _consistent_current(flat: dict[str, torch.Tensor]) -> bool:
    a1, a2, b1, b2 = (flat[key].shape for key in _FACTORS)
    return a1[1] == a2[0] == b1[1] == b2[0] and a1[0] == a2[1]


def _consistent_old(flat: dict[str, torch.Tensor]) -> bool:
    a1, a2, b1, b2 = (flat[key].shape for key in _FACTORS)
    return a1[0] == a2[1] == b1[0] == b2[1] and a1[1] == a2[0] == b1[1]


def _old_to_current(flat: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Older LyCORIS's ΔW = W0·a2·a1 + b2·b1 in the current names (ΔW = W0·a1·a2 + b1·b2)."""
    return {
        "a1.weight": flat["a2.weight"],
        "a2.weight": flat["a1.weight"],
        "b1.weight": flat["b2.weight"],
        "b2.weight": flat["b1.weight"],
    }
