"""GLoKr: GLoRA's transform of the frozen weight, with LoKr's Kronecker factors (lyco-bench's own).

The LyCORIS paper names a GLoRA/LoKr combination as future work; no tool implements one. This is
lyco-bench's definition:

    ΔW = s·(W0·(A1 ⊗ A2) + W1 ⊗ W2)

    A1: [in₁, in₁],  A2: [in₂, in₂],  W1: [out₁, in₁],  W2: [out₂, in₂(, k, k)]
    in = in₁·in₂, out = out₁·out₂, split by LoKr's ``factor`` rule (:func:`~.lokr.factorize`)

W0·(A1 ⊗ A2) is GLoRA's W0·a1·a2 with the rank-r transform of the input space replaced by a
Kronecker-structured one; W1 ⊗ W2 is GLoRA's additive b1·b2 replaced by exactly LoKr's ΔW. For
conv, A1 ⊗ A2 mixes input channels at every kernel position, as GLoRA's a1·a2 does:
(W0·A)[o, j, :, :] = Σ_i W0[o, i, :, :]·A[i, j]; W1 ⊗ W2 is LoKr's conv Kronecker product.

Blocks follow LoKr: a block is low-rank (A2 = A2a·A2b, W2 = W2a·W2b, Tucker core T2 for a k×k
W2 with ``use_tucker``) when r < half its larger side, else a full matrix; A1 and W1 only with
``decompose_both``. s = α/r, except s = 1 when every block is full (LoKr's "dim 10000").

Init (as LoKr for each pair): A1, W1 (or their factors), A2a, W2a, T2 Kaiming-uniform; A2 (or
A2b) = 0 and W2 (or W2b) = 0, so ΔW = 0 at step 0.

File keys: ``glokr_a1 | glokr_a1_a, glokr_a1_b``, ``glokr_a2 | glokr_a2_a, glokr_a2_b``,
``glokr_w1 | glokr_w1_a, glokr_w1_b``, ``glokr_w2 | glokr_w2_a, glokr_w2_b (+ glokr_t2)``,
``alpha``; each pair in LoKr's layout (``lokr_*`` → ``glokr_a*`` for A, ``glokr_w*``/``glokr_t2``
for W).

Why this definition:
  * W0-dependent as GLoRA is: a learned transform applied to W0 plus a learned additive term.
  * LoKr's parameter scale: the W pair is a LoKr module, the A pair adds in₁² + in₂² numbers
    (2r·in₂ when A2 is low-rank) — as many as LoKr's W pair when out = in, so about twice LoKr;
    and A1 ⊗ A2 can be full rank, rank(A1)·rank(A2), where GLoRA's a1·a2 is capped at r.
  * Zero at init, with a non-zero gradient for A2 and W2 (as LoKr's W2).
  * A cheap forward: the transform acts on the input, (A1 ⊗ A2)·x = vec(A1·X·A2ᵀ) with X the
    input reshaped to (in₁, in₂), so W0 is applied by the base layer's own op to x + λs·Ax:
        forward(x) = base(x + λs·(A1 ⊗ A2)·x) + λs·(W1 ⊗ W2)·x
    — one base op and two pairs of small products, never ΔW (the merged forward, chosen when
    cheaper, builds it). A Hadamard modulation
    W0 ⊙ (A1 ⊗ A2) was rejected: (W0 ⊙ M)·x has no such shortcut unless M has rank 1.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from lyco_bench.adapters.algorithms.lokr import (
    KronLayout,
    KronOptions,
    kron_apply,
    kron_orders,
    kron_w1_weight,
    kron_w2,
    kron_w2_weight,
)
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
from lyco_bench.errors import BadInput

# LoKr's key names (KronLayout.shapes) → this algorithm's, for the A pair and the W pair
_A_KEYS = {
    "lokr_w1": "glokr_a1",
    "lokr_w1_a": "glokr_a1_a",
    "lokr_w1_b": "glokr_a1_b",
    "lokr_w2": "glokr_a2",
    "lokr_w2_a": "glokr_a2_a",
    "lokr_w2_b": "glokr_a2_b",
}
_W_KEYS = {
    "lokr_w1": "glokr_w1",
    "lokr_w1_a": "glokr_w1_a",
    "lokr_w1_b": "glokr_w1_b",
    "lokr_w2": "glokr_w2",
    "lokr_w2_a": "glokr_w2_a",
    "lokr_w2_b": "glokr_w2_b",
    "lokr_t2": "glokr_t2",
}


class GLoKrOptions(KronOptions):
    """GLoKr settings: LoKr's, without DoRA (defaults: factor 8, every block full)."""


