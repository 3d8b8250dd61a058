"""Shared fixtures: one tiny Stable Diffusion pipeline and one demo dataset per test session.

Both are built offline from config by the project's own commands (`make-tiny-model`,
`make-demo-dataset`) and then loaded through the same code a real model or dataset goes through.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import yaml

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("LYCO_BENCH_NO_PROGRESS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

PAPER_CSV = "ddim_sd15_metrics_mean.csv"


def _bind_library_log_handlers() -> None:
    """diffusers and transformers give their root logger a StreamHandler bound to the sys.stderr of
    the moment they are first used. Were that a test's capsys stream, closed after the test, a later
    log record would print a "--- Logging error ---" traceback into another test's stderr. Bound now,
    at collection, they write to pytest's session-long capture instead."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.get_logger("diffusers")
    transformers_logging.get_logger("transformers")


_bind_library_log_handlers()


def find_paper_dir() -> Path | None:
    """The paper's published results: ``$LYCO_BENCH_PAPER_DATA``, else a ``paper/`` folder holding
    them in a directory beside the checkout (first in name order)."""
    if os.environ.get("LYCO_BENCH_PAPER_DATA"):
        folder = Path(os.environ["LYCO_BENCH_PAPER_DATA"])
        return folder if (folder / PAPER_CSV).is_file() else None
    beside = Path(__file__).resolve().parents[1].parent
    return next((p.parent for p in sorted(beside.glob(f"*/paper/{PAPER_CSV}"))), None)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    from lyco_bench.models import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("tiny-model") / "tiny-sd", seed=0)


@pytest.fixture(scope="session")
def dataset_with_class_folders(tmp_path_factory, demo_dataset_dir) -> Path:
    """The demo dataset, each concept given a kohya regularization folder of two images."""
    root = Path(shutil.copytree(demo_dataset_dir, tmp_path_factory.mktemp("prior") / "data"))
    spec = yaml.safe_load((root / "dataset.yaml").read_text())
    for key in spec["concepts"]:
        reg = root.parent / "reg" / key.replace("/", "_")
        reg.mkdir(parents=True)
        for i, image in enumerate(sorted((root / key).rglob("*.png"))[:2]):
            shutil.copy(image, reg / f"{i}.png")
        spec["concepts"][key]["class_images"] = f"../reg/{key.replace('/', '_')}"
    (root / "dataset.yaml").write_text(yaml.safe_dump(spec))
    return root


@pytest.fixture(scope="session")
def tiny_sdxl_dir(tmp_path_factory) -> Path:
    from lyco_bench.models import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("tiny-sdxl") / "tiny-sdxl", seed=0, family="sdxl")


@pytest.fixture(scope="session")
def demo_dataset_dir(tmp_path_factory) -> Path:
    from lyco_bench.data import make_demo_dataset

    return make_demo_dataset(tmp_path_factory.mktemp("demo-dataset") / "demo", seed=0)


@pytest.fixture(scope="session")
def paper_dir() -> Path:
    """The paper's published results (:func:`find_paper_dir`); skip where absent."""
    folder = find_paper_dir()
    if folder is None:
        pytest.skip("the paper's published data not found (set LYCO_BENCH_PAPER_DATA)")
    return folder


# --- fixtures several test modules share (their helpers: tests/helpers.py) ---------------------
from tests.helpers import _manifest_rows, tiny_encoder_settings, write_generation  # noqa: E402


@pytest.fixture(scope="session")
def tiny_encoders(tmp_path_factory) -> dict:
    return tiny_encoder_settings(tmp_path_factory)


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("generated")
    rows = _manifest_rows()
    images = write_generation(root / "ck", rows, seed=1)
    base_rows = [dict(r, checkpoint="base") for r in rows if r["prompt_class"] in ("agnostic",)]
    base_rows += [
        dict(r, checkpoint="base") for r in rows if r["prompt_class"] == "style" and r["concept"] == "circle"
    ]
    base = write_generation(root / "base", base_rows, seed=2)
    return images, base


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory) -> Path:
    from lyco_bench.data import make_demo_dataset

    # 2 images per leaf: one square, one 3:2 landscape; checker repeats twice → 2 buckets of 3 entries.
    return make_demo_dataset(tmp_path_factory.mktemp("train-data") / "demo", seed=0, images_per_concept=2)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("latents")
