"""Measure the CPU world's gates with the shipped weights and print them as tables.

    python benchmarks/world.py            # G1 and G2 (G2 trains a default LoRA: a few minutes)
    python benchmarks/world.py --g1       # G1 only
    python benchmarks/world.py --grids out/   # also write the sampled pictures as grids
    python benchmarks/world.py --findings reports/demo   # G3: the demo's findings table (README)

G1: the base model's pictures for ``a {colour} {shape}`` (and ``…, {bg} background``) prompts,
read back by the attribute classifier (gate: shape ≥ 80%, colour ≥ 90%).
G2: a default LoRA (the project's trainer, world dataset) — its ``<trigger>`` pictures recognised
as the concept ≥ 70%, the base model's for the same prompts and seeds < 10%.
G3: after `make demo`, the paper's directions read from reports/demo/comparison.csv, each
Δ [95% CI] with ✓ (the interval excludes 0 on the paper's side), ✗ (on the other side) or tie.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch


def _grid(images: np.ndarray, cols: int, path: Path) -> None:
    from PIL import Image

    rows = [
        np.concatenate(list(images[i : i + cols]), axis=1) for i in range(0, len(images) - cols + 1, cols)
    ]
    Image.fromarray(np.concatenate(rows)).save(path)


# G3: the LyCORIS paper's directions, as the demo study compares them (comparison.csv rows):
# (finding, config suffix, against the default's first epoch, metric, prompt class, the paper's
# sign of Δ, the paper's words). The other rows compare at the last epoch.
FINDINGS = [
    ("more epochs", "", True, "image_similarity", "train", +1, "higher image similarity with more training"),
    ("more epochs", "", True, "squared_centroid_distance", "train", -1,
     "closer to the dataset's centroid with more training"),
    ("more epochs", "", True, "text_similarity", "alter", -1, "lower text similarity with more training"),
    ("more epochs", "", True, "style_loss_base", "style", +1,
     "higher style loss vs the base model with more training"),
    ("attn-only vs attn-mlp", "-attnonly", False, "image_similarity", "train", -1, "attn-only: lower fidelity"),
    ("lr 5e-4 vs 5e-3", "-lr5e-4", False, "image_similarity", "train", -1,
     "the lowest learning rate: lower fidelity"),
    ("lr 5e-4 vs 5e-3", "-lr5e-4", False, "squared_centroid_distance", "train", +1,
     "the lowest learning rate: further from the dataset's centroid"),
]  # fmt: skip
DEFAULTS = {"LoRA": "lora8a4", "LoHa": "loha4a2", "LoKr": "lokrf4"}


def findings_table(path: Path) -> str:
    """The README's findings table: Δ [95% CI] per finding and algorithm at the last epoch, ✓ where
    the interval excludes 0 on the paper's side, ✗ on the other side, "tie" where it contains 0."""
    import pandas as pd

    from lyco_bench.analysis.leaderboard import interval_text

    comp = pd.read_csv(path)
    comp = comp[comp["mode"].isna() | (comp["mode"] == "resize")]
    first, last = comp["reference_epoch"].min(), comp["epoch"].max()
    lines = [
        "| finding | metric (prompts) | paper | " + " | ".join(DEFAULTS) + " |",
        "|---|---|---|" + "---|" * len(DEFAULTS),
    ]
    for what, suffix, longer, metric, cls, sign, paper in FINDINGS:
        cells = []
        for default in DEFAULTS.values():
            rows = comp[
                (comp["config"] == default + suffix) & (comp["reference"] == default) & (comp["epoch"] == last)
                & (comp["reference_epoch"] == (first if longer else last)) & (comp["metric"] == metric)
                & (comp["prompt_class"] == cls)
            ]  # fmt: skip
            if len(rows) != 1:
                cells.append("–")
                continue
            r = rows.iloc[0]
            if r["ci_low"] <= 0 <= r["ci_high"]:
                verdict = "tie"
            else:
                verdict = "✓" if (r["delta"] > 0) == (sign > 0) else "✗"
            cells.append(f"{interval_text(r['delta'], r['ci_low'], r['ci_high'], signed=True)} {verdict}")
        label = f"{what} ({last:g} vs {first:g})" if longer else what
        lines.append(f"| {label} | {metric} ({cls}) | {paper} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from lyco_bench.world.gates import measure_g1, measure_g2

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--g1", action="store_true", help="G1 only")
    ap.add_argument("--g2", action="store_true", help="G2 only")
    ap.add_argument("--steps", type=int, default=20, help="DDIM steps (default 20)")
    ap.add_argument("--cfg", type=float, default=7.0, help="guidance scale (default 7)")
    ap.add_argument("--images", type=int, default=4, help="G1 images per prompt (default 4)")
    ap.add_argument("--g2-images", type=int, default=16, help="G2 images per trigger (default 16)")
    ap.add_argument("--epochs", type=int, default=30, help="G2 LoRA epochs (default 30, the demo's)")
    ap.add_argument("--dim", type=int, default=8, help="G2 LoRA dim (default 8, alpha dim/2)")
    ap.add_argument("--lr", type=float, default=5e-3, help="G2 LoRA learning rate (default 5e-3, the demo's)")
    ap.add_argument(
        "--findings", default=None, metavar="REPORT_DIR",
        help="only print G3, the findings table, from a demo report's comparison.csv (reports/demo)",
    )  # fmt: skip
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--grids", default=None, help="folder for picture grids")
    ap.add_argument("--json", default=None, help="write the numbers to this JSON file")
    args = ap.parse_args(argv)
    if args.findings:
        print(findings_table(Path(args.findings) / "comparison.csv"))
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    grids = Path(args.grids) if args.grids else None
    if grids:
        grids.mkdir(parents=True, exist_ok=True)
    results: dict = {}
    if not args.g2:
        t = time.time()
        g1 = measure_g1(images_per_prompt=args.images, steps=args.steps, cfg=args.cfg)
        print(f"\nG1: base model follows prompts ({g1['images']} images, DDIM {args.steps}, cfg {args.cfg}, "
              f"{time.time() - t:.0f} s)")  # fmt: skip
        print(f"{'prompts':<18} {'shape':>7} {'colour':>7} {'background':>11} {'object':>7}")
        for subset in ("plain", "with background", "all"):
            r = g1.get(subset)
            if r:
                bg = f"{r['background']:.1%}" if "background" in r else "-"
                print(f"{subset:<18} {r['shape']:>7.1%} {r['colour']:>7.1%} {bg:>11} {r['object']:>7.1%}")
        ok = g1["all"]["shape"] >= 0.8 and g1["all"]["colour"] >= 0.9
        print(f"gate (shape ≥ 80%, colour ≥ 90%): {'PASS' if ok else 'FAIL'}")
        if grids:
            _grid(g1["_images"], 16, grids / "g1.png")
        results["g1"] = {k: v for k, v in g1.items() if not k.startswith("_")}
    if not args.g1:
        g2 = measure_g2(images_per_prompt=args.g2_images, steps=args.steps, cfg=args.cfg, epochs=args.epochs,
                        dim=args.dim, alpha=args.dim / 2, lr=args.lr)  # fmt: skip
        print(f"\nG2: a default LoRA (dim {args.dim}, alpha {args.dim / 2:g}, lr {args.lr:g}, {args.epochs} epochs, "
              f"trained in {g2['train_s']:.0f} s) learns the held-out concepts")  # fmt: skip
        print(f"{'leaf':<26} {'prompt':<20} {'LoRA':>6} {'(outfit)':>9} {'base':>6}")
        for key, r in g2["leaves"].items():
            sub = f"{r['lora_subclass']:.0%}" if r["lora_subclass"] is not None else "-"
            print(f"{key:<26} {r['prompt']:<20} {r['lora']:>6.0%} {sub:>9} {r['base']:>6.0%}")
        print(f"{'all':<26} {'':<20} {g2['lora']:>6.0%} {'':>9} {g2['base']:>6.0%}")
        ok = g2["lora"] >= 0.7 and g2["base"] < 0.1
        print(f"gate (LoRA ≥ 70%, base < 10%): {'PASS' if ok else 'FAIL'}")
        if grids:
            n = args.g2_images
            _grid(np.concatenate([g2["_base_images"][::n // 4 or 1], g2["_lora_images"][::n // 4 or 1]]), 16,
                  grids / "g2.png")  # fmt: skip
        results["g2"] = {k: v for k, v in g2.items() if not k.startswith("_")}
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
