"""Stable Diffusion pipelines: load one from a hub id, a local folder or a single file; build a tiny one.

``load_pipeline`` is the one way every stage gets a model, so a tiny random-weight pipeline made by
``make_tiny_model`` (offline, from config) goes through the same code as SD1.5 does. The tiny
model keeps SD1.x's structure — cross-attention UNet, a VAE that downsamples 8×, a CLIP text
encoder and the real CLIP BPE tokenizer — at a size that trains on a CPU in seconds.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import gzip
import json
import os
from pathlib import Path
from typing import Any

import torch

from lyco_bench.errors import BadInput
from lyco_bench.utils import atomic_folder, console

SINGLE_FILE_SUFFIXES = (".safetensors",)
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")

# The tiny model (built from config: what the tests and the CPU demo run on). Sizes are the smallest
# that keep every structural feature the adapters and trainer touch.
TINY_UNET = dict(
    sample_size=8,
    in_channels=4,
    out_channels=4,
    layers_per_block=1,
    block_out_channels=(32, 64),
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=32,
    attention_head_dim=8,
    norm_num_groups=32,
)
TINY_VAE = dict(
    in_channels=3,
    out_channels=3,
    # 4 levels → 3 downsamplers → 8× like SD's VAE.
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(8, 16, 16, 16),
    layers_per_block=1,
    latent_channels=4,
    norm_num_groups=8,
    sample_size=64,
)
TINY_TEXT = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    max_position_embeddings=77,
    vocab_size=49408,
    projection_dim=32,
    bos_token_id=49406,
    eos_token_id=49407,
    pad_token_id=49407,
)
# SD1.x's noise schedule (v1-inference.yaml: linear_start 0.00085, linear_end 0.012, 1000 steps,
# "scaled_linear" = linear in sqrt(beta)).
SD_SCHEDULE = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    clip_sample=False,
    steps_offset=1,
    prediction_type="epsilon",
)


@functools.lru_cache(maxsize=1)
def _clip_bpe() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """CLIP's vocabulary and merges, rebuilt from the BPE file open_clip ships (as CLIP's
    ``SimpleTokenizer`` does): 256 byte characters, their ``</w>`` forms, one token per merge,
    then the two special tokens — 49,408 entries."""
    import open_clip

    bpe_path = Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"
    lines = gzip.open(bpe_path, "rt", encoding="utf-8").read().split("\n")
    # Line 0 is a version header; CLIP keeps the first 49152 - 256 - 2 merges.
    merges = [tuple(line.split()) for line in lines[1 : 49152 - 256 - 2 + 1]]
    byte_chars = list(_bytes_to_unicode().values())
    tokens = byte_chars + [c + "</w>" for c in byte_chars] + ["".join(m) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return {tok: i for i, tok in enumerate(tokens)}, merges


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible map from bytes to printable unicode characters."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in chars), strict=True))


def clip_tokenizer(*, model_max_length: int = 77):
    """The real CLIP BPE tokenizer (SD1.x's), built offline from open_clip's vocabulary.

    Built with ``vocab=``/``merges=``: on transformers 5.x ``vocab_file=``/``merges_file=`` are
    silently ignored and give a three-token tokenizer (docs/protocol.md §10).
    """
    from transformers import CLIPTokenizer

    vocab, merges = _clip_bpe()
    return CLIPTokenizer(vocab=dict(vocab), merges=list(merges), model_max_length=model_max_length)


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


def make_tiny_model(out_dir: str | Path, *, seed: int = 0) -> Path:
    """Build a tiny random-weight SD1.x pipeline offline and save it as a diffusers folder.

    ``out_dir`` must be absent or empty. Same seed → byte-identical files. The global torch RNG
    is left as it was.
    """
    from diffusers import AutoencoderKL, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise BadInput(f"{out_dir}: already exists and is not an empty folder")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(**TINY_UNET)
        vae = AutoencoderKL(**TINY_VAE)
        text_encoder = CLIPTextModel(CLIPTextConfig(**TINY_TEXT))
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=clip_tokenizer(),
        unet=unet,
        scheduler=DDPMScheduler(**SD_SCHEDULE),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    with atomic_folder(out_dir) as tmp, _quiet_hf():  # written beside, renamed: never half a model
        pipe.save_pretrained(tmp, safe_serialization=True)
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


def _pipeline_class(kind: str):
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    return StableDiffusionXLPipeline if kind == "sdxl" else StableDiffusionPipeline


def _single_file_kind(path: Path) -> str:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            keys = list(fh.keys())
    except Exception as exc:  # safetensors raises its own error types for bad headers
        raise BadInput(f"{path}: not a readable safetensors file ({exc})") from None
    if any(k.startswith("conditioner.embedders.1.") for k in keys):
        return "sdxl"
    if not any(k.startswith("model.diffusion_model.") for k in keys):
        raise BadInput(f"{path}: not a Stable Diffusion checkpoint (no model.diffusion_model.* weights)")
    return "sd1"


def _load_single_file(path: Path, *, config: str | None, dtype: torch.dtype):
    kind = _single_file_kind(path)
    kwargs: dict[str, Any] = dict(dtype=dtype, safety_checker=None)
    if config is not None:
        if not (Path(config) / "model_index.json").is_file():
            raise BadInput(f"{config}: --config must be a diffusers model folder (no model_index.json)")
        kwargs.update(config=str(config), local_files_only=True)
    if kind == "sd1":
        kwargs["requires_safety_checker"] = False
    try:
        return _pipeline_class(kind).from_single_file(str(path), **kwargs)
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
    if local.is_dir():
        cls = _folder_pipeline_class(model, local)
    else:
        _check_hub_id(repo, revision)
        cls = DiffusionPipeline
    # use_safetensors=True: a folder (or hub repo) holding only pickled .bin weights is refused
    # rather than unpickled, for every component (UNet, VAE, text encoder).
    kwargs: dict[str, Any] = dict(dtype=dtype, use_safetensors=True)
    if revision is not None:
        kwargs["revision"] = revision
    if cls.__name__ != "StableDiffusionXLPipeline":  # SDXL has no safety checker
        kwargs.update(safety_checker=None, requires_safety_checker=False)
    try:
        with contextlib.nullcontext() if local.is_dir() else _hf_warnings_off():
            return cls.from_pretrained(str(local) if local.is_dir() else repo, **kwargs)
    except (OSError, ValueError) as exc:
        if local.is_dir() and _pickle_only(local):
            raise BadInput(
                f"{model}: the weights are pickled (.bin), not .safetensors; they are not loaded "
                "(convert the folder to safetensors)"
            ) from None
        where = "could not load the model" if local.is_dir() else "no such folder, nor loadable from the hub"
        raise BadInput(f"{model}: {where} ({_first_sentence(exc)})") from None


def _folder_pipeline_class(model: str, local: Path):
    index = local / "model_index.json"
    if not index.is_file():
        raise BadInput(f"{model}: not a diffusers pipeline folder (no model_index.json)")
    class_name = json.loads(index.read_text(encoding="utf-8")).get("_class_name", "")
    if class_name not in ("StableDiffusionPipeline", "StableDiffusionXLPipeline"):
        raise BadInput(f"{model}: unsupported pipeline class {class_name!r} (Stable Diffusion only)")
    return _pipeline_class("sdxl" if "XL" in class_name else "sd1")


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
    if getattr(pipe, "unet", None) is None or getattr(pipe, "vae", None) is None:
        raise BadInput(f"{name}: not a Stable Diffusion pipeline (no unet/vae)")
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
    out = make_tiny_model(Path(args.dir), seed=args.seed)
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    console.print(f"tiny SD pipeline (seed {args.seed}) written to {out} ({size / 1e6:.1f} MB)")
    return 0


def register_cli(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "make-tiny-model",
        help="build a tiny random-weight SD1.x pipeline offline (for tests and the CPU demo)",
        description=(
            "Build a tiny Stable Diffusion 1.x pipeline from config (cross-attention UNet, 8x VAE, "
            "2-layer CLIP text encoder, the real CLIP BPE tokenizer) and save it as a diffusers folder."
        ),
    )
    p.add_argument("dir", help="output folder (a diffusers pipeline folder)")
    p.add_argument("--seed", type=int, default=0, help="weight initialization seed (default 0)")
    p.set_defaults(func=_cmd_make_tiny_model)
