"""Where a study's model and encoders come from, checked before any job runs, with their identity.

A model or encoder is given as a local path (a diffusers / transformers / open_clip folder, a
single ``.safetensors`` file) or a hub id. Before a sweep starts, each one must be resolvable —
a local path that exists, a hub id in the local Hugging Face cache or, when online, on the hub —
and a model must be one the trainer supports (SD1.x/SD2.x; SDXL is refused). Each also gets an
**identity**, the part of a job id that changes when its weights do: a local path is named by a
content hash of its weight and config files, a hub id by the commit it resolves to.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lyco_bench.errors import BadInput
from lyco_bench.hub import cached_hub_file, hub_identity  # noqa: F401 - re-exported
from lyco_bench.models import hub_offline  # noqa: F401 - re-exported
from lyco_bench.sweep.hashing import FileHasher
from lyco_bench.utils import stable_hash

WEIGHT_SUFFIXES = {".safetensors", ".json", ".txt", ".model"}
"""Files that make up a model folder's identity: weights, configs, tokenizer files."""


@dataclass(frozen=True)
class ModelSource:
    value: str
    where: str
    """``folder`` | ``file`` | ``hub``"""
    arch: str
    """``sd1`` | ``sd2`` | ``sdxl`` (lyco_bench.models.model_kind)"""
    identity: str


def local_identity(path: Path, hasher: FileHasher) -> str:
    """``<name>@<hash>`` of a file, or of a folder's weight/config files (relative paths + bytes)."""
    if path.is_file():
        return f"{path.name}@{hasher(path)[:16]}"
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in WEIGHT_SUFFIXES)
    listing = [(p.relative_to(path).as_posix(), hasher(p)) for p in files]
    return f"{path.name}@{stable_hash(listing, length=16)}"


def resolve_model(value: str, *, hasher: FileHasher) -> ModelSource:
    """Check that ``value`` names a Stable Diffusion model the trainer supports; its identity."""
    from lyco_bench.models import (
        PICKLE_SUFFIXES,
        _looks_like_path,
        _single_file_kind,
        model_kind,
        split_revision,
    )

    path = Path(value).expanduser()
    if path.suffix in PICKLE_SUFFIXES:
        raise BadInput(f"model {value}: pickled checkpoints are not loaded (convert it to .safetensors)")
    if path.is_file():
        arch = _single_file_kind(path)
        return _supported(ModelSource(value, "file", arch, local_identity(path, hasher)))
    if path.is_dir():
        if not (path / "model_index.json").is_file():
            raise BadInput(f"model {value}: not a diffusers pipeline folder (no model_index.json)")
        arch = model_kind(_read_json(path / "unet" / "config.json", what=f"model {value}"))
        return _supported(ModelSource(value, "folder", arch, local_identity(path, hasher)))
    if _looks_like_path(value):
        raise BadInput(f"model {value}: no such file or folder")
    repo, revision = split_revision(value)
    identity, snapshot = hub_identity(repo, "model_index.json", what="model", revision=revision)
    unet_config = snapshot / "unet" / "config.json" if snapshot is not None else None
    if unet_config is None or not unet_config.is_file():
        unet_config = _download_small(repo, "unet/config.json", identity.rpartition("@")[2])
    arch = model_kind(_read_json(unet_config, what=f"model {value}")) if unet_config else "sd1"
    return _supported(ModelSource(value, "hub", arch, identity))


def pin_model(study: Any, model_identity: str) -> Any:
    """The LoadedStudy with a hub model named ``repo@commit`` — the commit its job ids hashed — so
    that every worker loads those weights, whatever the hub's main branch says by then. Local
    models and built ones (``tiny:``) are returned unchanged; job params only, no id changes."""
    from lyco_bench.models import split_revision

    value = study.study.model
    repo, _ = split_revision(value)
    pinned_repo, _, commit = model_identity.rpartition("@")
    if Path(value).expanduser().exists() or pinned_repo != repo or not commit:
        return study
    pinned = study.study.model_copy(update={"model": f"{repo}@{commit}"})
    return dataclasses.replace(study, study=pinned)


def pin_encoders(study: Any, pins: dict[str, Any]) -> Any:
    """The LoadedStudy with its ``encoders:`` fields that name hub weights rewritten to the commit
    their feature-cache ids hold (``org/repo@commit``, from the encoder kinds' ``pin``), so that
    every worker loads those weights; unchanged when there is nothing to pin."""
    if not pins:
        return study
    pinned = study.study.model_copy(update={"encoders": {**study.study.encoders, **pins}})
    return dataclasses.replace(study, study=pinned)


def _supported(source: ModelSource) -> ModelSource:
    if source.arch == "sdxl":
        raise BadInput(
            f"model {source.value}: an SDXL model; training supports SD1.x/SD2.x only for now "
            "(use an SD1.5 model such as stable-diffusion-v1-5/stable-diffusion-v1-5)"
        )
    return source


def _download_small(repo_id: str, filename: str, revision: str | None = None) -> Path | None:
    if hub_offline():
        return None
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(repo_id, filename, revision=revision))
    except Exception:  # noqa: BLE001 - the arch check is then left to loading
        return None


def _read_json(path: Path, *, what: str) -> dict[str, Any]:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise BadInput(f"{what}: unreadable {path} ({type(exc).__name__})") from None
