"""The demo dataset: small images drawn procedurally (numpy + PIL, no downloads), tag captions,
dataset.yaml; deterministic for a seed. Used by the tests and the CPU demo study."""

from __future__ import annotations

import argparse
from pathlib import Path

from lyco_bench.data.drawn import DrawnLeaf, leaves_yaml, write_drawn_dataset, written_summary
from lyco_bench.data.generated import GeneratedDataset, register_generated_dataset
from lyco_bench.errors import BadInput
from lyco_bench.utils import console

DEMO_LEAVES = [
    # The smallest concept of its category, balanced against stripes by repeats.
    DrawnLeaf(
        "patterns", "checker", None, 4, "kdl style", "checkerboard pattern", ["checkerboard", "squares"], 2
    ),
    DrawnLeaf("patterns", "stripes", None, 6, "pgs style", "diagonal stripes", ["stripes", "diagonal lines"]),
    DrawnLeaf("shapes", "circle", None, 5, "zqx shape", "red circle", ["red circle", "round"]),
    DrawnLeaf(
        "shapes",
        "triangle",
        "filled",
        3,
        "vrm shape",
        "blue triangle",
        ["blue triangle"],
        1,
        "plo variant",
        "filled",
    ),
    DrawnLeaf(
        "shapes",
        "triangle",
        "hollow",
        4,
        "vrm shape",
        "blue triangle",
        ["blue triangle"],
        1,
        "dax variant",
        "outline",
    ),
]
# Each category's class, for DreamBooth prior preservation (the base model draws class images).
DEMO_CLASS_PROMPTS = {"patterns": "a pattern", "shapes": "a simple shape"}
DEMO_BACKGROUNDS = {
    "white": (245, 245, 240),
    "yellow": (240, 220, 120),
    "grey": (150, 150, 150),
    "pink": (235, 170, 190),
}


