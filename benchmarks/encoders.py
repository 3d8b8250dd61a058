"""Encoder throughput (images/s) of the scoring stage, tiny and real-shape random weights.

For DINOv2 (ViT-L/14 shape), OpenCLIP ViT-L-14 (image tower) and VGG19 (to conv5_1) this measures,
in the same process and round-robin so that machine load hits all alike:
  - ``ours``: ``encode_images`` on PIL images (preprocessing + forward + normalization);
  - ``bare``: the model's forward alone on ready tensors (the peer: what any pipeline must pay);
  - ``cache``: reading the same features back from the FeatureCache (what a second run pays).
Real-shape weights are random (this machine reaches no model hub); shapes and FLOPs are real.

    .venv/bin/python benchmarks/encoders.py [--quick] [--images N] [--repeats R] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from lyco_bench.metrics import encoders as enc
from lyco_bench.metrics.cache import FeatureCache
from lyco_bench.metrics.features import EncoderPool, EncoderSettings, image_features
from lyco_bench.metrics.tiny import make_tiny_encoders


def real_shape_encoders(out: Path) -> dict:
    """ViT-L/14 DINOv2, OpenCLIP ViT-L-14 and full-width VGG19, random weights, saved locally."""
    import open_clip
    from safetensors.torch import save_file
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(0)
    cfg = Dinov2Config(
        hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, patch_size=14, image_size=224
    )
    Dinov2Model(cfg).save_pretrained(out / "dinov2-l", safe_serialization=True)
    clip_dir = out / "vit-l-14"
    clip_dir.mkdir(parents=True)
    model_cfg = open_clip.get_model_config("ViT-L-14")
    preprocess = {"mean": list(open_clip.OPENAI_DATASET_MEAN), "std": list(open_clip.OPENAI_DATASET_STD)}
    (clip_dir / "open_clip_config.json").write_text(
        json.dumps({"model_cfg": model_cfg, "preprocess_cfg": preprocess})
    )
    model = open_clip.create_model(f"local-dir:{clip_dir}", load_weights=False)
    save_file(
        {k: v.contiguous() for k, v in model.state_dict().items()},
        str(clip_dir / "open_clip_model.safetensors"),
    )
    trunk = enc.vgg19_features()
    save_file(
        {f"features.{k}": v.contiguous() for k, v in trunk.state_dict().items()},
        str(out / "vgg19.safetensors"),
    )
    return {
        "dino": str(out / "dinov2-l"),
        "clip": str(clip_dir),
        "clip_pretrained": None,
        "vgg": str(out / "vgg19.safetensors"),
    }


def bare_forward(encoder, kind: str):
    """The model call alone on a ready (B, 3, S, S) tensor."""
    size = {"dinov2": getattr(encoder, "image_size", 224), "clip": getattr(encoder, "image_size", 224)}.get(
        kind, encoder.short_side if kind == "vgg19" else 224
    )

    def run(x: torch.Tensor) -> None:
        with torch.no_grad():
            if kind == "dinov2":
                encoder.model(pixel_values=x)
            elif kind == "clip":
                encoder.model.encode_image(x)
            else:
                encoder.trunk(x)

    return size, run


def measure(settings: EncoderSettings, label: str, *, n_images: int, repeats: int, tmp: Path) -> list[dict]:
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n_images):
        paths.append(tmp / f"{label}-{i}.png")
        Image.fromarray(rng.integers(0, 256, (512, 512, 3), dtype=np.uint8)).save(paths[-1])
    images = [Image.open(p).convert("RGB") for p in paths]
    pool = EncoderPool(settings)
    results = []
    for kind in ("dinov2", "clip", "vgg19"):
        encoder = pool.get(kind)
        size, bare = bare_forward(encoder, kind)
        x = torch.randn(n_images, 3, size, size, device=encoder.device if kind != "vgg19" else encoder.device)
        cache = FeatureCache(tmp / f"cache-{label}")
        image_features(pool, kind, paths, mode="crop", cache=cache)  # fills the cache (and warms up)
        times = {"ours": [], "bare": [], "cache": []}
        for _ in range(repeats):  # round-robin: load on the machine hits all three alike
            t = time.perf_counter()
            encoder.encode_images(images, "crop")
            times["ours"].append(time.perf_counter() - t)
            t = time.perf_counter()
            bare(x)
            times["bare"].append(time.perf_counter() - t)
            t = time.perf_counter()
            image_features(pool, kind, paths, mode="crop", cache=FeatureCache(tmp / f"cache-{label}"))
            times["cache"].append(time.perf_counter() - t)
        med = {k: statistics.median(v) for k, v in times.items()}
        results.append({"set": label, "encoder": kind, "dim": int(encoder.encode_images(images[:1], "crop").shape[1]),
                        **{f"{k} img/s": n_images / v for k, v in med.items()},
                        "ours/bare time": med["ours"] / med["bare"], "cache speed-up": med["ours"] / med["cache"]})  # fmt: skip
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny encoders only")
    parser.add_argument("--images", type=int, default=8, help="images per batch (default 8)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default=None)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        tiny = make_tiny_encoders(tmp / "tiny")
        common = {"device": args.device, "batch_size": args.images}
        rows += measure(
            EncoderSettings(**tiny, **common), "tiny", n_images=args.images, repeats=args.repeats, tmp=tmp
        )
        if not args.quick:
            real = real_shape_encoders(tmp / "real")
            settings = EncoderSettings(**real, **common)
            rows += measure(settings, "real-shape", n_images=args.images, repeats=args.repeats, tmp=tmp)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    print(
        f"device {device}, {torch.get_num_threads()} threads, batch {args.images}, median of {args.repeats}"
    )
    header = [
        "set",
        "encoder",
        "dim",
        "ours img/s",
        "bare img/s",
        "cache img/s",
        "ours/bare time",
        "cache speed-up",
    ]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for r in rows:
        cells = [f"{r[h]:.3g}" if isinstance(r[h], float) else str(r[h]) for h in header]
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
