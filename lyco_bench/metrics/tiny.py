"""Tiny random-weight encoders saved locally (DINOv2, OpenCLIP, VGG19, HPS), for tests and the CPU demo.

They are written in the same on-disk formats as the real models (a transformers folder, an
open_clip ``local-dir`` folder, a torchvision-keyed safetensors state dict, an HPS checkpoint
``{"state_dict": …}`` written by ``torch.save`` beside an open_clip config folder) and are loaded
by exactly the code that loads real weights. Their scores mean nothing; their plumbing is real.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from lyco_bench.metrics.encoders import IMAGENET_MEAN, IMAGENET_STD, vgg19_features

TINY_CLIP_CONFIG = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}
TINY_VGG_WIDTHS = (4, 8, 8, 16, 16)
TINY_DINO_IMAGE_SIZE = 56
TINY_VGG_SHORT_SIDE = 32


def make_tiny_dinov2(out_dir: Path, *, seed: int = 0) -> Path:
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(seed)
    config = Dinov2Config(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        mlp_ratio=2,
        patch_size=14,
        image_size=TINY_DINO_IMAGE_SIZE,
    )
    Dinov2Model(config).save_pretrained(out_dir, safe_serialization=True)
    return Path(out_dir)


def write_open_clip_config(out_dir: Path, model_cfg: dict) -> Path:
    """An open_clip ``local-dir:`` folder's config: ``model_cfg`` and OpenAI CLIP's normalisation."""
    import open_clip

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cfg = {
        "model_cfg": model_cfg,
        "preprocess_cfg": {
            "mean": list(open_clip.OPENAI_DATASET_MEAN),
            "std": list(open_clip.OPENAI_DATASET_STD),
        },
    }
    (out_dir / "open_clip_config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    return out_dir


def make_tiny_open_clip(out_dir: Path, *, seed: int = 0) -> Path:
    import open_clip
    from safetensors.torch import save_file

    out_dir = write_open_clip_config(out_dir, TINY_CLIP_CONFIG)
    torch.manual_seed(seed)
    model = open_clip.create_model(f"local-dir:{out_dir}", load_weights=False)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out_dir / "open_clip_model.safetensors"))
    return out_dir


def make_tiny_hps(out_dir: Path, *, seed: int = 0) -> tuple[Path, Path]:
    """An open_clip config folder (no weights) and an HPS-style checkpoint for it: (folder, file)."""
    import open_clip

    out_dir = Path(out_dir)
    folder = out_dir / "hps"
    folder.mkdir(parents=True, exist_ok=True)
    cfg = {
        "model_cfg": TINY_CLIP_CONFIG,
        "preprocess_cfg": {
            "mean": list(open_clip.OPENAI_DATASET_MEAN),
            "std": list(open_clip.OPENAI_DATASET_STD),
        },
    }
    (folder / "open_clip_config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    torch.manual_seed(seed + 1)  # not the tiny CLIP's weights
    model = open_clip.create_model(f"local-dir:{folder}", load_weights=False)
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    checkpoint = out_dir / "hps-v2.1.pt"
    torch.save({"state_dict": state}, checkpoint)
    return folder, checkpoint


def make_tiny_vgg19(out_file: Path, *, seed: int = 0) -> Path:
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    trunk = vgg19_features(TINY_VGG_WIDTHS)
    out_file = Path(out_file)
    out_file.parent.mkdir(parents=True, exist_ok=True)
    save_file({f"features.{k}": v.contiguous() for k, v in trunk.state_dict().items()}, str(out_file))
    return out_file


def make_tiny_encoders(out_dir: Path, *, seed: int = 0) -> dict:
    """Write the tiny encoders under ``out_dir``; return EncoderSettings fields pointing at them."""
    out_dir = Path(out_dir)
    hps, hps_checkpoint = make_tiny_hps(out_dir, seed=seed)
    return {
        "dino": str(make_tiny_dinov2(out_dir / "dinov2", seed=seed)),
        "dino_image_size": TINY_DINO_IMAGE_SIZE,
        "clip": str(make_tiny_open_clip(out_dir / "open_clip", seed=seed)),
        "clip_pretrained": None,
        "vgg": str(make_tiny_vgg19(out_dir / "vgg19.safetensors", seed=seed)),
        "vgg_short_side": TINY_VGG_SHORT_SIDE,
        "hps": str(hps),
        "hps_checkpoint": str(hps_checkpoint),
    }


__all__ = [
    "make_tiny_encoders",
    "make_tiny_dinov2",
    "make_tiny_open_clip",
    "make_tiny_vgg19",
    "make_tiny_hps",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
]