def _demo_image(kind: str, *, rng, width: int, height: int):
    """One procedurally drawn image and its generic tags; ``kind`` is the leaf's concept/subclass."""
    import numpy as np
    from PIL import Image, ImageDraw

    bg_name = list(DEMO_BACKGROUNDS)[int(rng.integers(len(DEMO_BACKGROUNDS)))]
    tags = [] if kind == "checker" else [f"{bg_name} background"]  # the checker has no background
    if kind in ("checker", "stripes"):
        cell = int(rng.integers(max(2, width // 12), max(3, width // 5)))
        yy, xx = np.mgrid[0:height, 0:width] + rng.integers(0, cell, size=(2, 1, 1))  # random phase
        if kind == "checker":
            mask = ((xx // cell + yy // cell) % 2).astype(bool)
            fg, bg = np.array([110, 40, 150]), np.array([240, 140, 40])
        else:
            mask = (((xx + yy) // cell) % 2).astype(bool)
            fg, bg = np.array([30, 140, 60]), np.array(DEMO_BACKGROUNDS[bg_name])
        pixels = np.where(mask[..., None], fg, bg).astype(np.float64)
        tags.append("large pattern" if cell > width // 8 else "small pattern")
    else:
        pixels = np.broadcast_to(np.array(DEMO_BACKGROUNDS[bg_name], float), (height, width, 3)).copy()
    noisy = bool(rng.random() < 0.5)
    if noisy:
        pixels += rng.normal(0.0, 12.0, pixels.shape)
        tags.append("noise")
    image = Image.fromarray(np.clip(pixels, 0, 255).round().astype(np.uint8), "RGB")
    if kind in ("circle", "filled", "hollow"):
        size = int(min(width, height) * rng.uniform(0.3, 0.7))
        cx = int(rng.integers(size // 2, width - size // 2 + 1))
        cy = int(rng.integers(size // 2, height - size // 2 + 1))
        box = (cx - size // 2, cy - size // 2, cx + size // 2, cy + size // 2)
        draw = ImageDraw.Draw(image)
        if kind == "circle":
            draw.ellipse(box, fill=(210, 30, 30))
        else:
            points = [(cx, box[1]), (box[2], box[3]), (box[0], box[3])]
            fill = (40, 60, 200) if kind == "filled" else None
            draw.polygon(points, fill=fill, outline=(40, 60, 200), width=1 if fill else max(2, size // 8))
        tags.append("large" if size > min(width, height) // 2 else "small")
        tags.append(
            "centered"
            if abs(cx - width / 2) < width / 8
            else ("left side" if cx < width / 2 else "right side")
        )
    return image, ["simple background", *tags] if kind not in ("checker", "stripes") else tags


def _demo_yaml() -> str:
    return leaves_yaml(
        "demo",
        "lyco-bench demo dataset, drawn by `lyco-bench make-demo-dataset` (datasets/README.md)",
        DEMO_LEAVES,
        lambda leaf: {
            "trigger": leaf.trigger, "descriptive": leaf.descriptive, "strip_tags": leaf.strip_tags,
            "repeats": leaf.repeats, "class_prompt": DEMO_CLASS_PROMPTS[leaf.category],
        },
    )  # fmt: skip


def make_demo_dataset(
    root: str | Path, *, seed: int = 0, image_size: int = 64, images_per_concept: int | None = None
) -> Path:
    """Draw the demo dataset into ``root`` (which must be absent or empty); same seed → same bytes.

    2 categories × 2 concepts, one concept with two subclasses, 3–6 images per leaf (or
    ``images_per_concept`` each), a few non-square images so buckets matter, tag captions.
    """

    import numpy as np

    if seed < 0:  # numpy's generators take non-negative seeds only
        raise BadInput(f"--seed {seed}: must be ≥ 0")
    if image_size < 16:
        raise BadInput(f"--size {image_size}: must be at least 16")
    if images_per_concept is not None and images_per_concept < 1:
        raise BadInput(f"--images-per-concept {images_per_concept}: must be at least 1")

    def draw(leaf_index: int, leaf: DrawnLeaf):
        rng = np.random.default_rng([seed, leaf_index])
        for i in range(images_per_concept or leaf.count):
            # Image 1 of each leaf is landscape 3:2, image 2 of even leaves portrait 4:5.
            width = image_size * 3 // 2 if i == 1 else image_size
            height = image_size * 5 // 4 if i == 2 and leaf_index % 2 == 0 else image_size
            image, tags = _demo_image(leaf.subclass or leaf.concept, rng=rng, width=width, height=height)
            yield image, [*leaf.strip_tags, *tags]  # the concept's tags first

    return write_drawn_dataset(Path(root), DEMO_LEAVES, draw, _demo_yaml())


def _cmd_make_demo_dataset(args: argparse.Namespace) -> int:
    root = make_demo_dataset(
        Path(args.dir), seed=args.seed, image_size=args.size, images_per_concept=args.images_per_concept
    )
    console.print(written_summary(root, "demo dataset"))
    return 0


def register_cli(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "make-demo-dataset",
        help="draw the small procedural demo dataset (no downloads)",
        description="Draw the demo dataset (2 categories x 2 concepts, one with subclasses, tag captions, "
        "dataset.yaml) into DIR; deterministic for a seed.",
    )
    p.add_argument("dir", help="output folder (must not exist or be empty)")
    p.add_argument("--seed", type=int, default=0, help="drawing seed (default 0)")
    p.add_argument("--size", type=int, default=64, help="short image side in pixels (default 64)")
    p.add_argument(
        "--images-per-concept",
        type=int,
        default=None,
        help="images in every leaf (default: the uneven 3-6 of the demo)",
    )
    p.set_defaults(func=_cmd_make_demo_dataset)


register_generated_dataset(
    GeneratedDataset("demo:", "demo-dataset", lambda out, seed: make_demo_dataset(out, seed=seed))
)
