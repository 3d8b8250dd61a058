"""LoRA / LoCon: a rank-r product added to a frozen Linear or Conv2d weight.

    ΔW = (α/r)·B·A,   B: [out, r],  A: [r, in·k·k]        (Hu et al. 2021, eq. 3; docs/protocol.md §1.1)

Conv layers (LoCon): A is a k×k conv from `in` to r channels with the base's stride, padding and
dilation, B a 1×1 conv from r to `out` channels. With ``use_tucker`` and k > 1 the k×k part moves
to a core (Tucker decomposition, as LyCORIS's LoCon):

    ΔW[o, i, :, :] = (α/r)·Σ_{a,b} B[o, a]·M[a, b, :, :]·A[b, i]    A: 1×1, M: k×k [r, r, k, k], B: 1×1

Init (as kohya/LyCORIS): A (and M) Kaiming-uniform, B = 0, so ΔW = 0 at step 0.
File keys (kohya/LyCORIS): ``lora_down.weight`` = A, ``lora_up.weight`` = B, ``lora_mid.weight``
= M, ``alpha``; conv factors are stored as 4-D conv weights, linear ones as 2-D matrices.
With ``dora`` the update is weight-decomposed (``lyco_bench.adapters.dora``, key ``dora_scale``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from lyco_bench.adapters.amp import as_dtype, autocast_off, cast_grads, replay_autocast
from lyco_bench.adapters.base import (
    LYCORIS_LR_GRID,
    MEMORY_WEIGHT,
    AdapterModule,
    BaseLayer,
    CapacityRule,
    _MergedForward,
    alpha_tensor,
    check_keys,
    check_shape,
    matmul_cost,
    read_alpha,
    register_algorithm,
    tokens,
)
from lyco_bench.adapters.dora import DoRAMixin, dora_rank_bound, has_dora
from lyco_bench.adapters.options import DoRAOption, RankOptions, TuckerOption
from lyco_bench.adapters.rows import RowLayout
from lyco_bench.errors import BadInput


class LoRAOptions(DoRAOption, TuckerOption, RankOptions):
    """LoRA / LoCon settings; defaults are the paper's (dim 8, α 4)."""

    dim: int = Field(8, ge=1)
    """Rank r of ΔW = (α/r)·B·A."""
    alpha: float = 4.0
    """α of the scale α/r; left out: 4 with the default rank (the paper's 8/4), else dim (scale 1)."""


