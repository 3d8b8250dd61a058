"""``tiny:`` — random tiny weights built into the store by a prepare job: a tiny SD1.x as the
study's ``model`` (``tiny:3`` seeds it with 3), and every registered encoder's tiny build for the
``encoders`` fields that name it. Their scores mean nothing; their plumbing is real (tests, tours)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lyco_bench.sweep.assets.base import AssetPrefix, BuiltEncoders, BuiltModel, register_asset_prefix

# Rough seconds per job on a laptop CPU (measured on the tour study, 2 cores).
TINY_COST_S = {"prepare": 5.0, "train": 10.0, "extract": 1.0, "generate": 3.0, "encode": 1.0, "score": 2.0}


def _build_model(out: Path, seed: int) -> None:
    from lyco_bench.models import make_tiny_model

    make_tiny_model(out, seed=seed)


def _model_configs() -> tuple[dict, dict, dict]:
    from lyco_bench.models import TINY_TEXT, TINY_UNET, TINY_VAE

    return dict(TINY_UNET), dict(TINY_TEXT), dict(TINY_VAE)


def _build_encoders(out: Path) -> dict[str, Any]:
    from lyco_bench.metrics.tiny import make_tiny_encoders

    return make_tiny_encoders(out, seed=0)


register_asset_prefix(
    AssetPrefix(
        "tiny:",
        model=BuiltModel("tiny-model", _build_model, _model_configs, TINY_COST_S),
        encoders=BuiltEncoders("tiny-encoders", _build_encoders, tiny=True),
    )
)
