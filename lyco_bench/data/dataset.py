"""The dataset tree and its captions: ``dataset.yaml`` schema, loading, caption strategies.

A dataset is ``<root>/<category>/<concept>[/<subclass>]/`` folders of images with same-stem ``.txt``
tag captions (the kohya sd-scripts layout) plus ``<root>/dataset.yaml`` naming each concept's
trigger, descriptive words, tags to strip and repeats (datasets/README.md). docs/protocol.md §2.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from pydantic import Field, field_validator

from lyco_bench.config import StrictModel, read_yaml, validate
from lyco_bench.data.images import open_image_checked
from lyco_bench.errors import BadInput
from lyco_bench.utils import console

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
CAPTION_STRATEGIES = ("tags", "trigger", "all-tags")


class SubclassSpec(StrictModel):
    trigger_suffix: str = ""
    """Appended to the concept trigger after ", " (e.g. "toid outfit")."""
    descriptive_suffix: str = ""
    """Appended to the descriptive words after ", " for CLIP text (often empty)."""


class ConceptSpec(StrictModel):
    trigger: str
    """The text trained and prompted for this concept, e.g. "whoo anime girl"."""
    descriptive: str = ""
    """Words replacing the trigger in text given to CLIP (docs/protocol.md §5.1); may be empty."""
    strip_tags: list[str] = []
    """Concept-specific tags removed from captions by the ``tags`` strategy."""
    repeats: int = Field(1, ge=1)
    """How many times each image is seen per epoch (balances uneven concepts)."""
    subclasses: dict[str, SubclassSpec] = {}
    class_prompt: str = ""
    """DreamBooth prior preservation: a prompt for images of the concept's class ("a plush toy"),
    which the base model draws as class images (needed when a run asks for prior preservation)."""
    class_images: str | None = None
    """Or a folder of class images (a kohya regularization folder), relative to the dataset root;
    their caption is the class prompt."""

    @field_validator("trigger")
    @classmethod
    def _trigger_not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("trigger must not be empty")
        return value.strip()


class DatasetSpec(StrictModel):
    name: str
    version: str
    concepts: dict[str, ConceptSpec]
    """Keyed by ``category/concept`` (the folder path under the root)."""

    @field_validator("version", mode="before")
    @classmethod
    def _version_text(cls, value: object) -> object:
        return str(value) if isinstance(value, int | float) else value


@dataclass
class ImageItem:
    path: Path
    tags: list[str]
    category: str
    concept: str
    subclass: str | None
    width: int = 0
    height: int = 0


@dataclass
class Concept:
    category: str
    name: str
    subclass: str | None
    trigger: str
    descriptive: str
    strip_tags: list[str]
    repeats: int
    images: list[ImageItem] = field(default_factory=list)
    class_prompt: str = ""
    class_images: Path | None = None

    @property
    def key(self) -> str:
        return "/".join(p for p in (self.category, self.name, self.subclass) if p)


@dataclass
class Dataset:
    name: str
    version: str
    root: Path
    concepts: list[Concept]
    skipped: list[Path] = field(default_factory=list)

    @property
    def categories(self) -> list[str]:
        return sorted({c.category for c in self.concepts})

    def find(self, category: str, concept: str | None = None, subclass: str | None = None) -> list[Concept]:
        """Leaves under a category, optionally narrowed to a concept and a subclass."""
        return [
            c
            for c in self.concepts
            if c.category == category
            and (concept is None or c.name == concept)
            and (subclass is None or c.subclass == subclass)
        ]

    def items(self) -> list[tuple[Concept, ImageItem]]:
        """Every (concept, image) pair, in dataset order."""
        return [(c, item) for c in self.concepts for item in c.images]


def _subdirs(path: Path) -> list[Path]:
    return sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))


def image_files(path: Path) -> list[Path]:
    """The leaf's images; a dangling symbolic link named like one is BadInput (it is an image the
    user meant to include, as broken as a truncated file), never skipped silently."""
    images = []
    for p in path.iterdir():
        if p.suffix.lower() not in IMAGE_SUFFIXES or p.name.startswith("."):
            continue
        if p.is_symlink() and not p.exists():
            raise BadInput(
                f"{p}: unreadable image (a symbolic link to {os.readlink(p)}, which does not exist)"
            )
        if p.is_file():
            images.append(p)
    return sorted(images)


def split_tags(text: str) -> list[str]:
    """Comma- or newline-separated tags, stripped, empty ones dropped."""
    return [t.strip() for t in text.replace("\n", ",").split(",") if t.strip()]


def _read_tags(image: Path) -> list[str]:
    caption = image.with_suffix(".txt")
    if not caption.is_file():
        return []
    try:
        return split_tags(caption.read_bytes().decode("utf-8-sig"))
    except UnicodeDecodeError:
        raise BadInput(f"{caption}: caption file is not UTF-8") from None


# Decoded-image checks already passed in this process, keyed by (path, size, mtime): loading the
# same dataset again (every generate/score job does) costs no second decode.
_VERIFIED: dict[tuple[str, int, int], tuple[int, int]] = {}


def _displayed_size(img, *, strict: bool) -> tuple[int, int]:
    if not strict and img.format == "PNG" and "exif" not in img.info:
        # Pillow decodes a whole PNG to look for an eXIf chunk after the pixels: a header-only
        # read (planning, scoring) takes the orientation from a chunk before them, or none.
        return img.size
    try:
        orientation = img.getexif().get(0x0112, 1)
    except (OSError, SyntaxError, ValueError):
        if strict:
            raise
        orientation = 1  # PNG keeps EXIF after the pixels; a header-only read may not reach it
    # EXIF orientations 5–8 are rotations by 90°: width and height swap.
    return (img.height, img.width) if orientation in (5, 6, 7, 8) else img.size


def image_size(path: Path, *, verify: bool = True) -> tuple[int, int]:
    """(width, height) as displayed (EXIF orientation applied). With ``verify`` the whole file is
    decoded, so a truncated image fails here, not mid-run; without it only the header is read."""
    stat = path.stat()
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    if verify and key in _VERIFIED:
        return _VERIFIED[key]
    with open_image_checked(path) as img:
        if verify:
            img.load()
        size = _displayed_size(img, strict=verify)
    if verify:
        _VERIFIED[key] = size
    return size


def _leaf(folder: Path, *, spec: ConceptSpec, names: tuple, options: dict, skipped: list) -> Concept:
    category, concept, subclass = names
    sub = spec.subclasses.get(subclass) if subclass else None
    trigger, descriptive = spec.trigger, spec.descriptive
    if sub and sub.trigger_suffix:
        trigger = f"{trigger}, {sub.trigger_suffix}"
    if sub and sub.descriptive_suffix:
        descriptive = ", ".join(p for p in (descriptive, sub.descriptive_suffix) if p)
    leaf = Concept(category, concept, subclass, trigger, descriptive, list(spec.strip_tags), spec.repeats)
    leaf.class_prompt = spec.class_prompt.strip()
    if spec.class_images is not None:
        leaf.class_images = options["root"] / spec.class_images
        if not leaf.class_images.is_dir():
            raise BadInput(f"{options['root'] / 'dataset.yaml'}: concepts.{category}/{concept}.class_images: "
                           f"no folder {leaf.class_images}")  # fmt: skip
    for path in image_files(folder):
        try:
            width, height = image_size(path, verify=options["verify"])
        except BadInput:
            if not options["skip_bad"]:
                raise
            skipped.append(path)
            continue
        leaf.images.append(ImageItem(path, _read_tags(path), category, concept, subclass, width, height))
    if not leaf.images:
        raise BadInput(f"{folder}: concept {leaf.key} has no readable images")
    return leaf


def _concept_leaves(
    root: Path, key: str, spec: ConceptSpec, *, options: dict, skipped: list
) -> list[Concept]:
    folder = root / key
    category, concept = key.split("/")
    subs = _subdirs(folder)
    unknown = sorted(set(spec.subclasses) - {p.name for p in subs})
    if unknown:
        raise BadInput(
            f"{root / 'dataset.yaml'}: concepts.{key}.subclasses.{unknown[0]}: no folder {folder / unknown[0]}"
        )
    leaves = []
    if image_files(folder) or not subs:
        leaves.append(
            _leaf(folder, spec=spec, names=(category, concept, None), options=options, skipped=skipped)
        )
    for sub in subs:
        names = (category, concept, sub.name)
        leaves.append(_leaf(sub, spec=spec, names=names, options=options, skipped=skipped))
    return leaves


def load_dataset(
    root: str | Path,
    *,
    categories: Sequence[str] | None = None,
    skip_bad_images: bool = False,
    verify_images: bool = True,
) -> Dataset:
    """Read ``<root>/dataset.yaml`` and the folder tree; one :class:`Concept` per leaf folder.

    Every concept folder needs an entry in dataset.yaml (its trigger) and every entry a folder.
    ``categories`` keeps only those categories. Unreadable images are errors, or with
    ``skip_bad_images`` are left out with a warning (``Dataset.skipped`` lists them).
    ``verify_images=False`` reads only image headers (for stages that never decode the images).
    """
    root = Path(root)
    if not root.is_dir():
        raise BadInput(f"{root}: no such dataset folder")
    yaml_path = root / "dataset.yaml"
    spec = validate(DatasetSpec, read_yaml(yaml_path), source=str(yaml_path))
    for key in spec.concepts:
        if key.count("/") != 1 or not (root / key).is_dir():
            raise BadInput(f"{yaml_path}: concepts.{key}: no folder {root / key} (expected category/concept)")
    on_disk = [f"{c.name}/{k.name}" for c in _subdirs(root) for k in _subdirs(c)]
    for key in on_disk:
        if key not in spec.concepts:
            raise BadInput(f"{root / key}: concept has no entry (no trigger) in {yaml_path}")
    if categories is not None:
        known = {key.split("/")[0] for key in on_disk}
        for cat in categories:
            if cat not in known:
                raise BadInput(
                    f"categories: unknown category {cat!r} in {root} (have {', '.join(sorted(known))})"
                )
    skipped: list[Path] = []
    concepts = []
    options = {"skip_bad": skip_bad_images, "verify": verify_images, "root": root}
    for key in sorted(on_disk):
        if categories is None or key.split("/")[0] in categories:
            concepts += _concept_leaves(root, key, spec.concepts[key], options=options, skipped=skipped)
    if skipped:
        console.print(f"warning: skipped {len(skipped)} unreadable image(s) in {root}, e.g. {skipped[0]}")
    return Dataset(spec.name, spec.version, root, concepts, skipped)


def _norm_tag(tag: str) -> str:
    # Taggers write "red_hair" or "red hair"; compare both alike.
    return tag.strip().lower().replace("_", " ")


def caption_for(
    item: ImageItem,
    concept: Concept,
    strategy: str = "tags",
    *,
    dropout: float = 0.0,
    generator: torch.Generator | None = None,
) -> str:
    """The training caption of an image (docs/protocol.md §2).

    ``tags``: the trigger, then the image's tags without the concept's own (``strip_tags``);
    ``trigger``: the trigger alone (DreamBooth style); ``all-tags``: the trigger, then every tag.
    A tag equal to the trigger is never repeated. With ``dropout`` p > 0, one uniform number is
    drawn from ``generator`` per call and the caption is empty with probability p.
    """
    if strategy not in CAPTION_STRATEGIES:
        raise BadInput(f"captions: unknown strategy {strategy!r} (choose {', '.join(CAPTION_STRATEGIES)})")
    if dropout > 0:
        if torch.rand((), generator=generator).item() < dropout:
            return ""
    if strategy == "trigger":
        return concept.trigger
    drop = {_norm_tag(concept.trigger)}
    if strategy == "tags":
        drop |= {_norm_tag(t) for t in concept.strip_tags}
    tags = [t for t in item.tags if _norm_tag(t) not in drop]
    return ", ".join([concept.trigger, *tags])
