"""Reporting choices are data: a metric from an outside package that declares itself a headline and
a Pareto axis reaches SHAP, sample_size.csv and the leaderboard through a whole (micro) study, with
no edit inside lyco-bench; a study's ``analysis:`` block overrides the declarations, is checked at
load and changes no job's identity."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest
import yaml

from lyco_bench.analysis.choices import headline_labels, report_choices
from lyco_bench.errors import BadInput
from lyco_bench.metrics import METRICS
from lyco_bench.sweep.planner import build_plan
from lyco_bench.sweep.store import StudyStore
from lyco_bench.sweep.study import load_study
from tests.helpers import micro_study

ROOT = Path(__file__).resolve().parents[1]

PLUGIN = """
import torch.nn.functional as F
from lyco_bench.metrics import Metric, MetricValue, Report, register_metric


def spread_rows(view):
    feats = F.normalize(view.generated().double(), dim=1)
    yield MetricValue(float(1 - (feats @ feats.T).mean()), view.n)


register_metric(
    Metric("spread", "diversity", True, ("generated",), ("clip",), ("trigger",), compute=spread_rows,
           report=Report(headline=True, pareto=True))
)
"""


def _install_plugin(folder: Path) -> dict[str, str]:
    """The plug-in as an installed distribution (module + dist-info with its entry point)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "spread_metric.py").write_text(textwrap.dedent(PLUGIN))
    info = folder / "spread_metric-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: spread-metric\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[lyco_bench.metrics]\nspread = spread_metric\n")
    return {
        **os.environ, "PYTHONPATH": f"{folder}{os.pathsep}{ROOT}", "LYCO_BENCH_NO_PROGRESS": "1",
        "HF_HUB_OFFLINE": "1",
    }  # fmt: skip


def _two_config_study(
    folder: Path, tiny_model_dir: Path, demo_dataset_dir: Path, metrics: list[str], **analysis
) -> Path:
    """The micro study with a second configuration (SHAP needs two), ``metrics`` and ``analysis``."""
    from lyco_bench.metrics.tiny import make_tiny_encoders

    folder.mkdir(parents=True, exist_ok=True)
    encoders = make_tiny_encoders(folder / "encoders", seed=0)
    path = micro_study(folder, model=str(tiny_model_dir), dataset=str(demo_dataset_dir), encoders=encoders)
    study = yaml.safe_load(path.read_text())
    study["metrics"] = metrics
    study["algorithms"]["lora"]["variations"] = {"lora4": {"adapter": {"dim": 4, "alpha": 2}}}
    if analysis:
        study["analysis"] = analysis
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    return path


def _with_analysis(study: Path, name: str, **analysis) -> Path:
    """A copy of ``study`` beside it (same inputs) with an ``analysis:`` block."""
    data = yaml.safe_load(study.read_text())
    data["analysis"] = analysis
    path = study.with_name(name)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.mark.e2e
def test_plugin_metric_reaches_shap_sample_size_and_leaderboard(tmp_path, tiny_model_dir, demo_dataset_dir):
    env = _install_plugin(tmp_path / "site")
    study = _two_config_study(tmp_path, tiny_model_dir, demo_dataset_dir, ["text_similarity", "spread"])
    cmd = [sys.executable, "-m", "lyco_bench.cli", "run", str(study), "--store", str(tmp_path / "store"),
           "--reports", str(tmp_path / "reports"), "--no-plots"]  # fmt: skip
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    report = tmp_path / "reports" / "micro"
    results = pd.read_parquet(tmp_path / "store" / "micro" / "results.parquet")
    spread = sorted(results.loc[results["metric"] == "spread", "label"].unique())
    text = sorted(results.loc[results["metric"] == "text_similarity", "label"].unique())
    assert len(spread) == 1 and text
    shap = pd.read_csv(report / "analysis" / "shap_levels.csv")
    assert set(shap["metric"]) == {*spread, *text}  # the headline labels, the plug-in's among them
    sizes = pd.read_csv(report / "analysis" / "sample_size.csv")
    assert set(sizes["label"]) == {*spread, *text}
    board = (report / "leaderboard.md").read_text()
    header = next(line for line in board.splitlines() if line.startswith("| config"))
    assert spread[0] in header and all(label in header for label in text)
    # Pareto axes: text similarity (its first declared class present: <trigger>) and the plug-in;
    # image similarity, the third declared axis, was not computed
    ctl = results.loc[
        (results["metric"] == "text_similarity") & (results["prompt_class"] == "trigger"), "label"
    ]
    assert f"★ Pareto-optimal for {ctl.iloc[0]} vs {spread[0]} (both higher is better)." in board
    marks = pd.read_csv(report / "leaderboard.csv").drop_duplicates("config")
    assert marks["pareto"].any()


