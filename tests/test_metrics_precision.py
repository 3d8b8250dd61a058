"""Encoder precision: ``auto`` is float16 autocast on CUDA and float32 elsewhere, a half precision
is part of the encoders' cache ids (float32 ids are unchanged), and the forward passes run under
the autocast it names, within a stated tolerance of float32."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lyco_bench.metrics import EncoderSettings
from lyco_bench.metrics.encoders import ENCODERS
from lyco_bench.metrics.profiles import autocast_dtype, resolve_precision
from tests.helpers import noise_image, tiny_encoder_settings


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_encoder_settings(tmp_path_factory)


@pytest.mark.parametrize(
    ("precision", "device", "expected"),
    [
        ("auto", "cuda", "float16"),
        ("auto", "cuda:1", "float16"),
        ("auto", "cpu", "float32"),
        ("bfloat16", "cpu", "bfloat16"),
        ("float32", "cuda", "float32"),
    ],
)
def test_auto_precision_follows_the_device(precision, device, expected):
    assert resolve_precision(precision, device) == expected
    want = {"float16": torch.float16, "bfloat16": torch.bfloat16}.get(expected)
    assert autocast_dtype(precision, torch.device(device)) == want


@pytest.mark.parametrize("kind", ["dinov2", "clip", "vgg19"])
def test_half_precision_enters_the_cache_id_float32_does_not(kind, tiny):
    plain = ENCODERS[kind].identity(EncoderSettings(**tiny))
    assert plain == ENCODERS[kind].identity(EncoderSettings(**tiny, precision="float32"))
    assert not plain.endswith(("float16", "bfloat16"))
    half = ENCODERS[kind].identity(EncoderSettings(**tiny, precision="bfloat16"))
    assert half == plain + ":bfloat16"
    cuda = EncoderSettings(**{**tiny, "device": "cuda"})  # auto on a CUDA device: float16
    assert ENCODERS[kind].identity(cuda).endswith(":float16")


@pytest.mark.parametrize("kind", ["dinov2", "clip"])
def test_bf16_autocast_runs_the_forward_in_bf16_within_tolerance(kind, tiny):
    images = [noise_image(seed, (40, 32)) for seed in range(4)]
    full = ENCODERS[kind].load(EncoderSettings(**tiny))
    half = ENCODERS[kind].load(EncoderSettings(**tiny, precision="bfloat16"))
    seen: list[torch.dtype] = []
    tower = getattr(half.model, "visual", half.model)  # OpenCLIP: the image tower
    for module in tower.modules():
        if isinstance(module, torch.nn.Linear):
            module.register_forward_hook(lambda _m, _i, out: seen.append(out.dtype))
    a, b = full.encode_images(images, "crop"), half.encode_images(images, "crop")
    assert seen == [torch.bfloat16] * len(seen) and seen
    assert a.dtype == b.dtype == torch.float32  # stored features stay float32
    cosine = F.cosine_similarity(a, b, dim=-1)
    assert float(cosine.min()) > 0.99  # tiny random encoders; real ones: docs/protocol.md §5.7
    assert half.id == full.id + ":bfloat16"
