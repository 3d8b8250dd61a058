"""Sweep benchmarks: encoder passes vs the analytic minimum, the store at the paper's size, planning
overhead, and the tour on 1 vs 2 Ray workers. Prints tables; asserts nothing.

    .venv/bin/python benchmarks/sweep.py              # everything (the tour study (experiments/tour.yaml) runs three times)
    .venv/bin/python benchmarks/sweep.py --quick      # a cut-down tour (1 seed, one config per algorithm)
    .venv/bin/python benchmarks/sweep.py --skip-ray   # no Ray runs

1. **Encoder passes.** The tour study runs in-process with every encoder's ``encode_images``
   counted, and the count per kind is compared with the analytic minimum, computed here from the
   manifests and the metric registry alone: per checkpoint, the distinct images of the prompt
   classes some metric reads with that encoder; the dataset's reference images once per canonical
   mode (square images once); the base-model images a paired metric reads, once.
2. **The store.** Files and bytes per kind of output, measured on the tour and set beside the
   planner's estimate for the tour; then the estimate for experiments/paper.yaml with SD1.5, the
   real encoders and a 1,706-image dataset shaped like the paper's (28 concepts + 11 subclasses
   in 5 categories, ~14,900 images per checkpoint), before (one feature file per image per encoder,
   VGG Grams of every generated image, every epoch's resume state) and after.
   Target: paper-sweep features ≤ 30 GB, files ≤ images + 10 × jobs.
3. **Planning** ``lyco-bench plan experiments/paper.yaml`` on a finished paper-sized store: < 5 s.
4. **Ray**: 2 workers ≥ 1.7× faster than 1 on a 2-core CPU (one torch thread per worker).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("LYCO_BENCH_NO_PROGRESS", "1")

from lyco_bench.sweep.cli import load_plan  # noqa: E402
from lyco_bench.sweep.planner import build_plan  # noqa: E402
from lyco_bench.sweep.sizing import estimate_store, human_bytes  # noqa: E402
from lyco_bench.sweep.store import StudyStore  # noqa: E402
from lyco_bench.sweep.study import load_study  # noqa: E402

TOUR = ROOT / "experiments" / "tour.yaml"
PAPER = ROOT / "experiments" / "paper.yaml"
QUICK = [
    "seeds=[1]",
    "algorithms.lora.variations={}",
    "algorithms.loha.variations={}",
    "algorithms.lokr.variations={}",
    "algorithms.native.variations={}",
]
# SD1.5's UNet and text encoder configs (stable-diffusion-v1-5/stable-diffusion-v1-5), the
# DINOv2-L/14 config: what the planner reads to size the paper's study without weights.
SD15_UNET = {
    "_class_name": "UNet2DConditionModel", "sample_size": 64, "in_channels": 4, "out_channels": 4,
    "layers_per_block": 2, "block_out_channels": [320, 640, 1280, 1280], "cross_attention_dim": 768,
    "attention_head_dim": 8, "norm_num_groups": 32,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
}  # fmt: skip
SD15_TEXT = {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12,
             "max_position_embeddings": 77, "vocab_size": 49408, "projection_dim": 768, "hidden_act": "quick_gelu"}  # fmt: skip
DINOV2_LARGE = {"model_type": "dinov2", "hidden_size": 1024, "num_hidden_layers": 24, "patch_size": 14}


# --- 1. encoder passes ---------------------------------------------------------------------------
def count_encoder_passes() -> collections.Counter:
    """Count every image each encoder class encodes from now on (this process)."""
    from lyco_bench.metrics import encoders as enc

    counts: collections.Counter = collections.Counter()
    for cls in (enc.DinoV2Encoder, enc.ClipEncoder, enc.VggGramEncoder):
        original = cls.encode_images

        def counted(self, images, *args, _original=original, **kwargs):
            counts[self.kind] += len(images)
            return _original(self, images, *args, **kwargs)

        cls.encode_images = counted
    return counts


def analytic_minimum(plan) -> dict[str, int]:
    """Encoder passes the study cannot do without (see the module docstring), per kind."""
    import pandas as pd
    from PIL import Image

    from lyco_bench.metrics import METRICS, metric_encoders
    from lyco_bench.metrics.encoders import MODELESS_KINDS
    from lyco_bench.utils import sha256_file

    inputs = plan.inputs
    image_encoders = tuple(inputs.scoring["image_encoders"])
    styles = set(inputs.scoring["style_categories"])
    modes = len(inputs.scoring["modes"])
    base = pd.read_parquet(plan.store.base_images_dir / "manifest.parquet")
    base_keys = set(zip(base["prompt_class"], base["prompt"], base["seed"], strict=True))
    minimum: collections.Counter = collections.Counter()
    for job in plan.of_kind("score"):
        p = job.params  # "evaluated": the configuration as evaluated (a DyLoRA rank), its images
        folder = plan.store.images_dir(p.get("evaluated", p["config"]), p["seed"], p["epoch"])
        df = pd.read_parquet(folder / "manifest.parquet")
        df["sha"] = [sha256_file(folder / f) for f in df["file"]]
        for kind in inputs.encoders:
            read = pd.Series(False, index=df.index)
            for name in inputs.metrics:
                metric = METRICS[name]
                if kind not in metric_encoders(metric, image_encoders):
                    continue
                rows = df["prompt_class"].isin(metric.prompt_classes)
                if metric.categories == "style":
                    rows &= df["category"].isin(styles)
                if "base" in metric.needs:  # only images with a base twin (same class, prompt, seed)
                    rows &= pd.Series([k in base_keys for k in zip(df["prompt_class"], df["prompt"], df["seed"],
                                                                     strict=True)], index=df.index)  # fmt: skip
                read |= rows
            minimum[kind] += df.loc[read, "sha"].nunique()
    dataset = plan.store.assets_dir / "demo-dataset"
    for kind in inputs.encoders:
        reading = [METRICS[m] for m in inputs.metrics if kind in metric_encoders(METRICS[m], image_encoders)]
        referencing = [m for m in reading if "reference" in m.needs]
        if referencing:
            style_only = all(m.categories == "style" for m in referencing)
            for image in sorted(dataset.rglob("*.png")):
                if style_only and image.relative_to(dataset).parts[0] not in styles:
                    continue
                with Image.open(image) as im:
                    square = im.size[0] == im.size[1]
                minimum[kind] += 1 if square or kind in MODELESS_KINDS else modes
        paired = [m for m in reading if "base" in m.needs]
        classes = {c for m in paired for c in m.prompt_classes}
        per_image = modes if kind not in MODELESS_KINDS and any("reference" in m.needs for m in paired) else 1
        seen: set[str] = set()  # base images are encoded once per distinct content
        for file in base.loc[base["prompt_class"].isin(classes), "file"]:
            path = plan.store.base_images_dir / file
            content = sha256_file(path)
            if content not in seen:
                seen.add(content)
                with Image.open(path) as im:
                    minimum[kind] += 1 if im.size[0] == im.size[1] else per_image
    return dict(minimum)


def measure_store(root: Path) -> dict[str, tuple[int, int]]:
    """(files, bytes) per kind of output under a study's store."""
    out: dict[str, list[int]] = collections.defaultdict(lambda: [0, 0])
    for path in root.rglob("*"):
        if not path.is_file():
            continue
        parts = path.relative_to(root).parts
        if path.suffix == ".png":
            key = "images (PNG)"
        elif parts[0] == "cache":
            key = f"cache/{parts[1]}"
        elif parts[0] == "runs":
            key = "runs (adapters, states, records)"
        else:
            key = parts[0]
        out[key][0] += 1
        out[key][1] += path.stat().st_size
    return {k: (v[0], v[1]) for k, v in sorted(out.items())}


