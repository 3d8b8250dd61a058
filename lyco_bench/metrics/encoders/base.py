"""What every encoder shares: the encoder registry ``ENCODERS``, the declaration an encoder kind
makes (:class:`EncoderKind`), and the preprocessing and weights helpers the built-ins use.

An encoder kind is its own module (``lyco_bench/metrics/encoders/<kind>.py``, or a module of another
package named under the ``lyco_bench.encoders`` entry point) that calls :func:`register_encoder`.
Its declaration tells the pipeline everything it needs without naming the kind anywhere else: the
settings fields it adds to ``EncoderSettings`` (flat keys of a study's ``encoders:`` block), the
feature-cache id, how to load it and check its weights, its feature width and forward cost (for
``plan``), its tiny random build (``make-tiny-encoders``, ``tiny:``) and which inputs it encodes.

Reference-image modes (the paper, §5, as the paper's evaluation code did with open_clip's
transform): ``resize`` squashes to S×S, ``crop`` resizes the short side to S then centre-crops,
``padding`` resizes the long side to S and pads the rest with black. For a square image all three
give the same pixels, which the feature cache uses (see ``canonical_mode``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from pydantic import BaseModel

from lyco_bench.errors import BadInput
from lyco_bench.metrics import profiles
from lyco_bench.registry import Registry, accept_instances
from lyco_bench.utils import pickle_refusal, sha256_bytes, sha256_file

MODES = ("resize", "crop", "padding")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def canonical_mode(size: tuple[int, int], mode: str) -> str:
    """The mode under which an image of ``size`` is cached: square images look alike in every mode."""
    return "resize" if size[0] == size[1] else mode


def preprocess(image: Image.Image, *, mode: str, size: int, mean, std, profile: str = "lyco") -> torch.Tensor:
    """PIL image → normalized (3, size, size) tensor, bicubic resampling.

    ``profile="paper"``: the paper's order (resize in the image's own mode, then RGB; see
    :func:`lyco_bench.metrics.profiles.paper_square`).
    """
    if mode not in MODES:
        raise BadInput(f"mode {mode!r}: expected one of {', '.join(MODES)}")
    if profile == "paper":
        return normalize(to_tensor(profiles.paper_square(image, mode=mode, size=size)), mean, std)
    image = image.convert("RGB")
    w, h = image.size
    if mode == "resize":
        image = image.resize((size, size), Image.BICUBIC)
    elif mode == "crop":
        image = profiles.resize_center_crop(image, size)  # as open_clip's eval transform
    else:
        # open_clip's ResizeKeepRatio(longest=1) + CenterCropOrPad: sides rounded, pad split low-first.
        ratio = max(w / size, h / size)
        nw, nh = max(1, round(w / ratio)), max(1, round(h / ratio))
        canvas = Image.new("RGB", (size, size), (0, 0, 0))
        canvas.paste(image.resize((nw, nh), Image.BICUBIC), ((size - nw) // 2, (size - nh) // 2))
        image = canvas
    return normalize(to_tensor(image), mean, std)


def to_tensor(image: Image.Image) -> torch.Tensor:
    data = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8)
    return data.view(image.size[1], image.size[0], 3).permute(2, 0, 1).float() / 255.0  # (3, H, W)


def normalize(x: torch.Tensor, mean, std) -> torch.Tensor:
    return (x - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)


def resolve_device(device: str | None) -> torch.device:
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(device)


def load_error(kind: str, source: str, exc: Exception) -> BadInput:
    import pickle

    cause: BaseException | None = exc
    while cause is not None:  # refused by torch.load(weights_only=True), maybe wrapped by a library
        if isinstance(cause, pickle.UnpicklingError) or "Weights only load failed" in str(cause):
            return BadInput(f"encoder {kind} {source!r}: {pickle_refusal(cause)}")
        cause = cause.__cause__ or cause.__context__
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return BadInput(f"encoder {kind} {source!r}: cannot load ({first[:200]})")


@functools.lru_cache(maxsize=64)
def _local_weights_id(path: Path, stamp: tuple) -> str:
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    suffixes = {".safetensors", ".json", ".bin", ".pt", ".pth"}
    digest = "".join(sha256_file(p) for p in files if p.suffix in suffixes)
    return f"{path.name}@{sha256_bytes(digest.encode())[:12]}"


def source_tag(source: str) -> str:
    """A hub id as given; a local path as its name plus a content hash of its weights.

    The cache keys on this, so replacing a local weights file invalidates its features.
    """
    path = Path(source)
    if not path.exists():
        return source
    files = sorted(path.rglob("*")) if path.is_dir() else [path]
    stamp = tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in files if p.is_file())
    return _local_weights_id(path.resolve(), stamp)


def split_hub_file(spec: str) -> tuple[str, str | None, str] | None:
    """``owner/repo[@rev]/path/in/repo`` → (``owner/repo``, rev or None, ``path/in/repo``); None
    when ``spec`` has fewer than three parts."""
    parts = spec.split("/")
    if len(parts) < 3 or not all(parts[:3]):
        return None
    name, _, revision = parts[1].partition("@")
    return f"{parts[0]}/{name}", revision or None, "/".join(parts[2:])


def source_label(kind: str, source: str) -> str:
    """Readable encoder name for result rows (a local path shows its last component; a hub id,
    the repo without the commit a sweep pinned it to)."""
    from lyco_bench.models import split_revision

    return f"{kind}:{Path(source).name}" if Path(source).exists() else f"{kind}:{split_revision(source)[0]}"


# Bumped when the image preprocessing changes, so cached features of the old pixels go unused
# (2: crop/padding round as open_clip's transforms; CLIP images through open_clip's own).
PREPROCESS_VERSION = 2  # read at call time (base.PREPROCESS_VERSION), so a test may bump it


def profile_tag(profile: str, precision: str = "float32") -> str:
    """What a profile and a resolved precision add to an encoder id (``lyco`` in float32: nothing,
    so its cached features stay valid)."""
    return ("" if profile == "lyco" else f":{profile}") + ("" if precision == "float32" else f":{precision}")


def load_state_file(path: str | Path, *, what: str) -> dict[str, torch.Tensor]:
    """A state dict from safetensors or a torch file read with ``weights_only=True`` (never a general
    unpickle); ``{"state_dict": …}`` wrappers and ``module.`` prefixes (DDP) are removed."""
    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # safetensors / the restricted unpickler raise many types
        raise load_error(what, str(path), exc) from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise BadInput(f"encoder {what} {str(path)!r}: not a state dict of tensors")
    if state and all(k.startswith("module.") for k in state):
        state = {k.removeprefix("module."): v for k, v in state.items()}
    return state


def vit_flops(layers: int, width: int, patch: int, image: int) -> float:
    """One ViT forward: per layer and token 12·width² multiply-adds (QKV 3, output 1, MLP 8), and
    2·tokens·width for attention (QKᵀ, AV); 2 FLOPs each. ViT-L/14 at 224 px: 1.62e11."""
    tokens = (image // patch) ** 2 + 1
    return 2.0 * layers * (12 * tokens * width**2 + 2 * tokens**2 * width)


@dataclass(frozen=True)
class EncoderKind:
    """What the pipeline needs from one encoder kind (module docstring); ``settings`` holds the
    study's whole ``EncoderSettings`` (its own fields among them), ``fields`` the raw ``encoders:``
    block of a study as written (``tiny:`` values unresolved), ``tiny`` whether its weights are the
    tiny random ones."""

    name: str
    settings: type[BaseModel]
    """Its fields of ``EncoderSettings`` (flat: ``dino``, ``dino_image_size``, …), with defaults."""
    weights_field: str
    """The field naming its weights (``tiny:`` and ``world:`` values go there)."""
    identity: Callable[[Any], str]
    """settings → the id the feature cache keys on (weights' content, preprocessing, profile)."""
    load: Callable[[Any], Any]
    """settings → the encoder: ``prepare(image, mode)``/``forward(inputs)`` (or ``encode_images``),
    ``encode_texts`` for a text tower, ``id`` and ``label``."""
    check_source: Callable[[Any], None]
    """settings → BadInput when the weights cannot be found (local path, cache or hub)."""
    feature_dim: Callable[[dict[str, Any], bool], int]
    """(fields, tiny) → width of one feature vector, without loading the weights (``plan``)."""
    pin: Callable[[Any], dict[str, Any]] | None = None
    """settings → its fields that name hub weights, rewritten to the commit they resolve to now
    (``org/repo@<sha>``; the local HF cache offline, the hub online), so that the feature-cache id
    records the commit and every worker loads it; ``{}`` for local weights (None: nothing to pin)."""
    label: Callable[[Any], str] | None = None
    """settings → the readable name in result rows (None: ``<kind>:<weights name>``)."""
    flops: Callable[[dict[str, Any], bool], float] | None = None
    """(fields, tiny) → FLOPs of one image's forward (``plan``'s compute estimate; None: unknown)."""
    make_tiny: Callable[[Path, int], dict[str, Any]] | None = None
    """(folder, seed) → its settings fields pointing at tiny random weights written there."""
    path_fields: tuple[str, ...] = ()
    """Fields that may name a local file or folder (resolved like paths); the weights field always."""
    title: str = ""
    """How messages name it (``a DINOv2``)."""
    native: bool = False
    """One preprocessing of its own whatever the reference mode: features cached under ``native``."""
    streamed: bool = False
    """Features of generated images are reduced as they are computed, never stored."""
    text: bool = False
    """Has a text tower (``encode_texts``)."""
    image: bool = False
    """May be listed in ``image_encoders`` (image similarity, centroid, Vendi, Fréchet)."""
    order: int = 100
    """Position in listings and plans (built-ins first, in the paper's order)."""

    def label_of(self, settings: Any) -> str:
        if self.label is not None:
            return self.label(settings)
        return source_label(self.name, getattr(settings, self.weights_field))

    def all_path_fields(self) -> tuple[str, ...]:
        return (self.weights_field, *(f for f in self.path_fields if f != self.weights_field))


ENCODERS: Registry[EncoderKind] = Registry(
    "encoder",
    entry_point="lyco_bench.encoders",
    packages=("lyco_bench.metrics.encoders",),
    skip=frozenset({"base"}),
    accept=accept_instances(EncoderKind, lambda obj: obj.name),
    order=lambda e: e.order,
)
"""Every encoder kind by name, discovered on first use: the package's encoder files, then the
``lyco_bench.encoders`` entry points."""


def register_encoder(kind: EncoderKind) -> EncoderKind:
    """Add ``kind`` to :data:`ENCODERS` (re-registering the same entry is a no-op)."""
    if not isinstance(kind, EncoderKind):
        raise TypeError(f"register_encoder takes an EncoderKind, not {type(kind).__name__}")
    return ENCODERS.register(kind.name, kind)


def encoder_kind(name: str) -> EncoderKind:
    """The registered kind ``name``; BadInput listing the known ones otherwise."""
    if name not in ENCODERS:
        raise BadInput(f"encoder {name!r}: unknown (expected one of {', '.join(ENCODERS)})")
    return ENCODERS[name]


def encoder_path_fields() -> tuple[str, ...]:
    """Every ``EncoderSettings`` field that may name a local file or folder."""
    return tuple(f for kind in ENCODERS.values() for f in kind.all_path_fields())
