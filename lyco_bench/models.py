"""Diffusion pipelines: load one from a hub id, a local folder or a single file; build a tiny one.

``load_pipeline`` is the one way every stage gets a model, so a tiny random-weight pipeline made by
``make_tiny_model`` (offline, from config) goes through the same code as SD1.5 does. What differs
between model families (pipeline class, how a single file or a folder is recognised, dtype rules,
the tiny build) is asked of the family (lyco_bench.families). The SD1 tiny model keeps SD1.x's
structure — cross-attention UNet, a VAE that downsamples 8×, a CLIP text encoder and the real CLIP
BPE tokenizer — at a size that trains on a CPU in seconds; the SDXL one adds SDXL's parts.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
from pathlib import Path
from typing import Any

import torch

from lyco_bench.errors import BadInput
from lyco_bench.families import (
    DEFAULT_FAMILY,
    FAMILIES,
    ModelFamily,
    family_for_class,
    family_of,
    family_of_checkpoint,
    get_family,
)
from lyco_bench.utils import atomic_folder, console

SINGLE_FILE_SUFFIXES = (".safetensors",)
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")

# The SD1 tiny model's configs and schedule live with their family; re-exported for their users.
from lyco_bench.families._clip import clip_tokenizer  # noqa: E402,F401 - re-exported
from lyco_bench.families.sd1 import SD_SCHEDULE, TINY_TEXT, TINY_UNET, TINY_VAE  # noqa: E402,F401


@contextlib.contextmanager
def _quiet_hf():
    """Silence diffusers'/transformers' own progress bars (ours are the ones users see)."""
    from diffusers.utils import logging as dlog
    from transformers.utils import logging as tlog

    was_on = dlog.is_progress_bar_enabled(), tlog.is_progress_bar_enabled()
    dlog.disable_progress_bar()
    tlog.disable_progress_bar()
    try:
        yield
    finally:
        if was_on[0]:
            dlog.enable_progress_bar()
        if was_on[1]:
            tlog.enable_progress_bar()


def make_tiny_model(out_dir: str | Path, *, seed: int = 0, family: str = DEFAULT_FAMILY) -> Path:
    """Build a tiny random-weight pipeline of ``family`` offline and save it as a diffusers folder.

    ``out_dir`` must be absent or empty. Same seed → byte-identical files. The global torch RNG
    is left as it was.
    """
    maker = get_family(family)
    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise BadInput(f"{out_dir}: already exists and is not an empty folder")
    with atomic_folder(out_dir) as tmp, _quiet_hf():  # written beside, renamed: never half a model
        maker.make_tiny(Path(tmp), seed=seed)
    return out_dir


def model_kind(unet_config: Any) -> str:
    """``"sdxl"`` for UNets with SDXL's added time/text embeddings, ``"sd2"`` for 1024-d
    cross-attention, else ``"sd1"``."""
    get = unet_config.get if isinstance(unet_config, dict) else lambda k, d=None: getattr(unet_config, k, d)
    if get("addition_embed_type") == "text_time":
        return "sdxl"
    return "sd2" if get("cross_attention_dim") == 1024 else "sd1"


def _looks_like_path(model: str) -> bool:
    return (
        model.startswith((".", "/", "~"))
        or model.endswith(SINGLE_FILE_SUFFIXES + PICKLE_SUFFIXES)
        or model.count("/") != 1
    )


def _single_file_family(path: Path) -> ModelFamily:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            keys = list(fh.keys())
    except Exception as exc:  # safetensors raises its own error types for bad headers
        raise BadInput(f"{path}: not a readable safetensors file ({exc})") from None
    family = family_of_checkpoint(keys)
    if family is None:
        raise BadInput(f"{path}: not a checkpoint of a known model family ({', '.join(sorted(FAMILIES))})")
    return family


def _single_file_kind(path: Path) -> str:
    """The family name of a single-file checkpoint (kept for callers that name the architecture)."""
    return _single_file_family(path).name


def _load_single_file(path: Path, *, config: str | None, dtype: torch.dtype):
    family = _single_file_family(path)
    kwargs: dict[str, Any] = dict(dtype=dtype, **family.load_kwargs())
    if config is not None:
        if not (Path(config) / "model_index.json").is_file():
            raise BadInput(f"{config}: --config must be a diffusers model folder (no model_index.json)")
        kwargs.update(config=str(config), local_files_only=True)
    try:
        return family.after_load(family.pipeline_class().from_single_file(str(path), **kwargs), dtype)
    except (OSError, ValueError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise BadInput(
            f"{path}: could not load as a single-file checkpoint ({first}); offline, pass --config "
            "with a local diffusers folder of the same architecture"
        ) from None


def split_revision(model: str) -> tuple[str, str | None]:
    """``org/repo@rev`` → (``org/repo``, ``rev``): a hub id pinned to a commit (or branch, tag); a
    local path or an unpinned id → (itself, None). Hub repo ids cannot contain ``@``."""
    if "@" not in model or Path(model).expanduser().exists():
        return model, None
    repo, _, revision = model.rpartition("@")
    return (repo, revision) if repo and revision and not _looks_like_path(repo) else (model, None)


def _load_folder_or_hub(model: str, *, dtype: torch.dtype):
    from diffusers import DiffusionPipeline

    local = Path(model).expanduser()
    # A sweep's jobs name a hub model as ``repo@commit``: the weights its job id was made of.
    repo, revision = split_revision(model) if not local.is_dir() else (model, None)
    family = _folder_family(model, local) if local.is_dir() else None
    if family is not None:
        cls = family.pipeline_class()
    else:
        _check_hub_id(repo, revision)
        cls = DiffusionPipeline
    # use_safetensors=True: a folder (or hub repo) holding only pickled .bin weights is refused
    # rather than unpickled, for every component (UNet, VAE, text encoder).
    kwargs: dict[str, Any] = dict(dtype=dtype, use_safetensors=True)
    if revision is not None:
        kwargs["revision"] = revision
    # A hub repo's family is known once its model_index.json is read: diffusers picks the class,
    # and the SD1 family's arguments (no safety checker) are passed unless another family's class
    # is in the folder.
    kwargs.update((family or FAMILIES[DEFAULT_FAMILY]).load_kwargs())
    try:
        with contextlib.nullcontext() if local.is_dir() else _hf_warnings_off():
            pipe = cls.from_pretrained(str(local) if local.is_dir() else repo, **kwargs)
    except (OSError, ValueError) as exc:
        if local.is_dir() and _pickle_only(local):
            raise BadInput(
                f"{model}: the weights are pickled (.bin), not .safetensors; they are not loaded "
                "(convert the folder to safetensors)"
            ) from None
        where = "could not load the model" if local.is_dir() else "no such folder, nor loadable from the hub"
        raise BadInput(f"{model}: {where} ({_first_sentence(exc)})") from None
    return family_of(pipe).after_load(pipe, dtype)


def _folder_family(model: str, local: Path) -> ModelFamily:
    index = local / "model_index.json"
    if not index.is_file():
        raise BadInput(f"{model}: not a diffusers pipeline folder (no model_index.json)")
    class_name = json.loads(index.read_text(encoding="utf-8")).get("_class_name", "")
    family = family_for_class(class_name)
    if family is None:
        known = ", ".join(c for f in FAMILIES.values() for c in f.pipeline_classes)
        raise BadInput(f"{model}: unsupported pipeline class {class_name!r} (known: {known})")
    return family


def _pickle_only(folder: Path) -> bool:
    """True when some component folder has pickled weights and no safetensors beside them."""
    for part in folder.iterdir():
        if part.is_dir():
            names = [f.suffix for f in part.iterdir()]
            if ".safetensors" not in names and any(n in PICKLE_SUFFIXES for n in names):
                return True
    return False


def _first_sentence(exc: BaseException) -> str:
    """The gist of a hub/diffusers error, whose messages run over several lines of advice."""
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text.split(" (")[0].split(". ")[0].rstrip(".")


def hub_offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE) or os.environ.get("HF_HUB_OFFLINE", "").upper() in (
        "1",
        "ON",
        "YES",
        "TRUE",
    )


def _check_hub_id(model: str, revision: str | None = None) -> None:
    """Offline, a hub id must already be in the local Hugging Face cache: say so in one line
    instead of diffusers' warning about the unreachable hub followed by its error."""
    from huggingface_hub import try_to_load_from_cache

    if not hub_offline():
        return
    try:
        cached = try_to_load_from_cache(model, "model_index.json", revision=revision)
    except ValueError:  # huggingface_hub's HFValidationError: not a repo id at all
        raise BadInput(f"{model}: no such file or folder") from None
    if not isinstance(cached, str):
        at = f" at revision {revision}" if revision else ""
        raise BadInput(
            f"{model}: no such folder, and not in the local Hugging Face cache{at} (HF_HUB_OFFLINE=1)"
        )


