"""Training on the tiny FLUX: the session's loss is the flow-matching loss computed by hand with
diffusers' own prompt encoding and transformer call (DreamBooth prior preservation included), and
a trained checkpoint in kohya's FLUX names is what generation merges."""

from __future__ import annotations

import shutil
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


@pytest.fixture(scope="module")
def with_class_images(tmp_path_factory, demo_dataset_dir) -> Path:
    """The demo dataset, each concept given a kohya regularization folder of two images."""
    root = Path(shutil.copytree(demo_dataset_dir, tmp_path_factory.mktemp("prior") / "data"))
    spec = yaml.safe_load((root / "dataset.yaml").read_text())
    for key in spec["concepts"]:
        reg = root.parent / "reg" / key.replace("/", "_")
        reg.mkdir(parents=True)
        for i, image in enumerate(sorted((root / key).rglob("*.png"))[:2]):
            shutil.copy(image, reg / f"{i}.png")
        spec["concepts"][key]["class_images"] = f"../reg/{key.replace('/', '_')}"
    (root / "dataset.yaml").write_text(yaml.safe_dump(spec))
    return root


def test_loss_is_flow_matching_with_the_class_term(flux_dir, with_class_images, tmp_path):
    from diffusers import FluxPipeline

    from lyco_bench.training.session import Session

    cfg = run_config(flux_dir, with_class_images, tmp_path / "cache", categories=None, prior_loss_weight=0.5)
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