@register_algorithm
class LoRAModule(DoRAMixin, AdapterModule):
    """LoRA for Linear, LoCon (optionally Tucker) for Conv2d."""

    algo = "lora"
    file_keys = frozenset({"lora_down.weight", "lora_up.weight", "lora_mid.weight", "alpha", "dora_scale"})
    detect_keys = frozenset({"lora_down.weight", "lora_up.weight"})
    grad_mode = "bypass"
    Options = LoRAOptions
    aliases = ("locon",)
    row_layout = RowLayout(("lora_up.weight",), ("lora_down.weight",), ("dora_scale",), scaled_alpha=True)
    capacity = CapacityRule("dim", {8: 2, 32: 3})  # the paper's Capacity levels (§6)
    lr_grid = LYCORIS_LR_GRID

    def __init__(self, base: BaseLayer, options=None, *, multiplier: float = 1.0, **settings) -> None:
        super().__init__(base, options, multiplier=multiplier, **settings)
        dim, alpha, use_tucker = self.options.dim, self.options.alpha, self.options.use_tucker
        self.dim = int(dim)
        self.alpha = float(alpha)
        self.scale = self.alpha / self.dim
        w = base.weight
        out_ch, in_ch = w.shape[0], w.shape[1]
        k = tuple(w.shape[2:])  # () for Linear, (kh, kw) for Conv2d
        self.tucker = bool(use_tucker) and self.is_conv and k != (1, 1)
        if self.tucker:
            self.lora_down = self._new(dim, in_ch, 1, 1)
            self.lora_mid = self._new(dim, dim, *k)
            self.init_(self.lora_mid, nn.init.kaiming_uniform_, a=math.sqrt(5))
        else:
            self.lora_down = self._new(dim, in_ch, *k)
        self.lora_up = self._new(out_ch, dim, *((1, 1) if self.is_conv else ()))
        self.init_(self.lora_down, nn.init.kaiming_uniform_, a=math.sqrt(5))
        nn.init.zeros_(self.lora_up)

    # --- maths -----------------------------------------------------------------------------
    def update_weight(self) -> torch.Tensor:
        up = self.lora_up.flatten(1)  # (out, r)
        if self.tucker:
            down = self.lora_down.flatten(1)  # (r, in)
            # ΔW[o, i, h, w] = s·Σ_ab B[o,a] M[a,b,h,w] A[b,i]
            return torch.einsum("oa,abhw,bi->oihw", up * self.scale, self.lora_mid, down)
        dw = (up * self.scale) @ self.lora_down.flatten(1)  # (out, r) @ (r, in·k·k)
        return dw.view_as(self.base.weight)

    def merged_weight(self) -> torch.Tensor:
        if self.tucker or self.dora:
            return super().merged_weight()
        w0 = self.base.weight.to(
            self.lora_up.dtype
        )  # a half-precision base (base_dtype) in the factors' dtype
        # W0 + λs·B·A in one pass over the weight
        merged = torch.addmm(
            w0.view(w0.shape[0], -1),
            self.lora_up.flatten(1),
            self.lora_down.flatten(1),
            alpha=self.multiplier * self.scale,
        )
        return merged.view_as(w0)

    def update_bypass(self, x: torch.Tensor) -> torch.Tensor:
        if not self.is_conv:
            return F.linear(
                F.linear(x, self.lora_down), self.lora_up * self.scale
            )  # (…, in) → (…, r) → (…, out)
        b = self.base
        if self.tucker:
            h = F.conv2d(x, self.lora_down)  # (B, r, H, W)
            h = F.conv2d(h, self.lora_mid, None, b.stride, b.padding, b.dilation)  # (B, r, H', W')
        else:
            h = F.conv2d(x, self.lora_down, None, b.stride, b.padding, b.dilation)  # (B, r, H', W')
        return F.conv2d(h, self.lora_up * self.scale)  # (B, out, H', W')

    def prefers_merged(self, x: torch.Tensor) -> bool:
        n = tokens(x, self)
        out_ch, fan_in = self.base.weight.shape[0], self.base.weight[0].numel()
        r = self.dim
        rebuild = matmul_cost(out_ch, r, fan_in) + MEMORY_WEIGHT * out_ch * fan_in
        pair = matmul_cost(n, fan_in, r) + matmul_cost(n, r, out_ch)  # x·Aᵀ, then ·Bᵀ
        add = MEMORY_WEIGHT * n * out_ch
        if torch.is_grad_enabled():
            # merged: W0 + sBA built in forward and backward, two pairs of thin products
            # bypass: three pairs (forward, dL/dθ, dL/dx) and the output sum
            return 2 * rebuild < pair + add
        return rebuild < pair + add

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.dora or self.tucker or self.multiplier == 0:
            return super().forward(x)
        if not self.can_merge_forward(x) or not self.prefers_merged(x):
            return super().forward(x)
        return _MergedLoRA.apply(x, self, self.lora_down, self.lora_up)

    # --- file layout -------------------------------------------------------------------------
    def file_tensors(self) -> dict[str, torch.Tensor]:
        out = {
            "lora_down.weight": self.lora_down.detach(),
            "lora_up.weight": self.lora_up.detach(),
            "alpha": alpha_tensor(self.alpha),
        }
        if self.tucker:
            out["lora_mid.weight"] = self.lora_mid.detach()
        return {**out, **self.dora_file_tensors()}

    @classmethod
    def from_file_tensors(cls, base: BaseLayer, tensors: dict[str, torch.Tensor], *, name: str) -> LoRAModule:
        check_keys(name, tensors, cls.file_keys)
        down = tensors.get("lora_down.weight")
        up = tensors.get("lora_up.weight")
        if down is None or up is None:
            raise BadInput(f"{name}: lora needs lora_down.weight and lora_up.weight")
        if down.dim() < 2:
            raise BadInput(f"{name}: lora_down.weight must be at least 2-D, got shape {tuple(down.shape)}")
        dim = int(down.shape[0])
        w = base.weight
        out_ch, in_ch, k = w.shape[0], w.shape[1], tuple(w.shape[2:])
        mid = tensors.get("lora_mid.weight")
        is_conv = isinstance(base, nn.Conv2d)
        if mid is not None:
            if not is_conv or k == (1, 1):
                raise BadInput(f"{name}: lora_mid.weight given for a layer without a k×k kernel")
            check_shape(name, "lora_mid.weight", mid, (dim, dim, *k))
        down_shape = (dim, in_ch, 1, 1) if mid is not None else (dim, in_ch, *k)
        check_shape(
            name, "lora_down.weight", down.reshape(down.shape[0], -1), (dim, math.prod(down_shape[1:]))
        )
        check_shape(name, "lora_up.weight", up.reshape(up.shape[0], -1), (out_ch, dim))
        alpha = read_alpha(tensors, dim, name=name)
        module = cls(base, dim=dim, alpha=alpha, use_tucker=mid is not None, dora=has_dora(tensors))
        module.load_dora_scale(tensors, name=name)
        with torch.no_grad():
            # kohya writes 1×1 conv factors as 4-D and linear ones as 2-D; accept either layout.
            module.lora_down.copy_(down.reshape(module.lora_down.shape))
            module.lora_up.copy_(up.reshape(module.lora_up.shape))
            if mid is not None:
                module.lora_mid.copy_(mid)
        return module

    @classmethod
    def rank_bound(cls, tensors: dict[str, torch.Tensor]) -> int:
        down, up = tensors["lora_down.weight"], tensors["lora_up.weight"]
        fan_in = (
            down[0].numel()
            if "lora_mid.weight" not in tensors
            else down.shape[1] * math.prod(tensors["lora_mid.weight"].shape[2:])
        )
        bound = min(int(down.shape[0]), int(up.shape[0]), int(fan_in))
        return dora_rank_bound(tensors, bound, int(up.shape[0]), int(fan_in))

    @classmethod
    def truncate_tensors(
        cls, tensors: dict[str, torch.Tensor], rank: int, *, name: str
    ) -> dict[str, torch.Tensor]:
        """The first ``rank`` components (A1111's ``dyn=``); α is kept, so a reader's scale becomes
        α/rank — DyLoRA's scale at that rank."""
        dim = int(tensors["lora_down.weight"].shape[0])
        if "dora_scale" in tensors:  # its magnitudes normalize the full-rank W0 + ΔW: no rank order
            raise BadInput(f"{name}: a DoRA module (dora_scale) cannot be truncated to a rank")
        if not 1 <= rank <= dim:
            raise BadInput(f"{name}: rank {rank} is outside 1..{dim}")
        out = dict(tensors)
        out["lora_down.weight"] = tensors["lora_down.weight"][:rank].contiguous()
        out["lora_up.weight"] = tensors["lora_up.weight"][:, :rank].contiguous()
        if "lora_mid.weight" in tensors:
            out["lora_mid.weight"] = tensors["lora_mid.weight"][:rank, :rank].contiguous()
        out.setdefault("alpha", alpha_tensor(dim))  # no alpha means scale 1 at the full rank
        return out


