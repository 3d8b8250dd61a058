"""How much the CPU work around the models costs, on the CPU world (issue 15 §2), as tables.

    python benchmarks/overlap.py                   # all three tables
    python benchmarks/overlap.py --only manifest   # generation | scoring | manifest

- generation: ``generate`` end to end (sampling + PNG encoding + manifest) against the sampler
  alone (``sample_batch`` over the same planned batches, nothing written), as throughput
  ratio sampler-time ÷ end-to-end time (goal ≥ 0.95: the writes hide behind the sampling).
- scoring: ``score`` end to end on those images (fresh feature cache: decoding, hashing,
  preprocessing, every encoder, the metrics; the encoders loaded beforehand, as a real job
  loads them once for ~10⁴ images) against the encoders alone — ``encode_images`` on
  already decoded in-memory pictures, as many per encoder as ``score`` reports it encoded — as
  ratio encoder-time ÷ end-to-end time (goal ≥ 0.9).
- manifest: bytes written to the folder's manifest files per checkpoint against the image count,
  with an instant fake sampler (8×8 images) so only the writes count: ``wchar`` of
  /proc/self/io over the ``generate`` call minus the PNG files' bytes (Linux only). Linear in
  the image count is the goal (the old per-batch rewrite grows quadratically).

Each is printed twice: wall-clock seconds (noisy on shared cores; the fastest of --repeats
interleaved runs), and CPU seconds of the thread that drives the model (torch on one thread), which
is what decides whether CPU work sits on a GPU's critical path and does not depend on idle cores.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("LYCO_BENCH_NO_PROGRESS", "1")

import numpy as np
import torch


def _world_items(tmp: Path, images_per_prompt: int):
    from lyco_bench.data import load_dataset
    from lyco_bench.prompts import expand_prompts, load_prompt_set
    from lyco_bench.world import make_world_dataset

    ds_dir = make_world_dataset(tmp / "dataset")
    ps = load_prompt_set("world")
    dataset = load_dataset(ds_dir)
    items = expand_prompts(ps, dataset, ["train", "trigger", "alter"], images_per_prompt=images_per_prompt)
    return ds_dir, ps, items


def bench_generation(tmp: Path, images_per_prompt: int, steps: int, batch: int, repeats: int) -> dict:
    """Seconds for the sampler alone and for ``generate`` end to end, same items and batches."""
    from lyco_bench.generation import SamplerSettings, generate, make_scheduler, plan_batches, sample_batch
    from lyco_bench.models import load_pipeline
    from lyco_bench.world import model_dir

    ds_dir, ps, items = _world_items(tmp, images_per_prompt)
    sampler = SamplerSettings(steps=steps, width=64, height=64, batch_size=batch)
    pipe = load_pipeline(str(model_dir()), device="cpu")
    pipe.scheduler = make_scheduler(pipe, sampler.sampler)
    seeded = [i.with_seed_base(sampler.seed_base) for i in items]
    sample_batch(pipe, seeded[:batch], sampler)  # warm-up
    sampler_s, e2e_s, sampler_cpu, e2e_cpu = [], [], [], []
    for rep in range(repeats):  # interleaved, the fastest of each kept: shared cores are noisy
        t, c = time.perf_counter(), time.thread_time()
        for b in plan_batches(seeded, batch):
            sample_batch(pipe, b, sampler)
        sampler_s.append(time.perf_counter() - t)
        sampler_cpu.append(time.thread_time() - c)
        out = tmp / f"images-{rep}"
        t, c = time.perf_counter(), time.thread_time()
        generate(
            model=str(model_dir()), items=items, out_dir=out, sampler=sampler, prompt_set=ps, pipeline=pipe
        )
        e2e_s.append(time.perf_counter() - t)
        e2e_cpu.append(time.thread_time() - c)
    sampler_s, e2e_s, sampler_cpu, e2e_cpu = min(sampler_s), min(e2e_s), min(sampler_cpu), min(e2e_cpu)
    return {"images": len(items), "sampler_s": sampler_s, "e2e_s": e2e_s, "sampler_cpu": sampler_cpu,
            "e2e_cpu": e2e_cpu, "out": out, "dataset": ds_dir}  # fmt: skip


def bench_scoring(images: Path, dataset: Path, tmp: Path, repeats: int) -> dict:
    """Seconds for ``score`` end to end and for the encoders alone on decoded pictures."""
    from PIL import Image

    from lyco_bench.metrics import scoring
    from lyco_bench.metrics.features import EncoderPool, EncoderSettings
    from lyco_bench.world import encoder_settings

    settings = EncoderSettings(**encoder_settings(), vgg=_tiny_vgg(tmp), modes=("resize",), batch_size=64)
    metrics = [
        "image_similarity",
        "squared_centroid_distance",
        "text_similarity",
        "vendi",
        "style_loss_dataset",
    ]
    passes: dict[str, int] = {}
    pool = EncoderPool(settings)
    for kind in ("dinov2", "clip", "vgg19"):
        pool.get(kind)  # loaded before the clock starts: a real job loads once for 10⁴ images
    pool.passes.clear()
    real_pool = scoring.EncoderPool
    scoring.EncoderPool = lambda _settings: pool
    e2e, e2e_cpu = [], []
    try:
        for rep in range(repeats):  # a fresh feature cache each time: every image encoded again
            t, c = time.perf_counter(), time.thread_time()
            passes.clear()
            pool.passes.clear()
            if hasattr(pool, "decoded"):  # no decoded picture carried over from the previous repeat
                pool.decoded = type(pool.decoded)()
            scoring.score(images_dir=images, dataset=dataset, encoders=settings, cache_dir=tmp / f"cache-{rep}",
                          metrics=metrics, encoder_passes=passes)  # fmt: skip
            e2e.append(time.perf_counter() - t)
            e2e_cpu.append(time.thread_time() - c)
    finally:
        scoring.EncoderPool = real_pool
    e2e_s = min(e2e)
    pictures = []
    for p in sorted(images.rglob("*.png")):
        with Image.open(p) as im:
            pictures.append(im.convert("RGB"))
    encoder_s = encoder_cpu = 0.0
    for kind, n in passes.items():
        if kind.endswith("-text"):
            continue
        encoder = pool.get(kind)
        encoder.encode_images(pictures[:2], "resize")  # warm-up
        todo = [pictures[i % len(pictures)] for i in range(n)]
        best, best_cpu = [], []
        for _ in range(repeats):
            t, c = time.perf_counter(), time.thread_time()
            for start in range(0, n, settings.batch_size):
                encoder.encode_images(todo[start : start + settings.batch_size], "resize")
            best.append(time.perf_counter() - t)
            best_cpu.append(time.thread_time() - c)
        encoder_s += min(best)
        encoder_cpu += min(best_cpu)
    return {"passes": passes, "e2e_s": e2e_s, "encoder_s": encoder_s, "e2e_cpu": min(e2e_cpu),
            "encoder_cpu": encoder_cpu}  # fmt: skip


def _tiny_vgg(tmp: Path) -> str:
    from lyco_bench.metrics.tiny import make_tiny_vgg19

    return str(make_tiny_vgg19(tmp / "vgg.safetensors"))


class _FakePipe:
    """An instant sampler: deterministic 8×8 pictures, so only the writes cost anything."""

    def __init__(self):
        from diffusers import DDIMScheduler

        self.device = torch.device("cpu")
        self.scheduler = DDIMScheduler()

    def __call__(self, *, prompt, generator, **_):
        images = np.stack([torch.rand(8, 8, 3, generator=g).numpy() for g in generator])
        return type("Out", (), {"images": images})()


def _wchar() -> int | None:
    try:
        for line in Path("/proc/self/io").read_text().splitlines():
            if line.startswith("wchar:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def bench_manifest(tmp: Path, counts: list[int], batch: int) -> list[dict]:
    """Manifest bytes written by ``generate`` per checkpoint for each image count."""
    from lyco_bench.generation import SamplerSettings, generate
    from lyco_bench.prompts import PromptItem

    rows = []
    sampler = SamplerSettings(width=8, height=8, steps=1, batch_size=batch)
    for n in counts:
        items = [
            PromptItem(prompt=f"a picture {i // 8}", clip_text=f"a picture {i // 8}", prompt_class="train",
                       category="c", concept="k", subclass=None, prompt_index=i // 8, image_index=i % 8,
                       seed=1000 + i % 8, group=f"train/{i // 8}")
            for i in range(n)
        ]  # fmt: skip
        out = tmp / f"manifest-{n}"
        before = _wchar()
        t = time.perf_counter()
        generate(model="fake", items=items, out_dir=out, sampler=sampler, pipeline=_FakePipe())
        seconds = time.perf_counter() - t
        after = _wchar()
        png = sum(p.stat().st_size for p in out.rglob("*.png"))
        written = None if before is None or after is None else after - before - png
        final = (out / "manifest.parquet").stat().st_size
        rows.append({"images": n, "written": written, "final": final, "seconds": seconds})
    return rows


def _ratio_table(what: str, alone: float, e2e: float, alone_cpu: float, e2e_cpu: float, goal: float) -> None:
    """Wall-clock seconds, and CPU seconds of the calling thread — the one that drives the model
    (one torch thread): what the model's thread spends besides the model, robust to busy cores."""
    print(f"{'':<22} {what:>14} {'end to end':>11} {'ratio':>7}  (goal ≥ {goal:g})")
    print(f"{'wall clock':<22} {alone:>13.2f}s {e2e:>10.2f}s {alone / e2e:>7.3f}")
    print(f"{'model thread CPU':<22} {alone_cpu:>13.2f}s {e2e_cpu:>10.2f}s {alone_cpu / e2e_cpu:>7.3f}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", choices=["generation", "scoring", "manifest"], action="append")
    ap.add_argument("--images-per-prompt", type=int, default=8, help="world images per prompt (default 8)")
    ap.add_argument("--steps", type=int, default=10, help="DDIM steps (default 10, the demo's)")
    ap.add_argument("--batch-size", type=int, default=32, help="images per sampler call (default 32)")
    ap.add_argument("--counts", default="256,1024,4096", help="manifest image counts (default 256,1024,4096)")
    ap.add_argument("--repeats", type=int, default=3, help="interleaved timings, fastest kept (default 3)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    only = set(args.only or ["generation", "scoring", "manifest"])
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        if only & {"generation", "scoring"}:
            g = bench_generation(tmp, args.images_per_prompt, args.steps, args.batch_size, args.repeats)
            if "generation" in only:
                print(f"\ngeneration on the CPU world ({g['images']} images, 64 px, DDIM {args.steps}, "
                      f"batch {args.batch_size})")  # fmt: skip
                _ratio_table("sampler only", g["sampler_s"], g["e2e_s"], g["sampler_cpu"], g["e2e_cpu"], 0.95)
            if "scoring" in only:
                s = bench_scoring(g["out"], g["dataset"], tmp, args.repeats)
                encoded = ", ".join(f"{k} {v}" for k, v in sorted(s["passes"].items()))
                print(f"\nscoring on the CPU world (encoded: {encoded})")
                _ratio_table("encoders only", s["encoder_s"], s["e2e_s"], s["encoder_cpu"], s["e2e_cpu"], 0.9)
        if "manifest" in only:
            counts = [int(c) for c in args.counts.split(",")]
            rows = bench_manifest(tmp, counts, args.batch_size)
            print(f"\nmanifest bytes written per checkpoint (batch {args.batch_size}, instant 8×8 sampler)")
            print(f"{'images':>7} {'written':>13} {'final file':>11} {'written/image':>14} {'seconds':>8}")
            for r in rows:
                w = "n/a" if r["written"] is None else f"{r['written']:,}"
                per = "n/a" if r["written"] is None else f"{r['written'] / r['images']:,.0f}"
                print(f"{r['images']:>7} {w:>13} {r['final']:>11,} {per:>14} {r['seconds']:>8.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