def square_layout(w_layout: KronLayout, *, dim: int, decompose_both: bool) -> KronLayout:
    """The A pair's blocks: in split as the W pair splits it, LoKr's low-rank rule per block."""
    in1, in2 = w_layout.in1, w_layout.in2
    a1_rank = dim if decompose_both and dim < in1 / 2 else None
    a2_rank = dim if dim < in2 / 2 else None
    return KronLayout(in1, in1, in2, in2, (), a1_rank, a2_rank, False)


@register_algorithm
class GLoKrModule(AdapterModule):
    """GLoKr for Linear and Conv2d."""

    algo = "glokr"
    Options = GLoKrOptions
    # LoKr's Capacity levels (the paper's, §6): the same factor gives the same block shapes.
    capacity = CapacityRule("factor", {12: 1, 8: 2, 4: 3}, ascending=False, start=1)
    lr_grid = LYCORIS_LR_GRID
    file_keys = frozenset({*_A_KEYS.values(), *_W_KEYS.values(), "alpha"})
    detect_keys = frozenset({"glokr_a1", "glokr_w1"})  # or their _a/_b factors: see detects()
    # The merged forward's dL/dθ: dL/dW = gᵀx once, through ΔW(θ) (the bypass would need a
    # second pass through W0).
    grad_mode = "dense"
    rank_bounded = False  # as LoKr: a dim at or above half a block's larger side makes it full

    def __init__(
        self,
        base: BaseLayer,
        options=None,
        *,
        multiplier: float = 1.0,
        layouts: tuple[KronLayout, KronLayout] | None = None,
        **settings,
    ) -> None:
        super().__init__(base, options, multiplier=multiplier, **settings)
        o = self.options
        self.dim = int(o.dim)
        if layouts is None:
            w_layout = KronLayout.plan(
                base, dim=o.dim, factor=o.factor, decompose_both=o.decompose_both, use_tucker=o.use_tucker
            )
            layouts = (square_layout(w_layout, dim=o.dim, decompose_both=o.decompose_both), w_layout)
        self.a_layout, self.w_layout = layouts
        self.full = all(rank is None for lay in layouts for rank in (lay.w1_rank, lay.w2_rank))
        self.alpha = float(o.alpha)
        self.scale = 1.0 if self.full else self.alpha / self.dim
        for lay, names in ((self.a_layout, _A_KEYS), (self.w_layout, _W_KEYS)):
            for key, shape in lay.shapes().items():
                setattr(self, names[key], self._new(*shape))
        kaiming = ("glokr_a1", "glokr_a1_a", "glokr_a1_b", "glokr_a2_a")
        for key in (*kaiming, "glokr_w1", "glokr_w1_a", "glokr_w1_b", "glokr_w2_a", "glokr_t2"):
            if hasattr(self, key):
                self.init_(getattr(self, key), nn.init.kaiming_uniform_, a=math.sqrt(5))
        nn.init.zeros_(self.glokr_a2 if self.a_layout.w2_rank is None else self.glokr_a2_b)
        nn.init.zeros_(self.glokr_w2 if self.w_layout.w2_rank is None else self.glokr_w2_b)

    def _file_keys(self) -> dict[str, tuple[int, ...]]:
        out = {_A_KEYS[k]: shape for k, shape in self.a_layout.shapes().items()}
        out.update({_W_KEYS[k]: shape for k, shape in self.w_layout.shapes().items()})
        return out

    # --- blocks ------------------------------------------------------------------------------
    # LoKr's block accessors over this module's key names (the A pair has no Tucker core)
    def a1(self) -> torch.Tensor:
        """(in₁, in₁)"""
        return kron_w1_weight(self, self.a_layout, "glokr_a1")

    def a2(self) -> torch.Tensor:
        """(in₂, in₂)"""
        return kron_w2_weight(self, self.a_layout, "glokr_a2")

    def w1(self) -> torch.Tensor:
        """(out₁, in₁)"""
        return kron_w1_weight(self, self.w_layout, "glokr_w1")

    def w2(self) -> torch.Tensor:
        """(out₂, in₂, *k)"""
        return kron_w2_weight(self, self.w_layout, "glokr_w2", "glokr_t2")

    # --- maths -----------------------------------------------------------------------------
    def delta_weight(self) -> torch.Tensor:
        a1, la = self.a1(), self.a_layout
        w0 = self.base.weight.to(a1.dtype)  # a half-precision base (base_dtype) in the factors' dtype
        k = tuple(w0.shape[2:])
        # W0·(A1 ⊗ A2): W0 as (out, in₁, in₂, *k), ΔW[o, (c, e)] = Σ_bd W0[o, (b, d)]·A1[b, c]·A2[d, e]
        w0v = w0.reshape(w0.shape[0], la.in1, la.in2, *k)
        t = torch.einsum("obd...,de->obe...", w0v, self.a2())
        wa = torch.einsum("obe...,bc->oce...", t, a1).reshape(w0.shape)
        w1, w2 = self.w1(), self.w2()
        wk = torch.kron(w1.view(*w1.shape, *([1] * len(k))), w2)
        return (wa + wk).mul_(self.scale)

    def apply_a(self, x: torch.Tensor) -> torch.Tensor:
        """(A1 ⊗ A2) applied to the input channels of x: vec(A1·X·A2ᵀ), X = x as (in₁, in₂)."""
        lay = self.a_layout
        a1 = self.a1()
        if not self.is_conv:
            z = torch.matmul(a1, x.reshape(-1, lay.in1, lay.in2))  # (N, in₁, in₂)
            if lay.w2_rank is None:
                z = torch.matmul(z, self.glokr_a2.t())
            else:
                z = torch.matmul(torch.matmul(z, self.glokr_a2_b.t()), self.glokr_a2_a.t())
            return z.reshape(x.shape)
        batch, p = x.shape[0], x.shape[-2] * x.shape[-1]
        z = torch.matmul(a1, x.reshape(batch, lay.in1, lay.in2 * p))  # (B, in₁, in₂·P)
        z = z.reshape(batch * lay.in1, lay.in2, p)
        if lay.w2_rank is None:
            z = torch.matmul(self.glokr_a2, z)  # (B·in₁, in₂, P)
        else:
            z = torch.matmul(self.glokr_a2_a, torch.matmul(self.glokr_a2_b, z))
        return z.reshape(x.shape)

    def apply_w(self, x: torch.Tensor) -> torch.Tensor:
        """(W1 ⊗ W2)·x (LoKr's product), W2 or W1 first, whichever costs less."""
        first, second = self._w_orders(x)
        return kron_apply(
            x, self.w_layout, self.w1(), self._w2, is_conv=self.is_conv, w2_first=first <= second
        )

    def _w2(self, z: torch.Tensor) -> torch.Tensor:
        return kron_w2(z, self.w_layout, self.base, self.is_conv, self, "glokr_")

    def _w_orders(self, x: torch.Tensor) -> tuple[float, float]:
        """(cost with W2 applied first, cost with W1 first) of (W1 ⊗ W2)·x."""
        return kron_orders(self.w_layout, x, tokens(x, self))

    def _a_cost(self, x: torch.Tensor) -> float:
        lay = self.a_layout
        n_in = x.numel() // (lay.in1 * lay.in2)
        a2 = (
            matmul_cost(n_in * lay.in1, lay.in2, lay.in2)
            if lay.w2_rank is None
            else 2 * matmul_cost(n_in * lay.in1, lay.in2, lay.w2_rank)
        )
        return matmul_cost(lay.in1, lay.in1, n_in * lay.in2) + a2

    def bypass(self, x: torch.Tensor) -> torch.Tensor:
        """s·(W0·(A1 ⊗ A2)·x + (W1 ⊗ W2)·x); the forward folds the first term into the base op."""
        xa = self.apply_a(x)
        ya = self.base_op(xa, self.base.weight.to(xa.dtype), None)
        return ya.add_(self.apply_w(x)).mul_(self.scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.multiplier == 0 or (self.can_merge_forward(x) and self.prefers_merged(x)):
            return super().forward(x)
        lam_s = self.multiplier * self.scale
        # base(x) + λs·W0·A·x = base(x + λs·A·x): W0 applied once, by the base layer's own op
        shifted = torch.add(x, self.apply_a(x), alpha=lam_s)
        return torch.add(self.base(shifted), self.apply_w(x), alpha=lam_s)

    def prefers_merged(self, x: torch.Tensor) -> bool:
        w = self.base.weight
        n = tokens(x, self)
        out_ch, fan_in = w.shape[0], w[0].numel()
        la = self.a_layout
        # W0·(A1 ⊗ A2) by blocks, W1 ⊗ W2 written, then W0 + λΔW
        rebuild = out_ch * fan_in * (la.in1 + la.in2) + 3 * MEMORY_WEIGHT * out_ch * fan_in
        thin = self._a_cost(x) + min(self._w_orders(x))
        thin += MEMORY_WEIGHT * (x.numel() + n * out_ch)  # x + λsAx, and the output sum
        if torch.is_grad_enabled():
            # merged: ΔW built in forward and backward and once more for dL/dθ, plus dL/dW = gᵀx;
            # folded: forward, dL/dθ and dL/dx through the Kronecker factors, plus the base's
            # input gradient when x itself needs none (A·x needs it)
            full_pass = matmul_cost(n, fan_in, out_ch)
            folded = 3 * thin + (0.0 if x.requires_grad else full_pass)
            return 3 * rebuild + full_pass < folded
        return rebuild < thin

    # --- file layout -------------------------------------------------------------------------
    @classmethod
    def detects(cls, suffixes: set[str]) -> bool:
        """A module is GLoKr when it has A1 and W1, each full or as factors."""
        return bool({"glokr_a1", "glokr_a1_a"} & suffixes) and bool({"glokr_w1", "glokr_w1_a"} & suffixes)

    def file_tensors(self) -> dict[str, torch.Tensor]:
        out = {key: getattr(self, key).detach() for key in self._file_keys()}
        out["alpha"] = alpha_tensor(self.alpha)
        return out

    @classmethod
    def from_file_tensors(
        cls, base: BaseLayer, tensors: dict[str, torch.Tensor], *, name: str
    ) -> GLoKrModule:
        check_keys(name, tensors, cls.file_keys)
        w = base.weight
        out_ch, in_ch, kernel = w.shape[0], w.shape[1], tuple(w.shape[2:])
        a_layout = _read_layout(tensors, _A_KEYS, in_ch, in_ch, (), name=name, pair="A")
        w_layout = _read_layout(tensors, _W_KEYS, out_ch, in_ch, kernel, name=name, pair="W")
        expected = {_A_KEYS[k]: s for k, s in a_layout.shapes().items()}
        expected.update({_W_KEYS[k]: s for k, s in w_layout.shapes().items()})
        for key, shape in expected.items():
            if key not in tensors:
                raise BadInput(f"{name}: glokr needs {key}")
            check_shape(name, key, tensors[key], shape)
        extra = set(tensors) - set(expected) - {"alpha"}
        if extra:
            raise BadInput(f"{name}: glokr key {sorted(extra)[0]!r} does not fit the other blocks")
        ranks = {r for lay in (a_layout, w_layout) for r in (lay.w1_rank, lay.w2_rank) if r is not None}
        if len(ranks) > 1:
            raise BadInput(f"{name}: glokr blocks have different ranks {sorted(ranks)}")
        rank = next(iter(ranks), None)
        alpha = read_alpha(tensors, rank or 1, name=name)
        dim = rank if rank is not None else max(1, round(alpha))
        module = cls(base, dim=dim, alpha=alpha, layouts=(a_layout, w_layout))
        with torch.no_grad():
            for key in expected:
                getattr(module, key).copy_(tensors[key])
        return module

    @classmethod
    def rank_bound(cls, tensors: dict[str, torch.Tensor]) -> int:
        # rank(W0·A) ≤ rank(A1)·rank(A2) per kernel position (ΔW flattened to [out, in·k·k]);
        # rank(W1 ⊗ W2) = rank(W1)·rank(W2) with W2 flattened to [out₂, in₂·k·k]
        a_out1, _, a_out2, _, a_r1, a_r2 = _block_ranks(tensors, "glokr_a")
        out1, in1, out2, fan2, r1, r2 = _block_ranks(tensors, "glokr_w")
        in_ch = a_out1 * a_out2
        fan_in = in1 * fan2
        kk = max(1, fan_in // in_ch)
        return int(min(out1 * out2, fan_in, a_r1 * a_r2 * kk + r1 * r2))


def _block_ranks(tensors: dict[str, torch.Tensor], prefix: str) -> tuple[int, ...]:
    """(out₁, in₁, out₂, in₂·k·k, rank bound of block 1, of block 2) of one Kronecker pair."""
    if f"{prefix}1" in tensors:
        out1, in1 = tensors[f"{prefix}1"].shape
        r1 = min(out1, in1)
    else:
        a, b = tensors[f"{prefix}1_a"], tensors[f"{prefix}1_b"]
        out1, in1 = a.shape[0], b.shape[-1]
        r1 = min(out1, in1, a.shape[1])
    if f"{prefix}2" in tensors:
        w2 = tensors[f"{prefix}2"]
        out2, fan2 = w2.shape[0], w2[0].numel()
        r2 = min(out2, fan2)
    elif "glokr_t2" in tensors and prefix == "glokr_w":
        a, b, t = tensors[f"{prefix}2_a"], tensors[f"{prefix}2_b"], tensors["glokr_t2"]
        out2, fan2 = a.shape[1], b.shape[1] * t[0, 0].numel()
        r2 = min(a.shape[0], out2, fan2)
    else:
        a, b = tensors[f"{prefix}2_a"], tensors[f"{prefix}2_b"]
        out2, fan2 = a.shape[0], b.shape[1]
        r2 = min(out2, fan2, a.shape[1])
    return int(out1), int(in1), int(out2), int(fan2), int(r1), int(r2)


def _read_layout(
    tensors: dict[str, torch.Tensor],
    names: dict[str, str],
    out_ch: int,
    in_ch: int,
    kernel: tuple[int, ...],
    *,
    name: str,
    pair: str,
) -> KronLayout:
    """One pair's block shapes from a file's tensors (any split of in and out)."""
    key = names
    if key["lokr_w1"] in tensors:
        w1 = tensors[key["lokr_w1"]]
        if w1.dim() != 2:
            raise BadInput(f"{name}: {key['lokr_w1']} must be 2-D, got shape {tuple(w1.shape)}")
        (out1, in1), w1_rank = w1.shape, None
    elif key["lokr_w1_a"] in tensors and key["lokr_w1_b"] in tensors:
        out1, w1_rank = tensors[key["lokr_w1_a"]].shape[:2]
        in1 = tensors[key["lokr_w1_b"]].shape[-1]
    else:
        raise BadInput(f"{name}: glokr needs {key['lokr_w1']} or {key['lokr_w1_a']} + {key['lokr_w1_b']}")
    if out1 < 1 or in1 < 1 or out_ch % out1 or in_ch % in1:
        raise BadInput(
            f"{name}: glokr block {pair}1 {out1}×{in1} does not divide the layer's {out_ch}×{in_ch}"
        )
    tucker = "lokr_t2" in key and key["lokr_t2"] in tensors
    if key["lokr_w2"] in tensors:
        w2_rank = None
    elif key["lokr_w2_a"] in tensors:
        w2_rank = int(tensors[key["lokr_w2_a"]].shape[0 if tucker else -1])
    else:
        raise BadInput(f"{name}: glokr needs {key['lokr_w2']} or {key['lokr_w2_a']} + {key['lokr_w2_b']}")
    if tucker and kernel in ((), (1, 1)):
        raise BadInput(f"{name}: glokr_t2 given for a layer without a k×k kernel")
    return KronLayout(
        int(out1), int(in1), out_ch // int(out1), in_ch // int(in1), kernel, w1_rank, w2_rank, tucker
    )
