"""Evaluation throughput: images/s of the encoders and of generation, base model vs merged adapter.

Encoders (lyco_bench.metrics, ``encode_images`` on PIL images: preprocessing + forward): DINOv2,
OpenCLIP image tower, VGG19 Gram features, tiny and real-shape (ViT-L/14, ViT-L-14, full VGG19)
random weights. Generation (``lyco_bench.generation.generate``, end to end: sampling, PNGs,
manifest; median wall time, best wall time, and process CPU time, the steadiest on a loaded
machine) with, in the same process and round-robin so that machine load hits all alike:
  - ``base``: the base model;
  - ``merged (weights)``: sampling with a LoRA file (dim 8, α 4, attn-mlp, UNet + text encoder)
    merged into the weights beforehand — the cost of every image of a checkpoint;
  - ``merged, merge in call``: ``generate(adapters=…)`` merging and unmerging within the call;
  - ``bypass (unmerged)``: the same LoRA injected as modules (the peer: what merging avoids);
  - ``merged, merge once per N images``: the one-time merge + unmerge (timed on its own)
    amortized over a checkpoint's images (N = 52 in the demo study, 14,900 in the paper).
Models: the tiny SD model, and (without --quick) a real-shape SD1.5 pipeline (UNet 860M, CLIP
ViT-L/14 text encoder, SD VAE) with random weights at a small resolution and few steps. Target:
merged ≤ 1.02× the base model's time.

    .venv/bin/python benchmarks/evaluation.py [--quick] [--repeats R] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from lyco_bench.generation import SamplerSettings, generate
from lyco_bench.prompts import PromptItem

LORA = dict(algo="lora", dim=8, alpha=4, preset="attn-mlp")


# --- encoders -------------------------------------------------------------------------------


def _real_shape_encoders(out: Path) -> dict:
    """The real-shape random-weight encoders built by benchmarks/encoders.py (one definition)."""
    spec = importlib.util.spec_from_file_location("bench_encoders", Path(__file__).with_name("encoders.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.real_shape_encoders(out)


def encoder_rows(
    settings_fields: dict, label: str, *, n_images: int, repeats: int, device: str
) -> list[dict]:
    from lyco_bench.metrics.features import EncoderPool, EncoderSettings

    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (512, 512, 3), dtype=np.uint8)) for _ in range(n_images)]
    pool = EncoderPool(EncoderSettings(**settings_fields, device=device, batch_size=n_images))
    rows = []
    for kind in ("dinov2", "clip", "vgg19"):
        encoder = pool.get(kind)
        encoder.encode_images(images[:2], "crop")  # warm-up
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            encoder.encode_images(images, "crop")
            times.append(time.perf_counter() - start)
        rows.append({"set": label, "encoder": kind, "img/s": n_images / statistics.median(times)})
    del pool
    gc.collect()
    return rows


# --- generation -----------------------------------------------------------------------------


def real_shape_pipeline(device: str):
    """SD1.5's architecture with random weights (no hub): UNet, CLIP ViT-L/14 text, SD VAE."""
    from diffusers import AutoencoderKL, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from lyco_bench.models import SD_SCHEDULE, clip_tokenizer

    torch.manual_seed(0)
    unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768, attention_head_dim=8)
    text = CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                          max_position_embeddings=77, projection_dim=768, vocab_size=49408)  # fmt: skip
    blocks = ("DownEncoderBlock2D",) * 4, ("UpDecoderBlock2D",) * 4
    vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), down_block_types=blocks[0],
                        up_block_types=blocks[1], layers_per_block=2, latent_channels=4, sample_size=512)  # fmt: skip
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=CLIPTextModel(text), tokenizer=clip_tokenizer(), unet=unet,
        scheduler=DDPMScheduler(**SD_SCHEDULE), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )  # fmt: skip
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def random_lora(pipe, path: Path) -> Path:
    """A LoRA file with non-zero random factors (a trained one costs the same to merge)."""
    from lyco_bench.adapters import AdapterSpec, inject

    net = inject(pipe.unet, pipe.text_encoder, AdapterSpec(**LORA))
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in net.trainable_parameters():
            param.copy_(torch.randn(param.shape, generator=gen).to(param) * 0.01)
    net.save(path)
    net.remove()
    return path


def _items(n: int) -> list[PromptItem]:
    return [
        PromptItem(prompt=f"zqx shape number {i} on a beach", clip_text="", prompt_class="alter",
                   category="bench", concept="shape", subclass=None, prompt_index=0, image_index=i,
                   seed=1000 + i, group="alter/bench/shape/0", concepts=("bench/shape",))
        for i in range(n)
    ]  # fmt: skip


