"""Where a study's assets live in the store: values naming an asset prefix (``tiny:`` models and
encoders, :mod:`lyco_bench.sweep.assets.base`) and generated datasets (``demo:``, ``world:``,
:mod:`lyco_bench.data.generated`) resolved to the store's assets folder, and the trainer's
RunConfig of one configuration. Read by the planner's input checks and by the jobs alike."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from lyco_bench.data.generated import generated_dataset
from lyco_bench.sweep.assets.base import (
    ASSET_PREFIXES,
    AssetPrefix,
    BuiltEncoders,
    BuiltModel,
    ShippedEncoders,
    ShippedModel,
    asset_seed,
    built_encoders,
    built_model,
    model_rough_costs,
    prefix_of,
    register_asset_prefix,
    resolve_shipped,
    tiny_weights,
)

if TYPE_CHECKING:
    from lyco_bench.sweep.store import StudyStore

__all__ = [
    "ASSET_PREFIXES", "AssetPrefix", "BuiltEncoders", "BuiltModel", "ShippedEncoders", "ShippedModel",
    "asset_seed", "built_encoders", "built_model", "dataset_path", "encoder_settings", "job_model_path", "model_path",
    "model_rough_costs", "prefix_of", "register_asset_prefix", "resolve_shipped", "run_config_for_settings",
    "tiny_weights",
]  # fmt: skip


def model_path(value: str, store: StudyStore) -> str:
    built = built_model(value)
    return str(store.assets_dir / built[1].folder) if built is not None else value


def job_model_path(params: dict[str, Any], store: StudyStore) -> str:
    """The model a job loads: its ``model`` param, or the asset folder its built model went into
    (``model_folder``: an eval model's, lyco_bench.sweep.axes)."""
    folder = params.get("model_folder")
    return str(store.assets_dir / folder) if folder else model_path(params["model"], store)


def dataset_path(value: str, store: StudyStore) -> str:
    kind = generated_dataset(value)
    return str(store.assets_dir / kind.folder) if kind is not None else value


def encoder_settings(fields: dict[str, Any], store: StudyStore) -> Any:
    """EncoderSettings with the fields naming a built prefix (``tiny:``) pointing at the encoders
    built in the store; an encoder's other settings the study leaves out (sizes, checkpoint) are
    the build's."""
    from lyco_bench.metrics import EncoderSettings
    from lyco_bench.metrics.encoders import ENCODERS

    resolved = dict(fields)
    built = built_encoders(fields)
    if built is not None:
        folder = store.assets_dir / built[1].folder
        made = json.loads((folder / "settings.json").read_text(encoding="utf-8"))
        for key in built[2]:
            resolved[key] = str(folder / made[key])
            kind = next((e for e in ENCODERS.values() if e.weights_field == key), None)
            for extra in kind.settings.model_fields if kind is not None else ():
                if extra == key or extra in fields or extra not in made:
                    continue
                value = made[extra]
                # The build's files are written relative to its folder.
                local = extra in kind.path_fields and isinstance(value, str)
                resolved[extra] = str(folder / value) if local else value
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
