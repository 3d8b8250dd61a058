"""Generated datasets (``demo:``, ``world:``) are a registry: a kind is its prefix, its store folder
and its drawing function, registered in its own file or by another package; the sweep reads only
the registry."""

from __future__ import annotations

from pathlib import Path

import pytest

from lyco_bench.data.generated import (
    GENERATED_DATASETS,
    GeneratedDataset,
    generated_dataset,
    register_generated_dataset,
)
from lyco_bench.sweep.study import asset_seed, draw_generated_dataset, generated_folder
from lyco_bench.sweep.study import generated_dataset as study_prefix


def test_built_in_kinds_and_lookup():
    assert {"demo:", "world:"} <= set(GENERATED_DATASETS)
    for prefix, kind in GENERATED_DATASETS.items():
        assert kind.prefix == prefix and prefix.endswith(":")
        assert generated_dataset(f"{prefix}3") is kind and study_prefix(f"{prefix}3") == prefix
        assert generated_folder(prefix) == kind.folder
    assert generated_dataset("datasets/mine") is None and study_prefix("datasets/mine") is None


@pytest.fixture
def toy_kind():
    drawn: list[tuple[Path, int]] = []

    def draw(out: Path, seed: int) -> Path:
        out.mkdir(parents=True, exist_ok=True)
        (out / "seed.txt").write_text(str(seed))
        drawn.append((out, seed))
        return out

    kind = register_generated_dataset(GeneratedDataset("toy:", "toy-dataset", draw))
    yield kind, drawn
    GENERATED_DATASETS.unregister("toy:")


def test_an_outside_kind_is_drawn_with_its_seed(toy_kind, tmp_path):
    kind, drawn = toy_kind
    assert register_generated_dataset(kind) is kind  # the same entry again: a no-op
    with pytest.raises(ValueError, match="registered twice"):
        register_generated_dataset(GeneratedDataset("toy:", "other", kind.draw))
    with pytest.raises(TypeError):
        register_generated_dataset("toy:")
    assert study_prefix("toy:7") == "toy:" and generated_folder("toy:7") == "toy-dataset"
    root = draw_generated_dataset("toy:7", tmp_path / "out")
    assert (
        drawn == [(tmp_path / "out", asset_seed("toy:7", "toy:"))] and (root / "seed.txt").read_text() == "7"
    )
