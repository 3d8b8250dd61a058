"""The latent cache: VAE encodings of training images, on disk, shared by every configuration.

An entry is keyed by (sha256 of the image file, identity of the VAE, bucket, horizontal flip), so a
second configuration trained on the same dataset with the same VAE encodes nothing, and any
change to an image, the VAE or the bucket rules misses the cache instead of using stale latents.

What is stored: the mean and standard deviation of the VAE's latent distribution (unscaled,
float32, safetensors). kohya sd-scripts caches one sample drawn at caching time, which freezes
the sampling noise for the whole run; storing (mean, std) and drawing ``mean + std·ε`` with the
trainer's generator at each step keeps the non-cached training distribution. The trainer then
multiplies by ``vae.config.scaling_factor`` (0.18215 for SD1.x) as usual.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from lyco_bench.data.buckets import Bucket, assign_bucket, image_tensor
from lyco_bench.data.dataset import ImageItem, image_size
from lyco_bench.utils import atomic_path, progress_bar, sha256_file


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
        self.root = Path(root)
        self.encoded = 0
        self.hits = 0

    def entry_path(self, *, image_sha: str, vae_id: str, bucket: Bucket, flip: bool = False) -> Path:
        name = f"{image_sha}-{bucket[0]}x{bucket[1]}{'-flip' if flip else ''}.safetensors"
        return self.root / vae_id[:16] / image_sha[:2] / name

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
        from safetensors.torch import load_file, save_file

        vae_id = vae_identity(vae)
        param = next(vae.parameters())
        latents: list[Latent] = []
        with progress_bar() as bar:
            task = bar.add_task("latents", total=len(items), info="")
            for item in items:
                size = (item.width, item.height) if item.width and item.height else image_size(item.path)
                bucket = assign_bucket(*size, buckets)
                path = self.entry_path(
                    image_sha=sha256_file(item.path), vae_id=vae_id, bucket=bucket, flip=flip
                )
                cached = _try_load(path, load_file)
                if cached is None:
                    pixels = image_tensor(item.path, bucket, flip=flip)[None]  # (1, 3, H, W)
                    with torch.no_grad():
                        dist = vae.encode(pixels.to(param.device, param.dtype)).latent_dist
                    cached = {"mean": dist.mean[0].float().cpu(), "std": dist.std[0].float().cpu()}
                    with atomic_path(path) as tmp:
                        save_file({k: v.contiguous() for k, v in cached.items()}, str(tmp))
                    self.encoded += 1
                else:
                    self.hits += 1
                latents.append(Latent(cached["mean"], cached["std"], bucket))
                bar.update(task, advance=1, info=f"encoded {self.encoded}")
        return latents


def _try_load(path: Path, load_file) -> dict[str, torch.Tensor] | None:
    if not path.is_file():
        return None
    try:
        tensors = load_file(str(path))
    except Exception:  # a damaged entry is re-encoded and overwritten, never trusted
        return None
    return tensors if {"mean", "std"} <= tensors.keys() else None
