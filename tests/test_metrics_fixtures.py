"""Shared helpers of the metrics tests (no tests here): tiny encoders and a generation folder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

_BUILT: dict[str, dict] = {}


def tiny_encoder_settings(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """EncoderSettings fields pointing at tiny random-weight DINOv2 / OpenCLIP / VGG19 saved locally.

    Built once per session, whichever test module asks first.
    """
    from lyco_bench.metrics.tiny import make_tiny_encoders

    if "fields" not in _BUILT:
        fields = make_tiny_encoders(tmp_path_factory.mktemp("tiny-encoders"), seed=0)
        _BUILT["fields"] = {**fields, "device": "cpu", "batch_size": 8}
    return dict(_BUILT["fields"])


def noise_image(seed: int, size: tuple[int, int] = (32, 32)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def write_generation(out: Path, rows: list[dict], *, seed: int) -> Path:
    """A generation folder as `lyco-bench generate` leaves it: PNGs + manifest.parquet."""
    for i, row in enumerate(rows):
        (out / row["file"]).parent.mkdir(parents=True, exist_ok=True)
        noise_image(seed * 10007 + i).save(out / row["file"])
    pd.DataFrame(rows).to_parquet(out / "manifest.parquet", index=False)
    return out
