"""The encoder registry is open: an encoder kind is one file declaring its settings, identity,
loader, source check, feature width, FLOPs and tiny build (``register_encoder``), in lyco-bench or
in another package (``lyco_bench.encoders`` entry point); the settings, the planner, the sizing,
the costs and the scorer pick it up with no edit anywhere else."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from lyco_bench.errors import BadInput
from lyco_bench.metrics.encoders import ENCODERS, EncoderKind, encoder_path_fields, register_encoder
from lyco_bench.metrics.features import CommonEncoderSettings, EncoderPool, EncoderSettings

ROOT = Path(__file__).resolve().parents[1]


def test_settings_are_the_common_ones_plus_each_kind_s_own():
    expected = set(CommonEncoderSettings.model_fields)
    for kind in ENCODERS.values():
        own = set(kind.settings.model_fields)
        assert kind.weights_field in own and set(kind.path_fields) <= own
        assert not own & expected  # no field claimed twice
        expected |= own
    assert set(EncoderSettings.model_fields) == expected
    defaults = EncoderSettings()
    for kind in ENCODERS.values():  # each kind's defaults are the settings' defaults
        for name, info in kind.settings.model_fields.items():
            assert getattr(defaults, name) == info.default
    assert set(encoder_path_fields()) == {f for k in ENCODERS.values() for f in k.all_path_fields()}


def test_unknown_kinds_are_bad_input():
    pool = EncoderPool(EncoderSettings())
    with pytest.raises(BadInput, match="encoder 'nope': unknown"):
        pool.id("nope")
    with pytest.raises(ValueError, match="is not an image encoder"):
        EncoderSettings(image_encoders=("nope",))
    with pytest.raises(TypeError):
        register_encoder("nope")
    kind = next(iter(ENCODERS.values()))
    assert register_encoder(kind) is kind  # the same entry again: a no-op
    with pytest.raises(ValueError, match="registered twice"):
        register_encoder(EncoderKind(kind.name, kind.settings, kind.weights_field, str, str, str, len))


# An outside package: a toy encoder (per-channel means of the picture as it is, no weights) and a
# metric reading it (the mean brightness of the generated images).
PLUGIN = """
import torch
from lyco_bench.config import StrictModel
from lyco_bench.errors import BadInput
from lyco_bench.metrics import Metric, MetricValue, register_metric
from lyco_bench.metrics.encoders.base import EncoderKind, register_encoder


class MeanRgbSettings(StrictModel):
    meanrgb: str = "plain"
    meanrgb_scale: float = 1.0


class MeanRgb:
    def __init__(self, settings):
        self.scale = settings.meanrgb_scale

    def prepare(self, image, mode):
        data = torch.tensor(list(image.convert("RGB").getdata()), dtype=torch.float64)  # (H*W, 3)
        return data.mean(0) / 255.0

    def forward(self, inputs):
        return (torch.stack(inputs) * self.scale).float()


def check(settings):
    if settings.meanrgb != "plain":
        raise BadInput(f"encoders.meanrgb {settings.meanrgb!r}: only 'plain'")


register_encoder(EncoderKind(
    name="meanrgb", settings=MeanRgbSettings, weights_field="meanrgb",
    identity=lambda s: f"meanrgb:{s.meanrgb}:{s.meanrgb_scale}", load=MeanRgb, check_source=check,
    feature_dim=lambda fields, tiny: 3, flops=lambda fields, tiny: 1e9, native=True,
))


def brightness_rows(view):
    yield MetricValue(float(view.generated().double().mean()), view.n)


register_metric(Metric("brightness", "quality", True, ("generated",), ("meanrgb",), ("trigger",),
                       compute=brightness_rows))
"""


def _plugin(tmp_path: Path) -> dict[str, str]:
    (tmp_path / "toy_encoder.py").write_text(textwrap.dedent(PLUGIN))
    info = tmp_path / "toy_encoder-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: toy-encoder\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        "[lyco_bench.encoders]\nmeanrgb = toy_encoder\n\n[lyco_bench.metrics]\nbrightness = toy_encoder\n"
    )
    return {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}"}


def _run(code: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True)


@pytest.mark.e2e
def test_outside_encoder_is_planned_and_costed(tmp_path):
    env = _plugin(tmp_path)
    store = str(tmp_path / "store")
    code = (
        "from lyco_bench.metrics.encoders import ENCODERS; from lyco_bench.metrics import EncoderSettings;"
        "print(list(ENCODERS)[-1], EncoderSettings().meanrgb_scale);"
        "from lyco_bench.cli import main; raise SystemExit(main(['plan', 'experiments/tour.yaml', "
        f"'metrics=[brightness]', 'encoders.meanrgb_scale=2.0', '--store', {store!r}, '--gpu', 'h100']))"
    )
    out = _run(code, env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[0] == "meanrgb 1.0"  # the toy's settings are EncoderSettings'
    table = out.stdout + out.stderr
    assert "features: checkpoint images, meanrgb" in table
    assert "dinov2" not in table and "vgg19" not in table  # only what the plug-in metric reads
    # The planner counts one pass of the toy per generated image it reads, at its declared FLOPs.

    bad = _run(
        "from lyco_bench.cli import main; raise SystemExit(main(['plan', 'experiments/tour.yaml', "
        f"'metrics=[brightness]', 'encoders.meanrgb=fancy', '--store', {store + '2'!r}]))",
        env,
    )
    assert bad.returncode == 2
    assert (
        "encoders.meanrgb 'fancy': only 'plain'" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
    )


@pytest.mark.e2e
def test_outside_encoder_is_scored(tmp_path, generated, demo_dataset_dir):  # noqa: F811
    env = _plugin(tmp_path)
    images, _ = generated
    out_file, cache = tmp_path / "rows.parquet", tmp_path / "cache"
    code = (
        "from lyco_bench.cli import main; raise SystemExit(main(['score', '--images', "
        f"{str(images)!r}, '--dataset', {str(demo_dataset_dir)!r}, '--metrics', 'brightness', '--set', "
        f"'meanrgb_scale=2.0', '--cache', {str(cache)!r}, '--out', {str(out_file)!r}]))"
    )
    out = _run(code, env)
    assert out.returncode == 0, out.stderr
    rows = pd.read_parquet(out_file)
    assert set(rows["metric"]) == {"brightness"} and set(rows["prompt_class"]) == {"trigger"}
    manifest = pd.read_parquet(images / "manifest.parquet")
    concepts = set(manifest["concept"]) - {""}
    per_concept = rows[rows["concept"].isin(concepts)]  # not the per-category rows
    assert len(per_concept) >= 4
    for _, row in per_concept.iterrows():
        unit = manifest[(manifest["prompt_class"] == "trigger") & (manifest["concept"] == row["concept"])]
        unit = unit[unit["subclass"] == row["subclass"]] if row["subclass"] else unit
        # Derived from the pictures: 2 × the mean of their per-channel means (the toy's scale).
        means = [
            np.asarray(Image.open(images / f).convert("RGB"), dtype=np.float64).mean() for f in unit["file"]
        ]
        assert row["value"] == pytest.approx(2.0 * np.mean(means) / 255.0, rel=1e-5)
    assert list(cache.rglob("*")), "the toy's features are cached"
