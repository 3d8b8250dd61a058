"""Experimental no-reference image quality, beyond the paper (which found no satisfying metric).

CLIP-IQA (Wang, Chan & Loy 2023): for an antonym prompt pair ("Good photo." / "Bad photo."),
the quality of an image is softmax(s·[cos(img, good), cos(img, bad)])₀ with s the CLIP logit
scale; averaged over pairs and images. In [0, 1], higher is better. Not validated on this
benchmark: reported as ``experimental``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IQA_PROMPT_PAIRS: tuple[tuple[str, str], ...] = (("Good photo.", "Bad photo."),)


def clip_iqa(
    image_features: torch.Tensor, good: torch.Tensor, bad: torch.Tensor, *, logit_scale: float
) -> float:
    """Mean P(good) over images (N, D) and prompt pairs (good/bad: (P, D))."""
    img = F.normalize(image_features.double(), dim=1)
    g, b = F.normalize(good.double(), dim=1), F.normalize(bad.double(), dim=1)
    logits = torch.stack([img @ g.T, img @ b.T], dim=-1) * logit_scale  # (N, P, 2)
    return float(logits.softmax(-1)[..., 0].mean())
