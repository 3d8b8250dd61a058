"""data: the dataset tree, dataset.yaml, captions and dropout, the demo dataset, bad input."""

from __future__ import annotations

import argparse
import re
import shutil
from pathlib import Path

import pytest
import torch

from lyco_bench.data import (
    Concept,
    ImageItem,
    caption_for,
    load_dataset,
    make_demo_dataset,
    register_cli,
)
from lyco_bench.errors import BadInput


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    register_cli(parser.add_subparsers())
    args = parser.parse_args(argv)
    return args.func(args)


# --- the demo dataset ------------------------------------------------------------------------------


def test_demo_dataset_loads(demo_dataset_dir):
    ds = load_dataset(demo_dataset_dir)
    assert (ds.name, ds.version, ds.root) == ("demo", "1", demo_dataset_dir)
    assert ds.categories == ["patterns", "shapes"]
    assert [c.key for c in ds.concepts] == [
        "patterns/checker",
        "patterns/stripes",
        "shapes/circle",
        "shapes/triangle/filled",
        "shapes/triangle/hollow",
    ]
    assert [len(c.images) for c in ds.concepts] == [4, 6, 5, 3, 4]
    assert [c.repeats for c in ds.concepts] == [2, 1, 1, 1, 1]
    hollow = ds.find("shapes", "triangle", "hollow")[0]
    assert (hollow.trigger, hollow.descriptive) == ("vrm shape, dax variant", "blue triangle, outline")
    assert hollow.strip_tags == ["blue triangle"]
    assert [c.key for c in ds.find("shapes")] == [
        "shapes/circle",
        "shapes/triangle/filled",
        "shapes/triangle/hollow",
    ]
    assert [c.key for c in ds.find("shapes", "triangle")] == [
        "shapes/triangle/filled",
        "shapes/triangle/hollow",
    ]
    assert ds.find("patterns", "circle") == []
    circle = ds.find("shapes", "circle")[0]
    item = circle.images[1]
    assert (item.path.name, item.category, item.concept, item.subclass) == (
        "001.png",
        "shapes",
        "circle",
        None,
    )
    assert (item.width, item.height) == (96, 64)  # image 1 of each leaf is 3:2 landscape
    assert (circle.images[2].width, circle.images[2].height) == (64, 80)  # 4:5 portrait
    assert item.tags[:2] == ["red circle", "round"]  # the concept's own tags come first
    # The concept tags are stripped and the trigger leads: the paper's default captions.
    caption = caption_for(item, circle)
    assert caption.split(", ") == ["zqx shape", *item.tags[2:]]
    assert len(ds.items()) == 22 and ds.items()[0][0].key == "patterns/checker"


def test_demo_dataset_deterministic(demo_dataset_dir, tmp_path):
    assert _run_cli(["make-demo-dataset", str(tmp_path / "same"), "--seed", "0"]) == 0
    assert _files(tmp_path / "same") == _files(demo_dataset_dir)
    other = _files(make_demo_dataset(tmp_path / "other", seed=1))
    same = _files(demo_dataset_dir)
    assert other.keys() == same.keys() and other["shapes/circle/000.png"] != same["shapes/circle/000.png"]
    assert other["dataset.yaml"] == same["dataset.yaml"]
    with pytest.raises(BadInput, match="already exists and is not an empty folder"):
        make_demo_dataset(tmp_path / "same")
    assert _run_cli(["make-demo-dataset", str(tmp_path / "big"), "--size", "32"]) == 0
    assert load_dataset(tmp_path / "big").concepts[0].images[1].width == 48
    two = load_dataset(make_demo_dataset(tmp_path / "two", images_per_concept=2))
    assert [len(c.images) for c in two.concepts] == [2] * 5


def test_concepts_look_distinct(demo_dataset_dir):
    """Mean colours differ between concepts, so metrics on generated images can tell them apart."""
    import numpy as np
    from PIL import Image

    ds = load_dataset(demo_dataset_dir)
    means = {}
    for concept in ds.concepts:
        pixels = [np.asarray(Image.open(i.path), dtype=float).reshape(-1, 3).mean(0) for i in concept.images]
        means[concept.key] = np.mean(pixels, axis=0)
    keys = list(means)
    gaps = [np.abs(means[a] - means[b]).max() for i, a in enumerate(keys) for b in keys[i + 1 :]]
    assert min(gaps) > 5.0


# --- captions --------------------------------------------------------------------------------------


def _example() -> tuple[ImageItem, Concept]:
    item = ImageItem(
        Path("x.png"), ["Red_Circle", "zqx shape", "simple background", "round", "noise"], "s", "c", None
    )
    concept = Concept("s", "c", None, "zqx shape", "red circle", ["red circle", "round"], 1, [item])
    return item, concept


def test_caption_strategies():
    item, concept = _example()
    assert caption_for(item, concept) == "zqx shape, simple background, noise"
    assert caption_for(item, concept, "tags") == "zqx shape, simple background, noise"
    assert caption_for(item, concept, "trigger") == "zqx shape"
    assert caption_for(item, concept, "all-tags") == "zqx shape, Red_Circle, simple background, round, noise"
    bare = ImageItem(Path("y.png"), [], "s", "c", None)
    assert caption_for(bare, concept, "tags") == "zqx shape"
    with pytest.raises(BadInput, match="captions: unknown strategy 'words'"):
        caption_for(item, concept, "words")


