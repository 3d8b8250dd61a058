"""Experimental no-reference image quality, beyond the paper (which found no satisfying metric).

CLIP-IQA (Wang, Chan & Loy 2023): for an antonym prompt pair ("Good photo." / "Bad photo."),
the quality of an image is softmax(s·[cos(img, good), cos(img, bad)])₀ with s the CLIP logit
scale; averaged over pairs and images. In [0, 1], higher is better. Not validated on this
benchmark: reported as ``experimental``.

HPS v2.1 (Wu et al. 2023, Human Preference Score v2): an OpenCLIP ViT-H-14 fine-tuned on human
preferences between generated images; the score of an image for a prompt is the cosine of their
features (see :class:`lyco_bench.metrics.encoders.HpsEncoder`). ``hps_delta`` compares each tuned
image with the base model's image of the same prompt and seed, so the prompt's own difficulty
cancels: positive = people would prefer the tuned model's picture.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F

from lyco_bench.metrics.registry import PROMPT_CLASSES, Metric, register_metric
from lyco_bench.metrics.values import NAN, MetricValue, paired_or_reason, sample_std

IQA_PROMPT_PAIRS: tuple[tuple[str, str], ...] = (("Good photo.", "Bad photo."),)


def clip_iqa(
    image_features: torch.Tensor, good: torch.Tensor, bad: torch.Tensor, *, logit_scale: float
) -> float:
    """Mean P(good) over images (N, D) and prompt pairs (good/bad: (P, D))."""
    return float(_p_good(image_features, good, bad, logit_scale).mean())


def clip_iqa_per_image(
    image_features: torch.Tensor, good: torch.Tensor, bad: torch.Tensor, *, logit_scale: float
) -> torch.Tensor:
    """(N,) P(good) of each image, averaged over the prompt pairs."""
    return _p_good(image_features, good, bad, logit_scale).mean(1)


def _p_good(image_features, good, bad, logit_scale) -> torch.Tensor:
    img = F.normalize(image_features.double(), dim=1)
    g, b = F.normalize(good.double(), dim=1), F.normalize(bad.double(), dim=1)
    logits = torch.stack([img @ g.T, img @ b.T], dim=-1) * logit_scale  # (N, P, 2)
    return logits.softmax(-1)[..., 0]  # (N, P)


def hps_per_pair(tuned: torch.Tensor, base: torch.Tensor, texts: torch.Tensor) -> torch.Tensor:
    """(P,) HPS(tunedᵢ, textᵢ) − HPS(baseᵢ, textᵢ), HPS = cosine of image and text features."""
    if not tuned.shape == base.shape == texts.shape:
        raise ValueError("hps_delta pairs row i of the tuned images, the base images and the texts")
    t, b = F.normalize(tuned.double(), dim=1), F.normalize(base.double(), dim=1)
    txt = F.normalize(texts.double(), dim=1)
    return (t * txt).sum(1) - (b * txt).sum(1)


def hps_delta(tuned: torch.Tensor, base: torch.Tensor, texts: torch.Tensor) -> float:
    """Mean paired HPS difference, tuned minus base (same prompt and seed)."""
    return float(hps_per_pair(tuned, base, texts).mean())


# --- compute functions of the registry --------------------------------------------------------
def clip_iqa_rows(view) -> Iterator[MetricValue]:
    images = view.generated()
    good = view.texts([g for g, _ in IQA_PROMPT_PAIRS])
    bad = view.texts([b for _, b in IQA_PROMPT_PAIRS])
    scale = view.encoder().logit_scale()
    per_image = clip_iqa_per_image(images, good, bad, logit_scale=scale)
    value = clip_iqa(images, good, bad, logit_scale=scale)
    yield MetricValue(value, view.n, std=sample_std(per_image))


def hps_delta_rows(view) -> Iterator[MetricValue]:
    """Paired with the base model, for the prompt classes the base model has images of."""
    pairs, reason = paired_or_reason(view)
    if pairs is None and view.pairs() is not None and view.unit.prompt_class not in view.base_classes:
        return  # the base model drew no image of this class: nothing to compare with
    if pairs is None:
        yield MetricValue(NAN, 0, reason=reason)
        return
    tuned = view.features(pairs["path"].tolist())
    base = view.features(pairs["path_base"].tolist(), base=True)
    texts = view.texts(pairs["clip_text"].tolist())
    per_pair = hps_per_pair(tuned, base, texts)
    yield MetricValue(float(per_pair.mean()), len(pairs), std=sample_std(per_pair))


# --- registry entries (docs/protocol.md §5) -----------------------------------------------------
# fmt: off
register_metric(
    Metric("clip_iqa", "quality", True, ("generated",), ("clip",), compute=clip_iqa_rows,
           texts=tuple(t for pair in IQA_PROMPT_PAIRS for t in pair), per_image=True,
           experimental=True,
           description="CLIP-IQA: softmax over 'Good photo.'/'Bad photo.' cosines (experimental)")
)
register_metric(
    Metric("hps_delta", "quality", True, ("base", "generated", "text"), ("hps",), PROMPT_CLASSES,
           compute=hps_delta_rows, per_image=True, default=False,
           description="HPS v2.1 of each image minus the base model's of the same prompt and seed")
)
# fmt: on
