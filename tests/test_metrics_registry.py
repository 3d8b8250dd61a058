"""The metric registry is open: a metric is one compute function plus one ``register_metric``, in
its own file or in another package (``lyco_bench.metrics`` entry point); the scorer and the planner
pick it up with no edit anywhere else."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch.nn.functional as F

from lyco_bench.metrics import CRITERIA, METRICS, Metric, register_metric
from lyco_bench.metrics.features import EncoderSettings
from lyco_bench.metrics.scoring import score
from lyco_bench.metrics.values import MetricValue

ROOT = Path(__file__).resolve().parents[1]


def test_built_ins_are_registered_in_criterion_order():
    criteria = [m.criterion for m in METRICS.values()]
    assert all(c in CRITERIA for c in criteria)
    assert criteria == sorted(criteria, key=CRITERIA.index)
    assert list(METRICS)[:2] == ["image_similarity", "squared_centroid_distance"]
    assert {"text_similarity", "vendi", "style_loss_base", "intrusion", "kid", "hps_delta"} <= set(METRICS)


def test_a_name_registers_once():
    entry = METRICS["vendi"]
    assert register_metric(entry) is entry  # the same entry again: a no-op
    with pytest.raises(ValueError, match="'vendi' registered twice"):
        register_metric(Metric("vendi", "diversity", False, ("generated",), ("image",)))
    with pytest.raises(TypeError):
        register_metric("vendi")


def _mean_norm_rows(view):
    """A toy metric: the mean length of the image's unnormalized centroid (per mode)."""
    for mode in view.modes:
        feats = F.normalize(view.generated(mode).double(), dim=1)
        yield MetricValue(float(feats.mean(0).norm()), view.n, mode=mode)


@pytest.fixture
def centroid_norm():
    metric = register_metric(
        Metric(
            "centroid_norm",
            "diversity",
            False,
            ("generated",),
            ("image",),
            ("trigger",),
            compute=_mean_norm_rows,
        )
    )
    yield metric
    METRICS.unregister("centroid_norm")


def test_a_registered_metric_is_scored(centroid_norm, generated, demo_dataset_dir, tiny_encoders, tmp_path):  # noqa: F811
    images, _ = generated
    rows = score(
        images_dir=images,
        dataset=demo_dataset_dir,
        encoders=EncoderSettings(**tiny_encoders),
        cache_dir=tmp_path,
        metrics=["centroid_norm"],
    )
    assert set(rows["metric"]) == {"centroid_norm"}
    assert set(rows["prompt_class"]) == {"trigger"}  # only the classes it declares
    value = rows[(rows["concept"] == "circle") & (rows["mode"] == "resize")]["value"]
    assert len(value) == 1 and 0 < float(value.iloc[0]) <= 1
    assert not list(tmp_path.rglob("*clip*")) and not list(tmp_path.rglob("*vgg19*"))  # never encoded


PLUGIN = """
import torch.nn.functional as F
from lyco_bench.metrics import Metric, MetricValue, register_metric


def spread_rows(view):
    feats = F.normalize(view.generated().double(), dim=1)
    yield MetricValue(float(1 - (feats @ feats.T).mean()), view.n)


register_metric(Metric("spread", "diversity", True, ("generated",), ("clip",), ("trigger",), compute=spread_rows))
"""


def _plugin(tmp_path: Path, value: str) -> dict[str, str]:
    (tmp_path / "spread_metric.py").write_text(textwrap.dedent(PLUGIN))
    info = tmp_path / "spread_metric-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: spread-metric\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[lyco_bench.metrics]\nspread = {value}\n")
    return {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}"}


@pytest.mark.e2e
def test_entry_point_plugin_is_planned(tmp_path):
    env = _plugin(tmp_path, "spread_metric")
    code = (
        "import lyco_bench.metrics as m; print(m.METRICS['spread'].criterion, list(m.METRICS)[-1]);"
        "from lyco_bench.cli import main; raise SystemExit(main(['plan', 'experiments/tour.yaml', 'metrics=[spread]', "
        f"'--store', {str(tmp_path / 'store')!r}]))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[0] == "diversity hps_delta"  # ordered by criterion, not appended
    table = out.stdout + out.stderr
    assert "features: checkpoint images, clip" in table
    assert "dinov2" not in table and "vgg19" not in table  # only what the plug-in reads


@pytest.mark.e2e
def test_broken_plugin_is_one_line_bad_input(tmp_path):
    env = _plugin(tmp_path, "spread_metric_missing")
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "lyco_bench.cli",
            "plan",
            "experiments/tour.yaml",
            "--store",
            str(tmp_path / "s"),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        "error: metric plug-in spread (spread_metric_missing): cannot be imported "
        "(No module named 'spread_metric_missing')"
    ]
    assert not (tmp_path / "s").exists()
