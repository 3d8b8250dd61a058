"""models.py: the tiny pipeline, the CLIP tokenizer, loading from folders and single files, bad input."""

from __future__ import annotations

import argparse
import re
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from lyco_bench.errors import BadInput
from lyco_bench.models import clip_tokenizer, load_pipeline, make_tiny_model, model_kind, register_cli

SENTENCES = [
    "a photo of a cat",
    "whoo anime girl, toid outfit, red hair, looking at viewer",
    "A Painting of the Eiffel Tower in the style of Vincent Van Gogh!",
    "pixel-art 3D render, 1024x768, it's a café naïve résumé",
    "  multiple   spaces\tand CAPS  ",
]


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    register_cli(parser.add_subparsers())
    args = parser.parse_args(argv)
    return args.func(args)


@pytest.fixture(scope="module")
def pipe(tiny_model_dir):
    return load_pipeline(str(tiny_model_dir))


def test_tiny_model_loads_and_runs(pipe, tiny_model_dir):
    assert type(pipe).__name__ == "StableDiffusionPipeline"
    assert pipe.safety_checker is None
    assert model_kind(pipe.unet.config) == "sd1"
    assert type(pipe.scheduler).__name__ == "DDPMScheduler"
    assert pipe.scheduler.config.beta_schedule == "scaled_linear"
    assert pipe.scheduler.config.num_train_timesteps == 1000
    ids = pipe.tokenizer(["a photo of a cat"], padding="max_length", return_tensors="pt").input_ids
    assert ids.shape == (1, 77)
    with torch.no_grad():
        text = pipe.text_encoder(ids)[0]  # (1, 77, 32)
        assert text.shape == (1, 77, 32)
        latents = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
        noise_pred = pipe.unet(latents, torch.tensor([10, 500]), text.expand(2, -1, -1)).sample
        assert noise_pred.shape == (2, 4, 8, 8) and torch.isfinite(noise_pred).all()
        # The VAE downsamples 8x like SD's, also for non-square images.
        encoded = pipe.vae.encode(torch.zeros(1, 3, 64, 48)).latent_dist.mean
        assert encoded.shape == (1, 4, 8, 6)
    size = sum(len(b) for b in _files(tiny_model_dir).values())
    assert size < 16e6


def test_same_seed_same_bytes_other_seed_other_weights(tiny_model_dir, tmp_path):
    assert _run_cli(["make-tiny-model", str(tmp_path / "again"), "--seed", "0"]) == 0
    assert _files(tmp_path / "again") == _files(tiny_model_dir)
    assert _run_cli(["make-tiny-model", str(tmp_path / "other"), "--seed", "1"]) == 0
    other = _files(tmp_path / "other")
    name = "unet/diffusion_pytorch_model.safetensors"
    assert other[name] != _files(tiny_model_dir)[name]


