"""DyLoRA: one LoRA trained so that every truncation of it to fewer rank components is useful.

    ΔW_b = (α/b)·B[:, :b]·A[:b]      at rank b = k·block_size, k ∈ {1, …, r/block_size}

(Valipour et al. 2022, "DyLoRA: Parameter-Efficient Tuning of Pre-trained Models using Dynamic
Search-Free Low-Rank Adaptation", §3.) Each training step samples k per module, uniformly; the
forward uses the first k blocks of rank components at scale α/b, and only block k is trained —
the lower blocks take part with their gradients stopped (held as separate parameters, so the
optimizer does not touch blocks without a gradient, weight decay included). Outside training the
module is the full-rank LoRA, α/r: what the file holds, in plain LoRA keys (``lora_down.weight``,
``lora_up.weight``, ``alpha``), so every LoRA reader applies it; metadata names it ``dylora``.
A reader truncates it to rank b by keeping the first b components (A1111's ``dyn=``); the scale
then follows the kept rank, α/b, as in training. (LyCORIS trains at α/(k+1) — its block count —
and exports α/r; here training and export agree.)

Init (as LoRA): A Kaiming-uniform, B = 0. Conv layers: A is a k×k conv, B a 1×1 conv (LoCon).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from lyco_bench.adapters.algorithms.lora import LoRAModule
from lyco_bench.adapters.base import (
    LYCORIS_LR_GRID,
    AdapterModule,
    BaseLayer,
    alpha_tensor,
    register_algorithm,
)
from lyco_bench.adapters.options import RankOptions
from lyco_bench.errors import BadInput


class DyLoRAOptions(RankOptions):
    """DyLoRA settings; defaults are the DyLoRA reference ones (dim 32, α 16, blocks of 4)."""

    dim: int = Field(32, ge=1)
    """Full rank r (a multiple of ``block_size``)."""
    alpha: float = 16.0
    """α; the scale at rank b is α/b. Left out: 16 with the default rank, else dim."""
    block_size: int = Field(4, ge=1)
    """Rank components trained together: each step trains one block of this many."""

    @model_validator(mode="after")
    def _blocks(self) -> DyLoRAOptions:
        if self.dim % self.block_size:
            raise ValueError(f"dim {self.dim} is not a multiple of block_size {self.block_size}")
        return self


@register_algorithm
class DyLoRAModule(AdapterModule):
    """DyLoRA for Linear and Conv2d (LoCon layout)."""

    algo = "dylora"
    file_keys = frozenset({"lora_down.weight", "lora_up.weight", "alpha"})
    detect_keys = frozenset({"lora_down.weight", "lora_up.weight"})
    Options = DyLoRAOptions
    lr_grid = LYCORIS_LR_GRID

    def __init__(self, base: BaseLayer, options=None, *, multiplier: float = 1.0, **settings) -> None:
        super().__init__(base, options, multiplier=multiplier, **settings)
        o = self.options
        self.dim, self.alpha, self.block_size = o.dim, float(o.alpha), o.block_size
        w = base.weight
        out_ch, in_ch, k = w.shape[0], w.shape[1], tuple(w.shape[2:])
        up_tail = (1, 1) if self.is_conv else ()
        blocks = self.dim // self.block_size
        self.down_blocks = nn.ParameterList([self._new(self.block_size, in_ch, *k) for _ in range(blocks)])
        self.up_blocks = nn.ParameterList(
            [self._new(out_ch, self.block_size, *up_tail) for _ in range(blocks)]
        )
        # The whole A at once, as LoRA initializes it: the same draws whatever the block size.
        down = torch.empty(self.dim, in_ch, *k, device=w.device, dtype=w.dtype)
        self.init_(down, nn.init.kaiming_uniform_, a=math.sqrt(5))
        with torch.no_grad():
            for i, block in enumerate(self.down_blocks):
                block.copy_(down[i * self.block_size : (i + 1) * self.block_size])
            for block in self.up_blocks:
                block.zero_()
        self.active_blocks: int | None = None
        """Blocks in play this training step (``before_step``); None: all, the full-rank LoRA."""

    @classmethod
    def detects(cls, suffixes: set[str]) -> bool:
        return False  # a DyLoRA file holds plain LoRA keys: it is told apart by its metadata

    # --- training: one block per step ----------------------------------------------------------
    def before_step(self, generator: torch.Generator) -> None:
        """Sample the rank of the next step: k blocks, k uniform in {1, …, r/block_size}."""
        count = len(self.down_blocks)
        self.active_blocks = int(torch.randint(1, count + 1, (), generator=generator))

    def _factors(self) -> tuple[torch.Tensor, torch.Tensor, float]:
        """(A, B, scale) at the rank in play: lower blocks detached while training one block."""
        k = self.active_blocks if self.training and self.active_blocks is not None else len(self.down_blocks)
        train_one = self.training and self.active_blocks is not None
        downs = [b.detach() if train_one and i < k - 1 else b for i, b in enumerate(self.down_blocks[:k])]
        ups = [b.detach() if train_one and i < k - 1 else b for i, b in enumerate(self.up_blocks[:k])]
        rank = k * self.block_size
        return torch.cat(downs), torch.cat(ups, dim=1), self.alpha / rank

    def delta_weight(self) -> torch.Tensor:
        down, up, scale = self._factors()
        return ((up.flatten(1) * scale) @ down.flatten(1)).view_as(self.base.weight)

    def bypass(self, x: torch.Tensor) -> torch.Tensor:
        down, up, scale = self._factors()
        if not self.is_conv:
            return F.linear(F.linear(x, down), up * scale)  # (…, in) → (…, b) → (…, out)
        b = self.base
        h = F.conv2d(x, down, None, b.stride, b.padding, b.dilation)  # (B, b, H', W')
        return F.conv2d(h, up * scale)  # (B, out, H', W')

    # --- file layout: a plain LoRA at full rank ----------------------------------------------
    def file_tensors(self) -> dict[str, torch.Tensor]:
        return {
            "lora_down.weight": torch.cat(list(self.down_blocks)).detach(),
            "lora_up.weight": torch.cat(list(self.up_blocks), dim=1).detach(),
            "alpha": alpha_tensor(self.alpha),
        }

    @classmethod
    def from_file_tensors(
        cls, base: BaseLayer, tensors: dict[str, torch.Tensor], *, name: str
    ) -> DyLoRAModule:
        lora = LoRAModule.from_file_tensors(base, tensors, name=name)  # shapes checked there
        if lora.tucker:
            raise BadInput(f"{name}: dylora has no Tucker core (lora_mid.weight)")
        dim = lora.dim
        block = math.gcd(dim, cls.Options.model_fields["block_size"].default)
        module = cls(base, dim=dim, alpha=lora.alpha, block_size=block)
        with torch.no_grad():
            for i, (down, up) in enumerate(zip(module.down_blocks, module.up_blocks, strict=True)):
                down.copy_(lora.lora_down[i * block : (i + 1) * block])
                up.copy_(lora.lora_up[:, i * block : (i + 1) * block])
        return module

    @classmethod
    def rank_bound(cls, tensors: dict[str, torch.Tensor]) -> int:
        return LoRAModule.rank_bound(tensors)

    @classmethod
    def truncate_tensors(
        cls, tensors: dict[str, torch.Tensor], rank: int, *, name: str
    ) -> dict[str, torch.Tensor]:
        return LoRAModule.truncate_tensors(tensors, rank, name=name)
