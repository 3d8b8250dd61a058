"""What the ``paper`` evaluation profile changes, measured (docs/protocol.md §5.7), as tables.

1. Per point, on identical inputs: VGG Grams (in-place ReLU) and the style loss between two images,
   the VGG short-side truncation, resize-before-RGB for RGBA/palette images, torch.hub DINOv2's
   position-embedding offset (ViT-L/14 shape, random weights, 224 px), and bf16 autocast on CPU
   against fp32 (issue 15: the cosine of the features) for the shipped CPU-world encoders.
2. The same generated images scored under ``lyco`` and ``paper``: max |Δ| per metric, split by
   which rows the profile touches (concepts with subclasses, ``<alter>``, the rest).
3. A one-seed, three-configuration study of those scores (one category, one concept): what the
   leaderboard's intervals leave out, and the cells without one (n/a).

This machine reaches no model hub: encoders are the shipped CPU-world DINOv2/OpenCLIP, tiny random
VGG19 and a random ViT-L/14-shaped DINOv2; the numbers show the size of each effect, not the paper's.

    .venv/bin/python benchmarks/profiles.py
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

from lyco_bench.metrics import encoders as enc
from lyco_bench.metrics import profiles


def _noise(seed: int, size=(48, 40), mode="RGB") -> Image.Image:
    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "RGBA": 4}[mode]
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], channels), dtype=np.uint8), mode)


def point_table(tiny: dict) -> list[tuple[str, str]]:
    rows = []
    images = [_noise(1), _noise(2)]
    lyco = enc.VggGramEncoder(tiny["vgg"], device="cpu", short_side=32)
    paper = enc.VggGramEncoder(tiny["vgg"], device="cpu", short_side=32, profile="paper")
    fl, fp = lyco.encode_images(images).double(), paper.encode_images(images).double()
    rel = float((fl[0] - fp[0]).norm() / fp[0].norm())
    loss_l, loss_p = float(((fl[0] - fl[1]) ** 2).sum()), float(((fp[0] - fp[1]) ** 2).sum())
    rows.append(("VGG Grams, same input: ‖G_lyco − G_paper‖ / ‖G_paper‖", f"{rel:.3f}"))
    rows.append(
        (
            "VGG style loss of two images: lyco / paper",
            f"{loss_l:.4g} / {loss_p:.4g} (×{loss_l / loss_p:.2f})",
        )
    )
    rows.append(("VGG short side 224 of 517×389: lyco / paper",
                 f"{profiles.lyco_short_side(Image.new('RGB', (517, 389)), 224).size} / "
                 f"{profiles.paper_short_side(Image.new('RGB', (517, 389)), 224).size}"))  # fmt: skip
    rgba = _noise(3, (64, 48), "RGBA")
    palette = _noise(4, (64, 48)).quantize(16)
    for name, im in (("RGBA", rgba), ("palette", palette)):
        worst = 0.0
        for mode in enc.MODES:
            a = enc.preprocess(im, mode=mode, size=32, mean=enc.IMAGENET_MEAN, std=enc.IMAGENET_STD)
            b = enc.preprocess(
                im, mode=mode, size=32, mean=enc.IMAGENET_MEAN, std=enc.IMAGENET_STD, profile="paper"
            )
            worst = max(worst, float((a - b).abs().max()))
        rows.append((f"{name} image, normalised tensor: max |lyco − paper| over modes", f"{worst:.2f}"))
    return rows


def dino_offset_rows(out: Path) -> list[tuple[str, str]]:
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(0)
    cfg = Dinov2Config(
        hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, patch_size=14, image_size=518
    )
    Dinov2Model(cfg).save_pretrained(out / "dinov2-l", safe_serialization=True)
    images = [_noise(i, (320, 240)) for i in range(4)]
    a = enc.DinoV2Encoder(str(out / "dinov2-l"), device="cpu").encode_images(images, "resize").double()
    b = (
        enc.DinoV2Encoder(str(out / "dinov2-l"), device="cpu", profile="paper")
        .encode_images(images, "resize")
        .double()
    )
    cos = (a * b).sum(1)
    return [
        (
            "DINOv2 ViT-L/14 (random) 224 px: feature cosine, transformers vs hub offset (min)",
            f"{float(cos.min()):.7f}",
        )
    ]


def autocast_rows() -> list[tuple[str, str]]:
    """bf16 autocast on CPU vs fp32, the shipped CPU-world encoders (issue 15)."""
    from lyco_bench.world.build import encoder_settings

    s = encoder_settings()
    images = [_noise(i, (80, 64)) for i in range(8)]
    rows = []
    for name, model in (("DINOv2 (world)", enc.DinoV2Encoder(s["dino"], device="cpu", image_size=s["dino_image_size"])),
                        ("OpenCLIP (world)", enc.ClipEncoder(s["clip"], None, device="cpu"))):  # fmt: skip
        ref = model.encode_images(images, "resize").double()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model.encode_images(images, "resize").double()
        rows.append(
            (
                f"{name}: cosine bf16 autocast vs fp32 (min over 8 images)",
                f"{float((ref * low).sum(1).min()):.6f}",
            )
        )
    return rows


def scored_tables(tmp: Path, tiny: dict) -> tuple[pd.DataFrame, pd.DataFrame]:
    from lyco_bench.data import make_demo_dataset
    from lyco_bench.metrics.features import EncoderSettings
    from lyco_bench.metrics.scoring import score
    from lyco_bench.world.build import encoder_settings

    dataset = make_demo_dataset(tmp / "demo", seed=0)
    rows = []
    for pc, cat, concept, sub, prompts in (
        ("trigger", "shapes", "circle", "", 2), ("trigger", "shapes", "triangle", "filled", 2),
        ("trigger", "shapes", "triangle", "hollow", 2), ("trigger", "patterns", "stripes", "", 2),
        ("alter", "shapes", "circle", "", 3), ("alter", "shapes", "triangle", "filled", 2),
        ("alter", "shapes", "triangle", "hollow", 2),
    ):  # fmt: skip
        for pi in range(prompts):
            for seed in range(1000, 1004):
                folder = f"{pc}/{'.'.join(p for p in (cat, concept, sub) if p)}"
                prompt = f"{concept} {sub} prompt {pi}"
                rows.append({"file": f"{folder}/{pi}-{seed}.png", "prompt": prompt, "clip_text": prompt,
                             "prompt_class": pc, "category": cat, "concept": concept, "subclass": sub,
                             "prompt_index": pi, "image_index": seed - 1000, "seed": seed,
                             "group": f"{folder}/{pi}", "concepts": "", "checkpoint": "ck",
                             "prompt_set": "bench", "prompt_set_version": "1"})  # fmt: skip
    images = tmp / "gen"
    for i, row in enumerate(rows):
        (images / row["file"]).parent.mkdir(parents=True, exist_ok=True)
        # every third image RGBA with a random alpha: where the conversion order matters
        _noise(100 + i, (72, 56), "RGBA" if i % 3 == 0 else "RGB").save(images / row["file"])
    pd.DataFrame(rows).to_parquet(images / "manifest.parquet", index=False)
    fields = {**tiny, **encoder_settings(), "image_encoders": ("dinov2",), "experimental": False}
    metrics = [
        "image_similarity",
        "squared_centroid_distance",
        "text_similarity",
        "vendi",
        "style_loss_dataset",
    ]
    out = {}
    for profile in ("lyco", "paper"):
        settings = EncoderSettings(**fields, profile=profile, style_categories=("shapes",))
        out[profile] = score(images_dir=images, dataset=dataset, encoders=settings, cache_dir=tmp / "cache",
                             metrics=metrics)  # fmt: skip
    return out["lyco"], out["paper"]


def delta_table(lyco: pd.DataFrame, paper: pd.DataFrame) -> pd.DataFrame:
    keys = ["prompt_class", "category", "concept", "subclass", "metric", "encoder", "mode"]
    both = lyco.merge(paper, on=keys, suffixes=("_lyco", "_paper"))
    both["delta"] = (both["value_lyco"] - both["value_paper"]).abs()
    subclassed = set(lyco.loc[lyco["subclass"] != "", "concept"])
    both["rows"] = np.where(both["prompt_class"] == "alter", "<alter>",
                            np.where(both["concept"].isin(subclassed) & (both["subclass"] == ""),
                                     "concept with subclasses", "other"))  # fmt: skip
    return both.groupby(["metric", "rows"])["delta"].max().unstack("rows")


def one_seed_leaderboard(tmp: Path, scores: pd.DataFrame) -> str:
    from lyco_bench.analysis.leaderboard import compute_leaderboard
    from lyco_bench.analysis.results import collect_results
    from lyco_bench.analysis.uncertainty import BootstrapSettings

    scores = scores[scores["category"] == "patterns"]  # one concept: set statistics have no interval
    files, runs = [], []
    for k, config in enumerate(("A", "B", "C")):
        path = tmp / f"{config}.parquet"
        scores.assign(checkpoint=f"{config}-s1", value=scores["value"] + 0.01 * k).to_parquet(path)
        files.append(path)
        runs.append({"checkpoint": f"{config}-s1", "config": config, "algo": "lora", "preset": "attn-mlp",
                     "lr": 1e-3, "seed": 1, "epoch": 1, "trainable_params": 1, "file_bytes": 1})  # fmt: skip
    table = compute_leaderboard(
        collect_results(files, pd.DataFrame(runs)), bootstrap=BootstrapSettings(200)
    ).table
    counts = table["left_out"].replace("", "full").value_counts()
    return ", ".join(f"{k}: {v}" for k, v in counts.items()) + f" (of {len(table)} cells; n/a = 'all')"


def main() -> int:
    from lyco_bench.metrics.tiny import make_tiny_encoders

    pd.set_option("display.width", 160)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        tiny = {"vgg": make_tiny_encoders(tmp / "tiny")["vgg"]}
        print("| point | measured |\n|---|---|")
        for name, value in point_table(tiny) + dino_offset_rows(tmp) + autocast_rows():
            print(f"| {name} | {value} |")
        lyco, paper = scored_tables(tmp, tiny)
        print("\nmax |lyco − paper| per metric, same images (rows the profile touches):\n")
        table = delta_table(lyco, paper)
        print("| metric | " + " | ".join(table.columns) + " |\n|---|" + "---|" * len(table.columns))
        for metric, row in table.iterrows():
            print(f"| {metric} | " + " | ".join("–" if pd.isna(v) else f"{v:.3g}" for v in row) + " |")
        print("\none seed, three configurations (paper-profile scores), leaderboard intervals:")
        print(one_seed_leaderboard(tmp, paper))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
