"""The drawn-dataset writer both makers (demo, world) use: layout, captions, dataset.yaml that
loads, all or nothing."""

from __future__ import annotations

import pytest
from PIL import Image

from lyco_bench.data.dataset import load_dataset
from lyco_bench.data.demo import DEMO_LEAVES
from lyco_bench.data.drawn import DrawnLeaf, leaves_yaml, write_drawn_dataset, written_summary
from lyco_bench.errors import BadInput
from lyco_bench.world.dataset import WORLD_LEAVES

LEAVES = [
    DrawnLeaf("shapes", "dot", None, 2, "zqx dot", "black dot", ["dot"], 3),
    DrawnLeaf(
        "shapes", "bar", "wide", 1, "vrm bar", "bar", ["bar"], trigger_suffix="w", descriptive_suffix="wide"
    ),
]


def _yaml() -> str:
    return leaves_yaml("t", "test", LEAVES, lambda leaf: {"trigger": leaf.trigger, "descriptive": leaf.descriptive,
                                                          "strip_tags": leaf.strip_tags, "repeats": leaf.repeats})  # fmt: skip


def _draw(leaf_index: int, leaf: DrawnLeaf):
    for i in range(leaf.count):
        yield Image.new("RGB", (16, 16), (leaf_index * 100, i * 50, 0)), [*leaf.strip_tags, f"tag{i}"]


def test_writes_the_layout_captions_and_a_loadable_yaml(tmp_path):
    root = write_drawn_dataset(tmp_path / "ds", LEAVES, _draw, _yaml())
    assert sorted(p.relative_to(root).as_posix() for p in root.rglob("*.*")) == [
        "dataset.yaml",
        "shapes/bar/wide/000.png",
        "shapes/bar/wide/000.txt",
        "shapes/dot/000.png",
        "shapes/dot/000.txt",
        "shapes/dot/001.png",
        "shapes/dot/001.txt",
    ]
    assert (root / "shapes/dot/001.txt").read_text(encoding="utf-8") == "dot, tag1\n"
    assert Image.open(root / "shapes/dot/001.png").getpixel((0, 0)) == (0, 50, 0)
    ds = load_dataset(root)
    by_leaf = {(c.name, c.subclass): c for c in ds.concepts}
    assert by_leaf[("dot", None)].repeats == 3 and by_leaf[("dot", None)].strip_tags == ["dot"]
    assert by_leaf[("bar", "wide")].trigger == "vrm bar, w"
    assert written_summary(root, "t") == f"t written to {root}: 3 images, 2 leaves, 1 categories"


def test_all_or_nothing_and_only_into_an_empty_folder(tmp_path):
    def failing(leaf_index, leaf):
        yield from _draw(leaf_index, leaf)
        raise RuntimeError("drawing failed")

    with pytest.raises(RuntimeError):
        write_drawn_dataset(tmp_path / "ds", LEAVES, failing, _yaml())
    assert not (tmp_path / "ds").exists()
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(BadInput, match="already exists"):
        write_drawn_dataset(tmp_path / "full", LEAVES, _draw, _yaml())


def test_both_makers_use_the_one_leaf_type():
    assert all(type(leaf) is DrawnLeaf for leaf in [*DEMO_LEAVES, *WORLD_LEAVES])


def test_stopped_by_sigterm_leaves_no_hidden_folder(tmp_path):
    """``kill`` (SIGTERM) mid-drawing: the temporary ``.ds.*`` folder is removed as on Ctrl-C, and
    SIGTERM's handler is restored afterwards."""
    import os
    import signal

    def killed(leaf_index, leaf):
        yield from _draw(leaf_index, leaf)
        os.kill(os.getpid(), signal.SIGTERM)  # delivered at once to this, the main, thread

    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt):
        write_drawn_dataset(tmp_path / "ds", LEAVES, killed, _yaml())
    assert list(tmp_path.iterdir()) == []
    assert signal.getsignal(signal.SIGTERM) is before


def test_world_dataset_images_per_leaf_is_bounded(tmp_path):
    from lyco_bench.world.dataset import MAX_IMAGES_PER_LEAF, make_world_dataset

    for bad in (0, MAX_IMAGES_PER_LEAF + 1, 10**12):
        with pytest.raises(BadInput, match=rf"^--images-per-leaf {bad}: must be 1 to 1000 "):
            make_world_dataset(tmp_path / "ds", images_per_leaf=bad)
    assert list(tmp_path.iterdir()) == []