def test_tokenizer_matches_open_clip(pipe):
    import open_clip

    reference = open_clip.get_tokenizer("ViT-L-14")
    for tokenizer in (clip_tokenizer(), pipe.tokenizer):
        assert len(tokenizer) == 49408
        for sentence in SENTENCES:
            expected = reference([sentence])[0]
            expected = expected[: int((expected == 49407).nonzero()[0]) + 1].tolist()
            assert tokenizer(sentence).input_ids == expected, sentence
    # Known CLIP ids: <|startoftext|> a photo of a cat <|endoftext|>.
    assert clip_tokenizer()("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    # Long text is cut to 77 tokens keeping the end-of-text token (docs/protocol.md §10).
    ids = pipe.tokenizer("cat " * 100, truncation=True, max_length=77).input_ids
    assert len(ids) == 77 and ids[-1] == 49407


# --- single-file checkpoints ---------------------------------------------------------------------

_RESNET = [
    ("norm1", "in_layers.0"),
    ("conv1", "in_layers.2"),
    ("time_emb_proj", "emb_layers.1"),
    ("norm2", "out_layers.0"),
    ("conv2", "out_layers.3"),
    ("conv_shortcut", "skip_connection"),
]
_VAE_ATTN = [("group_norm", "norm"), ("to_q", "q"), ("to_k", "k"), ("to_v", "v"), ("to_out.0", "proj_out")]


def _rename(rest: str, pairs: list[tuple[str, str]]) -> str:
    for new, old in pairs:
        if rest.startswith(new + "."):
            return old + rest[len(new) :]
    return rest


def _unet_to_original(state: dict, *, layers_per_block: int, up_has_attention: list[bool]) -> dict:
    """Diffusers UNet keys → the original (LDM) layout; the inverse of diffusers' converter."""
    from diffusers.loaders.single_file_utils import DIFFUSERS_TO_LDM_MAPPING

    top, n, out = DIFFUSERS_TO_LDM_MAPPING["unet"]["layers"], layers_per_block + 1, {}
    for key, tensor in state.items():
        if key in top:
            new = top[key]
        elif m := re.fullmatch(r"(down|up)_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.*)", key):
            side, i, kind, j, rest = m[1], int(m[2]), m[3], int(m[4]), m[5]
            index = 1 + i * n + j if side == "down" else i * n + j
            part = f"0.{_rename(rest, _RESNET)}" if kind == "resnets" else f"1.{rest}"
            new = f"{'input' if side == 'down' else 'output'}_blocks.{index}.{part}"
        elif m := re.fullmatch(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.*)", key):
            new = f"input_blocks.{(int(m[1]) + 1) * n}.0.op.{m[2]}"
        elif m := re.fullmatch(r"up_blocks\.(\d+)\.upsamplers\.0\.(.*)", key):
            i = int(m[1])
            new = f"output_blocks.{i * n + n - 1}.{2 if up_has_attention[i] else 1}.{m[2]}"
        elif m := re.fullmatch(r"mid_block\.resnets\.(\d+)\.(.*)", key):
            new = f"middle_block.{2 * int(m[1])}.{_rename(m[2], _RESNET)}"
        else:
            new = key.replace("mid_block.attentions.0.", "middle_block.1.")
        out["model.diffusion_model." + new] = tensor
    return out


def _vae_to_original(state: dict, *, levels: int) -> dict:
    out = {}
    for key, tensor in state.items():
        new = key.replace("conv_norm_out", "norm_out").replace("conv_shortcut", "nin_shortcut")
        if m := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.(resnets|downsamplers)\.(\d+)\.(.*)", new):
            new = f"encoder.down.{m[1]}." + (
                f"block.{m[3]}.{m[4]}" if m[2] == "resnets" else f"downsample.{m[4]}"
            )
        elif m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.(resnets|upsamplers)\.(\d+)\.(.*)", new):
            level = levels - 1 - int(m[1])
            new = f"decoder.up.{level}." + (
                f"block.{m[3]}.{m[4]}" if m[2] == "resnets" else f"upsample.{m[4]}"
            )
        elif m := re.fullmatch(r"(encoder|decoder)\.mid_block\.resnets\.(\d+)\.(.*)", new):
            new = f"{m[1]}.mid.block_{int(m[2]) + 1}.{m[3]}"
        elif m := re.fullmatch(r"(encoder|decoder)\.mid_block\.attentions\.0\.(.*)", new):
            new = f"{m[1]}.mid.attn_1.{_rename(m[2], _VAE_ATTN)}"
            if tensor.ndim == 2:  # the original attention projections are 1x1 convs
                tensor = tensor[:, :, None, None]
        out["first_stage_model." + new] = tensor
    return out


def test_single_file_checkpoint_loads(pipe, tiny_model_dir, tmp_path):
    unet_cfg = pipe.unet.config
    state = _unet_to_original(
        pipe.unet.state_dict(),
        layers_per_block=unet_cfg.layers_per_block,
        up_has_attention=["CrossAttn" in t for t in unet_cfg.up_block_types],
    )
    state |= _vae_to_original(pipe.vae.state_dict(), levels=len(pipe.vae.config.down_block_types))
    # transformers >= 5.6 flattened CLIPTextModel; the original layout keeps the text_model level.
    text = {
        k if k.startswith("text_model.") else f"text_model.{k}": v
        for k, v in pipe.text_encoder.state_dict().items()
    }
    state |= {f"cond_stage_model.transformer.{k}": v for k, v in text.items()}
    path = tmp_path / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))

    # Offline, without the architecture's diffusers configs, the file cannot be converted.
    with pytest.raises(BadInput, match="could not load as a single-file checkpoint"):
        load_pipeline(str(path))
    loaded = load_pipeline(str(path), config=str(tiny_model_dir))
    assert type(loaded).__name__ == "StableDiffusionPipeline"
    for name in ("unet", "vae", "text_encoder"):
        expected = getattr(pipe, name).state_dict()
        got = getattr(loaded, name).state_dict()
        assert got.keys() == expected.keys(), name
        for key in expected:
            torch.testing.assert_close(got[key], expected[key], rtol=0, atol=0, msg=f"{name}.{key}")
    assert loaded.tokenizer("a photo of a cat").input_ids == pipe.tokenizer("a photo of a cat").input_ids


