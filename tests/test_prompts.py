"""Prompt sets: schema checks, loading by name, and expansion on a small fixed dataset."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from lyco_bench.data import load_dataset
from lyco_bench.data.dataset import Concept, Dataset
from lyco_bench.errors import BadInput
from lyco_bench.prompts import PROMPTS_DIR, expand_prompts, load_prompt_set, to_clip_text

DATASET_YAML = """\
name: fixed
version: 1
concepts:
  people/rose: {trigger: rune woman, descriptive: woman, strip_tags: [red hair]}
  style/ghibli: {trigger: pgs style, descriptive: anime style}
  toy/bunny:
    trigger: olis stuffed toy
    descriptive: bunny
    subclasses: {robe: {trigger_suffix: pink robe, descriptive_suffix: pink}}
"""
IMAGES = {  # relative path -> tags
    "people/rose/a.png": "red hair, smiling",
    "people/rose/b.png": "outdoors",
    "people/rose/c.png": "red hair",
    "style/ghibli/a.png": "house",
    "toy/bunny/robe/a.png": "on a bed",
}
PROMPT_SET = """\
name: fixed-set
version: "2.1"
classes: [train, trigger, alter, style]
images_per_prompt: {train: 4, trigger: 3, alter: 2, style: 1, agnostic: 2, combine: 1}
style_templates: ["{} in the style of pencil drawing", "{} in the style of pixel art"]
agnostic: ["a photo of a street"]
categories:
  people:
    trigger_suffix: ", realistic"
    alter: ["{} on a boat", "a dog next to {}"]
    agnostic: ["a woman"]
  style:
    is_style: true
    alter: ["{}, a harbor"]
default_category:
  templates_file: toy-templates.txt
combine:
  templates: ["{a} and {b}"]
