"""Base-model preservation (the paper, §5): style losses on VGG19 Gram features.

Gram vectors come from :func:`lyco_bench.metrics.encoders.gram_features` (packed so that their
squared L2 distances equal those of the full flattened, concatenated Grams).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from lyco_bench.metrics.registry import Metric, PanelAxis, Report, register_metric
from lyco_bench.metrics.values import NAN, MetricValue, paired_or_reason, sample_std


def style_loss_paired(base: torch.Tensor, tuned: torch.Tensor) -> float:
    """Mean over image pairs (same prompt and seed) of ‖gram(base) − gram(tuned)‖²; inputs (N, P)."""
    if base.shape != tuned.shape or len(base) == 0:
        raise ValueError(
            f"style_loss_paired needs two equal non-empty (N, P) sets, got {tuple(base.shape)} and {tuple(tuned.shape)}"
        )
    return float(((base.double() - tuned.double()) ** 2).sum(1).mean())


def style_loss_distribution(first: torch.Tensor, second: torch.Tensor) -> float:
    """‖μ₁ − μ₂‖² + var₁ + var₂ of two Gram-vector sets (the paper, §5, style loss vs the dataset).

    varₖ = mean squared distance of set k to its mean (population variance summed over
    dimensions), so the sum equals the mean of ‖x − y‖² over all cross pairs (x, y).
    """
    a, b = first.double(), second.double()
    mu_a, mu_b = a.mean(0), b.mean(0)
    var_a = ((a - mu_a) ** 2).sum(1).mean()
    var_b = ((b - mu_b) ** 2).sum(1).mean()
    return float(((mu_a - mu_b) ** 2).sum() + var_a + var_b)


@dataclass(frozen=True)
class GramStats:
    """Sufficient statistics of a Gram-vector set: count, Σx (P,) and Σ‖x‖², for streaming."""

    n: int
    total: torch.Tensor
    total_sq: float

    @staticmethod
    def of(grams: torch.Tensor) -> GramStats:
        g = grams.double()
        return GramStats(len(g), g.sum(0), float((g**2).sum()))

    def __add__(self, other: GramStats) -> GramStats:
        return GramStats(self.n + other.n, self.total + other.total, self.total_sq + other.total_sq)


def style_loss_from_stats(first: GramStats, second: GramStats) -> float:
    """:func:`style_loss_distribution` from streamed statistics: var = E‖x‖² − ‖μ‖² (float64)."""
    mu_a, mu_b = first.total / first.n, second.total / second.n
    var_a = first.total_sq / first.n - float((mu_a**2).sum())
    var_b = second.total_sq / second.n - float((mu_b**2).sum())
    return float(((mu_a - mu_b) ** 2).sum()) + max(var_a, 0.0) + max(var_b, 0.0)


# --- compute functions of the registry --------------------------------------------------------
def style_loss_base_rows(view) -> Iterator[MetricValue]:
    """Mean over (generated, base) pairs of the same prompt and seed of ‖Δgram‖²; std over pairs."""
    pairs, reason = paired_or_reason(view)
    if pairs is None:
        yield MetricValue(NAN, 0, reason=reason)
        return
    losses = view.pair_sq_distances(pairs)  # (P,) float64
    yield MetricValue(float(losses.mean()), len(pairs), std=sample_std(losses))


def style_loss_dataset_rows(view) -> Iterator[MetricValue]:
    """Gram statistics of the unit's images (streamed) against each reference set's (a set statistic)."""
    for key, ref_paths in view.unit.references:
        stats = view.reference_stats(key or view.unit.concept, ref_paths)
        value = style_loss_from_stats(view.streamed_stats(), stats)
        yield MetricValue(value, view.n, subclass=key or None)


# --- registry entries (docs/protocol.md §5) -----------------------------------------------------
# fmt: off
register_metric(
    Metric("style_loss_base", "preservation", False, ("base", "generated"), ("vgg19",), ("style", "agnostic"),
           compute=style_loss_base_rows, per_image=True,
           description="VGG19 Gram style loss to the base model's image of the same prompt and seed",
           report=Report(headline=True, panels=(PanelAxis(3, "y", ("style",)),)))
)
register_metric(
    Metric("style_loss_dataset", "preservation", False, ("reference", "generated"), ("vgg19",),
           ("train", "trigger", "alter"), compute=style_loss_dataset_rows, categories="style",
           description="‖μ₁−μ₂‖² + var₁ + var₂ of Gram vectors, generated vs dataset (style concepts)",
           # the paper files have the style loss only against the dataset: the third panel's stand-in
           report=Report(panels=(PanelAxis(3, "y", ("train", "trigger", "alter"), fallback=True),)))
)
# fmt: on
