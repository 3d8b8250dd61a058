"""Training on the tiny FLUX: the session's loss is the flow-matching loss computed by hand with
diffusers' own prompt encoding and transformer call (DreamBooth prior preservation included), and
a trained checkpoint in kohya's FLUX names is what generation merges."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml

from tests.helpers import one_thread, run_config  # noqa: F401 - autouse fixture


@pytest.fixture(scope="module")
def flux_dir(tmp_path_factory) -> Path:
    from lyco_bench.models import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("flux") / "tiny-flux", seed=0, family="flux")


def test_loss_is_flow_matching_with_the_class_term(flux_dir, dataset_with_class_folders, tmp_path):
    from diffusers import FluxPipeline

    from lyco_bench.training.session import Session

    cfg = run_config(
        flux_dir, dataset_with_class_folders, tmp_path / "cache", categories=None, prior_loss_weight=0.5
    )
    session = Session(cfg, device=torch.device("cpu"))
    try:
        assert session.prediction_type == "flow_matching"
        batch = session.epoch_batches()[0]
        states = {k: g.get_state() for k, g in session.generators.items()}
        loss = session.loss(batch)
        for key, state in states.items():  # the same draws again, by hand
            session.generators[key].set_state(state)
        captions, x_t, sigma, target, _ = session._inputs(batch)
        n, (b, c, h, w) = len(batch), x_t.shape
        assert b == 2 * n and c == 16 and bool(((sigma > 0) & (sigma < 1)).all())
        pipe = session.pipe
        with torch.no_grad():
            embeds, pooled, text_ids = pipe.encode_prompt(captions, prompt_2=None, max_sequence_length=128)
            out = pipe.transformer(
                hidden_states=FluxPipeline._pack_latents(x_t, b, c, h, w),
                timestep=sigma,
                guidance=torch.ones(b),  # FLUX.1-dev's guidance embedding at 1.0 in training
                pooled_projections=pooled,
                encoder_hidden_states=embeds,
                txt_ids=text_ids,
                img_ids=FluxPipeline._prepare_latent_image_ids(b, h // 2, w // 2, "cpu", torch.float32),
                return_dict=False,
            )[0]
        pred = FluxPipeline._unpack_latents(out, h * 8, w * 8, 8)
        want = F.mse_loss(pred[:n], target[:n]) + 0.5 * F.mse_loss(pred[n:], target[n:])
        torch.testing.assert_close(loss.detach(), want, rtol=1e-5, atol=1e-7)
    finally:
        session.close()


@pytest.mark.e2e  # a training run and two samplings on the tiny FLUX: seconds of CPU
def test_trained_flux_checkpoint_generates_with_its_update(flux_dir, demo_dataset_dir, tmp_path):
    from lyco_bench.adapters.fileformat import read_tensors
    from lyco_bench.generation import SamplerSettings, generate
    from lyco_bench.prompts import PromptItem
    from lyco_bench.training import train

    cfg = run_config(flux_dir, demo_dataset_dir, tmp_path / "cache", lr=5e-2)
    [ckpt] = train(cfg, tmp_path / "run")
    keys = {k.partition(".")[0] for k in read_tensors(ckpt)[0]}
    assert "lora_unet_double_blocks_0_img_attn_qkv" in keys and "lora_unet_single_blocks_0_linear1" in keys
    assert any(k.startswith("lora_te1_") for k in keys)  # CLIP-L, kohya's FLUX prefix
    item = PromptItem(
        prompt="a photo of a pattern", clip_text="a photo of a pattern", prompt_class="trigger",
        category="patterns", concept="c", subclass=None, prompt_index=0, image_index=0, seed=1000,
        group="g", concepts=(),
    )  # fmt: skip
    sampler = SamplerSettings(sampler="flow-euler", steps=2, cfg=3.5, width=32, height=32, batch_size=1)
    images = []
    for name, adapters in (("base", ()), ("tuned", ((ckpt, 1.0),))):
        manifest = generate(
            model=flux_dir,
            adapters=adapters,
            items=[item],
            out_dir=tmp_path / name,
            sampler=sampler,
            device="cpu",
        )
        images.append((manifest.parent / item.relpath).read_bytes())
    assert images[0] != images[1]


def _pipe(folder):
    from lyco_bench.models import load_pipeline

    return load_pipeline(folder)


@pytest.mark.e2e  # three tiny FLUX pipelines loaded: seconds of CPU
def test_textual_inversion_on_flux_is_clip_ls_as_diffusers_loads_it(flux_dir, tmp_path):
    """A kohya embedding (one CLIP-L vector) attached by us conditions FLUX as diffusers'
    ``load_textual_inversion`` does: the pooled CLIP-L embedding changes, T5 reads the word."""
    from lyco_bench.adapters.fileformat import save_tensors
    from lyco_bench.families import family_of
    from lyco_bench.methods.textual_inversion import TextualInversion

    vector = torch.randn(1, 32, generator=torch.Generator().manual_seed(0))
    path = tmp_path / "zkw.safetensors"
    save_tensors(path, {"emb_params": vector}, {})
    ours_pipe, prompt = _pipe(flux_dir), "a photo of zkw on a table"
    method = TextualInversion.from_file(path).attach(ours_pipe)
    with torch.no_grad():
        ours = family_of(ours_pipe).encode_prompts(ours_pipe, [method.prompt(prompt)], torch.device("cpu"))
    method.detach()
    theirs_pipe = _pipe(flux_dir)
    theirs_pipe.load_textual_inversion(str(path), token="zkw")
    with torch.no_grad():
        embeds, pooled, _ = theirs_pipe.encode_prompt([prompt], prompt_2=None, max_sequence_length=128)
        plain = _pipe(flux_dir).encode_prompt([prompt], prompt_2=None, max_sequence_length=128)
    torch.testing.assert_close(ours["pooled_projections"], pooled)
    torch.testing.assert_close(ours["encoder_hidden_states"], embeds)
    assert (plain[1] - pooled).abs().max() > 1e-3  # the embedding took effect (CLIP-L)
    torch.testing.assert_close(plain[0], embeds)  # T5 has no embedding: it reads "zkw" as text


@pytest.mark.e2e  # a training run on the tiny FLUX: seconds of CPU
def test_textual_inversion_trains_clip_l_only(flux_dir, demo_dataset_dir, tmp_path):
    from lyco_bench.adapters.fileformat import read_tensors
    from lyco_bench.training import train

    pipe = _pipe(flux_dir)
    clip, t5 = (
        e.get_input_embeddings().weight.detach().clone() for e in (pipe.text_encoder, pipe.text_encoder_2)
    )
    cfg = run_config(
        flux_dir, demo_dataset_dir, tmp_path / "cache", adapter={"algo": "textual_inversion"}, lr=5e-3
    )
    [ckpt] = train(cfg, tmp_path / "run", pipeline=pipe)
    tensors, _ = read_tensors(ckpt)
    assert tensors["emb_params"].shape[-1] == clip.shape[1]  # CLIP-L's width, kohya's one-encoder layout
    assert not any(k.startswith(("clip_l", "t5")) for k in tensors)
    assert pipe.text_encoder.get_input_embeddings().weight.equal(clip)  # frozen tables
    assert pipe.text_encoder_2.get_input_embeddings().weight.equal(t5)


@pytest.mark.e2e  # two plans of a study: seconds of CPU
def test_hypernetworks_are_refused_on_flux_when_planned_and_attached(flux_dir, tmp_path, capsys):
    from lyco_bench.cli import main
    from lyco_bench.errors import BadInput
    from lyco_bench.methods.hypernetwork import Hypernetwork
    from tests.helpers import micro_study

    with pytest.raises(BadInput, match="flux family's denoiser has no cross-attention"):
        Hypernetwork().attach(_pipe(flux_dir))
    study = micro_study(
        tmp_path,
        model="tiny:flux",
        dataset="demo:",
        encoders={"dino": "tiny:", "clip": "tiny:", "vgg": "tiny:"},
    )
    data = yaml.safe_load(study.read_text())
    data["sampler"]["sampler"] = "flow-euler"
    data["algorithms"] = {"hn": {"adapter": {"algo": "hypernetwork"}, "default": "hn"}}
    study.write_text(yaml.safe_dump(data, sort_keys=False))
    assert main(["plan", str(study), "--store", str(tmp_path / "store")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "algorithms.hn" in err[0] and "cross-attention" in err[0], err
    data["algorithms"] = {"lora": {"adapter": {"algo": "lora"}, "default": "l"}}
    data["sampler"]["sampler"] = "ddim"
    study.write_text(yaml.safe_dump(data, sort_keys=False))
    assert main(["plan", str(study), "--store", str(tmp_path / "store")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "sampler.sampler" in err[0] and "flow-euler" in err[0], err
