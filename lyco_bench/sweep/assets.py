"""Where a study's assets live in the store: ``tiny:`` models and encoders and drawn datasets
(``demo:``, ``world:``) resolved to the store's assets folder, and the trainer's RunConfig of one
configuration. Read by the planner's input checks and by the jobs alike."""

from __future__ import annotations

from typing import Any

from lyco_bench.sweep.store import StudyStore
from lyco_bench.sweep.study import TINY_PREFIX, generated_dataset, generated_folder


def model_path(value: str, store: StudyStore) -> str:
    return str(store.assets_dir / "tiny-model") if value.startswith(TINY_PREFIX) else value


def job_model_path(params: dict[str, Any], store: StudyStore) -> str:
    """The model a job loads: its ``model`` param, or the asset folder its ``tiny:`` model was built
    into (``model_folder``: an eval model's, lyco_bench.sweep.axes)."""
    folder = params.get("model_folder")
    return str(store.assets_dir / folder) if folder else model_path(params["model"], store)


def dataset_path(value: str, store: StudyStore) -> str:
    return str(store.assets_dir / generated_folder(value)) if generated_dataset(value) else value


def encoder_settings(fields: dict[str, Any], store: StudyStore) -> Any:
    """EncoderSettings with ``tiny:`` fields pointing at the tiny encoders in the store; an
    encoder's other settings the study leaves out (sizes, checkpoint) are the tiny build's."""
    from lyco_bench.metrics import EncoderSettings
    from lyco_bench.metrics.encoders import ENCODERS

    resolved = dict(fields)
    tiny_file = store.assets_dir / "tiny-encoders" / "settings.json"
    if any(isinstance(v, str) and v.startswith(TINY_PREFIX) for v in fields.values()):
        import json

        tiny = json.loads(tiny_file.read_text(encoding="utf-8"))
        for key, value in fields.items():
            if isinstance(value, str) and value.startswith(TINY_PREFIX):
                resolved[key] = str(tiny_file.parent / tiny[key])
                kind = next((e for e in ENCODERS.values() if e.weights_field == key), None)
                for extra in kind.settings.model_fields if kind is not None else ():
                    if extra == key or extra in fields or extra not in tiny:
                        continue
                    value = tiny[extra]
                    # The build's files are written relative to its folder.
                    local = extra in kind.path_fields and isinstance(value, str)
                    resolved[extra] = str(tiny_file.parent / value) if local else value
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
