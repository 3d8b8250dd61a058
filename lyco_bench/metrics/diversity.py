"""Diversity (the paper, §5): the Vendi score (Friedman & Dieng 2023) with a linear kernel.

VS_q = exp(H_q(λ)), λ the eigenvalues of K/n, K = X·Xᵀ of L2-normalized features; q = 1 gives
exp(−Σ λᵢ log λᵢ). Computed through the vendi-score package's ``score_K`` (n ≤ D) or
``score_dual`` (eigenvalues of Xᵀ·X/n, the same non-zero spectrum, when n > D); both honour q,
unlike its ``score_X``.
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from lyco_bench.metrics.registry import Metric, PanelAxis, Report, register_metric
from lyco_bench.metrics.values import MetricValue

PER_PROMPT_CLASSES = ("alter",)
"""Prompt classes whose Vendi score is taken per prompt and averaged (content-changing prompts)."""


def vendi_score(features: torch.Tensor, *, q: float = 1.0) -> float:
    """Vendi score of (N, D) features, N ≥ 1: between 1 (all alike) and min(N, D) (orthogonal)."""
    from vendi_score import vendi

    x = F.normalize(features.double(), dim=1).numpy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scipy deprecations inside vendi-score 0.0.3
        if x.shape[0] <= x.shape[1]:
            return float(vendi.score_K(x @ x.T, q=q))
        return float(vendi.score_dual(x, q=q, normalize=False))


def vendi_per_group(features: torch.Tensor, groups: Sequence, *, q: float = 1.0) -> tuple[float, int]:
    """Mean Vendi score over the groups with ≥ 2 images (``<alter>``: one group per prompt).

    Returns (score, number of groups used); (nan, 0) when no group has 2 images.
    """
    labels = np.asarray([str(g) for g in groups])
    scores = []
    for label in sorted(set(labels.tolist())):
        idx = np.flatnonzero(labels == label)
        if len(idx) >= 2:
            scores.append(vendi_score(features[torch.from_numpy(idx)], q=q))
    return (float(np.mean(scores)), len(scores)) if scores else (float("nan"), 0)


def vendi_blocks(features: torch.Tensor, block: int, *, q: float = 1.0) -> float:
    """The paper's ``<alter>`` Vendi (lycoris_eval ``compute_per_prompt_vendi_scores``): the mean
    Vendi score of consecutive blocks of ``block`` rows, the last one possibly shorter (a block of
    one image scores exp(0) = 1)."""
    return float(np.mean([vendi_score(features[s : s + block], q=q) for s in range(0, len(features), block)]))


def _file_order(path) -> tuple:
    """Natural order of file names (``<prompt_index>-<seed>.png``): as the paper's zero-padded
    names sort, so that its blocks of 10 are the images of one prompt."""
    name = str(path).replace("\\", "/").rsplit("/", 1)[-1]
    return tuple((int(t), "") if t.isdigit() else (-1, t) for t in re.split(r"(\d+)", name)), str(path)


def vendi_rows(view) -> Iterator[MetricValue]:
    """The unit's Vendi score (``<alter>``: per prompt, averaged; the ``paper`` profile: blocks
    of 10 images in file order); a set statistic (no std)."""
    from lyco_bench.metrics.manifest import prompt_groups
    from lyco_bench.metrics.profiles import ALTER_BLOCK

    gen, n = view.generated(), view.n
    if view.unit.prompt_class in PER_PROMPT_CLASSES and view.profile == "paper":
        order = sorted(range(n), key=lambda i: _file_order(view.paths[i]))
        value, reason = (vendi_blocks(gen[order], ALTER_BLOCK), "") if n else (math.nan, "no images")
    elif view.unit.prompt_class in PER_PROMPT_CLASSES:
        value, used = vendi_per_group(gen, prompt_groups(view.unit.rows))
        reason = "" if used else "no prompt with 2 images"
    elif n >= 2:
        value, reason = vendi_score(gen), ""
    else:
        value, reason = math.nan, "fewer than 2 images"
    yield MetricValue(value, n, reason=reason)


# --- registry entries (docs/protocol.md §5) -----------------------------------------------------
# fmt: off
register_metric(
    Metric("vendi", "diversity", True, ("generated",), ("image",), ("train", "trigger", "alter"),
           compute=vendi_rows,
           description="Vendi score, q=1, linear kernel; <alter>: per prompt (paper profile: blocks of 10), averaged",
           # the paper CSV has Vendi only for in/out: the panel falls back to <train> (named on the axis)
           report=Report(headline=True, variant=("dinov2",),
                         panels=(PanelAxis(2, "y", ("trigger", "train", "alter")),)))
)
# fmt: on