@pytest.fixture
def spread_registered():
    """The plug-in's metric registered in this process (and removed afterwards)."""
    from lyco_bench.metrics import Metric, Report, register_metric

    metric = register_metric(
        Metric("spread", "diversity", True, ("generated",), ("clip",), ("trigger",),
               report=Report(headline=True, pareto=True))
    )  # fmt: skip
    yield metric
    METRICS.unregister("spread")


def _labels(*rows: tuple[str, str, str]) -> pd.DataFrame:
    return pd.DataFrame(
        [{"label": f"{m} {e} {mode}", "metric": m, "encoder": e, "mode": mode} for m, e, mode in rows]
    )


def test_headline_labels_follow_declarations_and_overrides(spread_registered):
    table = _labels(
        ("image_similarity", "dinov2:dinov2", "resize"),
        ("image_similarity", "dinov2:dinov2", "crop"),
        ("frechet_distance", "dinov2:dinov2", "resize"),
        ("spread", "clip:tiny", ""),
    )
    # declared: image similarity in its DINOv2-resize variant only, and the plug-in
    assert headline_labels(table) == ["image_similarity dinov2:dinov2 resize", "spread clip:tiny "]
    overridden = report_choices(headline=["frechet_distance"], pareto=["spread", "frechet_distance"])
    assert headline_labels(table, overridden) == ["frechet_distance dinov2:dinov2 resize"]
    assert [a.metric for a in overridden.pareto] == ["spread", "frechet_distance"]
    declared = report_choices()
    assert [a.metric for a in declared.pareto] == ["image_similarity", "text_similarity", "spread"]
    assert [(p.y.metric, p.x.metric) for p in report_choices(panels=[("spread", "kid")]).panels] == [
        ("spread", "kid")
    ]


def test_unknown_metric_in_the_analysis_block_is_one_line(tmp_path, tiny_model_dir, demo_dataset_dir):
    plain = _two_config_study(tmp_path, tiny_model_dir, demo_dataset_dir, ["text_similarity"])
    cases = {
        "headline": (["text_similarity", "nope"], "analysis.headline.1: 'nope' is not a metric"),
        "pareto": (["nope", "vendi"], "analysis.pareto.0: 'nope' is not a metric"),
        "panels": ([{"y": "vendi", "x": "nope"}], "analysis.panels.0.x: 'nope' is not a metric"),
    }
    for field, (value, message) in cases.items():
        study = _with_analysis(plain, f"{field}.yaml", **{field: value})
        with pytest.raises(BadInput) as err:
            load_study(study)
        assert str(err.value).startswith(f"{study}: {message} (")
        assert "\n" not in str(err.value)


def test_overrides_change_no_job_identity(tmp_path, tiny_model_dir, demo_dataset_dir):
    plain = _two_config_study(tmp_path, tiny_model_dir, demo_dataset_dir, ["text_similarity", "vendi"])
    override = {
        "headline": ["vendi"],
        "pareto": ["vendi", "text_similarity"],
        "panels": [{"y": "vendi", "x": "kid"}],
    }
    chosen = _with_analysis(plain, "chosen.yaml", **override)
    ids = []
    for study in (plain, chosen):
        loaded = load_study(study)
        ids.append(
            sorted(job.id for job in build_plan(loaded, StudyStore.open(tmp_path / "store", "micro")).jobs)
        )
    assert ids[0] == ids[1] and ids[0]
    assert load_study(chosen).study.analysis.choices().headline == {"vendi": ("dinov2",)}
