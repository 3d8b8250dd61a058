"""Evaluation profiles (docs/protocol.md §5.7): what the encoders do around the metric formulas.

``lyco`` (the default) is lyco-bench's own evaluation; ``paper`` reproduces what the paper's
evaluation code computed (cyber-meow/LyCORIS-evaluation, ``lycoris_eval/``), so that a
regenerated figure compares like with like:

- images are resized in their own mode and converted to RGB afterwards (torchvision's transforms
  on a PIL image, then ``convert('RGB')``): PIL resizes RGBA through premultiplied alpha and
  palette images by nearest neighbour, and ``padding`` pads in the image's own mode with 0;
- VGG's short-side resize truncates the long side (torchvision's ``Resize(int)``);
- VGG Grams of conv1_1–conv4_1 are taken after their ReLU (torchvision's ReLUs work in place on
  the captured tensors), conv5_1's before it (its ReLU lies outside ``features[:29]``);
- DINOv2's 37×37 position embeddings are interpolated as torch.hub's ``dinov2_vitl14`` does:
  ``scale_factor=(n + 0.1) / 37`` rather than ``size=n`` (transformers' ``Dinov2Model``);
- encoders run under fp16 autocast on CUDA.

The metric-level differences (subclass-then-concept averaging, ``<alter>`` Vendi blocks of 10)
live with the scorer and the Vendi metric; they read :data:`PROFILES` through the settings.
"""

from __future__ import annotations

import contextlib
import math
import types
from collections.abc import Iterator

import torch
from PIL import Image

PROFILES = ("lyco", "paper")
ALTER_BLOCK = 10
"""The paper's ``<alter>`` Vendi: a folder's images (sorted by file name) in blocks of 10."""
HUB_INTERPOLATE_OFFSET = 0.1
"""torch.hub DINOv2's ``interpolate_offset`` (dinov2/models/vision_transformer.py)."""
PAPER_RELU_LAYERS = (0, 5, 10, 19)
"""VGG19 conv indices whose captured output the paper's in-place ReLU rectifies (conv1_1–conv4_1)."""


def resize_center_crop(image: Image.Image, size: int) -> Image.Image:
    """torchvision's Resize(size) + CenterCrop(size) on a PIL image (open_clip's eval transform and
    the paper's): the long side truncated, the crop offset rounded (half to even)."""
    w, h = image.size
    long = int(size * max(w, h) / min(w, h))
    nw, nh = (size, long) if w <= h else (long, size)
    image = image.resize((nw, nh), Image.BICUBIC)
    left, top = int(round((nw - size) / 2.0)), int(round((nh - size) / 2.0))
    return image.crop((left, top, left + size, top + size))