def test_model_kind():
    assert model_kind({"cross_attention_dim": 768}) == "sd1"
    assert model_kind({"cross_attention_dim": 1024}) == "sd2"
    assert model_kind({"cross_attention_dim": 2048, "addition_embed_type": "text_time"}) == "sdxl"


def test_bad_inputs(tmp_path, tiny_model_dir):
    cases = {
        str(tmp_path / "missing"): "no such file or folder",
        str(tmp_path): "no model_index.json",
        str(tmp_path / "model.ckpt"): "pickled checkpoints are not loaded",
    }
    (tmp_path / "notes.txt").write_text("hello")
    cases[str(tmp_path / "notes.txt")] = "not a model"
    save_file({"w": torch.zeros(2)}, str(tmp_path / "random.safetensors"))
    cases[str(tmp_path / "random.safetensors")] = "not a checkpoint of a known model family"
    (tmp_path / "broken.safetensors").write_bytes(b"\x00\x01garbage")
    cases[str(tmp_path / "broken.safetensors")] = "not a readable safetensors file"
    other = tmp_path / "other-pipeline"
    other.mkdir()
    (other / "model_index.json").write_text('{"_class_name": "StableAudioPipeline"}')
    cases[str(other)] = "unsupported pipeline class 'StableAudioPipeline'"
    partial = tmp_path / "partial"
    shutil.copytree(tiny_model_dir, partial, ignore=shutil.ignore_patterns("unet"))
    cases[str(partial)] = "could not load the model"
    cases["someone/not-cached-here"] = "not in the local Hugging Face cache"  # a hub id, offline in tests
    for model, message in cases.items():
        with pytest.raises(BadInput, match=re.escape(message)) as info:
            load_pipeline(model)
        assert str(info.value).startswith(model) and "\n" not in str(info.value)

    with pytest.raises(BadInput, match="already exists and is not an empty folder"):
        make_tiny_model(tiny_model_dir)

    sd_file = tmp_path / "sd.safetensors"
    save_file({"model.diffusion_model.conv_in.weight": torch.zeros(1)}, str(sd_file))
    with pytest.raises(BadInput, match="--config must be a diffusers model folder"):
        load_pipeline(str(sd_file), config=str(tmp_path / "missing"))


def test_sdxl_folder_loads_as_sdxl(tmp_path):
    """SDXL-ready: a (tiny) SDXL folder comes back as StableDiffusionXLPipeline, kind "sdxl"."""
    from diffusers import (
        AutoencoderKL,
        EulerDiscreteScheduler,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from lyco_bench.models import TINY_TEXT, TINY_VAE

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=8,
        layers_per_block=1,
        block_out_channels=(32, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=64,  # both text encoders' 32-d states, concatenated
        attention_head_dim=8,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=32 + 6 * 8,  # pooled text + 6 size/crop numbers
    )
    pipe = StableDiffusionXLPipeline(
        vae=AutoencoderKL(**TINY_VAE),
        text_encoder=CLIPTextModel(CLIPTextConfig(**TINY_TEXT)),
        text_encoder_2=CLIPTextModelWithProjection(CLIPTextConfig(**TINY_TEXT)),
        tokenizer=clip_tokenizer(),
        tokenizer_2=clip_tokenizer(),
        unet=unet,
        scheduler=EulerDiscreteScheduler(),
    )
    pipe.save_pretrained(tmp_path / "sdxl")
    loaded = load_pipeline(str(tmp_path / "sdxl"))
    assert type(loaded).__name__ == "StableDiffusionXLPipeline"
    assert model_kind(loaded.unet.config) == "sdxl"
