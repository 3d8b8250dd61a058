"""Where a study's model and encoders come from, checked before any job runs, with their identity.

A model or encoder is given as a local path (a diffusers / transformers / open_clip folder, a
single ``.safetensors`` file) or a hub id. Before a sweep starts, each one must be resolvable —
a local path that exists, a hub id in the local Hugging Face cache or, when online, on the hub —
and a model must be of a model family the trainer knows (lyco_bench.families: SD1.x/SD2.x, SDXL,
…), which it is resolved to. Each also gets an
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
from lyco_bench.families import DEFAULT_FAMILY, family_for_class
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
    """``sd1`` | ``sd2`` | ``sdxl`` | … (lyco_bench.models.model_kind; a family's name otherwise)"""
    identity: str
    family: str = "sd1"
    """The model family (lyco_bench.families) its jobs train and sample with."""


def local_identity(path: Path, hasher: FileHasher) -> str:
    """``<name>@<hash>`` of a file, or of a folder's weight/config files (relative paths + bytes)."""
    if path.is_file():
        return f"{path.name}@{hasher(path)[:16]}"
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in WEIGHT_SUFFIXES)
    listing = [(p.relative_to(path).as_posix(), hasher(p)) for p in files]
    return f"{path.name}@{stable_hash(listing, length=16)}"


def resolve_model(value: str, *, hasher: FileHasher) -> ModelSource:
    """Check that ``value`` names a model of a known family; its identity and family."""
    from lyco_bench.models import (
        PICKLE_SUFFIXES,
        _folder_family,
        _looks_like_path,
        _single_file_family,
        split_revision,
    )

    path = Path(value).expanduser()
    if path.suffix in PICKLE_SUFFIXES:
        raise BadInput(f"model {value}: pickled checkpoints are not loaded (convert it to .safetensors)")
    if path.is_file():
        family = _single_file_family(path).name
        return ModelSource(value, "file", family, local_identity(path, hasher), family)
    if path.is_dir():
        family = _folder_family(f"model {value}", path)
        config = path / family.denoiser_attr / "config.json"
        arch = _arch(family.name, _read_json(config, what=f"model {value}") if config.is_file() else {})
        return ModelSource(value, "folder", arch, local_identity(path, hasher), family.name)
    if _looks_like_path(value):
        raise BadInput(f"model {value}: no such file or folder")
    repo, revision = split_revision(value)
    identity, snapshot = hub_identity(repo, "model_index.json", what="model", revision=revision)
    commit = identity.rpartition("@")[2]
    index = snapshot / "model_index.json" if snapshot is not None else None
    if index is None or not index.is_file():
        index = _download_small(repo, "model_index.json", commit)
    class_name = _read_json(index, what=f"model {value}").get("_class_name", "") if index else ""
    family = family_for_class(class_name)
    name = family.name if family is not None else DEFAULT_FAMILY  # unknown offline: loading checks it
    folder = family.denoiser_attr if family is not None else "unet"
    config = snapshot / folder / "config.json" if snapshot is not None else None
    if config is None or not config.is_file():
        config = _download_small(repo, f"{folder}/config.json", commit)
    arch = _arch(name, _read_json(config, what=f"model {value}")) if config else name
    return ModelSource(value, "hub", arch, identity, name)


def _arch(family: str, denoiser_config: dict[str, Any]) -> str:
    """``sd1``/``sd2`` within the SD1 family (by cross-attention width), else the family's name."""
    from lyco_bench.models import model_kind

    return model_kind(denoiser_config) if family == DEFAULT_FAMILY and denoiser_config else family


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
