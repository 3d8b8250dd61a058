"""The latent cache: VAE encodings of training images, on disk, shared by every configuration.

An entry is keyed by (sha256 of the image file, identity of the VAE, bucket, horizontal flip), so a
second configuration trained on the same dataset with the same VAE encodes nothing, and any
change to an image, the VAE or the bucket rules misses the cache instead of using stale latents.

What is stored: the mean and standard deviation of the VAE's latent distribution (unscaled,
float32), in shards (:class:`lyco_bench.shards.ShardCache`: one file per bucket and call, not
one per image), mode ``<w>x<h>[-flip]``. kohya sd-scripts caches one sample drawn at caching time, which freezes
the sampling noise for the whole run; storing (mean, std) and drawing ``mean + std·ε`` with the
trainer's generator at each step keeps the non-cached training distribution. The trainer then
multiplies by ``vae.config.scaling_factor`` (0.18215 for SD1.x) as usual.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from lyco_bench.data.buckets import Bucket, assign_bucket, image_tensor
from lyco_bench.data.dataset import ImageItem, image_size
from lyco_bench.utils import progress_bar, sha256_file


@dataclass
class Latent:
    mean: torch.Tensor  # (4, H/8, W/8), unscaled
    std: torch.Tensor  # (4, H/8, W/8)
    bucket: Bucket

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """One draw mean + std·ε, ε ~ N(0, I) from ``generator`` (the VAE's reparametrization)."""
        noise = torch.randn(self.mean.shape, generator=generator, dtype=self.mean.dtype)
        return self.mean + self.std * noise


def vae_identity(vae: torch.nn.Module) -> str:
    """sha256 over the VAE's config and every weight (name, dtype, shape, bytes)."""
    digest = hashlib.sha256()
    config = dict(getattr(vae, "config", {}) or {})
    digest.update(json.dumps(config, sort_keys=True, default=str).encode())
    for name, tensor in sorted(vae.state_dict().items()):
        flat = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}|{flat.dtype}|{tuple(tensor.shape)}".encode())
        digest.update(flat.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


class LatentCache:
    """Content-addressed VAE latents under ``root``; ``encoded`` counts images encoded so far."""

    def __init__(self, root: str | Path):
        from lyco_bench.shards import ShardCache

        self.root = Path(root)
        self.encoded = 0
        self.hits = 0
        self._shards = ShardCache(self.root)

    def get_or_encode(
        self,
        items: Sequence[ImageItem],
        vae: torch.nn.Module,
        *,
        buckets: Sequence[Bucket],
        flip: bool = False,
    ) -> list[Latent]:
        """Latents of ``items`` (in order), encoding only those not cached yet.

        Images are encoded one at a time, so an entry never depends on which other images
        happened to be missing (batched convolutions may differ in the last bits).
        """
        vae_id = f"vae:{vae_identity(vae)[:32]}"
        param = next(vae.parameters())
        factor = 2 ** (len(vae.config.block_out_channels) - 1)
        channels = vae.config.latent_channels
        keys, placed = [], []
        for item in items:
            size = (item.width, item.height) if item.width and item.height else image_size(item.path)
            bucket = assign_bucket(*size, buckets)
            keys.append(sha256_file(item.path))
            placed.append((bucket, f"{bucket[0]}x{bucket[1]}{'-flip' if flip else ''}"))
        found: list[torch.Tensor | None] = [None] * len(items)
        for mode in sorted({m for _, m in placed}):
            idx = [i for i, (_, m) in enumerate(placed) if m == mode]
            for i, vec in zip(idx, self._shards.get_many([keys[i] for i in idx], vae_id, mode), strict=True):
                found[i] = vec
        latents: list[Latent] = []
        with progress_bar() as bar:
            task = bar.add_task("latents", total=len(items), info="")
            for i, item in enumerate(items):
                bucket, mode = placed[i]
                shape = (channels, bucket[1] // factor, bucket[0] // factor)
                vec = found[i]
                if vec is None or vec.numel() != 2 * math.prod(shape):
                    pixels = image_tensor(item.path, bucket, flip=flip)[None]  # (1, 3, H, W)
                    with torch.no_grad():
                        dist = vae.encode(pixels.to(param.device, param.dtype)).latent_dist
                    vec = torch.cat(
                        [dist.mean[0].float().cpu().flatten(), dist.std[0].float().cpu().flatten()]
                    )
                    self._shards.put(keys[i], vae_id, mode, vec)
                    found[i] = vec
                    self.encoded += 1
                else:
                    self.hits += 1
                mean, std = vec.view(2, *shape)  # each (C, H/f, W/f)
                latents.append(Latent(mean, std, bucket))
                bar.update(task, advance=1, info=f"encoded {self.encoded}")
        self._shards.flush()
        return latents
