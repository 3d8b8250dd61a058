"""Image and text encoders, one file each (the paper, §5): DINOv2 (``dinov2``), OpenCLIP (``clip``),
VGG19 Gram features (``vgg19``) and the HPS v2.1 preference model (``hps``); outside packages add
theirs through the ``lyco_bench.encoders`` entry point (:mod:`lyco_bench.metrics.encoders.base`).

Each encoder takes a hub id / open_clip tag or a local path, so tests and the CPU demo use tiny
random-weight models saved locally and loaded through the same code as the real ones. Every
encoder exposes an ``id`` (what the feature cache keys on: it changes when the weights change)
and ``prepare(image, mode)`` / ``forward(inputs) -> (B, D) float32 tensor`` run batched under
``torch.no_grad`` on the GPU when there is one.

The names below are the built-ins' public helpers, re-exported so that callers need not know
which file holds them; the pipeline itself reads only :data:`ENCODERS`.
"""

from __future__ import annotations

from lyco_bench.metrics.encoders.base import (
    ENCODERS,
    IMAGENET_MEAN,
    IMAGENET_STD,
    MODES,
    PREPROCESS_VERSION,
    EncoderKind,
    canonical_mode,
    encoder_kind,
    encoder_path_fields,
    load_state_file,
    preprocess,
    register_encoder,
    source_label,
    source_tag,
)
from lyco_bench.metrics.encoders.base import normalize as _normalize
from lyco_bench.metrics.encoders.base import to_tensor as _to_tensor
from lyco_bench.metrics.encoders.clip import ClipEncoder, clip_id
from lyco_bench.metrics.encoders.dinov2 import DinoV2Encoder, dinov2_id
from lyco_bench.metrics.encoders.hps import (
    HPS_ARCH,
    HPS_CHECKPOINT,
    HpsEncoder,
    check_hps_source,
    hps_id,
    hps_label,
    hps_preprocess,
)
from lyco_bench.metrics.encoders.vgg19 import (
    _VGG19_LAYOUT,
    GRAM_LAYERS,
    VGG19_WIDTHS,
    VggGramEncoder,
    gram_features,
    vgg19_features,
    vgg19_id,
)

_DERIVED = {
    "ENCODER_KINDS": lambda: tuple(ENCODERS),
    "ENCODER_FIELDS": lambda: {k: e.weights_field for k, e in ENCODERS.items()},
    "MODELESS_KINDS": lambda: tuple(k for k, e in ENCODERS.items() if e.native),
    "STREAMED_KINDS": lambda: tuple(k for k, e in ENCODERS.items() if e.streamed),
    "TEXT_KINDS": lambda: tuple(k for k, e in ENCODERS.items() if e.text),
}


def __getattr__(name: str):
    """The registry's kinds by property, read when asked (an outside encoder counts too)."""
    if name in _DERIVED:
        return _DERIVED[name]()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "ENCODERS", "EncoderKind", "register_encoder", "encoder_kind", "encoder_path_fields", "MODES",
    "IMAGENET_MEAN", "IMAGENET_STD", "PREPROCESS_VERSION", "canonical_mode", "preprocess",
    "source_tag", "source_label", "load_state_file", "ClipEncoder", "clip_id", "DinoV2Encoder",
    "dinov2_id", "HpsEncoder", "HPS_ARCH", "HPS_CHECKPOINT", "check_hps_source", "hps_id",
    "hps_label", "hps_preprocess", "VggGramEncoder", "GRAM_LAYERS", "VGG19_WIDTHS", "_VGG19_LAYOUT",
    "gram_features", "vgg19_features", "vgg19_id", "_normalize", "_to_tensor",
]  # fmt: skip