def generation_rows(
    pipe, label: str, *, sampler: SamplerSettings, n_images: int, repeats: int, tmp: Path
) -> list[dict]:
    from lyco_bench.adapters import AdapterSpec, inject, merge_adapters, unmerge_adapters

    lora = random_lora(pipe, tmp / f"{label}-lora.safetensors")
    items = _items(n_images)
    counter = iter(range(10**6))

    def timed(fn) -> tuple[float, float]:
        wall, cpu = time.perf_counter(), time.process_time()
        fn()
        return time.perf_counter() - wall, time.process_time() - cpu

    def run(adapters=()) -> None:
        out = tmp / f"{label}-{next(counter)}"  # a fresh folder: every image is generated
        generate(model=label, adapters=adapters, items=items, out_dir=out, sampler=sampler, pipeline=pipe)

    def merged_steady() -> tuple[float, float]:
        handle = merge_adapters(pipe.unet, pipe.text_encoder, [(lora, 1.0)])
        try:
            return timed(run)
        finally:
            unmerge_adapters(handle)

    def bypass() -> tuple[float, float]:
        net = inject(pipe.unet, pipe.text_encoder, AdapterSpec(**LORA))
        net.load_weights(lora)
        try:
            return timed(run)
        finally:
            net.remove()

    def merge_unmerge() -> None:
        unmerge_adapters(merge_adapters(pipe.unet, pipe.text_encoder, [(lora, 1.0)]))

    run()  # warm-up
    variants = {
        "base": lambda: timed(run),
        "merged (weights)": merged_steady,
        "merged, merge in call": lambda: timed(lambda: run([(lora, 1.0)])),
        "bypass (unmerged)": bypass,
    }
    times: dict[str, list[tuple[float, float]]] = {k: [] for k in variants}
    merge_times = []
    for _ in range(repeats):  # round-robin: machine load hits every variant alike
        for name, fn in variants.items():
            times[name].append(fn())
        merge_times.append(timed(merge_unmerge))
    wall = {k: statistics.median(t[0] for t in v) for k, v in times.items()}
    cpu = {k: statistics.median(t[1] for t in v) for k, v in times.items()}
    best = {k: min(t[0] for t in v) for k, v in times.items()}
    rows = [
        {"model": label, "variant": k, "img/s": n_images / wall[k], "wall / base": wall[k] / wall["base"],
         "best wall / base": best[k] / best["base"], "cpu s/img": cpu[k] / n_images, "cpu / base": cpu[k] / cpu["base"]}
        for k in times
    ]  # fmt: skip
    merge_s = statistics.median(t[0] for t in merge_times)
    per_image = wall["base"] / n_images
    for n in (52, 14_900):  # images per checkpoint: the demo study; the paper (docs/protocol.md §4)
        rows.append({"model": label, "variant": f"merged, merge once per {n} images", "img/s": 1 / (per_image + merge_s / n),
                     "wall / base": 1 + merge_s / (n * per_image), "best wall / base": float("nan"),
                     "cpu s/img": float("nan"), "cpu / base": float("nan")})  # fmt: skip
    print(f"{label}: merge + unmerge {merge_s:.2f} s (median wall)", file=sys.stderr)
    return rows


def _table(rows: list[dict], header: list[str]) -> None:
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for r in rows:
        print(
            "| " + " | ".join(f"{r[h]:.3g}" if isinstance(r[h], float) else str(r[h]) for h in header) + " |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny models only")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--only", choices=["encoders", "generation"], help="run one half only")
    parser.add_argument("--images", type=int, default=8, help="images per measurement (default 8)")
    parser.add_argument("--device", default=None)
    args = parser.parse_args()
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        enc_rows = [] if args.only == "generation" else encoders(args, device, tmp)
        gen_rows = [] if args.only == "encoders" else generation(args, device, tmp)
    print(
        f"device {device}, {torch.get_num_threads()} threads, torch {torch.__version__}, median of {args.repeats}"
    )
    if enc_rows:
        print(f"\nEncoders ({args.images} images of 512 px, crop mode, preprocessing included)")
        _table(enc_rows, ["set", "encoder", "img/s"])
    if gen_rows:
        print("\nGeneration (generate() end to end, PNGs and manifest included; target: merged ≤ 1.02× base)")
        _table(
            gen_rows,
            ["model", "variant", "img/s", "wall / base", "best wall / base", "cpu s/img", "cpu / base"],
        )


def encoders(args: argparse.Namespace, device: str, tmp: Path) -> list[dict]:
    from lyco_bench.metrics.tiny import make_tiny_encoders

    kw = dict(n_images=args.images, repeats=args.repeats, device=device)
    rows = encoder_rows(make_tiny_encoders(tmp / "tiny-enc"), "tiny", **kw)
    if not args.quick:
        rows += encoder_rows(_real_shape_encoders(tmp / "real-enc"), "real-shape", **kw)
    return rows


def generation(args: argparse.Namespace, device: str, tmp: Path) -> list[dict]:
    from lyco_bench.models import load_pipeline, make_tiny_model

    tiny = load_pipeline(str(make_tiny_model(tmp / "tiny-sd")), device=device)
    small = SamplerSettings(steps=3, width=64, height=64, batch_size=args.images)
    rows = generation_rows(tiny, "tiny SD 64px 3 steps", sampler=small, n_images=args.images, repeats=args.repeats, tmp=tmp)  # fmt: skip
    if not args.quick:
        del tiny
        gc.collect()
        sd = real_shape_pipeline(device)
        real = SamplerSettings(steps=3, width=128, height=128, batch_size=2)
        rows += generation_rows(sd, "SD1.5-shape 128px 3 steps", sampler=real, n_images=2, repeats=max(2, args.repeats // 2), tmp=tmp)  # fmt: skip
    return rows


if __name__ == "__main__":
    main()
