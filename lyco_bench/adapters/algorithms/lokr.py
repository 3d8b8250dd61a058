"""LoKr: a Kronecker product of a small block and a (possibly low-rank) large block.

    ΔW = s·(W1 ⊗ W2),   W1: [out₁, in₁],  W2: [out₂, in₂(, k, k)],  out = out₁·out₂, in = in₁·in₂

(Edalati et al. 2022, KronA; docs/protocol.md §1.1.) For conv, W1 acts as [out₁, in₁, 1, 1], so
ΔW[a·out₂ + c, b·in₂ + d, :, :] = s·W1[a, b]·W2[c, d, :, :].

Shapes follow the ``factor`` rule (:func:`factorize`) as LyCORIS applies it. W2 is low-rank,
W2 = W2a·W2b (Tucker core T2 for k×k convs with ``use_tucker``), when r < max(out₂, in₂)/2,
else a full matrix; W1 is low-rank only with ``decompose_both`` under the same rule.
s = α/r, except s = 1 when both blocks are full (the paper's "dim 10000").

Init (as LyCORIS): W1 (or W1a, W1b), W2a, T2 Kaiming-uniform; W2 or W2b = 0, so ΔW = 0.
File keys: ``lokr_w1 | lokr_w1_a, lokr_w1_b``, ``lokr_w2 | lokr_w2_a, lokr_w2_b (+ lokr_t2)``,
``alpha``. Non-Tucker conv W2b is stored flattened as [r, in₂·k·k], Tucker W2a as [r, out₂].
With ``dora`` the update is weight-decomposed (``lyco_bench.adapters.dora``, key ``dora_scale``).

Training never builds ΔW·x densely: with X the input reshaped to (…, in₁, in₂),
(W1 ⊗ W2)·x = vec(W1·X·W2ᵀ); for conv, a k×k conv with W2 over the in₁ channel groups then a
1×1 mix with W1 (or the mix first, whichever costs fewer operations).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from pydantic import Field, field_validator
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
from lyco_bench.adapters.dora import DoRAMixin, dora_rank_bound, has_dora
from lyco_bench.adapters.options import DoRAOption, RankOptions
from lyco_bench.errors import BadInput


class KronOptions(RankOptions):
    """The settings of a Kronecker-factored ΔW (LoKr, GLoKr); defaults are the paper's LoKr (factor 8,
    every block full: dim 10000, α 1)."""

    dim: int = Field(10000, ge=1)
    """Rank of a decomposed block; ≥ half a block's larger side makes that block a full matrix
    (the paper's 10000: every block full, scale 1)."""
    alpha: float = 1.0
    """α of the scale α/r (not applied when every block is full); left out: 1 with the default
    dim, else dim."""
    factor: int = 8
    """Split factor f of each dimension into (f', d/f'), f' the divisor ≤ f closest to f; −1:
    the most balanced split."""
    use_tucker: bool = False
    """Tucker core for a decomposed W2 of a k×k convolution (``lokr_t2``, ``glokr_t2``)."""
    decompose_both: bool = False
    """Decompose the small block(s) too when they are large enough."""

    @field_validator("factor")
    @classmethod
    def _factor(cls, value: int) -> int:
        if value == 0 or value < -1:
            raise ValueError("must be -1 (balanced) or a positive integer")
        return value


class LoKrOptions(DoRAOption, KronOptions):
    """LoKr settings; defaults are the paper's (factor 8, both blocks full: dim 10000, α 1)."""


def factorize(dim: int, factor: int = -1) -> tuple[int, int]:
    """Split ``dim`` into (small, large) with small·large = dim (docs/protocol.md §1.1, LyCORIS's rule).

    factor > 0 dividing dim: (factor, dim/factor), smaller first. Otherwise the largest divisor
    m ≤ factor that is also ≤ √dim, i.e. the divisor closest to factor without passing the most
    balanced split; factor = −1: the most balanced split.
    """
    if dim < 1:
        raise ValueError(f"cannot factorize {dim}")
    if factor > 0 and dim % factor == 0:
        return min(factor, dim // factor), max(factor, dim // factor)
    cap = dim if factor <= 0 else factor
    small = max(m for m in range(1, math.isqrt(dim) + 1) if dim % m == 0 and m <= cap)
    return small, dim // small


@dataclass(frozen=True)
class KronLayout:
    """Block shapes of one LoKr module; a rank of None means that block is a full matrix."""

    out1: int
    in1: int
    out2: int
    in2: int
    kernel: tuple[int, ...]  # () for Linear
    w1_rank: int | None
    w2_rank: int | None
    tucker: bool

    @classmethod
    def plan(
        cls, base: BaseLayer, *, dim: int, factor: int, decompose_both: bool, use_tucker: bool
    ) -> KronLayout:
        w = base.weight
        out1, out2 = factorize(w.shape[0], factor)
        in1, in2 = factorize(w.shape[1], factor)
        kernel = tuple(w.shape[2:])
        w1_rank = dim if decompose_both and dim < max(out1, in1) / 2 else None
        w2_rank = dim if dim < max(out2, in2) / 2 else None
        tucker = use_tucker and w2_rank is not None and kernel not in ((), (1, 1))
        return cls(out1, in1, out2, in2, kernel, w1_rank, w2_rank, tucker)

    def shapes(self) -> dict[str, tuple[int, ...]]:
        """File key → tensor shape, in LyCORIS's layout."""
        k, r1, r2 = self.kernel, self.w1_rank, self.w2_rank
        out = {"lokr_w1": (self.out1, self.in1)} if r1 is None else {}
        if r1 is not None:
            out.update(lokr_w1_a=(self.out1, r1), lokr_w1_b=(r1, self.in1))
        if r2 is None:
            out["lokr_w2"] = (self.out2, self.in2, *k)
        elif self.tucker:
            out.update(lokr_w2_a=(r2, self.out2), lokr_w2_b=(r2, self.in2), lokr_t2=(r2, r2, *k))
        else:
            out.update(lokr_w2_a=(self.out2, r2), lokr_w2_b=(r2, self.in2 * math.prod(k)))
        return out


def kron_apply(
    x: torch.Tensor,
    lay: KronLayout,
    w1: torch.Tensor,
    apply_w2: Callable[[torch.Tensor], torch.Tensor],
    *,
    is_conv: bool,
    w2_first: bool,
) -> torch.Tensor:
    """(W1 ⊗ W2)·x without forming W1 ⊗ W2: W2 (``apply_w2``, on the last axis or as a conv over
    in₂ channels) and W1 (on the in₁ axis) applied in the order ``w2_first`` says."""
    if not is_conv:
        xs = x.reshape(-1, lay.in1, lay.in2)  # (N, in₁, in₂)
        if w2_first:
            y = torch.matmul(w1, apply_w2(xs))  # (out₁, in₁) @ (N, in₁, out₂) -> (N, out₁, out₂)
        else:
            y = apply_w2(torch.matmul(w1, xs))  # (N, out₁, in₂) -> (N, out₁, out₂)
        return y.reshape(*x.shape[:-1], lay.out1 * lay.out2)
    batch, h, w = x.shape[0], x.shape[-2], x.shape[-1]
    if w2_first:
        z = apply_w2(x.reshape(batch * lay.in1, lay.in2, h, w))  # (B·in₁, out₂, H', W')
        ho, wo = z.shape[-2:]
        y = torch.matmul(w1, z.reshape(batch, lay.in1, -1))  # (B, out₁, out₂·H'·W')
    else:
        z = torch.matmul(w1, x.reshape(batch, lay.in1, -1))  # (B, out₁, in₂·H·W)
        y = apply_w2(z.reshape(batch * lay.out1, lay.in2, h, w))  # (B·out₁, out₂, H', W')
        ho, wo = y.shape[-2:]
    return y.reshape(batch, lay.out1 * lay.out2, ho, wo)


def kron_w1_weight(module: nn.Module, lay: KronLayout, name: str) -> torch.Tensor:
    """The small block (out₁, in₁): the module's parameter ``name``, or ``name_a`` @ ``name_b``
    when the layout decomposes it."""
    if lay.w1_rank is None:
        return getattr(module, name)
    return getattr(module, name + "_a") @ getattr(module, name + "_b")


def kron_w2_weight(module: nn.Module, lay: KronLayout, name: str, core: str = "") -> torch.Tensor:
    """The large block (out₂, in₂, *k): the module's parameter ``name``, or ``name_a``·``name_b``
    (through the Tucker core ``core`` in a Tucker layout) when the layout decomposes it."""
    if lay.w2_rank is None:
        return getattr(module, name)
    up, down = getattr(module, name + "_a"), getattr(module, name + "_b")
    if lay.tucker:
        # einsum returns a permuted layout at rank ≥ 2, which torch.kron cannot view
        return torch.einsum("abhw,ac,bd->cdhw", getattr(module, core), up, down).contiguous()
    return (up @ down).view(lay.out2, lay.in2, *lay.kernel)


def kron_w2(
    z: torch.Tensor, lay: KronLayout, base: BaseLayer, is_conv: bool, module: nn.Module, prefix: str
) -> torch.Tensor:
    """W2 applied to z: (…, in₂) → (…, out₂) for a linear layer; a k×k conv from in₂ to out₂
    channels (the base's stride, padding, dilation) for a conv; through the low-rank factors (and
    the Tucker core) when W2 is decomposed."""

    def w2(name: str) -> torch.Tensor:  # the module's ``<prefix>w2``, ``…w2_a``, ``…w2_b``, ``…t2``
        return getattr(module, prefix + name)

    r = lay.w2_rank
    if not is_conv:
        if r is None:
            return torch.matmul(z, w2("w2").t())
        return torch.matmul(torch.matmul(z, w2("w2_b").t()), w2("w2_a").t())
    conv = dict(stride=base.stride, padding=base.padding, dilation=base.dilation)
    if r is None:
        return F.conv2d(z, w2("w2"), **conv)
    if lay.tucker:
        z = F.conv2d(z, w2("w2_b").view(r, lay.in2, 1, 1))  # (·, r, H, W)
        z = F.conv2d(z, w2("t2"), **conv)  # (·, r, H', W')
    else:
        z = F.conv2d(z, w2("w2_b").view(r, lay.in2, *lay.kernel), **conv)  # (·, r, H', W')
    up = w2("w2_a").t() if lay.tucker else w2("w2_a")  # (out₂, r)
    return F.conv2d(z, up.reshape(lay.out2, r, 1, 1))


def kron_w2_cost(lay: KronLayout, n: int) -> float:
    """Cost of applying W2 to n rows of in₂ (n output positions for a conv)."""
    fan = lay.in2 * math.prod(lay.kernel)
    if lay.w2_rank is None:
        return matmul_cost(n, fan, lay.out2)
    return matmul_cost(n, fan, lay.w2_rank) + matmul_cost(n, lay.w2_rank, lay.out2)


def kron_orders(lay: KronLayout, x: torch.Tensor, n: int) -> tuple[float, float]:
    """(cost with W2 applied first, cost with W1 applied first) of (W1 ⊗ W2)·x, n output rows."""
    n_in = x.numel() // (lay.in1 * lay.in2)  # input rows (positions before stride)
    w2_first = kron_w2_cost(lay, n * lay.in1) + matmul_cost(lay.out1, lay.in1, n * lay.out2)
    w1_first = matmul_cost(lay.out1, lay.in1, n_in * lay.in2) + kron_w2_cost(lay, n * lay.out1)
    return w2_first, w1_first


@register_algorithm
class LoKrModule(DoRAMixin, AdapterModule):
    """LoKr for Linear and Conv2d."""

    algo = "lokr"
    Options = LoKrOptions
    # The paper's Capacity levels (§6): a larger factor splits into a smaller W1 ⊗ W2, less capacity.
    capacity = CapacityRule("factor", {12: 1, 8: 2, 4: 3}, ascending=False, start=1)
    lr_grid = LYCORIS_LR_GRID
    file_keys = frozenset(
        {"lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t2"}
        | {"alpha", "dora_scale"}
    )
    detect_keys = frozenset({"lokr_w1"})  # or lokr_w1_a: see detects()
    grad_mode = "bypass"
    rank_bounded = False  # dim ≥ half a block's larger side makes that block full (no rank)

    def __init__(
        self,
        base: BaseLayer,
        options=None,
        *,
        multiplier: float = 1.0,
        layout: KronLayout | None = None,
        **settings,
    ) -> None:
        super().__init__(base, options, multiplier=multiplier, **settings)
        o = self.options
        dim, alpha, factor = o.dim, o.alpha, o.factor
        use_tucker, decompose_both = o.use_tucker, o.decompose_both
        self.layout = layout or KronLayout.plan(
            base, dim=dim, factor=factor, decompose_both=decompose_both, use_tucker=bool(use_tucker)
        )
        self.dim = int(dim)
        self.full = self.layout.w1_rank is None and self.layout.w2_rank is None
        # Both blocks full: s = 1 whatever alpha is (the paper's "dim 10000"); alpha still goes to
        # the file, where LyCORIS also writes alpha = dim for this case.
        self.alpha = float(alpha)
        self.scale = 1.0 if self.full else self.alpha / self.dim
        for key, shape in self.layout.shapes().items():
            setattr(self, key, self._new(*shape))
        for key in ("lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2_a", "lokr_t2"):
            if hasattr(self, key):
                self.init_(getattr(self, key), nn.init.kaiming_uniform_, a=math.sqrt(5))
        nn.init.zeros_(self.lokr_w2 if self.layout.w2_rank is None else self.lokr_w2_b)

    # --- maths -----------------------------------------------------------------------------
    def w1(self) -> torch.Tensor:
        """(out₁, in₁)"""
        return kron_w1_weight(self, self.layout, "lokr_w1")

    def w2(self) -> torch.Tensor:
        """(out₂, in₂, *k)"""
        return kron_w2_weight(self, self.layout, "lokr_w2", "lokr_t2")

    def update_weight(self) -> torch.Tensor:
        w1, w2 = self.w1() * self.scale, self.w2()
        w1 = w1.view(*w1.shape, *([1] * (w2.dim() - 2)))  # (out₁, in₁[, 1, 1])
        return torch.kron(w1, w2)

    def merged_weight(self) -> torch.Tensor:
        if self.dora:
            return super().merged_weight()
        # W0 + λs·(W1 ⊗ W2) in one pass over the weight: W viewed as (out₁, out₂, in₁, in₂[, k, k])
        # holds W[a·out₂ + c, b·in₂ + d] at [a, c, b, d], so the Kronecker product is a broadcast
        # product of W1 as (out₁, 1, in₁, 1) and W2 as (1, out₂, 1, in₂) that addcmul adds to W0.
        lay, w0 = self.layout, self.base.weight
        k = tuple(w0.shape[2:])
        w1 = self.w1().view(lay.out1, 1, lay.in1, 1, *([1] * len(k)))
        w2 = self.w2().view(1, lay.out2, 1, lay.in2, *k)
        w0v = w0.reshape(lay.out1, lay.out2, lay.in1, lay.in2, *k)
        return torch.addcmul(w0v, w1, w2, value=self.multiplier * self.scale).view(w0.shape)

    def update_bypass(self, x: torch.Tensor) -> torch.Tensor:
        w1 = self.w1() * self.scale
        return kron_apply(
            x, self.layout, w1, self._apply_w2, is_conv=self.is_conv, w2_first=self._w2_first(x)
        )

    def _apply_w2(self, z: torch.Tensor) -> torch.Tensor:
        return kron_w2(z, self.layout, self.base, self.is_conv, self, "lokr_")

    def _orders(self, x: torch.Tensor) -> tuple[float, float]:
        return kron_orders(self.layout, x, tokens(x, self))

    def _w2_first(self, x: torch.Tensor) -> bool:
        first, second = self._orders(x)
        return first <= second

    def merged_param_grads(self, x: torch.Tensor, g: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        """dL/dθ from the two block gradients, contracted without forming dL/dW = gᵀx.

        With G = dL/dW (never built): dL/dW1[a,b] = λs·Σ_{c,d} G[(a,c),(b,d)]·W2[c,d] and
        dL/dW2[c,d] = λs·Σ_{a,b} G[(a,c),(b,d)]·W1[a,b]; both come from the input and the
        output gradient reshaped by blocks. The factors' gradients follow by autograd through
        the (small) block parametrizations W1(θ), W2(θ).
        """
        if self.dora:
            return super().merged_param_grads(x, g)
        with torch.no_grad():
            w1, w2 = self.w1(), self.w2()
            gw1, gw2 = (
                self._conv_block_grads(x, g, w1, w2) if self.is_conv else self._linear_block_grads(x, g, w1)
            )
            lam_s = self.multiplier * self.scale
        params = tuple(p for p in self.parameters() if p.requires_grad)
        with torch.enable_grad():
            return torch.autograd.grad(
                (self.w1(), self.w2()), params, (gw1.mul_(lam_s), gw2.mul_(lam_s)), allow_unused=True
            )

    def _linear_block_grads(
        self, x: torch.Tensor, g: torch.Tensor, w1: torch.Tensor
    ) -> tuple[torch.Tensor, ...]:
        lay = self.layout
        n = x.numel() // (lay.in1 * lay.in2)
        # Block-major copies, so every contraction below is one plain matrix product.
        gp = (
            g.reshape(n, lay.out1, lay.out2).transpose(0, 1).reshape(lay.out1, n * lay.out2)
        )  # (out₁, N·out₂)
        xp = x.reshape(n, lay.in1, lay.in2).transpose(0, 1).reshape(lay.in1 * n, lay.in2)  # (in₁·N, in₂)
        p = (w1.t() @ gp).view(lay.in1 * n, lay.out2)  # Σ_a W1[a,b]·G[n,a,c]: (in₁·N, out₂)
        gw2 = p.t() @ xp  # (out₂, in₂)
        z = self._apply_w2(xp)  # X·W2ᵀ: (in₁·N, out₂)
        gw1 = gp @ z.view(lay.in1, n * lay.out2).t()  # (out₁, in₁)
        return gw1, gw2

    def _conv_block_grads(
        self, x: torch.Tensor, g: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor
    ) -> tuple[torch.Tensor, ...]:
        lay, b = self.layout, self.base
        batch, ho, wo = g.shape[0], g.shape[-2], g.shape[-1]
        xs = x.reshape(batch * lay.in1, lay.in2, *x.shape[-2:])  # channel groups as batch
        gv = g.reshape(batch, lay.out1, lay.out2 * ho * wo)
        p = torch.matmul(w1.t(), gv).view(batch * lay.in1, lay.out2, ho, wo)  # Σ_a W1[a,b]·G[n,a,…]
        gw2 = torch.nn.grad.conv2d_weight(xs, w2.shape, p, b.stride, b.padding, b.dilation)
        z = self._apply_w2(xs).reshape(batch, lay.in1, -1)  # (B, in₁, out₂·H'·W')
        gw1 = torch.matmul(gv, z.transpose(1, 2)).sum(0)  # (out₁, in₁)
        return gw1, gw2

    def prefers_merged(self, x: torch.Tensor) -> bool:
        w = self.base.weight
        rebuild = 2.0 * MEMORY_WEIGHT * w.numel()  # write W1 ⊗ W2, then W0 + λ·ΔW
        thin = min(self._orders(x)) + MEMORY_WEIGHT * tokens(x, self) * w.shape[0]
        if torch.is_grad_enabled():
            # merged: rebuild twice + the block gradients (about one bypass);
            # bypass: forward, dL/dθ and dL/dx through the Kronecker factors, and the output sum
            return 2 * rebuild + thin < 3 * thin
        return rebuild < thin

    # --- file layout -------------------------------------------------------------------------
    @classmethod
    def detects(cls, suffixes: set[str]) -> bool:
        """A module is LoKr when it has W1 in either form (full or W1a·W1b)."""
        return "lokr_w1" in suffixes or "lokr_w1_a" in suffixes

    def file_tensors(self) -> dict[str, torch.Tensor]:
        out = {key: getattr(self, key).detach() for key in self.layout.shapes()}
        out["alpha"] = alpha_tensor(self.alpha)
        return {**out, **self.dora_file_tensors()}

    @classmethod
    def from_file_tensors(cls, base: BaseLayer, tensors: dict[str, torch.Tensor], *, name: str) -> LoKrModule:
        check_keys(name, tensors, cls.file_keys)
        layout = _layout_from_tensors(base, tensors, name=name)
        for key, shape in layout.shapes().items():
            if key not in tensors:
                raise BadInput(f"{name}: lokr needs {key}")
            check_shape(name, key, tensors[key], shape)
        extra = set(tensors) - set(layout.shapes()) - {"alpha", "dora_scale"}
        if extra:
            raise BadInput(f"{name}: lokr key {sorted(extra)[0]!r} does not fit the other blocks")
        rank = layout.w1_rank or layout.w2_rank
        alpha = read_alpha(tensors, rank or 1, name=name)
        dim = rank if rank is not None else max(1, round(alpha))
        module = cls(base, dim=dim, alpha=alpha, layout=layout, dora=has_dora(tensors))
        module.load_dora_scale(tensors, name=name)
        with torch.no_grad():
            for key in layout.shapes():
                getattr(module, key).copy_(tensors[key])
        return module

    @classmethod
    def rank_bound(cls, tensors: dict[str, torch.Tensor]) -> int:
        # rank(A ⊗ B) = rank(A)·rank(B), with B flattened to [out₂, in₂·k·k]
        if "lokr_w1" in tensors:
            (out1, in1), r1 = tensors["lokr_w1"].shape, min(tensors["lokr_w1"].shape)
        else:
            a, b = tensors["lokr_w1_a"], tensors["lokr_w1_b"]
            out1, in1 = a.shape[0], b.shape[1]
            r1 = min(out1, a.shape[1], in1)
        if "lokr_w2" in tensors:
            w2 = tensors["lokr_w2"]
            out2, fan2 = w2.shape[0], w2[0].numel()
            r2 = min(out2, fan2)
        elif "lokr_t2" in tensors:
            a, b, t = tensors["lokr_w2_a"], tensors["lokr_w2_b"], tensors["lokr_t2"]
            out2, fan2 = a.shape[1], b.shape[1] * t[0, 0].numel()
            r2 = min(a.shape[0], out2, fan2)
        else:
            a, b = tensors["lokr_w2_a"], tensors["lokr_w2_b"]
            out2, fan2 = a.shape[0], b.shape[1]
            r2 = min(out2, a.shape[1], fan2)
        return dora_rank_bound(tensors, r1 * r2, out1 * out2, in1 * fan2)


def _layout_from_tensors(base: BaseLayer, tensors: dict[str, torch.Tensor], *, name: str) -> KronLayout:
    """Read the block shapes from a file's tensors (any factor split, as other tools write)."""
    w = base.weight
    out_ch, in_ch, kernel = w.shape[0], w.shape[1], tuple(w.shape[2:])
    if "lokr_w1" in tensors:
        if tensors["lokr_w1"].dim() != 2:
            raise BadInput(f"{name}: lokr_w1 must be 2-D, got shape {tuple(tensors['lokr_w1'].shape)}")
        (out1, in1), w1_rank = tensors["lokr_w1"].shape, None
    elif "lokr_w1_a" in tensors and "lokr_w1_b" in tensors:
        out1, w1_rank = tensors["lokr_w1_a"].shape[:2]
        in1 = tensors["lokr_w1_b"].shape[-1]
    else:
        raise BadInput(f"{name}: lokr needs lokr_w1 or lokr_w1_a + lokr_w1_b")
    if out_ch % out1 or in_ch % in1:
        raise BadInput(f"{name}: lokr block W1 {out1}×{in1} does not divide the layer's {out_ch}×{in_ch}")
    tucker = "lokr_t2" in tensors
    if "lokr_w2" in tensors:
        w2_rank = None
    elif "lokr_w2_a" in tensors:
        w2_rank = int(tensors["lokr_w2_a"].shape[0 if tucker else -1])
    else:
        raise BadInput(f"{name}: lokr needs lokr_w2 or lokr_w2_a + lokr_w2_b")
    if tucker and kernel in ((), (1, 1)):
        raise BadInput(f"{name}: lokr_t2 given for a layer without a k×k kernel")
    return KronLayout(
        int(out1), int(in1), out_ch // int(out1), in_ch // int(in1), kernel, w1_rank, w2_rank, tucker
    )
