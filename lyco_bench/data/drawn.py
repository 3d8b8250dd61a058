"""Datasets drawn by code (the demo's patterns and shapes, the CPU world's held-out concepts): one
leaf type and one writer, so both makers write the same dataset layout.

A maker lists its leaves (:class:`DrawnLeaf`), draws each leaf's images with its own generator, and
:func:`write_drawn_dataset` writes them atomically: ``category/concept[/subclass]/NNN.png`` with a
kohya tag caption ``NNN.txt`` beside each, and a dataset.yaml (:func:`leaves_yaml`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from lyco_bench.data.dataset import load_dataset
from lyco_bench.errors import BadInput
from lyco_bench.utils import atomic_folder, terminate_as_interrupt


class DrawnLeaf(NamedTuple):
    """One leaf (concept or subclass) of a drawn dataset and its dataset.yaml entry."""

    category: str
    concept: str
    subclass: str | None
    count: int
    """Images drawn for it (unless the maker is asked for another number)."""
    trigger: str
    descriptive: str
    strip_tags: list[str]
    """The concept's own tags, which the ``tags`` caption strategy strips."""
    repeats: int = 1
    trigger_suffix: str = ""
    descriptive_suffix: str = ""

    @property
    def folder(self) -> Path:
        """The leaf's folder relative to the dataset root."""
        return Path(self.category, self.concept, self.subclass or "")


# What a maker draws for one leaf: (leaf index, leaf) → (image, caption tags) per image.
LeafDrawer = Callable[[int, DrawnLeaf], Iterable[tuple[Any, list[str]]]]


def leaves_yaml(name: str, header: str, leaves: Sequence[DrawnLeaf], concept_entry) -> str:
    """A drawn dataset's dataset.yaml: one concept entry per (category, concept) from
    ``concept_entry(leaf)``, and each leaf's subclass suffixes."""
    import yaml

    concepts: dict[str, dict] = {}
    for leaf in leaves:
        entry = concepts.setdefault(f"{leaf.category}/{leaf.concept}", concept_entry(leaf))
        if leaf.subclass:
            entry.setdefault("subclasses", {})[leaf.subclass] = {
                "trigger_suffix": leaf.trigger_suffix,
                "descriptive_suffix": leaf.descriptive_suffix,
            }
    spec = {"name": name, "version": "1", "concepts": concepts}
    return f"# {header}\n" + yaml.safe_dump(spec, sort_keys=True)


def check_new_folder(root: Path) -> None:
    """A maker's output folder must be absent or empty (BadInput)."""
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise BadInput(f"{root}: already exists and is not an empty folder")


def write_drawn_dataset(root: Path, leaves: Sequence[DrawnLeaf], draw: LeafDrawer, dataset_yaml: str) -> Path:
    """Write every leaf's drawn images and captions and the dataset.yaml into ``root`` (absent or
    empty), all at once or nothing."""
    check_new_folder(root)
    with terminate_as_interrupt(), atomic_folder(root) as tmp:  # stopped: no hidden half folder
        for leaf_index, leaf in enumerate(leaves):
            folder = tmp / leaf.folder
            folder.mkdir(parents=True, exist_ok=True)
            for i, (image, tags) in enumerate(draw(leaf_index, leaf)):
                image.save(folder / f"{i:03d}.png", format="PNG")
                (folder / f"{i:03d}.txt").write_text(", ".join(tags) + "\n", encoding="utf-8")
        (tmp / "dataset.yaml").write_text(dataset_yaml, encoding="utf-8")
    return root


def written_summary(root: Path, what: str) -> str:
    """The line a maker's command prints: where, how many images, leaves and categories."""
    ds = load_dataset(root)
    n = sum(len(c.images) for c in ds.concepts)
    return f"{what} written to {root}: {n} images, {len(ds.concepts)} leaves, {len(ds.categories)} categories"
