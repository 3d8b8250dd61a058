"""Presets are plug-ins: the built-ins register themselves, an outside package adds one through the
``lyco_bench.presets`` entry point with zero edits inside lyco-bench, and an unknown name is a
one-line error naming the field."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from lyco_bench.adapters import AdapterSpec, find_targets
from lyco_bench.adapters.presets import PRESETS, LayerInfo
from lyco_bench.config import validate
from lyco_bench.errors import BadInput
from tests.helpers import tiny_models

ROOT = Path(__file__).resolve().parents[1]

PLUGIN = """
from lyco_bench.adapters.presets import Preset, register_preset

register_preset(Preset(
    name="cross-attn-kv",
    unet=lambda info: info.attention_projection(("to_k", "to_v")) and info.parts[-2] == "attn2",
    text_encoder=lambda path: False,
    description="cross-attention keys and values only (custom-diffusion style)",
))
"""


def test_built_in_presets_are_registered():
    assert {"attn-only", "attn-mlp", "full", "ia3"} <= set(PRESETS)
    assert PRESETS["full"].norm and not PRESETS["attn-mlp"].norm


def test_unknown_preset_names_the_field():
    with pytest.raises(BadInput) as info:
        validate(AdapterSpec, {"algo": "lora", "preset": "attn-everything"}, source="study.yaml")
    message = str(info.value)
    assert message.startswith("study.yaml: preset") and "attn-everything" in message and "attn-mlp" in message


def test_layer_info_reads_attention_projections():
    import torch

    linear = torch.nn.Linear(2, 2)
    path = "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_out.0"
    assert LayerInfo(path, linear, True).attention_projection(("to_out.0",))
    assert not LayerInfo(path, linear, False).attention_projection(("to_out.0",))  # outside a block
    assert not LayerInfo(path.replace("attn2", "ff"), linear, True).attention_projection(("to_out.0",))


@pytest.mark.e2e
def test_an_outside_preset_selects_its_layers(tmp_path):
    """A pip-style package (a module + dist-info entry point) adds a preset; injection uses it."""
    (tmp_path / "kv_preset.py").write_text(textwrap.dedent(PLUGIN))
    info = tmp_path / "kv_preset-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: kv-preset\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[lyco_bench.presets]\nkv = kv_preset\n")
    code = (
        "import json\nfrom lyco_bench.adapters import AdapterSpec, find_targets\n"
        "from tests.helpers import tiny_models\n"
        "unet, te = tiny_models()\n"
        "spec = AdapterSpec(algo='lora', preset='cross-attn-kv')\n"
        "print(json.dumps([t.key for t in find_targets(unet, te, spec)]))\n"
    )
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}"}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    keys = json.loads(out.stdout.strip().splitlines()[-1])
    # Derived here from the same tiny UNet: every attn2 to_k/to_v Linear, nothing else.
    unet, te = tiny_models()
    expected = [
        t.key
        for t in find_targets(unet, te, AdapterSpec(algo="lora", preset="attn-only"))
        if not t.text_encoder and t.key.endswith(("_attn2_to_k", "_attn2_to_v"))
    ]
    assert keys == expected and len(expected) > 0
