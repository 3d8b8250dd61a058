"""How an algorithm's file tensors index the output rows of ΔW: what lets a family fuse the
adapters of several layers into the adapter of one layer whose output stacks theirs (FLUX's fused
``qkv`` of BFL's checkpoints: diffusers' separate ``to_q``/``to_k``/``to_v``), and split one back.

For ΔW = s·U·D with U: [out, r] and D: [r, in] (LoRA's up/down, LoHa's ``w*_a``/``w*_b`` pairs),
stacking n layers' updates is exact with the rank-n·r factors

    U = blockdiag(U_1, …, U_n),   D = [D_1; …; D_n],   α' = n·α  (so that α'/(n·r) = α/r)

— the layout kohya's and diffusers' FLUX converters read (``lora_conversion_utils``: the "sparse"
up weight). Splitting takes each layer's rows of U and keeps the rank columns that are not zero,
which is exact for this layout and for a dense fused U alike. Per-row tensors (DoRA's magnitude,
a full weight difference) are cut by rows.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RowLayout:
    """Which of an algorithm's file tensors carry ΔW's output rows (class attribute ``row_layout``
    of an AdapterModule; an algorithm without one is not fused)."""

    rank_columns: tuple[str, ...] = ()
    """[out, r] factors: block-diagonal when fused, rows and non-zero columns when split."""
    rank_rows: tuple[str, ...] = ()
    """[r, in] factors: stacked when fused, the kept rank rows when split."""
    rows: tuple[str, ...] = ()
    """[out, …] tensors: concatenated when fused, cut by rows when split."""
    scaled_alpha: bool = False
    """``alpha`` scales with the rank (α/r): multiplied by the rank ratio when fusing/splitting."""