class _MergedLoRA(_MergedForward):
    """y = op(x, W0 + λsBA): the shared merged forward; backward with the four thin products only.

    Saves x alone (W0 + λsBA is rebuilt in backward). With g = dL/dy, u = x·Aᵀ, v = g·B:
    dL/dx = g·(W0 + λsBA), dL/dB = λs·gᵀu, dL/dA = λs·vᵀx (for conv: u = conv(x, A),
    v = 1×1 conv of g with Bᵀ, dL/dA = conv weight-gradient of (x, v)).
    """

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        (x,) = ctx.saved_tensors  # in the forward's compute dtype, like g
        m: LoRAModule = ctx.module
        with replay_autocast(ctx):
            grad_x, grad_down, grad_up = _lora_backward(m, x, g, ctx.needs_input_grad)
        grad_x = as_dtype(grad_x, ctx.input_dtype)
        return grad_x, None, *cast_grads((grad_down, grad_up), ctx.param_dtypes)


def _lora_backward(
    m: LoRAModule, x: torch.Tensor, g: torch.Tensor, needs: tuple[bool, ...]
) -> tuple[torch.Tensor | None, ...]:
    """(dL/dx, dL/dA, dL/dB) of the merged LoRA forward, every product in g's dtype."""
    base, dt = m.base, g.dtype
    down, up = m.lora_down.to(dt), m.lora_up.to(dt)  # what autocast casts the factors to
    s = m.scale * m.multiplier
    grad_x = grad_down = grad_up = None
    if needs[0]:
        with autocast_off(x.device.type):
            w = m.merged_weight().to(dt)  # built in the parameters' dtype, cast as in forward
        if m.is_conv:
            grad_x = torch.nn.grad.conv2d_input(x.shape, w, g, base.stride, base.padding, base.dilation)
        else:
            grad_x = g @ w  # (…, out) @ (out, in)
        del w
    if not (needs[2] or needs[3]):
        return grad_x, None, None
    if m.is_conv:
        u = F.conv2d(x, down, None, base.stride, base.padding, base.dilation)  # (B, r, H', W')
        v = F.conv2d(g, up.transpose(0, 1))  # (B, r, H', W')
        grad_up = torch.einsum("bohw,brhw->or", g, u).mul_(s).view_as(up)
        grad_down = torch.nn.grad.conv2d_weight(x, down.shape, v, base.stride, base.padding, base.dilation)
    else:
        # Thin products are written as M @ Kᵀ with K row-major and reductions over N as
        # Pᵀ @ Q: MKL runs these layouts 2–4× faster than the transposed alternatives.
        x2, g2 = x.reshape(-1, x.shape[-1]), g.reshape(-1, g.shape[-1])  # (N, in), (N, out)
        u = x2 @ down.t()  # (N, r)
        v = g2 @ up.t().contiguous().t()  # (N, r)
        grad_up = (u.t() @ g2).t().mul_(s)  # (r, N) @ (N, out) -> (out, r)
        grad_down = v.t() @ x2  # (r, N) @ (N, in)
    return grad_x, grad_down.mul_(s), grad_up
