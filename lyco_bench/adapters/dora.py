"""DoRA: a weight-decomposed update on top of an algorithm's own ΔW (Liu et al. 2024).

The algorithm's update U (LoRA's s·B·A, LoHa's s·W1 ⊙ W2, LoKr's s·W1 ⊗ W2, scale included)
turns the direction of the weight; a trained magnitude m sets the length of each row:

    V = W0 + U,   W′ = m ⊙ V / ‖V‖,   ΔW = W′ − W0 = (r − 1) ⊙ W0 + r ⊙ U,   r = m / ‖V‖

so W0 + λ·ΔW applies a multiplier λ (as A1111 and ComfyUI merge a DoRA file). ‖·‖ is the norm
of each output row, m: [out, 1(, 1, 1)] (LyCORIS's ``wd_on_out``); files written per input
column, m: [1, in(, 1, 1)], load too, but new modules are per output row. m starts at ‖W0‖,
so W′ = W0 and ΔW = 0 exactly at init. File key ``dora_scale`` = m, beside the algorithm's keys.

Gradients: ‖V‖ is a constant in backward (the paper's §4.3, as PEFT does): it follows U in the
forward but passes no gradient; LyCORIS differentiates through it, with the same forward. The
norm is kept ≥ the dtype's eps (LyCORIS adds eps to it: the two differ by eps/‖V‖), so a zero
row of W0 stays zero instead of becoming NaN.

Where LyCORIS (4.x) differs, this follows its forward, which is also how A1111 and ComfyUI apply
a DoRA file: its merge (``get_merged_weight``) scales a LoHa/LoKr update by α/r twice before
the decomposition, so it disagrees with its own forward; and its multiplier rescales V, giving
V·(λ·(r − 1) + 1) = W0 + U + λ·(W′ − W0 − U), which is W0 + U rather than W0 at λ = 0. Both
agree with the formula above at λ = 1.

Forward. Per output row, r is one number per output channel, so

    op(x, W0 + λΔW) = op(x, W0) + λ·[(r − 1) ⊙ op(x, W0) + r ⊙ op(x, U)]

is one base op plus the algorithm's bypass (PEFT's form); the dense V is built without gradient
for its norm only. Where the bypass is itself a dense op (LoHa, ``grad_mode = "dense"``) or the
norm runs over input columns, the shared merged forward runs instead: one op on W0 + λΔW, saving
only x, with dL/dθ from dL/dΔW = λ·gᵀx through :meth:`DoRAMixin.delta_weight_vjp`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from lyco_bench.adapters.base import AdapterModule, AlgorithmOptions, BaseLayer, _MergedForward
from lyco_bench.errors import BadInput

DORA_KEY = "dora_scale"


def weight_norm(v: torch.Tensor, *, per_output: bool = True) -> torch.Tensor:
    """‖v‖ of each output row, shaped (out, 1, …), or of each input column, shaped (1, in, …);
    computed in float32 at least."""
    keep = 0 if per_output else 1
    dims = tuple(d for d in range(v.dim()) if d != keep)
    dtype = torch.promote_types(v.dtype, torch.float32)
    return torch.linalg.vector_norm(v, dim=dims, keepdim=True, dtype=dtype)


class DoRAMixin(AdapterModule):
    """The ``dora`` setting for an algorithm: ``class LoRAModule(DoRAMixin, AdapterModule)``.

    The algorithm implements its own update U under these names; :meth:`delta_weight`,
    :meth:`bypass` and :meth:`delta_weight_vjp` return it unchanged when dora is off:

      update_weight()     U shaped like the base weight, scale included (differentiable)
      update_bypass(x)    U applied to x without bias (default: one base op on U)
      update_vjp(grad_u)  dL/dθ for the trainable factors given dL/dU (default: autograd)

    Speed paths an algorithm keeps for U alone (its own ``merged_weight``, ``merged_backward``,
    ``merged_param_grads``, ``forward``) hand over to the generic ones when ``self.dora``.
    Its ``Options`` declare ``dora: bool = False``, its ``file_keys`` include ``dora_scale``, its
    ``file_tensors`` add :meth:`dora_file_tensors`, its ``from_file_tensors`` builds the module
    with ``dora=`` :func:`has_dora` and then calls :meth:`load_dora_scale`.
    """

    dora_scale: nn.Parameter | None

    def __init__(
        self,
        base: BaseLayer,
        options: AlgorithmOptions | Any = None,
        *,
        multiplier: float = 1.0,
        **settings: Any,
    ) -> None:
        super().__init__(base, options, multiplier=multiplier, **settings)
        self.dora = bool(getattr(self.options, "dora", False))
        self.dora_per_output = True
        magnitude = None
        if self.dora:
            w0 = base.weight.detach()
            magnitude = nn.Parameter(weight_norm(w0).to(w0.dtype))  # m = ‖W0‖: ΔW = 0 at init
        self.register_parameter(DORA_KEY, magnitude)

    @classmethod
    def label(cls, options: AlgorithmOptions) -> str:
        name = super().label(options)
        return f"{name}+dora" if getattr(options, "dora", False) else name

    def extra_repr(self) -> str:
        return super().extra_repr() + (", dora" if self.dora else "")

    # --- the algorithm's update U ------------------------------------------------------------
    def update_weight(self) -> torch.Tensor:
        raise NotImplementedError

    def update_bypass(self, x: torch.Tensor) -> torch.Tensor:
        return self.base_op(x, self.update_weight(), None)

    def named_update_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        """The algorithm's own factors (every parameter but ``dora_scale``), in module order."""
        return ((n, p) for n, p in self.named_parameters() if n != DORA_KEY)

    def update_parameters(self) -> list[nn.Parameter]:
        return [p for _, p in self.named_update_parameters()]

    def update_vjp(self, grad_u: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        params = tuple(p for p in self.update_parameters() if p.requires_grad)
        with torch.enable_grad():
            return torch.autograd.grad(self.update_weight(), params, grad_u, allow_unused=True)

    # --- DoRA on top of it -------------------------------------------------------------------
    def _ratio(self, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(r = m/‖V‖ with ‖V‖ detached, ‖V‖), both in float32 at least, shaped like m."""
        norm = weight_norm(v.detach(), per_output=self.dora_per_output)
        norm = norm.clamp_min(torch.finfo(norm.dtype).eps)
        return self.dora_scale.to(norm.dtype) / norm, norm

    def delta_weight(self) -> torch.Tensor:
        u = self.update_weight()
        if not self.dora:
            return u
        w0 = self.base.weight
        r, _ = self._ratio(w0 + u)
        # (r − 1)·W0 + r·U rather than r·V − W0: exact 0 at init, and no cancellation in half precision
        return torch.addcmul(w0 * (r - 1).to(w0.dtype), u, r.to(u.dtype))

    def bypass(self, x: torch.Tensor) -> torch.Tensor:
        if not self.dora:
            return self.update_bypass(x)
        if not self.dora_per_output:
            return self.base_op(x, self.delta_weight(), None)
        r = self._channel_ratio(x)
        lin = self.base_op(x, self.base.weight, None)
        return torch.addcmul(lin * (r - 1).to(lin.dtype), self.update_bypass(x), r.to(lin.dtype))

    def delta_weight_vjp(self, grad_w: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        if not self.dora:
            return self.update_vjp(grad_w)
        with torch.no_grad():
            v = self.base.weight + self.update_weight()
            r, norm = self._ratio(v)
            m = self.dora_scale
            # dL/dm = Σ G ⊙ V / ‖V‖ over each row (column); dL/dU = r ⊙ G
            keep = 0 if self.dora_per_output else 1
            dims = tuple(d for d in range(v.dim()) if d != keep)
            grad_m = (grad_w * v).sum(dims, keepdim=True, dtype=norm.dtype).div_(norm).to(m.dtype)
            del v
            grad_u = grad_w * r.to(grad_w.dtype)
        factor_grads = iter(self.update_vjp(grad_u))
        return tuple(
            (grad_m if name == DORA_KEY else next(factor_grads))
            for name, p in self.named_parameters()
            if p.requires_grad
        )

    def _channel_ratio(self, x: torch.Tensor) -> torch.Tensor:
        """r per output channel, shaped to broadcast over the layer output."""
        with torch.no_grad():
            v = self.base.weight + self.update_weight()
        r, _ = self._ratio(v)
        return r.view(-1, 1, 1) if self.is_conv else r.view(-1)

    def dora_prefers_merged(self, x: torch.Tensor) -> bool:
        """The merged forward for dense-bypass algorithms and per-column norms; for low-rank ones
        training takes the bypass form (no dense gᵀx), inference what the algorithm prefers."""
        if self.grad_mode == "dense" or not self.dora_per_output:
            return True
        return not torch.is_grad_enabled() and self.prefers_merged(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.dora or self.multiplier == 0:
            return super().forward(x)
        if self.can_merge_forward(x) and self.dora_prefers_merged(x):
            params = tuple(p for p in self.parameters() if p.requires_grad)
            return _MergedForward.apply(x, self, *params)
        if not self.dora_per_output:
            return torch.add(self.base(x), self.bypass(x), alpha=self.multiplier)
        # base(x) + λ·[(r − 1)·op(x, W0) + r·op(x, U)], op(x, W0) = base(x) − b: one base op
        r = self._channel_ratio(x)
        y = self.base(x)
        bias = self.base.bias
        lin = y if bias is None else y - (bias.view(-1, 1, 1) if self.is_conv else bias).to(y.dtype)
        delta = torch.addcmul(lin * (r - 1).to(y.dtype), self.update_bypass(x), r.to(y.dtype))
        return torch.add(y, delta, alpha=self.multiplier)

    # --- files ---------------------------------------------------------------------------------
    def dora_file_tensors(self) -> dict[str, torch.Tensor]:
        return {} if self.dora_scale is None else {DORA_KEY: self.dora_scale.detach()}

    def load_dora_scale(self, tensors: dict[str, torch.Tensor], *, name: str) -> None:
        """Copy a file's ``dora_scale`` (per output row, or per input column as some files have it)."""
        t = tensors.get(DORA_KEY)
        if t is None:
            return
        w = self.base.weight
        ones = (1,) * (w.dim() - 2)
        per_row, per_column = (w.shape[0], 1, *ones), (1, w.shape[1], *ones)
        if t.dim() >= 1 and t.shape[0] == w.shape[0] and t.numel() == w.shape[0]:
            shape = per_row
        elif t.dim() >= 2 and t.shape[0] == 1 and t.shape[1] == w.shape[1] and t.numel() == w.shape[1]:
            shape = per_column
        else:
            raise BadInput(
                f"{name}: {DORA_KEY} has shape {tuple(t.shape)}, expected {per_row} (per output row) "
                f"or {per_column} (per input column) for this layer"
            )
        with torch.no_grad():
            value = t.reshape(shape).to(w.device, w.dtype)
            if shape == per_row:
                self.dora_scale.copy_(value)
            else:
                self.dora_scale = nn.Parameter(value.clone())
                self.dora_per_output = False


def has_dora(tensors: dict[str, torch.Tensor]) -> bool:
    """Whether a module's file tensors carry a DoRA magnitude."""
    return DORA_KEY in tensors


def dora_rank_bound(tensors: dict[str, torch.Tensor], bound: int, out: int, fan_in: int) -> int:
    """rank(ΔW) bound: the update's own, or the layer's when DoRA rescales W0 too."""
    return int(min(out, fan_in)) if has_dora(tensors) else int(bound)
