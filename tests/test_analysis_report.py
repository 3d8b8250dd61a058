"""The HTML report: file set, relative links only, image grids with the base model; Chromium render
check (skips where no Chromium is installed)."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from lyco_bench.analysis.cli import register_cli
from lyco_bench.analysis.render_check import check_render, find_chromium
from lyco_bench.analysis.report import THUMB, check_report_files, linked_files, write_report
from lyco_bench.analysis.results import write_results
from lyco_bench.errors import BadInput
from tests.helpers import hand_results


def write_images(root: Path, key: str, color: tuple[int, int, int], n: int = 3) -> Path:
    """A generation output folder: n PNGs per prompt class and a manifest.parquet."""
    rows = []
    for prompt_class in ("trigger", "alter"):
        for i in range(n):
            name = f"{prompt_class}/{i:04d}.png"
            (root / key / prompt_class).mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (48, 32), tuple(min(255, c + 20 * i) for c in color)).save(root / key / name)
            rows.append(
                {"file": name, "prompt": f"p{i}", "prompt_class": prompt_class, "category": "anime",
                 "concept": "abukuma", "subclass": "", "prompt_index": 0, "image_index": i, "seed": 1000 + i}
            )  # fmt: skip
    manifest = root / key / "manifest.parquet"
    pd.DataFrame(rows).to_parquet(manifest)
    return manifest


@pytest.fixture
def report_inputs(tmp_path):
    results = hand_results(tmp_path / "scores")
    figure = tmp_path / "elsewhere" / "tradeoff_anime_epoch.png"
    figure.parent.mkdir()
    Image.new("RGB", (60, 40), (10, 120, 200)).save(figure)
    manifests = {
        "A-s23-e010": write_images(tmp_path / "images", "A-s23-e010", (200, 30, 30)),
        "base": write_images(tmp_path / "images", "base", (30, 30, 200), n=2),
    }
    return results, [figure], manifests


def test_report_file_set_and_relative_links(tmp_path, report_inputs):
    results, figures, manifests = report_inputs
    out = tmp_path / "reports" / "demo"
    index = write_report(
        study_name="demo", results=results, out_dir=out, figures=figures, image_manifests=manifests
    )
    assert index == out / "index.html"
    html = index.read_text()
    assert "lyco-bench report: demo" in html and 'id="leaderboard"' in html
    links = linked_files(index)
    assert "figures/tradeoff_anime_epoch.png" in links
    assert {"grids/a-s23-e010__alter.png", "grids/a-s23-e010__trigger.png"} <= set(links)
    assert {"leaderboard.csv", "leaderboard.md"} <= set(links)
    assert check_report_files(index) == []  # every link relative, inside out/, and present
    assert not any(re.match(r"^(/|[a-z]+:)", link) for link in links)
    # grid: 3 checkpoint images on top, the base model's 2 matching images (+ one empty cell) below
    grid = Image.open(out / "grids" / "a-s23-e010__trigger.png")
    assert grid.size == (3 * THUMB, 2 * THUMB)
    assert grid.getpixel((THUMB // 2, THUMB // 2))[0] > 150  # red: the checkpoint
    assert grid.getpixel((THUMB // 2, THUMB + THUMB // 2))[2] > 150  # blue: the base model
    assert grid.getpixel((2 * THUMB + THUMB // 2, THUMB + THUMB // 2)) == (235, 235, 235)  # no base image
    # deterministic: a second report is byte-identical
    again = write_report(study_name="demo", results=results, out_dir=tmp_path / "again", figures=figures,
                         image_manifests=manifests)  # fmt: skip
    assert again.read_bytes() == index.read_bytes()
    assert (tmp_path / "again" / "grids" / "a-s23-e010__alter.png").read_bytes() == (
        out / "grids" / "a-s23-e010__alter.png"
    ).read_bytes()


def test_check_report_files_flags_bad_links(tmp_path):
    index = tmp_path / "index.html"
    index.write_text(
        '<img src="/abs.png"><img src="missing.png"><a href="../up.html">x</a><a href="#top">t</a>'
    )
    problems = check_report_files(index)
    assert (
        len(problems) == 3
        and any("relative" in p for p in problems)
        and any("outside" in p for p in problems)
    )


def test_report_cli(tmp_path, report_inputs):
    results, figures, manifests = report_inputs
    write_results(results, tmp_path / "results.parquet")
    parser = argparse.ArgumentParser()
    register_cli(parser.add_subparsers())
    argv = ["report", str(tmp_path / "results.parquet"), "--out", str(tmp_path / "r"),
            "--figures", str(figures[0].parent), "--manifest", f"base={manifests['base']}",
            "--manifest", f"A-s23-e010={manifests['A-s23-e010']}", "--images-per-grid", "2"]  # fmt: skip
    args = parser.parse_args(argv)
    assert args.func(args) == 0
    assert Image.open(tmp_path / "r" / "grids" / "a-s23-e010__alter.png").size == (2 * THUMB, 2 * THUMB)
    assert not (tmp_path / "r" / "grids" / "base__alter.png").exists()  # the base model is a row, not a grid
    assert check_report_files(tmp_path / "r" / "index.html") == []


@pytest.mark.skipif(find_chromium() is None, reason="chromium not on PATH")
def test_report_renders_in_headless_chromium(tmp_path, report_inputs):
    results, figures, manifests = report_inputs
    index = write_report(study_name="demo", results=results, out_dir=tmp_path / "r", figures=figures,
                         image_manifests=manifests)  # fmt: skip
    check = check_render(index, screenshot=tmp_path / "shot.png")
    assert check.ok, check.problems
    assert check.images_in_dom == index.read_text().count("<img") == 4  # a figure, 2 grids, the Pareto view
    shot = Image.open(check.screenshot).convert("L")
    assert shot.getextrema()[0] < shot.getextrema()[1]  # not a blank page


def test_report_cli_bad_manifest(tmp_path):
    parser = argparse.ArgumentParser()
    register_cli(parser.add_subparsers())
    args = parser.parse_args(["report", "r.parquet", "--out", str(tmp_path / "r"), "--manifest", "no-equals"])
    with pytest.raises(BadInput):
        args.func(args)
