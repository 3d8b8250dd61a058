"""Aspect-ratio buckets (docs/protocol.md §2: 512 px, sides 320–960 in steps of 64) and batching by bucket.

Each image goes to the bucket whose aspect ratio is closest to its own, is resized to cover the
bucket and center-cropped, so a batch (one bucket) stacks into one tensor without padding.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import torch

from lyco_bench.errors import BadInput

Bucket = tuple[int, int]  # (width, height) in pixels

DEFAULT_RESOLUTION, DEFAULT_MIN_SIZE, DEFAULT_MAX_SIZE, DEFAULT_STEP = 512, 320, 960, 64


def make_buckets(
    resolution: int = DEFAULT_RESOLUTION,
    *,
    min_size: int = DEFAULT_MIN_SIZE,
    max_size: int = DEFAULT_MAX_SIZE,
    step: int = DEFAULT_STEP,
) -> list[Bucket]:
    """The buckets, sorted: for each side w (a multiple of ``step`` in [min_size, max_size]) the
    largest h (same rule) with w·h ≤ resolution², both orientations, plus the square.

    This is the rule kohya sd-scripts used to train the paper's models: every bucket holds close
    to resolution² pixels. ``step`` must keep latents divisible by the UNet's downsampling
    (SD1.x: 64 px = 8 latent px for its 3 downsamplers; the tiny model: 16).
    """
    if step <= 0 or step % 8:
        raise BadInput(f"bucket step {step}: must be a positive multiple of 8 (the VAE factor)")
    if not 0 < min_size <= resolution <= max_size:
        raise BadInput(
            f"buckets: need 0 < min_size ({min_size}) <= resolution ({resolution}) <= max_size ({max_size})"
        )
    area = resolution * resolution
    square = resolution // step * step
    buckets = {(square, square)}
    for width in range(math.ceil(min_size / step) * step, max_size + 1, step):
        height = min(max_size, area // width // step * step)
        if height >= min_size:
            buckets |= {(width, height), (height, width)}
    return sorted(buckets)


def assign_bucket(width: int, height: int, buckets: Sequence[Bucket]) -> Bucket:
    """The bucket with the closest aspect ratio (distance in log ratio, so portrait and landscape
    are symmetric); ties go to the larger bucket."""
    if width <= 0 or height <= 0:
        raise BadInput(f"image size {width}x{height}: must be positive")
    ratio = math.log(width / height)
    return min(buckets, key=lambda b: (abs(math.log(b[0] / b[1]) - ratio), -b[0] * b[1]))


def cover_crop(width: int, height: int, bucket: Bucket) -> tuple[tuple[int, int], tuple[int, int]]:
    """((new width, new height), (top, left)): the size an image is scaled to so that it covers
    ``bucket`` (keeping its aspect ratio), and where the centre crop to ``bucket`` starts. The
    crop's top-left is what SDXL's size conditioning records (kohya's ``crop_top_left``)."""
    bw, bh = bucket
    scale = max(bw / width, bh / height)
    new_size = (max(bw, round(width * scale)), max(bh, round(height * scale)))
    return new_size, ((new_size[1] - bh) // 2, (new_size[0] - bw) // 2)


def resize_to_bucket(image, bucket: Bucket):
    """Scale a PIL image to cover ``bucket`` (keeping its aspect ratio), then center-crop to it."""
    from PIL import Image

    bw, bh = bucket
    new_size, (top, left) = cover_crop(*image.size, bucket)
    if new_size != image.size:
        image = image.resize(new_size, Image.Resampling.LANCZOS)
    return image.crop((left, top, left + bw, top + bh))


def image_tensor(path: str | Path, bucket: Bucket, *, flip: bool = False) -> torch.Tensor:
    """The image at ``path`` (EXIF orientation applied) in ``bucket`` as a float tensor in [-1, 1],
    shape (3, H, W)."""
    import numpy as np
    from PIL import ImageOps

    from lyco_bench.data.images import open_image_checked

    with open_image_checked(path) as img:
        image = resize_to_bucket(ImageOps.exif_transpose(img).convert("RGB"), bucket)
    if flip:
        image = ImageOps.mirror(image)
    pixels = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy())  # (H, W, 3)
    return pixels.permute(2, 0, 1).float() / 127.5 - 1.0


def bucket_batches(
    buckets: Sequence[Bucket],
    batch_size: int,
    generator: torch.Generator,
    *,
    repeats: Sequence[int] | None = None,
) -> list[list[int]]:
    """One epoch of batches: lists of item indices, every batch from one bucket.

    ``buckets[i]`` is item i's bucket; item i appears ``repeats[i]`` times. Each bucket's entries
    are shuffled, cut into batches of ``batch_size`` (the last one may be smaller), and the batch
    order is shuffled — all drawn from ``generator``, so a seed fixes the epoch.
    """
    if batch_size < 1:
        raise BadInput(f"batch_size {batch_size}: must be at least 1")
    repeats = repeats if repeats is not None else [1] * len(buckets)
    if len(repeats) != len(buckets):
        raise ValueError("repeats and buckets differ in length")
    by_bucket: dict[Bucket, list[int]] = {}
    for index, (bucket, count) in enumerate(zip(buckets, repeats, strict=True)):
        by_bucket.setdefault(tuple(bucket), []).extend([index] * count)
    batches = []
    for bucket in sorted(by_bucket):
        entries = by_bucket[bucket]
        order = torch.randperm(len(entries), generator=generator).tolist()
        shuffled = [entries[i] for i in order]
        batches += [shuffled[i : i + batch_size] for i in range(0, len(shuffled), batch_size)]
    order = torch.randperm(len(batches), generator=generator).tolist()
    return [batches[i] for i in order]
