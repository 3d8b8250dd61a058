"""Metrics of PAPER.md §5: the registry ``METRICS``, the feature cache and ``score``.

Every metric declares its criterion and direction (``higher_is_better``), so ranks and SHAP
signs need no special cases downstream, and the encoders and generated prompt classes it reads,
so the planner and the scorer encode exactly what some requested metric reads. A new metric is a
function in the file of its criterion plus one entry here and one call in
:mod:`lyco_bench.metrics.scoring`.
"""

from __future__ import annotations

from dataclasses import dataclass

from lyco_bench.metrics.cache import FeatureCache

PROMPT_CLASSES = ("train", "trigger", "alter", "style", "agnostic", "combine")
# Fidelity compares with the dataset: the concept's own classes, two-concept images (each concept)
# and concept-agnostic ones (leakage). <style> images are judged by the style loss instead.
FIDELITY_CLASSES = ("train", "trigger", "alter", "agnostic", "combine")


@dataclass(frozen=True)
class Metric:
    name: str
    criterion: str
    """fidelity | controllability | diversity | preservation | quality"""
    higher_is_better: bool
    needs: tuple[str, ...]
    """Inputs: ``reference`` (dataset images), ``generated``, ``base`` (base-model images), ``text``."""
    encoders: tuple[str, ...]
    """Encoder kinds it reads; ``image`` stands for ``EncoderSettings.image_encoders`` (DINOv2)."""
    prompt_classes: tuple[str, ...] = PROMPT_CLASSES
    """Generated prompt classes it reads: the planner and the scorer encode nothing else."""
    experimental: bool = False
    description: str = ""


METRICS: dict[str, Metric] = {
    m.name: m
    for m in (
        Metric("image_similarity", "fidelity", True, ("reference", "generated"), ("image",), FIDELITY_CLASSES,
               description="mean cosine over all (reference, generated) pairs"),
        Metric("squared_centroid_distance", "fidelity", False, ("reference", "generated"), ("image",),
               FIDELITY_CLASSES, description="‖mean(ref) − mean(gen)‖² of normalized features"),
        Metric("frechet_distance", "fidelity", False, ("reference", "generated"), ("image",), FIDELITY_CLASSES,
               description="Fréchet distance of Gaussians fitted to reference and generated features"),
        Metric("text_similarity", "controllability", True, ("generated", "text"), ("clip",),
               description="mean CLIP cosine of each image with its prompt (triggers → descriptive words)"),
        Metric("vendi", "diversity", True, ("generated",), ("image",), ("train", "trigger", "alter"),
               description="Vendi score, q=1, linear kernel; <alter>: per prompt, averaged"),
        Metric("style_loss_base", "preservation", False, ("base", "generated"), ("vgg19",), ("style", "agnostic"),
               description="VGG19 Gram style loss to the base model's image of the same prompt and seed"),
        Metric("style_loss_dataset", "preservation", False, ("reference", "generated"), ("vgg19",),
               ("train", "trigger", "alter"),
               description="‖μ₁−μ₂‖² + var₁ + var₂ of Gram vectors, generated vs dataset (style concepts)"),
        Metric("clip_iqa", "quality", True, ("generated",), ("clip",), experimental=True,
               description="CLIP-IQA: softmax over 'Good photo.'/'Bad photo.' cosines (experimental)"),
    )
}  # fmt: skip


def metric_encoders(metric: Metric, image_encoders: tuple[str, ...]) -> tuple[str, ...]:
    """The concrete encoder kinds ``metric`` reads (``image`` expanded to ``image_encoders``)."""
    kinds: list[str] = []
    for kind in metric.encoders:
        kinds += list(image_encoders) if kind == "image" else [kind]
    return tuple(dict.fromkeys(kinds))


def score(**kwargs):
    """See :func:`lyco_bench.metrics.scoring.score` (imported lazily: it pulls in pandas)."""
    from lyco_bench.metrics.scoring import score as _score

    return _score(**kwargs)


def __getattr__(name: str):
    if name == "EncoderSettings":
        from lyco_bench.metrics.features import EncoderSettings

        return EncoderSettings
    raise AttributeError(name)


__all__ = ["METRICS", "Metric", "FeatureCache", "EncoderSettings", "score", "metric_encoders"]