def run_tour(store: Path, overrides: list[str]) -> tuple[object, float, dict[str, int]]:
    from lyco_bench.sweep.executors import run_plan

    counts = count_encoder_passes()
    plan = load_plan(str(TOUR), overrides, str(store), verify_images=True)
    start = time.perf_counter()
    summary = run_plan(plan)
    if not summary.complete:
        raise SystemExit(f"tour run failed: {list(summary.failed.values())[:1]}")
    return plan, time.perf_counter() - start, dict(counts)


# --- 2. the store at the paper's size ----------------------------------------------------------
def paper_shaped_dataset(root: Path) -> Path:
    """1,706 flat-colour images in the paper's shape: 28 concepts in 5 categories; the 10 characters
    and one toy have two subclasses (outfits) each, so 39 leaves: 32 concept leaves × (train,
    trigger, alter, style) × 100 + 7 styles × 300 = 14,900 images per checkpoint with lyco-v1."""
    import yaml
    from PIL import Image

    layout = {"anime": 5, "people": 5, "scene": 5, "stuffed_toy": 6, "style": 7}
    with_subclasses = (
        {("anime", c) for c in range(5)} | {("people", c) for c in range(5)} | {("stuffed_toy", 0)}
    )
    leaves = [
        (cat, f"{cat}{c}", sub)
        for cat, n in layout.items()
        for c in range(n)
        for sub in (("outfit0", "outfit1") if (cat, c) in with_subclasses else (None,))
    ]
    sizes = [(512, 768), (768, 512), (512, 512), (640, 896)]
    spec = {"name": "paper-shaped", "version": "1", "concepts": {}}
    for i in range(1706):
        cat, concept, sub = leaves[i % len(leaves)]
        folder = root / cat / concept / (sub or "")
        folder.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", sizes[i % 4], (i % 251, 80, 160)).save(folder / f"{i:04d}.png")
        (folder / f"{i:04d}.txt").write_text("1girl, smile")
        spec["concepts"].setdefault(f"{cat}/{concept}", {"trigger": f"t{concept} {cat}"})
    (root / "dataset.yaml").write_text(yaml.safe_dump(spec))
    return root


