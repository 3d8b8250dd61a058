"""Controllability (PAPER.md §5): CLIP text similarity of each image with its own prompt.

The prompt's triggers are replaced by descriptive words before encoding (the manifest's
``clip_text``); the score is the plain mean cosine, no ×100 and no clamp at 0 (unlike CLIPScore).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def text_similarity(image_features: torch.Tensor, text_features: torch.Tensor) -> float:
    """Mean over i of cos(imageᵢ, textᵢ); both (N, D), row i of one paired with row i of the other."""
    if image_features.shape != text_features.shape:
        raise ValueError("text_similarity pairs row i of the images with row i of the texts")
    img, txt = F.normalize(image_features.double(), dim=1), F.normalize(text_features.double(), dim=1)
    return float((img * txt).sum(1).mean())
