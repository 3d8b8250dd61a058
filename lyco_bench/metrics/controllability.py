"""Controllability (the paper, §5): CLIP text similarity of each image with its own prompt.

The prompt's triggers are replaced by descriptive words before encoding (the manifest's
``clip_text``); the score is the plain mean cosine, no ×100 and no clamp at 0 (unlike CLIPScore).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F

from lyco_bench.metrics.registry import Metric, PanelAxis, Report, register_metric
from lyco_bench.metrics.values import MetricValue, sample_std


def text_similarity(image_features: torch.Tensor, text_features: torch.Tensor) -> float:
    """Mean over i of cos(imageᵢ, textᵢ); both (N, D), row i of one paired with row i of the other."""
    if image_features.shape != text_features.shape:
        raise ValueError("text_similarity pairs row i of the images with row i of the texts")
    return float(text_similarity_per_image(image_features, text_features).mean())


def text_similarity_per_image(image_features: torch.Tensor, text_features: torch.Tensor) -> torch.Tensor:
    """(N,) cos(imageᵢ, textᵢ) in float64."""
    img, txt = F.normalize(image_features.double(), dim=1), F.normalize(text_features.double(), dim=1)
    return (img * txt).sum(1)


def text_similarity_rows(view) -> Iterator[MetricValue]:
    images = view.generated()
    texts = view.texts(view.unit.rows["clip_text"].tolist())
    per_image = text_similarity_per_image(images, texts)
    yield MetricValue(text_similarity(images, texts), view.n, std=sample_std(per_image))


# --- registry entries (docs/protocol.md §5) -----------------------------------------------------
# fmt: off
register_metric(
    Metric("text_similarity", "controllability", True, ("generated", "text"), ("clip",),
           compute=text_similarity_rows, per_image=True,
           description="mean CLIP cosine of each image with its prompt (triggers → descriptive words)",
           report=Report(headline=True, pareto=True, classes=("alter", "train", "trigger"), panels=(PanelAxis(1, "y", ("alter",)),)))
)
# fmt: on