def paper_square(image: Image.Image, *, mode: str, size: int) -> Image.Image:
    """The paper's transform of one image to ``size``×``size`` RGB (lycoris_eval image_transform).

    ``resize``: Resize((S, S)); ``crop``: Resize(S) (long side truncated) + CenterCrop(S) (offset
    rounded); ``padding``: ResizeMaxSize (sides rounded, skipped for a square image of side S) +
    pad with 0 split low-first. Every step on the image in its own mode, then RGB.
    """
    w, h = image.size
    if mode == "resize":
        image = image.resize((size, size), Image.BICUBIC)
    elif mode == "crop":
        image = resize_center_crop(image, size)
    else:
        scale = size / float(max(h, w))
        if scale != 1 or w != h:
            nh, nw = round(h * scale), round(w * scale)
            resized = image.resize((nw, nh), Image.BICUBIC)
            canvas = Image.new(image.mode, (size, size), 0)  # torchvision pad fill=0, in the image's mode
            if image.mode == "P" and image.getpalette() is not None:
                canvas.putpalette(image.getpalette())
            canvas.paste(resized, ((size - nw) // 2, (size - nh) // 2))
            image = canvas
    return image.convert("RGB")


def paper_short_side(image: Image.Image, short_side: int) -> Image.Image:
    """torchvision ``Resize(S)`` on a PIL image, then RGB: short side S, long side truncated."""
    w, h = image.size
    if w <= h:
        size = (short_side, int(short_side * h / w))
    else:
        size = (int(short_side * w / h), short_side)
    if size != (w, h):
        image = image.resize(size, Image.BICUBIC)
    return image.convert("RGB")


def lyco_short_side(image: Image.Image, short_side: int) -> Image.Image:
    """lyco-bench's VGG resize: RGB first, both sides rounded."""
    image = image.convert("RGB")
    w, h = image.size
    scale = short_side / min(w, h)
    return image.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.BICUBIC)


def hub_interpolate_pos_encoding(self, embeddings: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """torch.hub DINOv2's position-embedding interpolation, as a ``Dinov2Embeddings`` method.

    dinov2/models/vision_transformer.py ``interpolate_pos_encoding``: the M×M grid is resized by
    bicubic interpolation with ``scale_factor = ((w // p) + 0.1) / M`` (the source coordinates
    follow the scale factor, so the offset moves every sample), in float32.
    """
    num_patches = embeddings.shape[1] - 1
    num_positions = self.position_embeddings.shape[1] - 1
    if num_patches == num_positions and height == width:
        return self.position_embeddings
    pos = self.position_embeddings.float()
    class_pos, patch_pos = pos[:, :1], pos[:, 1:]
    dim = embeddings.shape[-1]
    patch_h, patch_w = self.patch_embeddings.patch_size
    m = int(math.sqrt(num_positions))
    # The hub unpacks ``B, nc, w, h = x.shape`` (so its "w" is the height) and passes its factors
    # in that order: the first factor scales the grid's rows by (H // p + 0.1) / M.
    s_rows = (height // patch_h + HUB_INTERPOLATE_OFFSET) / m
    s_cols = (width // patch_w + HUB_INTERPOLATE_OFFSET) / m
    grid = patch_pos.reshape(1, m, m, dim).permute(0, 3, 1, 2)
    grid = torch.nn.functional.interpolate(grid, scale_factor=(s_rows, s_cols), mode="bicubic")
    grid = grid.permute(0, 2, 3, 1).reshape(1, -1, dim)
    return torch.cat((class_pos, grid), dim=1).to(embeddings.dtype)  # the hub: .to(previous_dtype)


def use_hub_interpolation(model) -> None:
    """Make a transformers ``Dinov2Model`` interpolate position embeddings as torch.hub's does."""
    emb = model.embeddings
    emb.interpolate_pos_encoding = types.MethodType(hub_interpolate_pos_encoding, emb)


AUTOCAST = {"float16": torch.float16, "bfloat16": torch.bfloat16}


def resolve_precision(precision: str, device: str | torch.device) -> str:
    """``auto`` encoder precision: float16 autocast on CUDA (as the paper encoded: its loop ran under
    ``torch.autocast('cuda')``; features move by < 1e-4 in cosine, docs/protocol.md §5.7), float32
    elsewhere (CPU half-precision kernels are slower)."""
    if precision != "auto":
        return precision
    return "float16" if torch.device(device).type == "cuda" else "float32"


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of a resolved ``precision`` (None: float32, no autocast)."""
    return AUTOCAST.get(resolve_precision(precision, device))


@contextlib.contextmanager
def encoding(precision: str, device: torch.device) -> Iterator[None]:
    """Run an encoder's forward under :func:`autocast_dtype` (if any)."""
    dtype = autocast_dtype(precision, device)
    if dtype is None:
        yield
    else:
        with torch.autocast(device.type, dtype=dtype):
            yield


def subclass_means(rows, subclassed: set[tuple[str, str, str]]):
    """The paper's concept values: the mean of the concept's subclass values (it scored each
    subclass folder on its own), for each (prompt class, category, concept) in ``subclassed``.

    Each concept-level row (``subclass == ""``) of such a concept that has subclass rows of the
    same metric, encoder and mode takes their defined values' mean, ``n_images`` their sum and
    ``std`` the per-image spread that gives the mean's image-level variance
    ``Σ std_k²/n_k / K²`` (``std² / n_images`` equal to it), NaN when a subclass has none.
    """
    import numpy as np

    rows = rows.copy()
    keys = ["prompt_class", "category", "concept"]
    sub = rows[rows["subclass"] != ""]
    sub = sub[[k in subclassed for k in zip(*(sub[c] for c in keys), strict=True)]]
    for key, grp in sub.groupby([*keys, "metric", "encoder", "mode"], sort=True):
        target = np.ones(len(rows), dtype=bool)
        for col, val in zip([*keys, "metric", "encoder", "mode"], key, strict=True):
            target &= (rows[col] == val).to_numpy()
        target &= (rows["subclass"] == "").to_numpy()
        if not target.any():
            continue
        values = grp["value"].to_numpy(dtype=float)
        ok = ~np.isnan(values)
        n = grp["n_images"].to_numpy(dtype=float)[ok]
        std = grp["std"].to_numpy(dtype=float)[ok]
        update = {"value": float(values[ok].mean()) if ok.any() else float("nan"), "n_images": int(n.sum())}
        update["reason"] = "" if ok.any() else "no subclass with a defined value"
        var = (std**2 / np.where(n > 0, n, np.nan)).sum() / max(ok.sum(), 1) ** 2
        update["std"] = float(np.sqrt(n.sum() * var)) if ok.any() and np.isfinite(var) else float("nan")
        for col, val in update.items():
            rows.loc[target, col] = val
    return rows