def paper_stand_ins(folder: Path) -> list[str]:
    """Config-only stand-ins for SD1.5 and the encoders (planning reads configs, never weights)."""
    model = folder / "sd15"
    for sub, cfg in (("unet", SD15_UNET), ("text_encoder", SD15_TEXT)):
        (model / sub).mkdir(parents=True, exist_ok=True)
        (model / sub / "config.json").write_text(json.dumps(cfg))
    (model / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    dino = folder / "dinov2-large"
    dino.mkdir(exist_ok=True)
    (dino / "config.json").write_text(json.dumps(DINOV2_LARGE))
    (folder / "clip.bin").write_bytes(b"")
    (folder / "vgg19.safetensors").write_bytes(b"")
    dataset = paper_shaped_dataset(folder / "dataset")
    return [f"model={model}", f"dataset={dataset}", f"encoders.dino={dino}",
            f"encoders.clip_pretrained={folder / 'clip.bin'}", f"encoders.vgg={folder / 'vgg19.safetensors'}"]  # fmt: skip


def before_estimate(plan, after) -> dict[str, tuple[int, int]]:
    """The store as the previous layout filled it (measured on the demo: 5,138 feature files for
    1,716 images): one safetensors file per (image, encoder), for every generated image and every
    encoder (VGG Grams included), dataset/base features likewise, every epoch's resume state, and
    three encode jobs per checkpoint."""
    from lyco_bench.sweep.sizing import encoder_dim

    inputs = plan.inputs
    n_ckpt = len(plan.of_kind("score"))
    per_ckpt = sum(inputs.images_per_class.values())
    n_base = sum(inputs.base_images_per_class.values())
    dims = {kind: encoder_dim(kind, plan) for kind in ("dinov2", "clip", "vgg19")}
    header = 150  # bytes of a one-tensor safetensors header
    files = bytes_ = 0
    for dim in dims.values():  # every generated image, every encoder, one file each
        files += n_ckpt * per_ckpt
        bytes_ += n_ckpt * per_ckpt * (dim * 4 + header)
    n_ref = sum(1 if w == h else 3 for _, w, h in inputs.dataset_images)
    files += n_ref + n_base
    bytes_ += n_ref * (dims["dinov2"] * 4 + header) + n_base * (dims["vgg19"] * 4 + header)
    ckpt_files, ckpt_bytes = after.of("checkpoints")
    epochs = len(plan.study.study.checkpoint_epochs)
    state_share = 3 / (epochs + 3)  # after: one state (3× an adapter) beside `epochs` adapters
    ckpt_bytes_before = ckpt_bytes * (1 - state_share) + ckpt_bytes * state_share * epochs
    return {
        "features": (files, bytes_),
        "checkpoints": (ckpt_files + len(plan.of_kind("train")) * (epochs - 1), int(ckpt_bytes_before)),
        "job files": (after.of("job markers")[0] + 3 * n_ckpt * 3, after.of("job markers")[1]),
    }


# --- 3. planning ---------------------------------------------------------------------------------
def synthesize_finished(store_root: Path, overrides: list[str]) -> int:
    """Outputs (1-byte files) and done markers for every job of paper.yaml, as if it had run."""
    plan = build_plan(load_study(PAPER, overrides), StudyStore.open(store_root, "paper"))
    for i, job in enumerate(plan.jobs):
        folder = plan.store.root / "synthetic" / job.kind / str(i)
        folder.mkdir(parents=True, exist_ok=True)
        outputs = []
        for name in ("a.safetensors", "b.json") if job.kind == "train" else ("out.parquet",):
            (folder / name).write_bytes(b"x")
            outputs.append(folder / name)
        if job.kind == "train":  # run records, as the trainer leaves them (sizes are read from them)
            run_dir = plan.store.run_dir(job.params["config"], job.params["seed"])
            run_dir.mkdir(parents=True, exist_ok=True)
            for epoch in job.spec["checkpoint_epochs"]:
                (run_dir / f"ckpt-e{epoch:03d}.json").write_text(
                    json.dumps({"trainable_params": 10**6 * (i + 1)})
                )
        plan.store.write_marker(job, outputs, duration_s=1.0, attempt=1)
    return len(plan.jobs)


def time_plan(store_root: Path, overrides: list[str]) -> tuple[float, float, int, int]:
    """(in-process seconds: validate + hash + expand + check every marker, CLI seconds, jobs, done)."""
    start = time.perf_counter()
    plan = load_plan(str(PAPER), overrides, str(store_root))
    done = plan.done_ids()
    in_process = time.perf_counter() - start
    start = time.perf_counter()
    cmd = [sys.executable, "-m", "lyco_bench.cli", "plan", str(PAPER), *overrides, "--store", str(store_root)]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    cli = time.perf_counter() - start
    if out.returncode != 0:
        raise SystemExit(out.stderr[-2000:])
    return in_process, cli, len(plan.jobs), len(done)


# --- 4. Ray ----------------------------------------------------------------------------------------
def time_ray_tour(workers: int, store: Path, overrides: list[str]) -> tuple[float, int]:
    from lyco_bench.sweep.executors import run_plan

    plan = build_plan(load_study(TOUR, overrides), StudyStore.open(store, "tour"))
    start = time.perf_counter()
    summary = run_plan(plan, backend="ray", jobs=workers, threads=1)
    if not summary.complete:
        raise SystemExit(f"tour run with {workers} workers failed: {list(summary.failed.values())[:1]}")
    return time.perf_counter() - start, len(summary.ran)


def time_ray_startup() -> float:
    import ray

    start = time.perf_counter()
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    ray.shutdown()
    return time.perf_counter() - start


def table(title: str, header: tuple[str, ...], rows: list[tuple]) -> None:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    print(f"\n{title}")
    print(
        "  ".join(
            str(h).ljust(w) if i == 0 else str(h).rjust(w)
            for i, (h, w) in enumerate(zip(header, widths, strict=True))
        )
    )
    for row in rows:
        print(
            "  ".join(
                str(c).ljust(w) if i == 0 else str(c).rjust(w)
                for i, (c, w) in enumerate(zip(row, widths, strict=True))
            )
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="cut-down tour: 1 seed, one config per algorithm"
    )
    parser.add_argument("--skip-ray", action="store_true", help="no Ray runs")
    args = parser.parse_args()
    overrides = QUICK if args.quick else []
    with tempfile.TemporaryDirectory(prefix="lyco-sweep-bench-") as tmp:
        tmp = Path(tmp)
        plan, seconds, passes = run_tour(tmp / "tour", overrides)
        minimum = analytic_minimum(plan)
        rows = [(k, passes.get(k, 0), minimum.get(k, 0), "yes" if passes.get(k, 0) == minimum.get(k, 0) else "NO")
                for k in ("dinov2", "clip", "vgg19")]  # fmt: skip
        table(f"1. encoder passes, tour study ({len(plan.of_kind('score'))} checkpoints, run {seconds:.0f} s)",
              ("encoder", "passes", "analytic minimum", "equal"), rows)  # fmt: skip

        measured = measure_store(plan.store.root)
        estimate = estimate_store(plan)
        rows = [(k, f"{f:,}", human_bytes(b)) for k, (f, b) in measured.items()]
        rows.append(
            (
                "planner's estimate (whole store, without assets)",
                f"{estimate.files:,}",
                human_bytes(estimate.bytes),
            )
        )
        n_ckpt = len(plan.of_kind("score"))
        other = sum(f for k, (f, _) in measured.items() if k not in ("images (PNG)", "assets"))
        rows.append(
            ("files besides images and assets, per job", f"{other / len(plan.jobs):.1f}", "target ≤ 10")
        )
        rows.append(("files besides images and assets, per checkpoint", f"{other / n_ckpt:.1f}", ""))
        table("2a. the tour's store, measured", ("what", "files", "size"), rows)

        stand_ins = paper_stand_ins(tmp / "paper-inputs")
        paper = load_plan(str(PAPER), stand_ins, str(tmp / "paper-store"))
        after = estimate_store(paper)
        before = before_estimate(paper, after)
        feats_after = after.of("features")
        n_images, n_base = after.images["keep"][0], after.of("base-model images")[0]
        rows = [
            ("checkpoints × images per checkpoint", f"{len(paper.of_kind('score'))} × {sum(paper.inputs.images_per_class.values()):,}", ""),
            ("generated images (kept, as the paper did)", f"{n_images:,} files", human_bytes(after.images["keep"][1])),
            ("features: files", f"{before['features'][0]:,}", f"{feats_after[0]:,}"),
            ("features: bytes", human_bytes(before["features"][1]), human_bytes(feats_after[1]) + "  (target ≤ 30 GB)"),
            ("checkpoints, records, resume states: bytes", human_bytes(before["checkpoints"][1]), human_bytes(after.of("checkpoints")[1])),
            ("files besides images", f"{before['features'][0] + before['checkpoints'][0] + before['job files'][0]:,}",
             f"{after.files - n_images - n_base:,}  (target ≤ 10 × {len(paper.jobs)} jobs = {10 * len(paper.jobs):,})"),
        ]  # fmt: skip
        table("2b. experiments/paper.yaml at the paper's size (SD1.5, 1,706-image dataset): before → after",
              ("what", "before", "after"), rows)  # fmt: skip
        print("\nthe planner's estimate for the paper study (`lyco-bench plan` prints it):")
        print(after.table())

        n = synthesize_finished(tmp / "paper-finished", stand_ins)
        in_process, cli, jobs, done = time_plan(tmp / "paper-finished", stand_ins)
        table("3. planning a finished paper-sized store", ("measurement", "value", "note"), [
            ("plan paper.yaml, all done: validate + hash + expand + check markers", f"{in_process:.2f} s", f"{jobs} jobs, {done} done of {n}"),
            ("`lyco-bench plan experiments/paper.yaml` (CLI, with imports)", f"{cli:.2f} s", "target < 5 s"),
        ])  # fmt: skip

        if not args.skip_ray:
            one, ran1 = time_ray_tour(1, tmp / "ray-1", overrides)
            two, ran2 = time_ray_tour(2, tmp / "ray-2", overrides)
            startup = time_ray_startup()
            table("4. the tour on Ray", ("measurement", "value", "note"), [
                ("1 worker × 1 thread", f"{one:.1f} s", f"{ran1} jobs"),
                ("2 workers × 1 thread", f"{two:.1f} s", f"{ran2} jobs"),
                ("speed-up 2 vs 1 workers", f"{one / two:.2f}×", "target ≥ 1.7×"),
                ("Ray start + stop (in both runs)", f"{startup:.1f} s", ""),
                ("speed-up without Ray start-up", f"{(one - startup) / (two - startup):.2f}×", ""),
            ])  # fmt: skip
    print(f"\ncpu cores: {os.cpu_count()}, load average: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
