"""Datasets a study names by a prefix (``demo:``, ``demo:3``, ``world:``) instead of a folder: a
prepare job draws them into the store's assets, with the seed after the prefix.

Each kind registers a :class:`GeneratedDataset` in its own file (``lyco_bench/data/demo.py``,
``lyco_bench/world/dataset.py``); another package adds one through the ``lyco_bench.datasets``
entry point (a module that registers on import, or a ``GeneratedDataset``). The sweep reads only
this registry: nothing outside a kind's file names its prefix.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from lyco_bench.registry import Registry, accept_instances


@dataclass(frozen=True)
class GeneratedDataset:
    prefix: str
    """What a study's ``dataset`` starts with (``demo:``); the rest is the seed (0 when empty)."""
    folder: str
    """The store's assets folder it is drawn into (part of the prepare job's identity)."""
    draw: Callable[[Path, int], Path]
    """(empty folder, seed) → the dataset's root; same seed → same bytes."""


GENERATED_DATASETS: Registry[GeneratedDataset] = Registry(
    "generated dataset",
    entry_point="lyco_bench.datasets",
    packages=("lyco_bench.data", "lyco_bench.world"),
    accept=accept_instances(GeneratedDataset, lambda obj: obj.prefix),
)
"""Every generated-dataset kind by prefix, discovered on first use (:mod:`lyco_bench.registry`)."""


def register_generated_dataset(kind: GeneratedDataset) -> GeneratedDataset:
    if not isinstance(kind, GeneratedDataset):
        raise TypeError(f"register_generated_dataset takes a GeneratedDataset, not {type(kind).__name__}")
    return GENERATED_DATASETS.register(kind.prefix, kind)


def generated_dataset(value: str) -> GeneratedDataset | None:
    """The kind whose prefix ``value`` starts with, else None (a folder: nothing is discovered)."""
    if ":" not in value:
        return None
    return next((k for p, k in GENERATED_DATASETS.items() if value.startswith(p)), None)