def test_caption_dropout():
    item, concept = _example()
    gen = torch.Generator().manual_seed(7)
    captions = [caption_for(item, concept, dropout=0.25, generator=gen) for _ in range(400)]
    # One uniform draw per call: the empty captions are exactly where that draw is < p.
    draws = torch.rand(400, generator=torch.Generator().manual_seed(7))
    assert [c == "" for c in captions] == (draws < 0.25).tolist()
    assert set(captions) == {"", "zqx shape, simple background, noise"}
    assert 60 < captions.count("") < 140
    all_dropped = [caption_for(item, concept, "trigger", dropout=1.0, generator=gen) for _ in range(5)]
    assert all_dropped == [""] * 5
    # No dropout draws nothing from the generator.
    gen_a, gen_b = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    caption_for(item, concept, dropout=0.0, generator=gen_a)
    assert torch.equal(gen_a.get_state(), gen_b.get_state())


# --- bad input -------------------------------------------------------------------------------------


@pytest.fixture
def dataset_copy(demo_dataset_dir, tmp_path) -> Path:
    return Path(shutil.copytree(demo_dataset_dir, tmp_path / "ds"))


def _expect_bad(root: Path, message: str, **kwargs) -> str:
    with pytest.raises(BadInput, match=re.escape(message)) as info:
        load_dataset(root, **kwargs)
    assert "\n" not in str(info.value)
    return str(info.value)


def _edit_yaml(root: Path, old: str, new: str) -> None:
    path = root / "dataset.yaml"
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))


def test_truncated_image(dataset_copy):
    bad = dataset_copy / "shapes/circle/003.png"
    bad.write_bytes(bad.read_bytes()[:200])
    assert _expect_bad(dataset_copy, "unreadable image").startswith(str(bad))
    ds = load_dataset(dataset_copy, skip_bad_images=True)
    assert ds.skipped == [bad]
    assert len(ds.find("shapes", "circle")[0].images) == 4


def test_header_only_loading(dataset_copy):
    bad = dataset_copy / "shapes/circle/003.png"
    bad.write_bytes(bad.read_bytes()[:200])  # the header survives, the pixels do not
    ds = load_dataset(dataset_copy, verify_images=False)
    assert (ds.find("shapes", "circle")[0].images[3].width, len(ds.skipped)) == (64, 0)
    _expect_bad(dataset_copy, "unreadable image")


def test_not_an_image(dataset_copy):
    bad = dataset_copy / "patterns/stripes/extra.jpg"
    bad.write_text("not a jpeg")
    assert _expect_bad(dataset_copy, "unreadable image").startswith(str(bad))


def test_caption_not_utf8(dataset_copy):
    bad = dataset_copy / "patterns/checker/002.txt"
    bad.write_bytes("caf\xe9, stripes".encode("latin-1"))
    assert _expect_bad(dataset_copy, "caption file is not UTF-8").startswith(str(bad))


def test_concept_without_images(dataset_copy):
    for path in (dataset_copy / "shapes/circle").iterdir():
        path.unlink()
    (dataset_copy / "shapes/circle/notes.md").write_text("no images here")
    _expect_bad(dataset_copy, "concept shapes/circle has no readable images")


def test_subclass_without_images(dataset_copy):
    shutil.rmtree(dataset_copy / "shapes/triangle/hollow")
    (dataset_copy / "shapes/triangle/hollow").mkdir()
    _expect_bad(dataset_copy, "concept shapes/triangle/hollow has no readable images")


def test_concept_without_trigger(dataset_copy):
    (dataset_copy / "shapes/square").mkdir()
    shutil.copy(dataset_copy / "shapes/circle/000.png", dataset_copy / "shapes/square/000.png")
    _expect_bad(dataset_copy, "shapes/square: concept has no entry (no trigger)")
    _edit_yaml(dataset_copy, "trigger: zqx shape", "trigger: '  '")
    _expect_bad(dataset_copy, "dataset.yaml: concepts.shapes/circle.trigger: trigger must not be empty")
    _edit_yaml(dataset_copy, "trigger: '  '", "repeats_typo: 1")
    _expect_bad(dataset_copy, "dataset.yaml: concepts.shapes/circle.trigger: Field required")
    _edit_yaml(dataset_copy, "repeats_typo: 1", "trigger: zqx shape\n    repeats_typo: 1")
    _expect_bad(dataset_copy, "dataset.yaml: concepts.shapes/circle.repeats_typo: unknown key")


def test_yaml_errors(dataset_copy):
    _edit_yaml(dataset_copy, "repeats: 2", "repeats: 0")
    _expect_bad(dataset_copy, "concepts.patterns/checker.repeats: Input should be greater than or equal to 1")
    _edit_yaml(dataset_copy, "repeats: 0", "repeats: 2")
    _edit_yaml(dataset_copy, "concepts:\n", "concepts:\n  shapes/hexagon:\n    trigger: hxg shape\n")
    _expect_bad(dataset_copy, "dataset.yaml: concepts.shapes/hexagon: no folder")
    (dataset_copy / "dataset.yaml").unlink()
    _expect_bad(dataset_copy, "dataset.yaml: no such file")
    _expect_bad(dataset_copy / "nowhere", "no such dataset folder")


def test_unknown_subclass_folder_and_category(dataset_copy):
    _edit_yaml(
        dataset_copy, "      hollow:", "      striped:\n        trigger_suffix: sss variant\n      hollow:"
    )
    _expect_bad(dataset_copy, "concepts.shapes/triangle.subclasses.striped: no folder")
    _edit_yaml(dataset_copy, "      striped:\n        trigger_suffix: sss variant\n", "")
    _expect_bad(dataset_copy, "categories: unknown category 'animals'", categories=["shapes", "animals"])
    ds = load_dataset(dataset_copy, categories=["shapes"])
    assert ds.categories == ["shapes"]


def test_cli_bad_input_exit_code(demo_dataset_dir):
    from lyco_bench.cli import main

    assert main(["make-demo-dataset", str(demo_dataset_dir)]) == 2
