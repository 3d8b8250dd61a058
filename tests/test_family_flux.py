"""The FLUX.1 family against diffusers' own FLUX code: the tiny model, the prompt encoding, the packed
latents and image ids, the flow-matching objective and its shift, the transformer call.

(Adapter files and module maps: tests/test_family_flux_adapters.py.)
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import pytest
import torch

from tests.helpers import one_thread  # noqa: F401 - autouse fixture


def _digest(folder: Path) -> str:
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    return hashlib.sha256(
        b"".join(p.relative_to(folder).as_posix().encode() + p.read_bytes() for p in files)
    ).hexdigest()


@pytest.fixture(scope="module")
def flux_dir(tmp_path_factory) -> Path:
    from lyco_bench.models import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("flux") / "tiny-flux", seed=0, family="flux")


@pytest.fixture(scope="module")
def pipe(flux_dir):
    from lyco_bench.models import load_pipeline

    return load_pipeline(flux_dir)


def test_tiny_flux_is_byte_identical_per_seed_and_loads_as_flux(flux_dir, pipe, tmp_path):
    from diffusers import FluxPipeline

    from lyco_bench.families import family_of
    from lyco_bench.models import make_tiny_model

    again = make_tiny_model(tmp_path / "again", seed=0, family="flux")
    assert _digest(again) == _digest(flux_dir)
    assert isinstance(pipe, FluxPipeline)
    assert family_of(pipe).name == "flux"
    assert pipe.vae.config.latent_channels == 16
    assert pipe.transformer.config.in_channels == 16 * 4  # 2×2 packed patches
    assert (pipe.vae.config.shift_factor, pipe.vae.config.scaling_factor) == (0.1159, 0.3611)


def test_offline_t5_tokenizer_reads_characters_with_t5s_special_tokens(pipe):
    from lyco_bench.families._flux_t5 import SPACE, pieces, t5_tokenizer

    index = {piece: i for i, (piece, _) in enumerate(pieces())}
    want = [index[SPACE + "A"], index[SPACE + "d"], index["o"], index["g"], index["</s>"], index["<pad>"]]
    assert pipe.tokenizer_2("A  dog", padding="max_length", max_length=6).input_ids == want
    assert t5_tokenizer()("A  dog", padding="max_length", max_length=6).input_ids == want  # as saved
    assert (index["<pad>"], index["</s>"], index["<unk>"]) == (0, 1, 2)  # T5's ids


def test_packing_and_image_ids_are_flux_pipelines():
    from diffusers import FluxPipeline

    from lyco_bench.families._flux_flow import image_ids, pack, unpack

    x = torch.randn(2, 16, 6, 10)
    packed = FluxPipeline._pack_latents(x, 2, 16, 6, 10)
    assert torch.equal(pack(x), packed)
    assert torch.equal(unpack(packed, 6, 10), x)
    # _unpack_latents takes pixels: latent 6×10 is 48×80 pixels at the VAE's 8×.
    assert torch.equal(unpack(packed, 6, 10), FluxPipeline._unpack_latents(packed, 48, 80, 8))
    assert torch.equal(
        image_ids(6, 10), FluxPipeline._prepare_latent_image_ids(2, 3, 5, "cpu", torch.float32)
    )


@pytest.mark.parametrize("seq_len", [16, 256, 1024, 4096])
def test_training_sigma_shift_is_the_samplers(seq_len):
    from diffusers import FlowMatchEulerDiscreteScheduler
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    from lyco_bench.families._flux_flow import shifted_sigma
    from lyco_bench.families.flux import FLUX_SCHEDULE

    scheduler = FlowMatchEulerDiscreteScheduler(**FLUX_SCHEDULE)
    u = torch.linspace(0.01, 0.99, 25, dtype=torch.float64)
    mu = calculate_shift(seq_len, 256, 4096, 0.5, 1.15)
    want = scheduler.time_shift(mu, 1.0, u)
    torch.testing.assert_close(shifted_sigma(u, seq_len, scheduler.config), want)


def test_static_shift_is_the_schedulers_own():
    from diffusers import FlowMatchEulerDiscreteScheduler

    from lyco_bench.families._flux_flow import shifted_sigma

    plain = FlowMatchEulerDiscreteScheduler(shift=1.0).sigmas
    shifted = FlowMatchEulerDiscreteScheduler(shift=3.0).sigmas
    torch.testing.assert_close(shifted_sigma(plain, 4096, {"shift": 3.0}), shifted)


def test_flow_matching_sample_is_the_straight_path_with_velocity_target(pipe):
    from lyco_bench.families import family_of
    from lyco_bench.families._flux_flow import shift_mu

    objective = family_of(pipe).objective(pipe)
    assert objective.name == "flow_matching"
    g = torch.Generator().manual_seed(5)
    x0, noise = torch.randn(3, 16, 8, 12, generator=g), torch.randn(3, 16, 8, 12, generator=g)
    x_t, sigma, target = objective.sample(x0, noise, torch.Generator().manual_seed(7))
    # The draw: u = sigmoid(N(0, 1)) from the run's generator, then FLUX's shift for 4·6 tokens.
    u = torch.sigmoid(torch.randn(3, generator=torch.Generator().manual_seed(7)))
    e = math.exp(shift_mu(4 * 6, pipe.scheduler.config))
    torch.testing.assert_close(sigma, e / (e + 1 / u - 1))
    s = sigma.view(3, 1, 1, 1)
    torch.testing.assert_close(x_t, (1 - s) * x0 + s * noise)
    torch.testing.assert_close(target, noise - x0)


def test_prompt_encoding_is_flux_pipelines(pipe):
    from lyco_bench.families import family_of

    family = family_of(pipe)
    captions = ["a photo of sks dog", "a dog on the beach"]
    ours = family.encode_prompts(pipe, captions, torch.device("cpu"))
    with torch.no_grad():
        embeds, pooled, text_ids = pipe.encode_prompt(
            captions, prompt_2=None, max_sequence_length=family.max_sequence_length(pipe)
        )
    torch.testing.assert_close(ours["encoder_hidden_states"], embeds)
    torch.testing.assert_close(ours["pooled_projections"], pooled)
    assert not text_ids.any()  # FLUX's text ids are zeros, as predict passes them


def test_predict_is_the_transformer_call_of_flux_pipeline(pipe):
    from diffusers import FluxPipeline

    from lyco_bench.families import family_of
    from lyco_bench.families.flux import TRAIN_GUIDANCE

    family = family_of(pipe)
    g = torch.Generator().manual_seed(3)
    x_t = torch.randn(2, 16, 4, 6, generator=g)
    sigma = torch.tensor([0.3, 0.8])
    cond = family.encode_prompts(pipe, ["a dog", "a cat"], torch.device("cpu"))
    with torch.no_grad():
        got = family.predict(pipe, x_t, sigma, cond)
        # FluxPipeline.__call__'s denoising step: timestep t/1000 = σ; training guidance 1.0.
        out = pipe.transformer(
            hidden_states=FluxPipeline._pack_latents(x_t, 2, 16, 4, 6),
            timestep=sigma,
            guidance=torch.full([2], TRAIN_GUIDANCE),
            pooled_projections=cond["pooled_projections"],
            encoder_hidden_states=cond["encoder_hidden_states"],
            txt_ids=torch.zeros(cond["encoder_hidden_states"].shape[1], 3),
            img_ids=FluxPipeline._prepare_latent_image_ids(2, 2, 3, "cpu", torch.float32),
            return_dict=False,
        )[0]
    torch.testing.assert_close(got, FluxPipeline._unpack_latents(out, 32, 48, 8))


def test_evaluation_sampler_is_flow_match_euler_with_the_pipelines_shift(pipe):
    from diffusers import FlowMatchEulerDiscreteScheduler

    from lyco_bench.errors import BadInput
    from lyco_bench.families import family_of

    family = family_of(pipe)
    scheduler = family.make_scheduler(pipe, family.eval_sampler)
    assert isinstance(scheduler, FlowMatchEulerDiscreteScheduler)
    assert dict(scheduler.config) == dict(pipe.scheduler.config)
    with pytest.raises(BadInput, match="flow-euler"):
        family.make_scheduler(pipe, "ddim")


def test_flux_single_files_and_denoisers_are_recognised():
    from lyco_bench.families import family_for_class, family_of_checkpoint
    from lyco_bench.families.flux import TINY_TRANSFORMER

    bfl = ["double_blocks.0.img_attn.qkv.weight", "single_blocks.0.linear1.weight", "img_in.weight"]
    assert family_of_checkpoint(bfl).name == "flux"
    assert family_of_checkpoint(["model.diffusion_model." + k for k in bfl]).name == "flux"
    assert family_for_class("", dict(TINY_TRANSFORMER)).name == "flux"
    assert family_for_class("FluxPipeline").name == "flux"
