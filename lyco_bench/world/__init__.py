"""A CPU world where the benchmark measures something real (docs/internals.md, "world").

A procedurally drawn picture world (one big plain shape, or two small ones, on a plain background:
4 shapes, 5 colours, 2 sizes, 3 backgrounds, 3 renderings, kohya tag captions), held-out concepts for
fine-tuning (two characters, one with two outfits, and a style), a tiny Stable Diffusion 1.x
pretrained on the world without them, and evaluators trained on the world — all shipped as fp16
safetensors under ``weights/`` and rebuilt bit-for-bit by ``make-world``.

    from lyco_bench.world import model_dir, encoder_settings, make_world_dataset
    pipe = lyco_bench.models.load_pipeline(str(model_dir()))
"""

from __future__ import annotations

import argparse
from pathlib import Path

from lyco_bench.world.build import encoder_settings, load_classifier, model_dir, weights_dir
from lyco_bench.world.dataset import WORLD_LEAVES, make_world_dataset
from lyco_bench.world.draw import Scene, draw_scene, sample_character, sample_object

__all__ = [
    "WORLD_LEAVES",
    "Scene",
    "draw_scene",
    "encoder_settings",
    "load_classifier",
    "make_world_dataset",
    "model_dir",
    "register_cli",
    "sample_character",
    "sample_object",
    "weights_dir",
]


def _cmd_make_world(args: argparse.Namespace) -> int:
    import tempfile

    from lyco_bench.utils import console
    from lyco_bench.world.build import make_world
    from lyco_bench.world.pretrain import PretrainSettings

    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="lyco-world-"))
    out = make_world(
        Path(args.out), work_dir=work, settings=PretrainSettings(seed=args.seed), log=console.print
    )
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    console.print(f"world weights written to {out} ({size / 1e6:.1f} MB); stages cached in {work}")
    return 0


def _cmd_make_world_dataset(args: argparse.Namespace) -> int:
    from lyco_bench.data.drawn import written_summary
    from lyco_bench.utils import console

    root = make_world_dataset(Path(args.dir), seed=args.seed, images_per_leaf=args.images_per_leaf)
    console.print(written_summary(root, "world dataset"))
    return 0


def register_cli(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "make-world",
        help="rebuild the CPU world's base model and evaluators (about an hour on one CPU thread)",
        description=(
            "Pretrain the world's tiny Stable Diffusion (VAE, CLIP text encoder, UNet) and train its "
            "evaluators (DINOv2, OpenCLIP) and attribute classifier from scratch, on one CPU thread with "
            "fixed seeds, and write them as fp16 safetensors. The same versions on the same CPU kind "
            "rebuild the shipped files byte for byte (BUILD.json lists versions and hashes)."
        ),
    )
    p.add_argument(
        "--out", default=str(weights_dir()), help="output folder (default: the shipped weights folder)"
    )
    p.add_argument("--work", default=None, help="stage cache folder: a rerun resumes at the unfinished stage")
    p.add_argument("--seed", type=int, default=0, help="seed of every stage (default 0, the shipped one)")
    p.set_defaults(func=_cmd_make_world)

    p = subparsers.add_parser(
        "make-world-dataset",
        help="draw the world's held-out concepts as a fine-tuning dataset (no downloads)",
        description="Draw the world dataset (characters/robot, characters/doll with two outfits, styles/comic; "
        "64 px, kohya tag captions, dataset.yaml) into DIR; deterministic for a seed.",
    )
    p.add_argument("dir", help="output folder (must not exist or be empty)")
    p.add_argument("--seed", type=int, default=0, help="drawing seed (default 0)")
    p.add_argument("--images-per-leaf", type=int, default=None, help="images in every leaf (default 8/4/4/8)")
    p.set_defaults(func=_cmd_make_world_dataset)
