"""The world's fine-tuning dataset: the held-out concepts, in the lyco-bench dataset layout.

``characters/robot`` (trigger ``zqx robot``), ``characters/doll`` with two outfits as subclasses
(``vrm doll, red hat`` / ``vrm doll, blue hat``), and ``styles/comic`` (``pgs style``): 64×64 PNGs
with kohya tag captions, concept tags first (stripped by the ``tags`` strategy), and a
dataset.yaml. The base model never saw any of them; the evaluators did (as real DINOv2 and CLIP
have seen most things), under their descriptive names.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lyco_bench.data.drawn import DrawnLeaf, leaves_yaml, write_drawn_dataset
from lyco_bench.data.generated import GeneratedDataset, register_generated_dataset
from lyco_bench.errors import BadInput
from lyco_bench.utils import check_output_dir
from lyco_bench.world.captions import COMIC_TAGS, DOLL_TAGS, ROBOT_TAGS, caption_tags
from lyco_bench.world.draw import CANVAS, HELD_OUT_STYLE, Scene, draw_scene, sample_character, sample_object

WORLD_LEAVES = [
    DrawnLeaf("characters", "robot", None, 8, "zqx robot", "robot", ROBOT_TAGS),
    DrawnLeaf("characters", "doll", "red_hat", 4, "vrm doll", "doll", [*DOLL_TAGS, "red hat", "blue hat"],
              trigger_suffix="red hat", descriptive_suffix="red hat"),
    DrawnLeaf("characters", "doll", "blue_hat", 4, "vrm doll", "doll", [*DOLL_TAGS, "red hat", "blue hat"],
              trigger_suffix="blue hat", descriptive_suffix="blue hat"),
    DrawnLeaf("styles", "comic", None, 8, "pgs style", "comic style", COMIC_TAGS),
]  # fmt: skip
CLASS_PROMPTS = {"characters": "a character", "styles": "a shape"}
# Concept keys as the gates name them (the classifier's kind/style heads recognise them).
CONCEPT_OF_LEAF = {"robot": "robot", "red_hat": "doll", "blue_hat": "doll", "comic": "comic"}


def leaf_scene(leaf: DrawnLeaf, rng: np.random.Generator) -> Scene:
    if leaf.concept == "robot":
        return sample_character(rng, "robot")
    if leaf.concept == "doll":
        return sample_character(rng, "doll", hat=leaf.subclass.split("_")[0])
    if leaf.concept == "comic":
        return sample_object(rng, style=HELD_OUT_STYLE)
    raise ValueError(leaf.concept)


def _yaml() -> str:
    return leaves_yaml(
        "world",
        "lyco-bench world dataset: the held-out concepts of the CPU world (lyco_bench/world)",
        WORLD_LEAVES,
        lambda leaf: {
            "trigger": leaf.trigger, "descriptive": leaf.descriptive, "strip_tags": leaf.strip_tags,
            "class_prompt": CLASS_PROMPTS[leaf.category],
        },
    )  # fmt: skip


MAX_IMAGES_PER_LEAF = 1000  # files 000.png … 999.png: a 1000th would sort between 100 and 101
IMAGE_NEED_BYTES = CANVAS * CANVAS * 3 + 1024  # an uncompressed RGB picture + its caption: a PNG's worst


def make_world_dataset(root: str | Path, *, seed: int = 0, images_per_leaf: int | None = None) -> Path:
    """Draw the held-out concepts into ``root`` (absent or empty); same seed → same bytes.

    Seeds differ from the evaluators' and the classifier's pictures (those use other streams).
    """
    if images_per_leaf is not None and not 1 <= images_per_leaf <= MAX_IMAGES_PER_LEAF:
        raise BadInput(
            f"--images-per-leaf {images_per_leaf}: must be 1 to {MAX_IMAGES_PER_LEAF} "
            "(three-digit file names keep their order)"
        )
    if seed < 0:  # numpy's generators take non-negative seeds only
        raise BadInput(f"--seed {seed}: must be ≥ 0")
    n_images = sum(images_per_leaf or leaf.count for leaf in WORLD_LEAVES)
    check_output_dir(root, what=f"output folder {root}", need_bytes=n_images * IMAGE_NEED_BYTES)

    def draw(leaf_index: int, leaf: DrawnLeaf):
        rng = np.random.default_rng([seed, 100 + leaf_index])
        for _ in range(images_per_leaf or leaf.count):
            scene = leaf_scene(leaf, rng)
            yield draw_scene(scene), caption_tags(scene)

    return write_drawn_dataset(Path(root), WORLD_LEAVES, draw, _yaml())


register_generated_dataset(
    GeneratedDataset("world:", "world-dataset", lambda out, seed: make_world_dataset(out, seed=seed))
)
