"""Tiny random-weight encoders saved locally, one per registered encoder kind, for tests and the CPU demo.

Each kind writes its own (:attr:`lyco_bench.metrics.encoders.EncoderKind.make_tiny`) in the same
on-disk format as its real weights (a transformers folder, an open_clip ``local-dir`` folder, a
torchvision-keyed safetensors state dict, an HPS checkpoint ``{"state_dict": …}`` written by
``torch.save`` beside an open_clip config folder), loaded by exactly the code that loads real
weights. Their scores mean nothing; their plumbing is real. The built-ins' builders are
re-exported here for the tests and the demo.
"""

from __future__ import annotations

from pathlib import Path

from lyco_bench.metrics.encoders import ENCODERS, IMAGENET_MEAN, IMAGENET_STD
from lyco_bench.metrics.encoders.clip import TINY_CLIP_CONFIG, make_tiny_open_clip, write_open_clip_config
from lyco_bench.metrics.encoders.dinov2 import TINY_DINO_IMAGE_SIZE, make_tiny_dinov2
from lyco_bench.metrics.encoders.hps import make_tiny_hps
from lyco_bench.metrics.encoders.vgg19 import TINY_VGG_SHORT_SIDE, TINY_VGG_WIDTHS, make_tiny_vgg19


def make_tiny_encoders(out_dir: Path, *, seed: int = 0) -> dict:
    """Write every registered kind's tiny encoder under ``out_dir``; return EncoderSettings fields
    pointing at them (each kind seeds its own generator: the order does not change the weights)."""
    out_dir = Path(out_dir)
    fields: dict = {}
    for kind in ENCODERS.values():
        if kind.make_tiny is not None:
            fields.update(kind.make_tiny(out_dir, seed))
    return fields


__all__ = [
    "make_tiny_encoders", "make_tiny_dinov2", "make_tiny_open_clip", "make_tiny_vgg19", "make_tiny_hps",
    "write_open_clip_config", "TINY_CLIP_CONFIG", "TINY_DINO_IMAGE_SIZE", "TINY_VGG_SHORT_SIDE",
    "TINY_VGG_WIDTHS", "IMAGENET_MEAN", "IMAGENET_STD",
]  # fmt: skip
