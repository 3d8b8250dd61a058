"""Metrics of the paper (§5) and beyond: the registry ``METRICS``, the feature cache and ``score``.

The registry drives everything: each entry declares its criterion and direction
(``higher_is_better``), so ranks and SHAP signs need no special cases downstream; the encoders,
inputs and generated prompt classes it reads, so the planner and the scorer encode exactly what
some requested metric reads; and its compute function, which the scorer calls once per group of
images ("unit") and encoder kind. A new metric is one function (in the file of its criterion)
plus one entry here; the scorer and the planner read nothing else.

A compute function takes a :class:`lyco_bench.metrics.scoring.UnitView` and yields
:class:`lyco_bench.metrics.values.MetricValue` objects (value, n, std, reason, subclass, mode).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal

from lyco_bench.metrics import controllability, diversity, fidelity, leakage, preservation, quality
from lyco_bench.metrics.cache import FeatureCache
from lyco_bench.metrics.values import MetricValue

PROMPT_CLASSES = ("train", "trigger", "alter", "style", "agnostic", "combine")
# Fidelity compares with the dataset: the concept's own classes and two-concept images (each
# concept). <style> images are judged by the style loss, <agnostic> ones by intrusion (which
# subtracts the base model's similarity, so that a concept-agnostic image is not rewarded for
# looking like the concept).
FIDELITY_CLASSES = ("train", "trigger", "alter", "combine")


@dataclass(frozen=True)
class Metric:
    name: str
    criterion: str
    """fidelity | controllability | diversity | preservation | quality"""
    higher_is_better: bool
    needs: tuple[str, ...]
    """Inputs: ``reference`` (dataset images, compared in every reference mode), ``generated``,
    ``base`` (the base model's images of the same prompt and seed: only paired images are read),
    ``text`` (the images' prompts, triggers replaced by descriptive words)."""
    encoders: tuple[str, ...]
    """Encoder kinds it reads; ``image`` stands for ``EncoderSettings.image_encoders`` (DINOv2)."""
    prompt_classes: tuple[str, ...] = PROMPT_CLASSES
    """Generated prompt classes it reads: the planner and the scorer encode nothing else."""
    compute: Callable[..., Iterable[MetricValue]] | None = None
    """(UnitView) → MetricValues: called once per unit of ``row_classes`` and encoder kind."""
    row_classes: tuple[str, ...] | None = None
    """Prompt classes it writes rows for (None: ``prompt_classes``); the others it only reads."""
    categories: Literal["all", "style"] = "all"
    """``style``: only the units of style categories (``EncoderSettings.style_categories``)."""
    texts: tuple[str, ...] = ()
    """Fixed texts it encodes besides the prompts (with its text encoder)."""
    per_image: bool = False
    """The value is a mean over images (or image pairs): rows carry their ``std``."""
    default: bool = True
    """Computed when no metric list is given (False: needs a large download, ask for it by name)."""
    experimental: bool = False
    description: str = ""

    @property
    def reports(self) -> tuple[str, ...]:
        return self.prompt_classes if self.row_classes is None else self.row_classes


METRICS: dict[str, Metric] = {
    m.name: m
    for m in (
        Metric("image_similarity", "fidelity", True, ("reference", "generated"), ("image",), FIDELITY_CLASSES,
               compute=fidelity.image_similarity_rows, per_image=True,
               description="mean cosine over all (reference, generated) pairs"),
        Metric("squared_centroid_distance", "fidelity", False, ("reference", "generated"), ("image",),
               FIDELITY_CLASSES, compute=fidelity.squared_centroid_distance_rows,
               description="‖mean(ref) − mean(gen)‖² of normalized features"),
        Metric("frechet_distance", "fidelity", False, ("reference", "generated"), ("image",), FIDELITY_CLASSES,
               compute=fidelity.frechet_distance_rows,
               description="Fréchet distance of Gaussians fitted to reference and generated features"),
        Metric("text_similarity", "controllability", True, ("generated", "text"), ("clip",),
               compute=controllability.text_similarity_rows, per_image=True,
               description="mean CLIP cosine of each image with its prompt (triggers → descriptive words)"),
        Metric("vendi", "diversity", True, ("generated",), ("image",), ("train", "trigger", "alter"),
               compute=diversity.vendi_rows,
               description="Vendi score, q=1, linear kernel; <alter>: per prompt, averaged"),
        Metric("style_loss_base", "preservation", False, ("base", "generated"), ("vgg19",), ("style", "agnostic"),
               compute=preservation.style_loss_base_rows, per_image=True,
               description="VGG19 Gram style loss to the base model's image of the same prompt and seed"),
        Metric("style_loss_dataset", "preservation", False, ("reference", "generated"), ("vgg19",),
               ("train", "trigger", "alter"), compute=preservation.style_loss_dataset_rows, categories="style",
               description="‖μ₁−μ₂‖² + var₁ + var₂ of Gram vectors, generated vs dataset (style concepts)"),
        Metric("clip_iqa", "quality", True, ("generated",), ("clip",), compute=quality.clip_iqa_rows,
               texts=tuple(t for pair in quality.IQA_PROMPT_PAIRS for t in pair), per_image=True,
               experimental=True,
               description="CLIP-IQA: softmax over 'Good photo.'/'Bad photo.' cosines (experimental)"),
        Metric("intrusion", "preservation", False, ("reference", "base", "generated"), ("image",), ("agnostic",),
               compute=leakage.intrusion_rows, per_image=True,
               description="image similarity of <agnostic> images to a concept's dataset minus the base "
                           "model's on the same prompts and seeds (concept leakage)"),
        Metric("drift", "preservation", False, ("base", "generated"), ("image",), ("agnostic",),
               compute=leakage.drift_rows, per_image=True,
               description="mean cosine distance between base and tuned <agnostic> images of the same seed"),
        Metric("kid", "preservation", False, ("base", "generated"), ("image",), ("agnostic",),
               compute=leakage.kid_rows,
               description="unbiased KID (kernel (cos+1)³) between base and tuned <agnostic> images"),
        Metric("composition_min", "fidelity", True, ("reference", "generated"), ("image",), ("combine",),
               compute=fidelity.composition_min_rows,
               description="<combine>: the lower of the two concepts' image similarities"),
        Metric("composition_drop", "fidelity", False, ("reference", "generated"), ("image",),
               ("combine", "trigger"), row_classes=("combine",), compute=fidelity.composition_drop_rows,
               description="<combine>: each concept's <trigger> image similarity minus its combine one"),
        Metric("hps_delta", "quality", True, ("base", "generated", "text"), ("hps",), PROMPT_CLASSES,
               compute=quality.hps_delta_rows, per_image=True, default=False,
               description="HPS v2.1 of each image minus the base model's of the same prompt and seed"),
    )
}  # fmt: skip


def default_metrics(*, experimental: bool) -> list[str]:
    """The metrics computed when none are named: the ``default`` ones (experimental ones if asked)."""
    return [n for n, m in METRICS.items() if m.default and (experimental or not m.experimental)]


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


__all__ = [
    "METRICS", "Metric", "MetricValue", "FeatureCache", "EncoderSettings", "score", "metric_encoders",
    "default_metrics",
]  # fmt: skip
