"""``tiny:`` — random tiny weights built into the store by a prepare job: a tiny model as the
study's ``model`` (``tiny:`` / ``tiny:3``: SD1.x seeded with 3; ``tiny:sdxl`` / ``tiny:sdxl:3``: a
model family's tiny build, lyco_bench.families), and every registered encoder's tiny build for the
``encoders`` fields that name it. Their scores mean nothing; their plumbing is real (tests, tours)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lyco_bench.errors import BadInput
from lyco_bench.sweep.assets.base import (
    AssetPrefix,
    BuiltEncoders,
    BuiltModel,
    asset_seed,
    register_asset_prefix,
)

# Rough seconds per job on a laptop CPU (measured on the tour study, 2 cores).
TINY_COST_S = {"prepare": 5.0, "train": 10.0, "extract": 1.0, "generate": 3.0, "encode": 1.0, "score": 2.0}


def parse_tiny(rest: str) -> tuple[str, int]:
    """(family, seed) of the text after ``tiny:``: ``""``/``"3"`` (the default family) or
    ``"sdxl"``/``"sdxl:3"`` (BadInput for an unknown family or seed)."""
    from lyco_bench.families import DEFAULT_FAMILY, get_family

    head, _, seed = rest.partition(":")
    if head and not head.lstrip("-").isdigit():
        try:
            get_family(head)
        except BadInput as exc:
            raise BadInput(f"model 'tiny:{rest}': {exc}") from None
        return head, asset_seed(f"tiny:{seed}", "tiny:")
    return DEFAULT_FAMILY, asset_seed(f"tiny:{rest}", "tiny:")


def _build_model(out: Path, rest: str) -> None:
    from lyco_bench.models import make_tiny_model

    family, seed = parse_tiny(rest)
    make_tiny_model(out, seed=seed, family=family)


def _model_configs(rest: str) -> tuple[dict, dict, dict]:
    """The tiny build's (denoiser, first text encoder, VAE) configs: SD1.x's from its constants,
    another family's read from a throwaway build (a second or so: tiny models build fast)."""
    import json
    import tempfile

    from lyco_bench.families import DEFAULT_FAMILY
    from lyco_bench.models import TINY_TEXT, TINY_UNET, TINY_VAE

    family, seed = parse_tiny(rest)
    if family == DEFAULT_FAMILY:
        return dict(TINY_UNET), dict(TINY_TEXT), dict(TINY_VAE)
    with tempfile.TemporaryDirectory() as tmp:
        _build_model(Path(tmp) / "m", rest)
        root = Path(tmp) / "m"
        read = lambda sub: json.loads((root / sub / "config.json").read_text(encoding="utf-8"))  # noqa: E731
        denoiser = "unet" if (root / "unet").is_dir() else "transformer"
        return read(denoiser), read("text_encoder"), read("vae")


def _build_encoders(out: Path) -> dict[str, Any]:
    from lyco_bench.metrics.tiny import make_tiny_encoders

    return make_tiny_encoders(out, seed=0)


register_asset_prefix(
    AssetPrefix(
        "tiny:",
        model=BuiltModel(
            "tiny-model", _build_model, _model_configs, TINY_COST_S, family=lambda rest: parse_tiny(rest)[0]
        ),
        encoders=BuiltEncoders("tiny-encoders", _build_encoders, tiny=True),
    )
)