@contextlib.contextmanager
def _hf_warnings_off():
    """diffusers warns "Couldn't connect to the Hub … Will try to load from local cache" before
    failing; the one-line BadInput says it all."""
    from diffusers.utils import logging as dlog

    level = dlog.get_verbosity()
    dlog.set_verbosity_error()
    try:
        yield
    finally:
        dlog.set_verbosity(level)


def local_model_bytes(model: str | Path) -> int:
    """Bytes of a local model's weights (a .safetensors file or a folder's), 0 for a hub id:
    an estimate of what saving a merged copy needs on disk."""
    path = Path(model).expanduser()
    if path.is_file():
        return path.stat().st_size
    if path.is_dir():
        return sum(f.stat().st_size for f in path.rglob("*.safetensors") if f.is_file())
    return 0


def check_model_weights(model: str | Path) -> None:
    """BadInput naming the file when a local model's .safetensors weights are damaged (a header
    that does not parse, or a file shorter or longer than its header says: a partial copy).

    Reads the headers only, so a run can refuse a broken model before any job writes anything
    (a hub id is checked when it is loaded)."""
    path = Path(model).expanduser()
    files = [path] if path.is_file() else sorted(path.rglob("*.safetensors")) if path.is_dir() else []
    for file in files:
        if file.suffix == ".safetensors":
            _check_complete(file)


