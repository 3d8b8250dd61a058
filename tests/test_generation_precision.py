"""Sampling precision and initial noise: ``auto`` precision per device, noise from CPU generators
whatever the device (the same job id draws the same noise on CPU and GPU)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from diffusers.utils.torch_utils import randn_tensor

from lyco_bench import generation
from lyco_bench.generation import SamplerSettings, auto_dtype, initial_noise, sample_batch
from lyco_bench.prompts import PromptItem

SAMPLER = SamplerSettings(steps=2, width=64, height=48, batch_size=3)


class FakePipe:
    """Stands for a pipeline on ``device`` (``meta`` for a GPU: it holds no values, so a draw
    there would be visible as a meta tensor); records what it is called with."""

    vae_scale_factor = 8

    def __init__(self, device: str, dtype: torch.dtype) -> None:
        self.device = torch.device(device)
        self.unet = SimpleNamespace(config=SimpleNamespace(in_channels=4), dtype=dtype)
        self.calls: list[dict] = []

    def __call__(self, **kwargs):
        self.calls.append(kwargs)
        n = len(kwargs["prompt"])
        return SimpleNamespace(images=np.zeros((n, kwargs["height"], kwargs["width"], 3), np.float32))


def items(seeds: list[int]) -> list[PromptItem]:
    return [
        PromptItem(
            prompt=f"a photo {s}",
            clip_text=f"a photo {s}",
            prompt_class="trigger",
            category="c",
            concept="x",
            subclass=None,
            prompt_index=0,
            image_index=i,
            seed=s,
            group="trigger/x/0",
        )  # fmt: skip
        for i, s in enumerate(seeds)
    ]


def test_auto_precision_resolves_per_device():
    assert SamplerSettings().dtype == "auto"
    assert auto_dtype("cuda") == auto_dtype("cuda:1") == "float16"
    assert auto_dtype("cpu") == auto_dtype("mps") == "float32"
    assert SamplerSettings().resolved("cuda").dtype == "float16"
    assert SamplerSettings().resolved("cpu") == SamplerSettings(dtype="float32")
    assert SamplerSettings(dtype="bfloat16").resolved("cpu").dtype == "bfloat16"  # explicit wins


@pytest.mark.parametrize(("device", "dtype"), [("meta", torch.float16), ("meta", torch.bfloat16)])
def test_noise_is_drawn_on_cpu_generators_whatever_the_device(device, dtype):
    seeds = [1000, 1001, 7]
    gpu, cpu = FakePipe(device, dtype), FakePipe("cpu", torch.float32)
    sample_batch(gpu, items(seeds), SAMPLER)
    sample_batch(cpu, items(seeds), SAMPLER)
    (on_gpu,), (on_cpu,) = gpu.calls, cpu.calls
    # Generators (which the scheduler's own draws use too) are CPU generators on every device.
    assert [g.device.type for g in on_gpu["generator"]] == ["cpu"] * 3
    assert on_gpu["latents"].device.type == device and on_gpu["latents"].dtype == dtype
    assert on_gpu["latents"].shape == on_cpu["latents"].shape == (3, 4, 48 // 8, 64 // 8)
    # After the draw, each generator is where the CPU run left it: later draws agree too.
    for a, b in zip(on_gpu["generator"], on_cpu["generator"], strict=True):
        assert torch.equal(a.get_state(), b.get_state())
    # The values: what the CPU run received, cast (meta holds none, so compare the draw itself).
    again = initial_noise(gpu, [torch.Generator().manual_seed(s) for s in seeds], SAMPLER)
    assert torch.equal(again, on_cpu["latents"])


def test_cpu_noise_is_diffusers_own_draw():
    """The noise, and the generators' state after it, are exactly what diffusers draws from CPU
    generators when it draws the latents itself: CPU images are unchanged by drawing them here."""
    seeds = [1000, 1003]
    ours = [torch.Generator().manual_seed(s) for s in seeds]
    theirs = [torch.Generator().manual_seed(s) for s in seeds]
    noise = initial_noise(FakePipe("cpu", torch.float32), ours, SAMPLER)
    want = randn_tensor((2, 4, 6, 8), generator=theirs, device=torch.device("cpu"), dtype=torch.float32)
    assert torch.equal(noise, want)
    for a, b in zip(ours, theirs, strict=True):
        assert torch.equal(a.get_state(), b.get_state())


def test_tiny_pipeline_images_match_the_pipeline_drawing_its_own_noise(tiny_model_dir):
    from lyco_bench.models import load_pipeline

    pipe = load_pipeline(str(tiny_model_dir))
    pipe.scheduler = generation.make_scheduler(pipe, "ddim")
    batch = items([1000, 1001])
    ours = sample_batch(pipe, batch, SAMPLER)
    with torch.inference_mode():
        out = pipe(
            prompt=[i.prompt for i in batch], negative_prompt=[""] * 2, num_inference_steps=2,
            guidance_scale=SAMPLER.cfg, width=64, height=48, output_type="np",
            generator=[torch.Generator().manual_seed(i.seed) for i in batch],
        )  # fmt: skip
    theirs = (np.clip(np.asarray(out.images, dtype=np.float32), 0, 1) * 255).round().astype(np.uint8)
    assert np.array_equal(ours, theirs)


def test_tf32_is_turned_on_only_where_cuda_is(monkeypatch):
    from lyco_bench.utils import cuda_fast_math

    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
        monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
        cuda_fast_math()
        assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        cuda_fast_math()
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn
