"""Shared fixtures: one tiny Stable Diffusion pipeline and one demo dataset per test session.

Both are built offline from config by the project's own commands (`make-tiny-model`,
`make-demo-dataset`) and then loaded through the same code a real model or dataset goes through.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("LYCO_BENCH_NO_PROGRESS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

PAPER_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "paper"


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    from lyco_bench.models import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("tiny-model") / "tiny-sd", seed=0)


@pytest.fixture(scope="session")
def demo_dataset_dir(tmp_path_factory) -> Path:
    from lyco_bench.data import make_demo_dataset

    return make_demo_dataset(tmp_path_factory.mktemp("demo-dataset") / "demo", seed=0)


@pytest.fixture(scope="session")
def paper_dir() -> Path:
    """The published results beside the checkout (`../shared/paper`); skip where absent."""
    if not (PAPER_DIR / "ddim_sd15_metrics_mean.csv").is_file():
        pytest.skip("published paper data (../shared/paper) not present")
    return PAPER_DIR
