"""Where a study's assets live in the store: ``tiny:`` models and encoders and drawn datasets
(``demo:``, ``world:``) resolved to the store's assets folder, and the trainer's RunConfig of one
configuration. Read by the planner's input checks and by the jobs alike."""

from __future__ import annotations

from typing import Any

from lyco_bench.sweep.store import StudyStore
from lyco_bench.sweep.study import GENERATED_DATASETS, TINY_PREFIX, generated_dataset

_TINY_SIZE_FIELDS = {"dino": "dino_image_size", "vgg": "vgg_short_side"}


def model_path(value: str, store: StudyStore) -> str:
    return str(store.assets_dir / "tiny-model") if value.startswith(TINY_PREFIX) else value


def dataset_path(value: str, store: StudyStore) -> str:
    prefix = generated_dataset(value)
    return str(store.assets_dir / GENERATED_DATASETS[prefix]) if prefix else value


def encoder_settings(fields: dict[str, Any], store: StudyStore) -> Any:
    """EncoderSettings with ``tiny:`` fields pointing at the tiny encoders in the store."""
    from lyco_bench.metrics import EncoderSettings

    resolved = dict(fields)
    tiny_file = store.assets_dir / "tiny-encoders" / "settings.json"
    if any(isinstance(v, str) and v.startswith(TINY_PREFIX) for v in fields.values()):
        import json

        tiny = json.loads(tiny_file.read_text(encoding="utf-8"))
        for key, value in fields.items():
            if isinstance(value, str) and value.startswith(TINY_PREFIX):
                resolved[key] = str(tiny_file.parent / tiny[key])
                size_key = _TINY_SIZE_FIELDS.get(key)
                if size_key and size_key not in fields:
                    resolved[size_key] = tiny[size_key]
                if key == "clip" and "clip_pretrained" not in fields:
                    resolved["clip_pretrained"] = tiny["clip_pretrained"]
                if key == "hps" and "hps_checkpoint" not in fields and tiny.get("hps_checkpoint"):
                    resolved["hps_checkpoint"] = str(tiny_file.parent / tiny["hps_checkpoint"])
    return EncoderSettings(**resolved)


def run_config_for_settings(study: Any, config: Any, *, seed: int, store: StudyStore) -> Any:
    """The trainer's RunConfig of one configuration of ``study`` (BadInput if it is invalid)."""
    from lyco_bench.config import validate
    from lyco_bench.training import RunConfig

    captions = {"strategy": study.captions, **config.training.get("captions", {})}
    data = {
        **config.training,
        "model": model_path(study.model, store),
        "dataset": dataset_path(study.dataset, store),
        "captions": captions,
        "adapter": config.adapter,
        "seed": seed,
        "epochs": max(study.checkpoint_epochs),
        "checkpoint_epochs": sorted(study.checkpoint_epochs),
        "cache_dir": str(store.cache_dir / "latents"),
    }
    return validate(RunConfig, data, source=f"configuration {config.name}")
