"""LoHa: the Hadamard product of two rank-r products (Hyeon-Woo et al. 2022, FedPara; docs/protocol.md §1.1).

    ΔW = (α/r)·(W1a·W1b) ⊙ (W2a·W2b),   Wja: [out, r],  Wjb: [r, in·k·k]

rank(ΔW) ≤ r² for 2r(out + in·k·k) numbers. Conv layers with ``use_tucker`` and k > 1 use a
Tucker core per side (as LyCORIS): (Wj)[o, i, :, :] = Σ_ab Tj[a, b, :, :]·Wja[a, o]·Wjb[b, i]
with Wja: [r, out], Wjb: [r, in], Tj: [r, r, k, k].

Init (as LyCORIS): W1b, W2b ~ N(0, 1), W1a ~ N(0, 0.1), T ~ N(0, 0.1), W2a = 0, so ΔW = 0.
File keys: ``hada_w1_a, hada_w1_b, hada_w2_a, hada_w2_b`` (+ ``hada_t1, hada_t2``), ``alpha``.
With ``dora`` the update is weight-decomposed (``lyco_bench.adapters.dora``, key ``dora_scale``).

Memory: ΔW is built by a custom autograd Function that saves only the factors and recomputes
the two dense products in backward one at a time, so no ΔW-sized tensor is kept for backward.
Training runs one base op on the temporary W0 + λΔW (see AdapterModule's merged forward): the
dense dL/dW = gᵀx is formed once in backward and pushed through the Hadamard product.
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import nn

from lyco_bench.adapters.amp import cast_grads, record_autocast, replay_autocast
from lyco_bench.adapters.base import (
    LYCORIS_LR_GRID,
    AdapterModule,
    BaseLayer,
    CapacityRule,
    alpha_tensor,
    check_keys,
    check_shape,
    dense_input_grad,
    dense_weight_grad,
    read_alpha,
    register_algorithm,
)
from lyco_bench.adapters.dora import DoRAMixin, dora_rank_bound, has_dora
from lyco_bench.adapters.options import DoRAOption, RankOptions, TuckerOption
from lyco_bench.adapters.rows import RowLayout
from lyco_bench.errors import BadInput

_FACTORS = ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b")


class LoHaOptions(DoRAOption, TuckerOption, RankOptions):
    """LoHa settings; defaults are the paper's (dim 4, α 2)."""

    dim: int = Field(4, ge=1)
    """Rank r of each of the two products (rank(ΔW) ≤ r²)."""
    alpha: float = 2.0
    """α of the scale α/r; left out: 2 with the default rank (the paper's 4/2), else dim."""


