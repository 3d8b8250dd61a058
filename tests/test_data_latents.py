"""data.latents: the latent cache is hit on a second run, misses on any key change, and holds the
VAE's (mean, std); sampling is mean + std·ε from the caller's generator."""

from __future__ import annotations

import copy

import pytest
import torch

from lyco_bench.data import (
    Latent,
    LatentCache,
    image_tensor,
    load_dataset,
    make_buckets,
    vae_identity,
)
from lyco_bench.models import load_pipeline

TINY_BUCKETS = make_buckets(64, min_size=32, max_size=128, step=16)


@pytest.fixture(scope="module")
def vae(tiny_model_dir):
    return load_pipeline(str(tiny_model_dir)).vae


@pytest.fixture(scope="module")
def items(demo_dataset_dir):
    return [item for _, item in load_dataset(demo_dataset_dir).items()]


def test_second_run_encodes_nothing(vae, items, tmp_path):
    first = LatentCache(tmp_path / "cache")
    latents = first.get_or_encode(items, vae, buckets=TINY_BUCKETS)
    assert (first.encoded, first.hits) == (len(items), 0)
    # A second configuration on the same dataset, in a new process-like cache object.
    second = LatentCache(tmp_path / "cache")
    again = second.get_or_encode(items, vae, buckets=TINY_BUCKETS)
    assert (second.encoded, second.hits) == (0, len(items))
    for a, b in zip(latents, again, strict=True):
        assert a.bucket == b.bucket
        torch.testing.assert_close(a.mean, b.mean, rtol=0, atol=0)
        torch.testing.assert_close(a.std, b.std, rtol=0, atol=0)
    # Entries hold the VAE's latent distribution of the bucketed image.
    item = items[1]  # 96x64 → bucket (80, 48) → latents (4, 6, 10)
    assert latents[1].bucket == (80, 48) and latents[1].mean.shape == (4, 6, 10)
    with torch.no_grad():
        dist = vae.encode(image_tensor(item.path, (80, 48))[None]).latent_dist
    torch.testing.assert_close(latents[1].mean, dist.mean[0])
    torch.testing.assert_close(latents[1].std, dist.std[0])


def test_key_changes_miss(vae, items, tmp_path):
    cache = LatentCache(tmp_path)
    cache.get_or_encode(items[:3], vae, buckets=TINY_BUCKETS)
    assert cache.encoded == 3
    cache.get_or_encode(items[:3], vae, buckets=TINY_BUCKETS, flip=True)
    assert cache.encoded == 6
    cache.get_or_encode(items[:3], vae, buckets=[(64, 64)])  # items 0, 2 were (64, 64) already
    assert cache.encoded == 7
    other_vae = copy.deepcopy(vae)
    with torch.no_grad():
        other_vae.encoder.conv_in.bias[0] += 1.0
    assert vae_identity(other_vae) != vae_identity(vae)
    assert vae_identity(copy.deepcopy(vae)) == vae_identity(vae)
    cache.get_or_encode(items[:3], other_vae, buckets=TINY_BUCKETS)
    assert cache.encoded == 10
    # A changed image (new content hash) is encoded again; the others are hits.
    hits = cache.hits
    cache.get_or_encode(items[:3], vae, buckets=TINY_BUCKETS)
    assert (cache.encoded, cache.hits) == (10, hits + 3)


def test_damaged_entry_is_reencoded(vae, items, tmp_path):
    cache = LatentCache(tmp_path)
    (good,) = cache.get_or_encode(items[:1], vae, buckets=TINY_BUCKETS)
    (entry,) = list(tmp_path.rglob("*.safetensors"))
    entry.write_bytes(b"broken")
    (again,) = cache.get_or_encode(items[:1], vae, buckets=TINY_BUCKETS)
    assert cache.encoded == 2
    torch.testing.assert_close(again.mean, good.mean, rtol=0, atol=0)


def test_latent_sample():
    mean = torch.tensor([[[1.0, -2.0]]])  # (1, 1, 2)
    std = torch.tensor([[[0.5, 0.0]]])
    latent = Latent(mean, std, (16, 8))
    eps = torch.randn((1, 1, 2), generator=torch.Generator().manual_seed(5))
    got = latent.sample(torch.Generator().manual_seed(5))
    torch.testing.assert_close(got, torch.tensor([[[1.0 + 0.5 * eps[0, 0, 0].item(), -2.0]]]))
