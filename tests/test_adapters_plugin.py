"""The README's "Adding an algorithm" walk-through, as written: an algorithm in a package of its own,
pip-installed, registered through the ``lyco_bench.algorithms`` entry point — zero edits to
lyco-bench — goes through train → generate → score → leaderboard."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

pytestmark = pytest.mark.e2e  # whole studies / subprocess runs: `make test-fast` skips them

ROOT = Path(__file__).resolve().parents[1]


def readme_blocks(language: str) -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text[text.index("## Adding an algorithm") : text.index("## Benchmarks")]
    return [
        block.split("\n", 1)[1] for block in section.split("```")[1::2] if block.startswith(language + "\n")
    ]


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The README's package, pip-installed (no deps, offline) into a folder of its own."""
    root = tmp_path_factory.mktemp("plugin")
    package = root / "lyco-outscale"
    package.mkdir()
    (package / "lyco_outscale.py").write_text(readme_blocks("python")[0])
    (package / "pyproject.toml").write_text(readme_blocks("toml")[0])
    site = root / "site"
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
           "--target", str(site), str(package)]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert list(site.glob("lyco_outscale-*.dist-info/entry_points.txt"))
    return site


def _env(site: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(site), "HF_HUB_OFFLINE": "1", "LYCO_BENCH_NO_PROGRESS": "1"}


def test_the_entry_point_registers_the_algorithm(installed):
    probe = (
        "from lyco_bench.adapters import ALGORITHMS, AdapterSpec\n"
        "import torch\n"
        "cls = ALGORITHMS['outscale']\n"
        "assert cls.__module__ == 'lyco_outscale', cls.__module__\n"
        "print(AdapterSpec(algo='outscale', channels='in').options)\n"
        "m = cls(torch.nn.Linear(3, 2), channels='in')\n"
        "m.scale.data[:] = torch.tensor([1.0, 2.0, 3.0])\n"
        "torch.testing.assert_close(m.delta_weight(), m.base.weight * torch.tensor([1.0, 2.0, 3.0]))\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=_env(installed))
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "{'channels': 'in'}"
    bad = "from lyco_bench.adapters import AdapterSpec\nAdapterSpec(algo='outscale', chanels='in')"
    done = subprocess.run([sys.executable, "-c", bad], capture_output=True, text=True, env=_env(installed))
    assert "chanels: not a setting of outscale (its settings: channels)" in done.stderr


def test_a_study_puts_it_on_the_leaderboard(installed, tmp_path, tiny_model_dir, demo_dataset_dir):
    from lyco_bench.metrics.tiny import make_tiny_encoders
    from tests.helpers import micro_study

    encoders = make_tiny_encoders(tmp_path / "enc", seed=0)
    path = micro_study(tmp_path, model=str(tiny_model_dir), dataset=str(demo_dataset_dir), encoders=encoders)
    study = yaml.safe_load(path.read_text())
    study["algorithms"] = {**yaml.safe_load(readme_blocks("yaml")[0]), **study["algorithms"]}
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    cmd = [sys.executable, "-m", "lyco_bench.cli", "run", str(path), "--store", str(tmp_path / "store"),
           "--reports", str(tmp_path / "reports"), "--no-plots"]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, env=_env(installed))
    assert done.returncode == 0, done.stderr[-3000:]
    board = pd.read_csv(tmp_path / "reports" / "micro" / "leaderboard.csv")
    rows = board.drop_duplicates("config").set_index("config")
    assert {"outscale", "outscale-in", "outscale-lr1e-2", "lora2"} <= set(rows.index)
    assert rows.loc["outscale", "algo"] == "outscale" and rows.loc["outscale-in", "channels"] == "in"
    table = pd.read_parquet(tmp_path / "store" / "micro" / "results.parquet")
    lrs = table.drop_duplicates("config").set_index("config")["lr"]
    assert lrs["outscale"] == 1e-3 and lrs["outscale-lr1e-2"] == 1e-2  # its declared default lr
