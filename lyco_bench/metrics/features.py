"""Encoder settings, lazily loaded encoders and cached feature extraction for image sets and texts.

``image_features`` hashes each file, looks every (hash, encoder id, mode) up in the
:class:`~lyco_bench.metrics.cache.FeatureCache` and encodes only the misses, in batches; an
encoder is loaded the first time a miss needs it, so a fully cached run loads no model at all.
Loader threads decode and preprocess the next batches while the encoder runs (``encode_batches``),
and a pool's encoders share the decoded pictures (``DecodedImages``).
"""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from PIL import Image
from pydantic import Field, create_model, field_validator

from lyco_bench.config import StrictModel
from lyco_bench.errors import BadInput
from lyco_bench.metrics.cache import FeatureCache, text_key
from lyco_bench.metrics.encoders import ENCODERS, canonical_mode, encoder_kind
from lyco_bench.utils import progress_bar, sha256_file

Mode = Literal["resize", "crop", "padding"]


class CommonEncoderSettings(StrictModel):
    """The settings every encoder shares; ``EncoderSettings`` adds each registered encoder's own
    fields (``dino``, ``clip``, ``vgg``, ``hps``, …: :class:`lyco_bench.metrics.encoders.EncoderKind`)."""

    modes: tuple[Mode, ...] = ("resize", "crop", "padding")
    """How reference (dataset) images are brought to the encoder's square input."""
    image_encoders: tuple[str, ...] = ("dinov2",)
    """Encoders for image similarity, centroid distance, Vendi and Fréchet (the paper's main: DINOv2)."""
    style_categories: tuple[str, ...] | None = None
    """Categories whose concepts are styles, scored with the style loss against the dataset. None:
    the categories that got no ``<style>`` prompts in a manifest that has some (prompt sets skip
    them for styles), else those named ``style``/``styles``."""
    experimental: bool = True
    """Also compute experimental metrics (``clip_iqa``)."""
    profile: Literal["lyco", "paper"] = "lyco"
    """Evaluation profile (docs/protocol.md §5.7): ``paper`` computes what the paper's evaluation
    code computed (its preprocessing order and rounding, VGG Grams after the in-place ReLUs,
    torch.hub DINOv2's position embeddings, fp16 autocast on CUDA, subclass-then-concept
    averages, ``<alter>`` Vendi in blocks of 10); ``lyco``: lyco-bench's own choices."""
    precision: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    """Autocast dtype of the encoders' forward passes. ``auto``: float16 on CUDA (what the paper
    did; features within 1e-4 in cosine of float32, docs/protocol.md §5.7), float32 elsewhere.
    Resolved on the machine that plans; a half precision is part of the encoders' cache ids."""
    batch_size: int = Field(16, ge=1)
    device: str | None = None
    """``cuda``, ``cpu``…; None: the GPU when there is one."""

    def resolved_precision(self) -> str:
        """``precision`` with ``auto`` resolved for this settings' device (else this machine's)."""
        from lyco_bench.metrics.profiles import resolve_precision
        from lyco_bench.utils import default_device

        return resolve_precision(self.precision, self.device or default_device())

    @field_validator("image_encoders")
    @classmethod
    def _image_kinds(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        known = [k for k, e in ENCODERS.items() if e.image]
        for kind in value:
            if kind not in known:
                raise ValueError(f"{kind!r} is not an image encoder (expected one of {', '.join(known)})")
        return value


@functools.cache
def _settings_model() -> type[CommonEncoderSettings]:
    """``EncoderSettings``: the shared fields plus every registered encoder's own, flat (the keys
    of a study's ``encoders:`` block), built once the registry has been discovered."""
    fields: dict[str, Any] = {}
    for kind in ENCODERS.values():
        for name, info in kind.settings.model_fields.items():
            if name in fields or name in CommonEncoderSettings.model_fields:
                raise ValueError(f"encoder {kind.name}: setting {name!r} is taken by another encoder")
            fields[name] = (info.annotation, info)
    model = create_model("EncoderSettings", __base__=CommonEncoderSettings, __module__=__name__, **fields)
    model.__doc__ = "Which encoders score a checkpoint (the paper's defaults, §5) and how they run."
    return model


def __getattr__(name: str) -> Any:
    if name == "EncoderSettings":
        return _settings_model()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class EncoderPool:
    """Loads each encoder on first use and keeps it; ids are known without loading anything."""

    def __init__(self, settings: Any):
        self.settings = settings
        self._loaded: dict[str, object] = {}
        self.loads: list[str] = []
        self.passes: Counter[str] = Counter()
        """Inputs each encoder has processed (images per kind, texts as ``<kind>-text``)."""
        self.decoded = DecodedImages()
        """Pictures decoded for one encoder, kept for the others."""

    def id(self, kind: str) -> str:
        return encoder_kind(kind).identity(self.settings)

    def label(self, kind: str) -> str:
        return encoder_kind(kind).label_of(self.settings)

    def get(self, kind: str):
        if kind not in self._loaded:
            self._loaded[kind] = encoder_kind(kind).load(self.settings)
            self.loads.append(kind)
        return self._loaded[kind]


_HASHES: dict[tuple[str, int, int], str] = {}


def file_hash(path: Path) -> str:
    """sha256 of a file's bytes, remembered per (path, size, mtime) within the process."""
    try:
        st = path.stat()
    except OSError:
        raise BadInput(f"{path}: image file missing") from None
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key not in _HASHES:
        _HASHES[key] = sha256_file(path)
    return _HASHES[key]


def open_image(path: Path) -> Image.Image:
    """Open and fully decode an image in its own mode (each encoder converts to RGB where its
    profile says: before resizing, or after as the paper did); missing, corrupt or oversized
    files are bad input."""
    from lyco_bench.data.images import open_image_checked

    with open_image_checked(path) as im:
        im.load()
        return im.copy()


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) from the header, with the same checks as :func:`open_image`."""
    from lyco_bench.data.images import image_size_checked

    return image_size_checked(path)


def image_keys(kind: str, paths: Sequence[Path], mode: str) -> tuple[list[str], list[str]]:
    """(content hashes, canonical modes) of images: what the cache keys them on."""
    keys, modes = [], []
    native = encoder_kind(kind).native
    for p in paths:
        keys.append(file_hash(Path(p)))
        # Native kinds preprocess in their own way, whatever the mode; square images look alike in every mode.
        modes.append("native" if native else canonical_mode(image_size(Path(p)), mode))
    return keys, modes


LOAD_WORKERS = 4
"""Threads decoding and preprocessing pictures while the encoder runs (PIL and torch release the GIL)."""
PREFETCH_BATCHES = 2
"""Batches decoded ahead of the encoder."""
DECODED_BUDGET = 2 << 30
"""Bytes of decoded pictures kept for the other encoders (2 GiB: ~2,000 pictures of 512²)."""


class DecodedImages:
    """Decoded pictures shared by every encoder of a pool: a file read by several encoders is
    decoded once while the budget lasts. Kept first come, never evicted (each encoder scans the
    same files in the same order, where least-recently-used eviction would keep none)."""

    def __init__(self, budget: int = DECODED_BUDGET):
        import threading

        self.budget, self.used, self.decodes = budget, 0, 0
        self._images: dict[str, Image.Image] = {}
        self._lock = threading.Lock()

    def get(self, path: Path) -> Image.Image:
        key = str(path)
        with self._lock:
            image = self._images.get(key)
        if image is not None:
            return image
        image = open_image(path)
        size = image.width * image.height * 4  # PIL stores an RGB pixel in 4 bytes
        with self._lock:
            self.decodes += 1
            if self.used + size <= self.budget and key not in self._images:
                self._images[key] = image
                self.used += size
        return image


def encode_batches(
    pool: EncoderPool, kind: str, paths: Sequence[Path], modes: Sequence[str], *, desc: str = ""
):
    """Yield ``(indices, features)`` per batch, encoding ``paths[i]`` in ``modes[i]`` (misses only).

    Loader threads decode and preprocess (``encoder.prepare``) the next ``PREFETCH_BATCHES``
    batches while the encoder runs on this one; batches are the same as encoding in one thread,
    so features do not depend on the threads.
    """
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    encoder = pool.get(kind)
    bs = pool.settings.batch_size
    by_mode = [[i for i in range(len(paths)) if modes[i] == m] for m in sorted(set(modes))]
    chunks = iter([group[s : s + bs] for group in by_mode for s in range(0, len(group), bs)])
    prepare = getattr(encoder, "prepare", None)

    def load(i: int):
        image = pool.decoded.get(Path(paths[i]))
        return prepare(image, modes[i]) if prepare is not None else image

    with progress_bar(transient=True) as bar, ThreadPoolExecutor(LOAD_WORKERS, "lyco-bench-load") as loader:
        task = bar.add_task(f"encode {kind} {desc}".strip(), total=len(paths), info="")
        ahead: deque = deque()
        for chunk in [c for _, c in zip(range(PREFETCH_BATCHES + 1), chunks, strict=False)]:
            ahead.append((chunk, [loader.submit(load, i) for i in chunk]))
        while ahead:
            chunk, futures = ahead.popleft()
            nxt = next(chunks, None)
            if nxt is not None:
                ahead.append((nxt, [loader.submit(load, i) for i in nxt]))
            inputs = [f.result() for f in futures]
            if prepare is not None:
                feats = encoder.forward(inputs)
            else:
                feats = encoder.encode_images(inputs, modes[chunk[0]])
            pool.passes[kind] += len(chunk)
            bar.update(task, advance=len(chunk))
            yield chunk, feats


def image_features(
    pool: EncoderPool,
    kind: str,
    paths: list[Path],
    *,
    mode: str = "resize",
    cache: FeatureCache,
    desc: str = "",
    flush: bool = True,
) -> torch.Tensor:
    """Features (N, D) of the images at ``paths`` in ``mode``, from the cache where possible.

    Each distinct image content is encoded at most once; new features go to ``cache`` and are
    written as one shard per call (``flush=False`` leaves them buffered for a later flush).
    """
    if not paths:
        raise ValueError("image_features needs at least one image")
    encoder_id = pool.id(kind)
    keys, modes = image_keys(kind, paths, mode)
    rows: list[torch.Tensor | None] = [None] * len(paths)
    for m in sorted(set(modes)):
        idx = [i for i in range(len(paths)) if modes[i] == m]
        for i, f in zip(idx, cache.get_many([keys[i] for i in idx], encoder_id, m), strict=True):
            rows[i] = f
    first: dict[tuple[str, str], int] = {}
    for i, r in enumerate(rows):
        if r is None:
            first.setdefault((keys[i], modes[i]), i)
    todo = sorted(first.values())
    if todo:
        for chunk, feats in encode_batches(
            pool, kind, [paths[i] for i in todo], [modes[i] for i in todo], desc=desc
        ):
            for j, f in zip(chunk, feats, strict=True):
                i = todo[j]
                cache.put(keys[i], encoder_id, modes[i], f)
                rows[i] = f
        if flush:
            cache.flush()
    for i, r in enumerate(rows):
        if r is None:  # same content as an image encoded just now
            rows[i] = rows[first[(keys[i], modes[i])]]
    return torch.stack(rows)  # (N, D)


def text_features(
    pool: EncoderPool, texts: list[str], *, cache: FeatureCache, kind: str = "clip"
) -> torch.Tensor:
    """Text features (N, D) of ``texts`` with the text tower of ``kind``, cached under mode ``text``."""
    encoder_id = pool.id(kind)
    unique = sorted(set(texts))
    found = dict(zip(unique, cache.get_many([text_key(t) for t in unique], encoder_id, "text"), strict=True))
    missing = [t for t, f in found.items() if f is None]
    if missing:
        encoder = pool.get(kind)
        bs = pool.settings.batch_size
        for start in range(0, len(missing), bs):
            chunk = missing[start : start + bs]
            for t, f in zip(chunk, encoder.encode_texts(chunk), strict=True):
                cache.put(text_key(t), encoder_id, "text", f)
                found[t] = f
            pool.passes[f"{kind}-text"] += len(chunk)
        cache.flush()
    return torch.stack([found[t] for t in texts])


def list_images(root: Path) -> list[Path]:
    """Image files under ``root`` (recursively), sorted."""
    exts = {".png", ".jpg", ".jpeg", ".webp", ".bmp"}
    return sorted(p for p in Path(root).rglob("*") if p.suffix.lower() in exts and p.is_file())
