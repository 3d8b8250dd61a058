"""Side-by-side grids over any columns of an image-set table (a multiplier sweep, checkpoint ×
seed), each with the base model's images of the same prompts and seeds as a last row."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from lyco_bench.analysis.grids import BASE_ROW, LABEL_WIDTH, THUMB, GridSet, row_name, variant_grids
from lyco_bench.analysis.report import check_report_files, write_report
from lyco_bench.errors import BadInput
from tests.helpers import hand_results

GREY = (235, 235, 235)


def solid_images(folder: Path, color: tuple[int, int, int], *, n: int = 3) -> Path:
    """A generation folder: n solid-colour PNGs per prompt class (alter, trigger) and its manifest."""
    rows = []
    for prompt_class in ("alter", "trigger"):
        for i in range(n):
            name = f"{prompt_class}/{i:03d}.png"
            (folder / prompt_class).mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (40, 40), color).save(folder / name)
            rows.append(
                {"file": name, "prompt_class": prompt_class, "category": "toys", "concept": "robot",
                 "subclass": "", "prompt_index": 0, "image_index": i, "seed": 1000 + i}
            )  # fmt: skip
    pd.DataFrame(rows).to_parquet(folder / "manifest.parquet")
    return folder / "manifest.parquet"


def centre(grid: Image.Image, row: int, col: int) -> tuple[int, int, int]:
    return grid.getpixel((LABEL_WIDTH + col * THUMB + THUMB // 2, row * THUMB + THUMB // 2))


@pytest.fixture
def multiplier_sets(tmp_path) -> tuple[pd.DataFrame, Path]:
    """A synthetic multiplier sweep: config a at λ 1.25, 0.5, 1.0 (given out of order), config b
    at λ 1; a base model whose third image is missing."""
    shade = {0.5: 60, 1.0: 120, 1.25: 180}
    rows = [
        {"config": "a", "multiplier": m, "manifest": solid_images(tmp_path / f"a-{m}", (shade[m], 0, 0))}
        for m in (1.25, 0.5, 1.0)
    ]
    rows.append({"config": "b", "multiplier": 1.0, "manifest": solid_images(tmp_path / "b-1", (0, 200, 0))})
    base = solid_images(tmp_path / "base", (0, 0, 200))
    (tmp_path / "base" / "alter" / "002.png").unlink()  # no base twin: a grey cell
    return pd.DataFrame(rows), base


def test_multiplier_grid_rows_sorted_with_base_row(tmp_path, multiplier_sets):
    sets, base = multiplier_sets
    grids = variant_grids(sets, ["multiplier"], tmp_path / "out", base=base, images_per_row=3)
    assert [g["src"] for g in grids] == [
        "grids/a__multiplier__alter.png", "grids/a__multiplier__trigger.png",
        "grids/b__multiplier__alter.png", "grids/b__multiplier__trigger.png",
    ]  # fmt: skip
    assert grids[0]["caption"] == "a · multiplier · <alter>"
    grid = Image.open(tmp_path / "out" / grids[0]["src"]).convert("RGB")
    assert grid.size == (LABEL_WIDTH + 3 * THUMB, 4 * THUMB)  # 3 multipliers + the base row
    assert [centre(grid, r, 0) for r in range(4)] == [(60, 0, 0), (120, 0, 0), (180, 0, 0), (0, 0, 200)]
    assert centre(grid, 3, 2) == GREY  # the base model's missing image
    assert centre(grid, 2, 2) == (180, 0, 0)
    label_strip = grid.crop((0, 0, LABEL_WIDTH, THUMB)).convert("L")
    assert label_strip.getextrema()[0] < 64 and label_strip.getextrema()[1] == 255  # a dark name on white
    only_b = Image.open(tmp_path / "out" / grids[2]["src"])
    assert only_b.size == (LABEL_WIDTH + 3 * THUMB, 2 * THUMB)  # one value + the base row
    # no base model given: no reference row
    plain = variant_grids(sets[sets["config"] == "b"], ["multiplier"], tmp_path / "plain", images_per_row=2)
    assert Image.open(tmp_path / "plain" / plain[0]["src"]).size == (LABEL_WIDTH + 2 * THUMB, THUMB)


def test_row_names():
    assert row_name(["epoch", "seed"], [10.0, 1]) == "epoch=10, seed=1"
    assert row_name(["multiplier"], [0.75]) == "multiplier=0.75"
    assert BASE_ROW.startswith("no adapter")


def test_report_with_grid_sets(tmp_path, multiplier_sets):
    sets, base = multiplier_sets
    index = write_report(
        study_name="sweep", results=hand_results(tmp_path / "scores"), out_dir=tmp_path / "r",
        image_manifests={"base": base}, grid_sets=[GridSet(sets, ("multiplier",))], images_per_grid=2,
    )  # fmt: skip
    html = index.read_text()
    assert "grids/a__multiplier__alter.png" in html and "no adapter" in html
    assert check_report_files(index) == []
    assert not (tmp_path / "r" / "grids" / "base__alter.png").exists()  # the base model is a row, not a grid


def test_grid_set_bad_manifest_fails_before_writing(tmp_path, multiplier_sets):
    sets, base = multiplier_sets
    broken = tmp_path / "broken.parquet"
    broken.write_text("not parquet")
    sets = pd.concat([sets, pd.DataFrame([{"config": "c", "multiplier": 1.0, "manifest": broken}])])
    with pytest.raises(BadInput, match="broken.parquet"):
        write_report(study_name="x", results=hand_results(tmp_path / "scores"), out_dir=tmp_path / "r",
                     grid_sets=[GridSet(sets, ("multiplier",))])  # fmt: skip
    assert not (tmp_path / "r").exists()


def test_base_row_says_when_the_class_has_no_base_images(tmp_path, multiplier_sets, monkeypatch):
    import lyco_bench.analysis.grids as grids

    sets, base = multiplier_sets
    for png in (base.parent / "trigger").glob("*.png"):  # a study generates base images per class
        png.unlink()
    drawn = {}
    real = grids.make_grid
    monkeypatch.setattr(
        grids,
        "make_grid",
        lambda rows, path, labels: drawn.setdefault(path.name, labels) and real(rows, path, labels=labels),
    )
    variant_grids(sets[sets["config"] == "b"], ["multiplier"], tmp_path / "out", base=base, images_per_row=2)
    assert drawn["b__multiplier__alter.png"] == ["multiplier=1", BASE_ROW]
    assert drawn["b__multiplier__trigger.png"] == ["multiplier=1", f"{BASE_ROW}: not generated for <trigger>"]
