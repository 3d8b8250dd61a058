"""``world:`` — the CPU world's pretrained tiny SD1.x and its evaluators (DINOv2, OpenCLIP),
shipped with lyco-bench (:mod:`lyco_bench.world`): a study naming them is rewritten at load to the
shipped folders. (The world's drawn dataset is a generated dataset: ``lyco_bench/world/dataset.py``.)"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lyco_bench.sweep.assets.base import AssetPrefix, ShippedEncoders, ShippedModel, register_asset_prefix

# Rough seconds per job for the world's model (the demo study, 2 workers of one thread: train
# 17.7 s, generate 3.8 s).
WORLD_COST_S = {"prepare": 2.0, "train": 18.0, "extract": 2.0, "generate": 4.0, "encode": 1.0, "score": 1.0}


def _model_folder() -> Path:
    from lyco_bench.world import model_dir

    return model_dir()


def _encoder_fields() -> dict[str, Any]:
    from lyco_bench.world import encoder_settings

    return encoder_settings()  # the world's encoders: their fields, paths under weights_dir()


def _missing() -> str | None:
    from lyco_bench.world import weights_dir

    if (weights_dir() / "BUILD.json").is_file():
        return None
    return f"the world's weights are missing ({weights_dir()}); rebuild them with `lyco-bench make-world`"


register_asset_prefix(
    AssetPrefix(
        "world:",
        model=ShippedModel(_model_folder, WORLD_COST_S),
        encoders=ShippedEncoders(_encoder_fields),
        missing=_missing,
        title="the world",
    )
)