@register_algorithm
class LoHaModule(DoRAMixin, AdapterModule):
    """LoHa for Linear and Conv2d (optionally Tucker for k×k kernels)."""

    algo = "loha"
    Options = LoHaOptions
    capacity = CapacityRule("dim", {4: 2, 16: 3})  # the paper's Capacity levels (§6)
    lr_grid = LYCORIS_LR_GRID
    file_keys = frozenset({*_FACTORS, "hada_t1", "hada_t2", "alpha", "dora_scale"})
    detect_keys = frozenset(_FACTORS)
    row_layout = RowLayout(
        ("hada_w1_a", "hada_w2_a"), ("hada_w1_b", "hada_w2_b"), ("dora_scale",), scaled_alpha=True
    )
    grad_mode = "dense"

    def __init__(self, base: BaseLayer, options=None, *, multiplier: float = 1.0, **settings) -> None:
        super().__init__(base, options, multiplier=multiplier, **settings)
        dim, use_tucker = self.options.dim, self.options.use_tucker
        self.dim = int(dim)
        self.alpha = float(self.options.alpha)
        self.scale = self.alpha / self.dim
        w = base.weight
        out_ch, in_ch, k = w.shape[0], w.shape[1], tuple(w.shape[2:])
        self.tucker = bool(use_tucker) and self.is_conv and k != (1, 1)
        if self.tucker:
            self.hada_w1_a, self.hada_w1_b = self._new(dim, out_ch), self._new(dim, in_ch)
            self.hada_w2_a, self.hada_w2_b = self._new(dim, out_ch), self._new(dim, in_ch)
            self.hada_t1, self.hada_t2 = self._new(dim, dim, *k), self._new(dim, dim, *k)
            self.init_(self.hada_t1, nn.init.normal_, std=0.1)
            self.init_(self.hada_t2, nn.init.normal_, std=0.1)
        else:
            fan_in = w[0].numel()
            self.hada_w1_a, self.hada_w1_b = self._new(out_ch, dim), self._new(dim, fan_in)
            self.hada_w2_a, self.hada_w2_b = self._new(out_ch, dim), self._new(dim, fan_in)
        self.init_(self.hada_w1_a, nn.init.normal_, std=0.1)
        self.init_(self.hada_w1_b, nn.init.normal_, std=1.0)
        nn.init.zeros_(self.hada_w2_a)
        self.init_(self.hada_w2_b, nn.init.normal_, std=1.0)

    # --- maths -----------------------------------------------------------------------------
    def _side_params(self, j: int) -> tuple[nn.Parameter, ...]:
        a, b = getattr(self, f"hada_w{j}_a"), getattr(self, f"hada_w{j}_b")
        return (a, b, getattr(self, f"hada_t{j}")) if self.tucker else (a, b)

    def _side(self, j: int) -> torch.Tensor:
        """Wj = Wja·Wjb (or its Tucker form), shaped like the base weight."""
        if self.tucker:
            a, b, t = self._side_params(j)
            return torch.einsum("abhw,ao,bi->oihw", t, a, b)  # (out, in, kh, kw)
        a, b = self._side_params(j)
        return (a @ b).view_as(self.base.weight)  # (out, r) @ (r, in·k·k)

    def update_weight(self) -> torch.Tensor:
        return _HadamardDelta.apply(self, *self.update_parameters())

    def update_vjp(self, grad_w: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        grads: dict[str, torch.Tensor] = {}
        for j, other in ((1, 2), (2, 1)):
            with torch.no_grad():
                # dL/dWj = s·G ⊙ W_other, built in place on the recomputed product (one temporary).
                g_side = self._side(other).mul_(grad_w).mul_(self.scale)
            names = [f"hada_w{j}_a", f"hada_w{j}_b"] + ([f"hada_t{j}"] if self.tucker else [])
            if self.tucker:
                params = self._side_params(j)
                with torch.enable_grad():
                    leaves = [p.detach().requires_grad_(True) for p in params]
                    t, a, b = leaves[2], leaves[0], leaves[1]
                    side = torch.einsum("abhw,ao,bi->oihw", t, a, b)
                    side_grads = torch.autograd.grad(side, leaves, g_side)
            else:
                a, b = self._side_params(j)
                g2 = g_side.view(a.shape[0], -1)  # (out, in·k·k)
                side_grads = (g2 @ b.detach().t(), a.detach().t() @ g2)  # (out, r), (r, in·k·k)
            del g_side
            grads.update(zip(names, side_grads, strict=True))
        return tuple(grads[name] for name, p in self.named_update_parameters() if p.requires_grad)

    def merged_weight(self) -> torch.Tensor:
        if self.dora:
            return super().merged_weight()
        with torch.no_grad():
            # W0 + λs·W1 ⊙ W2 in one pass over the weight
            return torch.addcmul(
                self.base.weight, self._side(1), self._side(2), value=self.multiplier * self.scale
            )

    def merged_backward(
        self, x: torch.Tensor, g: torch.Tensor, *, input_grad: bool
    ) -> tuple[torch.Tensor | None, tuple[torch.Tensor | None, ...]]:
        """One rebuild of W1, W2 serves dL/dx and the factors: with G = λs·gᵀx,
        dL/dW1 = G ⊙ W2 and dL/dW2 = G ⊙ W1 (each built in place on the other product)."""
        if self.tucker or self.dora:
            return super().merged_backward(x, g, input_grad=input_grad)
        with torch.no_grad():
            w1, w2 = self._side(1), self._side(2)
            lam_s = self.multiplier * self.scale
            grad_x = None
            if input_grad:
                grad_x = dense_input_grad(self, x, torch.addcmul(self.base.weight, w1, w2, value=lam_s), g)
            gw = dense_weight_grad(self, x, g).mul_(lam_s)
            grads = {}
            for j, other in ((1, w2), (2, w1)):
                t = other.mul_(gw).view(gw.shape[0], -1)  # dL/dWj: (out, in·k·k)
                a, b = self._side_params(j)
                grads[f"hada_w{j}_a"], grads[f"hada_w{j}_b"] = t @ b.t(), a.t() @ t
                del t
        return grad_x, tuple(grads[n] for n, p in self.named_parameters() if p.requires_grad)

    def bypass(self, x: torch.Tensor) -> torch.Tensor:
        return self.base_op(x, self.delta_weight(), None)

    def prefers_merged(self, x: torch.Tensor) -> bool:
        # ΔW has to be built either way; one base op on W0 + λΔW replaces a second full product.
        return True

    # --- file layout -------------------------------------------------------------------------
    def file_tensors(self) -> dict[str, torch.Tensor]:
        out = {name: p.detach() for name, p in self.named_parameters()}
        out["alpha"] = alpha_tensor(self.alpha)
        return out

    @classmethod
    def from_file_tensors(cls, base: BaseLayer, tensors: dict[str, torch.Tensor], *, name: str) -> LoHaModule:
        check_keys(name, tensors, cls.file_keys)
        missing = [key for key in _FACTORS if key not in tensors]
        if missing:
            raise BadInput(f"{name}: loha needs {missing[0]}")
        tucker = "hada_t1" in tensors or "hada_t2" in tensors
        w = base.weight
        out_ch, in_ch, k = w.shape[0], w.shape[1], tuple(w.shape[2:])
        dim = int(tensors["hada_w1_b"].shape[0])
        if tucker:
            if not isinstance(base, nn.Conv2d) or k == (1, 1):
                raise BadInput(f"{name}: hada_t1/hada_t2 given for a layer without a k×k kernel")
            shapes = {"hada_t1": (dim, dim, *k), "hada_t2": (dim, dim, *k)}
            shapes.update({f"hada_w{j}_a": (dim, out_ch) for j in (1, 2)})
            shapes.update({f"hada_w{j}_b": (dim, in_ch) for j in (1, 2)})
        else:
            shapes = {f"hada_w{j}_a": (out_ch, dim) for j in (1, 2)}
            shapes.update({f"hada_w{j}_b": (dim, w[0].numel()) for j in (1, 2)})
        for key, shape in shapes.items():
            if key not in tensors:
                raise BadInput(f"{name}: loha with Tucker cores needs {key}")
            t = tensors[key]
            # LyCORIS stores the conv factors as 2-D matrices; accept a 4-D 1×1 layout too.
            check_shape(name, key, t.reshape(shape) if t.numel() == _numel(shape) else t, shape)
        alpha = read_alpha(tensors, dim, name=name)
        module = cls(base, dim=dim, alpha=alpha, use_tucker=tucker, dora=has_dora(tensors))
        module.load_dora_scale(tensors, name=name)
        with torch.no_grad():
            for key, shape in shapes.items():
                getattr(module, key).copy_(tensors[key].reshape(shape))
        return module

    @classmethod
    def rank_bound(cls, tensors: dict[str, torch.Tensor]) -> int:
        # rank(A ⊙ B) ≤ rank(A)·rank(B)
        a, b = tensors["hada_w1_a"], tensors["hada_w1_b"]
        if "hada_t1" in tensors:
            r, out_ch, fan_in = a.shape[0], a.shape[1], b.shape[1] * tensors["hada_t1"][0, 0].numel()
        else:
            r, out_ch, fan_in = b.shape[0], a.shape[0], b[0].numel()
        return dora_rank_bound(tensors, min(r * r, out_ch, fan_in), out_ch, fan_in)


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


class _HadamardDelta(torch.autograd.Function):
    """ΔW = s·W1 ⊙ W2 saving only the factors; backward recomputes W1, W2 one at a time.

    Under autocast the products run in the autocast dtype (as autocast runs a matmul), and so
    does backward (the forward's autocast state replayed); the factors' gradients are cast back
    to their own dtype at the end."""

    @staticmethod
    def forward(ctx, module: LoHaModule, *params: torch.Tensor) -> torch.Tensor:
        record_autocast(ctx, params[0])
        ctx.module, ctx.param_dtypes = module, [p.dtype for p in params]
        with torch.no_grad():
            return module._side(1).mul_(module._side(2)).mul_(module.scale)

    @staticmethod
    def backward(ctx, grad_w: torch.Tensor):
        module: LoHaModule = ctx.module
        with replay_autocast(ctx):
            trainable = iter(module.update_vjp(grad_w))
            grads = [next(trainable) if p.requires_grad else None for p in module.update_parameters()]
        return (None, *cast_grads(grads, ctx.param_dtypes))