"""


@pytest.fixture()
def fixed(tmp_path: Path) -> tuple[Path, Path]:
    """A three-category dataset (one subclass) and a prompt set whose default reads a file."""
    root = tmp_path / "ds"
    for rel, tags in IMAGES.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8), (200, 10, 10)).save(path)
        path.with_suffix(".txt").write_text(tags)
    (root / "dataset.yaml").write_text(DATASET_YAML)
    sets = tmp_path / "sets"
    sets.mkdir()
    (sets / "fixed.yaml").write_text(PROMPT_SET)
    (sets / "toy-templates.txt").write_text("# the toy's templates\n{} in the snow\n\n{} on a shelf\n")
    return root, sets / "fixed.yaml"


def _rows(items, prompt_class):
    return [(i.relpath, i.prompt, i.clip_text, i.seed) for i in items if i.prompt_class == prompt_class]


def test_expansion_exact(fixed):
    root, yaml_path = fixed
    ps = load_prompt_set(yaml_path)
    assert (ps.name, ps.version) == ("fixed-set", "2.1")
    items = expand_prompts(ps, load_dataset(root))
    # style concepts get no <style> prompts; 4 train + 3 trigger + 2x2 alter + 2x1 style
    counts = Counter((i.prompt_class, i.concept) for i in items)
    assert counts == {
        ("train", "rose"): 4, ("train", "ghibli"): 4, ("train", "bunny"): 4,
        ("trigger", "rose"): 3, ("trigger", "ghibli"): 3, ("trigger", "bunny"): 3,
        ("alter", "rose"): 4, ("alter", "ghibli"): 2, ("alter", "bunny"): 4,
        ("style", "rose"): 2, ("style", "bunny"): 2,
    }  # fmt: skip
    rose = [i for i in items if i.concept == "rose"]
    # train: the captions (tags strategy drops "red hair") cycled, seed 1000 + j
    assert _rows(rose, "train") == [
        ("train/people/rose/000-1000.png", "rune woman, smiling", "woman, smiling", 1000),
        ("train/people/rose/001-1001.png", "rune woman, outdoors", "woman, outdoors", 1001),
        ("train/people/rose/002-1002.png", "rune woman", "woman", 1002),
        ("train/people/rose/000-1003.png", "rune woman, smiling", "woman, smiling", 1003),
    ]
    assert _rows(rose, "trigger") == [
        (f"trigger/people/rose/000-{1000 + i}.png", "rune woman, realistic", "woman, realistic", 1000 + i)
        for i in range(3)
    ]
    assert _rows(rose, "alter") == [
        ("alter/people/rose/000-1000.png", "rune woman on a boat", "woman on a boat", 1000),
        ("alter/people/rose/000-1001.png", "rune woman on a boat", "woman on a boat", 1001),
        ("alter/people/rose/001-1000.png", "a dog next to rune woman", "a dog next to woman", 1000),
        ("alter/people/rose/001-1001.png", "a dog next to rune woman", "a dog next to woman", 1001),
    ]
    assert _rows(rose, "style") == [
        ("style/people/rose/000-1000.png", "rune woman in the style of pencil drawing", "woman in the style of pencil drawing", 1000),
        ("style/people/rose/001-1000.png", "rune woman in the style of pixel art", "woman in the style of pixel art", 1000),
    ]  # fmt: skip
    bunny = [i for i in items if i.concept == "bunny" and i.prompt_class == "alter"]
    assert [(i.relpath, i.prompt, i.clip_text, i.subclass) for i in bunny[::2]] == [
        ("alter/toy/bunny/robe/000-1000.png", "olis stuffed toy, pink robe in the snow", "bunny, pink in the snow", "robe"),
        ("alter/toy/bunny/robe/001-1000.png", "olis stuffed toy, pink robe on a shelf", "bunny, pink on a shelf", "robe"),
    ]  # fmt: skip
    assert {i.group for i in rose if i.prompt_class == "alter"} == {
        "alter/people/rose/0",
        "alter/people/rose/1",
    }
    assert {i.group for i in rose if i.prompt_class == "train"} == {"train/people/rose"}
    assert all(
        i.concepts == (f"{i.category}/{i.concept}" + (f"/{i.subclass}" if i.subclass else ""),) for i in items
    )
    assert len({i.relpath for i in items}) == len(items)


def test_classes_overrides_and_seed_base(fixed):
    root, yaml_path = fixed
    ps, ds = load_prompt_set(yaml_path), load_dataset(root)
    items = expand_prompts(ps, ds, ["trigger"], seed_base=7, images_per_prompt=2)
    assert [(i.concept, i.seed, i.image_index) for i in items] == [
        ("rose", 7, 0), ("rose", 8, 1), ("ghibli", 7, 0), ("ghibli", 8, 1), ("bunny", 7, 0), ("bunny", 8, 1),
    ]  # fmt: skip
    assert items[1].with_seed_base(1000).seed == 1001
    train = expand_prompts(ps, ds, ["train"], caption_strategy="all-tags")
    assert train[0].prompt == "rune woman, red hair, smiling"
    with pytest.raises(BadInput, match="unknown prompt class 'bogus'"):
        expand_prompts(ps, ds, ["bogus"])


def test_agnostic_and_combine(fixed):
    root, yaml_path = fixed
    ps, ds = load_prompt_set(yaml_path), load_dataset(root)
    agnostic = expand_prompts(ps, ds, ["agnostic"])
    assert [(i.relpath, i.prompt, i.category, i.concept, i.concepts) for i in agnostic[::2]] == [
        ("agnostic/_all/000-1000.png", "a photo of a street", "", "", ()),
        ("agnostic/people/000-1000.png", "a woman", "people", "", ()),
    ]
    assert len(agnostic) == 4  # 2 prompts x 2 images; style and toy have none
    # same model: the first concept of each non-style category, paired
    (item,) = expand_prompts(ps, ds, ["combine"])
    assert (item.prompt, item.clip_text) == (
        "rune woman and olis stuffed toy, pink robe",
        "woman and bunny, pink",
    )
    assert (item.category, item.concept, item.concepts) == (
        "people+toy",
        "rose+bunny",
        ("people/rose", "toy/bunny/robe"),
    )
    assert item.relpath == "combine/people.rose+toy.bunny.robe/000-1000.png"
    # cross-model: concepts of this dataset with concepts of another one
    other = Dataset("other", "1", Path("other"), [Concept("toy", "duck", None, "qua toy", "duck", [], 1)])
    cross = expand_prompts(ps, ds, ["combine"], combine_with=other)
    assert [i.prompt for i in cross] == ["rune woman and qua toy", "olis stuffed toy, pink robe and qua toy"]


def test_agnostic_tiers(fixed):
    """Tiered agnostic entries: the tier goes to ``subclass``; paths, groups and seeds stay those of
    the same prompts without tiers, and an untiered set keeps its identity."""
    from lyco_bench.sweep.inputs import prompt_set_identity

    root, yaml_path = fixed
    plain = load_prompt_set(yaml_path)
    tiered_path = yaml_path.with_name("tiered.yaml")
    tiered_path.write_text(
        PROMPT_SET.replace(
            'agnostic: ["a photo of a street"]',
            'agnostic: [{prompt: "a photo of a street", tier: unrelated}, "a cat"]',
        ).replace(
            'agnostic: ["a woman"]',
            'agnostic: [{prompt: "a woman", tier: class}, {prompt: "a crowd at a station", tier: related}]',
        )
    )
    ds = load_dataset(root)
    tiered = expand_prompts(load_prompt_set(tiered_path), ds, ["agnostic"])
    assert [(i.relpath, i.prompt, i.category, i.subclass, i.group) for i in tiered[::2]] == [
        ("agnostic/_all/000-1000.png", "a photo of a street", "", "unrelated", "agnostic/_all/0"),
        ("agnostic/_all/001-1000.png", "a cat", "", None, "agnostic/_all/1"),
        ("agnostic/people/000-1000.png", "a woman", "people", "class", "agnostic/people/0"),
        ("agnostic/people/001-1000.png", "a crowd at a station", "people", "related", "agnostic/people/1"),
    ]
    untiered = expand_prompts(plain, ds, ["agnostic"])
    assert [i.subclass for i in untiered] == [None] * 4
    assert [(i.relpath, i.seed) for i in untiered] == [
        (i.relpath, i.seed) for i in tiered if i.prompt in ("a photo of a street", "a woman")
    ]
    # a set written without tiers hashes as before (its dump holds the same plain strings)
    assert plain.model_dump(mode="json")["agnostic"] == ["a photo of a street"]
    assert prompt_set_identity(plain) != prompt_set_identity(load_prompt_set(tiered_path))
    bad = yaml_path.with_name("bad-tier.yaml")
    bad.write_text(PROMPT_SET.replace('agnostic: ["a woman"]', 'agnostic: [{prompt: "a woman", tier: near}]'))
    with pytest.raises(BadInput, match=r"categories.people.agnostic.0"):
        load_prompt_set(bad)
    bad.write_text(
        PROMPT_SET.replace('agnostic: ["a woman"]', 'agnostic: [{prompt: "a {} woman", tier: class}]')
    )
    with pytest.raises(BadInput, match=r"people.agnostic.0: .* must not contain \{\}"):
        load_prompt_set(bad)


def test_shipped_sets_tier_their_agnostic_prompts():
    for path in sorted(PROMPTS_DIR.glob("*.yaml")):
        ps = load_prompt_set(path)
        entries = list(ps.agnostic) + [e for c in ps.categories.values() for e in c.agnostic]
        assert entries and all(not isinstance(e, str) for e in entries), path.name
        assert "unrelated" in {e.tier for e in ps.agnostic}
        assert {e.tier for c in ps.categories.values() for e in c.agnostic} >= {"class"}


def test_missing_trigger_is_bad_input(fixed):
    root, yaml_path = fixed
    ps = load_prompt_set(yaml_path)
    ds = Dataset("d", "1", Path("d"), [Concept("people", "x", None, "  ", "", [], 1)])
    with pytest.raises(BadInput, match="concept people/x: no trigger"):
        expand_prompts(ps, ds, ["trigger"])
    bad = yaml_path.with_name("bad.yaml")
    bad.write_text(PROMPT_SET.replace('alter: ["{} on a boat"', 'alter: ["on a boat"'))
    with pytest.raises(BadInput, match=r"bad.yaml: categories.people.alter.0: .* needs exactly one \{\}"):
        load_prompt_set(bad)


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("version:", "colour: red\nversion:", r"fixed.yaml: colour: unknown key"),
        ('version: "2.1"\n', "", r"fixed.yaml: version: Field required"),
        ("is_style: true", "is_style: true\n    extra: 1", r"categories.style.extra: unknown key"),
        ('agnostic: ["a woman"]', 'agnostic: ["a {} woman"]', r"people.agnostic.0: .* must not contain \{\}"),
        ('["{a} and {b}"]', '["{a} alone"]', r"combine.templates.0: .* needs exactly one \{b\}"),
        ("templates_file: toy-templates.txt", "templates_file: nope.txt", r"nope.txt: no such file"),
        (
            "images_per_prompt: {train: 4",
            "images_per_prompt: {train: 0",
            r"images_per_prompt.train: .*greater",
        ),
        ("classes: [train", "classes: [sketch", r"classes.0: Input should be"),
    ],
)
def test_schema_errors(fixed, old, new, message):
    _, yaml_path = fixed
    assert old in PROMPT_SET
    yaml_path.write_text(PROMPT_SET.replace(old, new, 1))
    with pytest.raises(BadInput, match=message):
        load_prompt_set(yaml_path)


def test_category_without_entry(fixed):
    root, yaml_path = fixed
    yaml_path.write_text(PROMPT_SET.split("default_category:")[0])
    with pytest.raises(BadInput, match="no entry for dataset category 'toy'"):
        expand_prompts(load_prompt_set(yaml_path), load_dataset(root), ["alter"])


def test_per_concept_templates(fixed):
    root, yaml_path = fixed
    text = PROMPT_SET.replace(
        '    agnostic: ["a woman"]',
        '    agnostic: ["a woman"]\n    concepts:\n      rose: {alter: ["{} in space"]}',
    )
    yaml_path.write_text(text)
    items = expand_prompts(load_prompt_set(yaml_path), load_dataset(root), ["alter"], images_per_prompt=1)
    assert [i.prompt for i in items if i.concept == "rose"] == ["rune woman in space"]


def test_bundled_sets(demo_dataset_dir):
    names = sorted(p.stem for p in PROMPTS_DIR.glob("*.yaml"))
    assert {"demo", "lyco-v1"} <= set(names)
    v1 = load_prompt_set("lyco-v1")
    assert load_prompt_set("default") == v1
    assert v1.style_templates == [
        f"{{}} in the style of {s}"
        for s in ("pencil drawing", "watercolor painting", "Vincent Van Gogh", "Claude Monet", "pixel art")
    ]
    for name, cat in v1.categories.items():
        assert len(cat.alter) == 10, name
    assert v1.categories["people"].trigger_suffix == ", realistic" and v1.categories["style"].is_style
    counts = v1.images_per_prompt
    assert (counts.train, counts.trigger, counts.alter, counts.style) == (100, 100, 10, 20)
    demo = load_prompt_set("demo")
    items = expand_prompts(demo, load_dataset(demo_dataset_dir), ["train", "trigger", "alter", "style"])
    leaves = len(load_dataset(demo_dataset_dir).concepts)
    assert Counter(i.prompt_class for i in items)["trigger"] == 2 * leaves
    assert not [i for i in items if i.prompt_class == "style" and i.category == "patterns"]
    with pytest.raises(BadInput, match="prompt set 'nope': not found"):
        load_prompt_set("nope")


def test_clip_text_replacement():
    # the longer trigger first, then spaces and commas tidied where a trigger maps to nothing
    assert to_clip_text("vrm shape, plo variant and vrm shape", [("vrm shape", "shape"), ("vrm shape, plo variant", "blue")]) == "blue and shape"  # fmt: skip
    assert to_clip_text("blob anime boy, smiling", [("blob anime boy", "")]) == "smiling"