def _check_complete(path: Path) -> None:
    size = path.stat().st_size
    try:
        with open(path, "rb") as fh:
            length = int.from_bytes(fh.read(8), "little")
            if not 2 <= length <= size - 8:
                raise ValueError("bad header length")
            header = json.loads(fh.read(length).decode("utf-8"))
        ends = [int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"]
    except (OSError, ValueError, KeyError, TypeError, IndexError, AttributeError) as exc:
        raise BadInput(f"{path}: damaged safetensors file ({_first_sentence(exc)})") from None
    need = 8 + length + max(ends, default=0)
    if size != need:
        raise BadInput(f"{path}: damaged safetensors file ({size} bytes, its header says {need})")


def load_pipeline(
    model: str | Path,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    config: str | Path | None = None,
):
    """Load an SD pipeline from a hub id, a local diffusers folder or a single ``.safetensors`` file.

    The safety checker is off and progress bars are silenced; the scheduler is left as saved.
    A single file is converted by diffusers' single-file loader, which needs the diffusers configs
    of the architecture: from the hub, or — offline — a local folder given as ``config`` (e.g. a
    local copy of ``stable-diffusion-v1-5`` for a real SD1.5 checkpoint, or the tiny model's folder).
    Pickled checkpoints (``.ckpt``, ``.bin``) are refused: never unpickle a file a user hands in.
    """
    name = str(model)
    path = Path(name).expanduser()
    if path.suffix in PICKLE_SUFFIXES:
        raise BadInput(f"{name}: pickled checkpoints are not loaded (convert it to .safetensors)")
    with _quiet_hf():
        pipe = _load_any(name, path, config=config, dtype=dtype)
    family = family_of(pipe)
    if getattr(pipe, family.denoiser_attr, None) is None or getattr(pipe, "vae", None) is None:
        raise BadInput(f"{name}: not a {family.name} pipeline (no {family.denoiser_attr}/vae)")
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def _load_any(name: str, path: Path, *, config: str | Path | None, dtype: torch.dtype):
    if path.is_file():
        if path.suffix not in SINGLE_FILE_SUFFIXES:
            raise BadInput(f"{name}: not a model (expected a diffusers folder or a .safetensors file)")
        return _load_single_file(path, config=None if config is None else str(config), dtype=dtype)
    if not path.exists() and _looks_like_path(name):
        raise BadInput(f"{name}: no such file or folder")
    return _load_folder_or_hub(name, dtype=dtype)


def _cmd_make_tiny_model(args: argparse.Namespace) -> int:
    out = make_tiny_model(Path(args.dir), seed=args.seed, family=args.family)
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    console.print(f"tiny {args.family} pipeline (seed {args.seed}) written to {out} ({size / 1e6:.1f} MB)")
    return 0


def register_cli(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "make-tiny-model",
        help="build a tiny random-weight pipeline of a model family offline (for tests and the CPU demo)",
        description=(
            "Build a tiny pipeline of a model family from config (sd1: cross-attention UNet, 8x VAE, "
            "2-layer CLIP text encoder, the real CLIP BPE tokenizer; sdxl: the same with SDXL's "
            "text-time embedding and two CLIP encoders) and save it as a diffusers folder."
        ),
    )
    p.add_argument("dir", help="output folder (a diffusers pipeline folder)")
    p.add_argument("--seed", type=int, default=0, help="weight initialization seed (default 0)")
    p.add_argument(
        "--family",
        default=DEFAULT_FAMILY,
        choices=sorted(FAMILIES),
        help=f"model family (default {DEFAULT_FAMILY})",
    )
    p.set_defaults(func=_cmd_make_tiny_model)
