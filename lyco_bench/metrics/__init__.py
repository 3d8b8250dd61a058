"""Metrics of PAPER.md §5: the registry ``METRICS``, the feature cache and ``score``.

Every metric declares its criterion and direction (``higher_is_better``), so ranks and SHAP
signs need no special cases downstream. A new metric is a function in the file of its criterion
plus one entry here and one call in :mod:`lyco_bench.metrics.scoring`.
"""

from __future__ import annotations

from dataclasses import dataclass

from lyco_bench.metrics.cache import FeatureCache


@dataclass(frozen=True)
class Metric:
    name: str
    criterion: str
    """fidelity | controllability | diversity | preservation | quality"""
    higher_is_better: bool
    needs: tuple[str, ...]
    """Inputs: ``reference`` (dataset images), ``generated``, ``base`` (base-model images), ``text``."""
    experimental: bool = False
    description: str = ""


METRICS: dict[str, Metric] = {
    m.name: m
    for m in (
        Metric("image_similarity", "fidelity", True, ("reference", "generated"),
               description="mean cosine over all (reference, generated) pairs"),
        Metric("squared_centroid_distance", "fidelity", False, ("reference", "generated"),
               description="‖mean(ref) − mean(gen)‖² of normalized features"),
        Metric("frechet_distance", "fidelity", False, ("reference", "generated"),
               description="Fréchet distance of Gaussians fitted to reference and generated features"),
        Metric("text_similarity", "controllability", True, ("generated", "text"),
               description="mean CLIP cosine of each image with its prompt (triggers → descriptive words)"),
        Metric("vendi", "diversity", True, ("generated",),
               description="Vendi score, q=1, linear kernel; <alter>: per prompt, averaged"),
        Metric("style_loss_base", "preservation", False, ("base", "generated"),
               description="VGG19 Gram style loss to the base model's image of the same prompt and seed"),
        Metric("style_loss_dataset", "preservation", False, ("reference", "generated"),
               description="‖μ₁−μ₂‖² + var₁ + var₂ of Gram vectors, generated vs dataset (style concepts)"),
        Metric("clip_iqa", "quality", True, ("generated",), experimental=True,
               description="CLIP-IQA: softmax over 'Good photo.'/'Bad photo.' cosines (experimental)"),
    )
}  # fmt: skip


def score(**kwargs):
    """See :func:`lyco_bench.metrics.scoring.score` (imported lazily: it pulls in pandas)."""
    from lyco_bench.metrics.scoring import score as _score

    return _score(**kwargs)


def __getattr__(name: str):
    if name == "EncoderSettings":
        from lyco_bench.metrics.features import EncoderSettings

        return EncoderSettings
    raise AttributeError(name)


__all__ = ["METRICS", "Metric", "FeatureCache", "EncoderSettings", "score"]
