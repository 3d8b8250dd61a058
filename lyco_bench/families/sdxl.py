"""The SDXL family: two CLIP text encoders, a UNet with SDXL's text-time embedding, DDPM ε, DDIM evaluation.

What differs from SD1.x (lyco_bench.families.sd1):

* text: both encoders' penultimate hidden states, concatenated (768 + 1280 = 2048 features for
  SDXL 1.0), and the second encoder's pooled, projected embedding (``text_embeds``), as diffusers'
  ``StableDiffusionXLPipeline.encode_prompt`` computes them; adapters may train both encoders
  (file keys ``lora_te1_…`` and ``lora_te2_…``, as kohya sd-scripts names them);
* size conditioning: ``add_time_ids`` = (original height, width, crop top, left, target height,
  width) of each sample (SDXL paper §2.2; kohya's ``get_size_embeddings``): the image file's size,
  the top-left of its centre crop in the resized image, and its bucket;
* file keys: kohya trains SDXL on the original (SGM) UNet, so its files name UNet layers by the
  SGM paths (``lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q``,
  ``lora_unet_middle_block_1_…``, ``lora_unet_output_blocks_…``); :func:`sgm_path` maps a
  diffusers module path to it. Files naming layers by the diffusers path load too (aliases);
* dtype: SDXL's original VAE overflows in float16. Its config's ``force_upcast`` (True for it,
  False for the fp16-fix VAE) makes the pipeline decode in float32; training encodes latents with
  the float32 model it loads. Scaling factor 0.13025 (the VAE's config).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

import torch

from lyco_bench.families.base import ImageGeometry, TextEncoderSlot, register_family
from lyco_bench.families.sd1 import SD_SCHEDULE, TINY_TEXT, TINY_VAE, UNetFamily

# The tiny SDXL (tests, CI): SDXL's block layout (a plain first block, cross-attention blocks with
# several transformer layers below it, linear projections, two resnets per block) at toy widths.
# The two encoders differ in width so that a mixed-up encoder cannot go unnoticed.
TINY_TEXT_1 = dict(TINY_TEXT)
TINY_TEXT_2 = dict(TINY_TEXT, hidden_size=48, intermediate_size=96, projection_dim=40)
TINY_SDXL_UNET = dict(
    sample_size=8,
    in_channels=4,
    out_channels=4,
    layers_per_block=2,
    block_out_channels=(32, 64),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
    transformer_layers_per_block=(1, 2),
    attention_head_dim=(2, 4),
    cross_attention_dim=TINY_TEXT_1["hidden_size"] + TINY_TEXT_2["hidden_size"],
    use_linear_projection=True,
    addition_embed_type="text_time",
    addition_time_embed_dim=8,
    # pooled text (the second encoder's projection) + 6 size numbers × their embedding width
    projection_class_embeddings_input_dim=TINY_TEXT_2["projection_dim"] + 6 * 8,
    norm_num_groups=32,
)
TINY_SDXL_VAE = dict(TINY_VAE, scaling_factor=0.13025, force_upcast=True)
# SDXL 1.0's scheduler config (the same DDPM betas as SD1.x; Euler with "leading" spacing).
SDXL_SCHEDULE = {k: v for k, v in SD_SCHEDULE.items() if k not in ("clip_sample",)} | dict(
    timestep_spacing="leading", interpolation_type="linear", use_karras_sigmas=False
)

# diffusers ResnetBlock2D → SGM ResBlock layer names.
_RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}
_TOP = {
    "conv_in": "input_blocks.0.0",
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "add_embedding.linear_1": "label_emb.0.0",
    "add_embedding.linear_2": "label_emb.0.2",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
}


def sgm_path(path: str, config: Mapping[str, Any]) -> str:
    """The SGM (original SDXL) module path of a diffusers UNet module path.

    SGM numbers the UNet's layers flat: ``input_blocks.0`` is conv_in, then each down block's
    L = ``layers_per_block`` (resnet, attention) pairs and its downsampler (``op``);
    ``middle_block`` is resnet, attention, resnet; ``output_blocks`` are each up block's L + 1
    (resnet, attention) pairs, the upsampler after the last pair's attention (or its resnet).
    """
    for prefix, sgm in _TOP.items():
        if path == prefix or path.startswith(prefix + "."):
            return sgm + path[len(prefix) :]
    parts = path.split(".")
    per_block = int(config.get("layers_per_block", 2))
    if parts[0] == "down_blocks" and len(parts) >= 4:
        block, kind, index, rest = int(parts[1]), parts[2], int(parts[3]), parts[4:]
        if kind == "downsamplers":
            return _join(f"input_blocks.{1 + block * (per_block + 1) + per_block}.0", _rename(rest, "op"))
        return _join(f"input_blocks.{1 + block * (per_block + 1) + index}", _inner(kind, rest))
    if parts[0] == "mid_block" and len(parts) >= 3:
        kind, index, rest = parts[1], int(parts[2]), parts[3:]
        slot = {("resnets", 0): 0, ("attentions", 0): 1, ("resnets", 1): 2}[(kind, index)]
        return _join(f"middle_block.{slot}", _resnet(rest) if kind == "resnets" else rest)
    if parts[0] == "up_blocks" and len(parts) >= 4:
        block, kind, index, rest = int(parts[1]), parts[2], int(parts[3]), parts[4:]
        if kind == "upsamplers":
            has_attention = "CrossAttn" in config["up_block_types"][block]
            position = 2 if has_attention else 1
            return _join(f"output_blocks.{block * (per_block + 1) + per_block}.{position}", rest)
        return _join(f"output_blocks.{block * (per_block + 1) + index}", _inner(kind, rest))
    return path


def _inner(kind: str, rest: list[str]) -> list[str]:
    return ["0", *_resnet(rest)] if kind == "resnets" else ["1", *rest]


def _resnet(rest: list[str]) -> list[str]:
    head = ".".join(rest[:1])
    return [*_RESNET[head].split("."), *rest[1:]] if head in _RESNET else rest


def _rename(rest: list[str], first: str) -> list[str]:
    return [first, *rest[1:]] if rest else rest


def _join(prefix: str, rest: list[str]) -> str:
    return ".".join([prefix, *rest])


class SDXLFamily(UNetFamily):
    """SDXL 1.0 and its fine-tunes (``StableDiffusionXLPipeline``): module docstring."""

    name = "sdxl"
    description = "SDXL: two CLIP text encoders (pooled second), size conditioning, UNet, DDPM ε, DDIM"
    pipeline_classes = ("StableDiffusionXLPipeline",)
    text_encoders = (
        TextEncoderSlot("text_encoder", "tokenizer", "lora_te1", ti_key="clip_l"),
        TextEncoderSlot("text_encoder_2", "tokenizer_2", "lora_te2", ti_key="clip_g"),
    )

    def claims_denoiser_config(self, config: Mapping[str, Any]) -> bool:
        return config.get("addition_embed_type") == "text_time"

    def claims_checkpoint(self, keys: Collection[str]) -> bool:
        return any(k.startswith("conditioner.embedders.1.") for k in keys)

    def encode_prompts(self, pipe: Any, captions: list[str], device: torch.device) -> dict[str, Any]:
        hidden, pooled = [], None
        for slot in self.text_encoders:
            ids = self.tokenize(pipe, slot, captions)
            out = getattr(pipe, slot.attr)(ids.to(device), output_hidden_states=True)
            pooled = out[0]  # the last encoder's: CLIPTextModelWithProjection's text_embeds
            hidden.append(out.hidden_states[-2])  # penultimate layer, as SDXL was trained
        return {"encoder_hidden_states": torch.cat(hidden, dim=-1), "text_embeds": pooled}

    def extra_conditioning(
        self, pipe: Any, geometry: list[ImageGeometry], device: torch.device
    ) -> dict[str, Any]:
        return {"time_ids": add_time_ids(geometry).to(device)}

    def predict(self, pipe: Any, x_t: torch.Tensor, t: torch.Tensor, cond: dict[str, Any]) -> torch.Tensor:
        added = {
            "text_embeds": cond["text_embeds"],
            "time_ids": cond["time_ids"].to(cond["text_embeds"].dtype),
        }
        return self.denoiser(pipe)(
            x_t, t, encoder_hidden_states=cond["encoder_hidden_states"], added_cond_kwargs=added
        ).sample

    def denoiser_key(self, path: str, config: Mapping[str, Any]) -> str:
        return "lora_unet_" + sgm_path(path, config).replace(".", "_")

    def denoiser_aliases(self, path: str, config: Mapping[str, Any]) -> tuple[str, ...]:
        return ("lora_unet_" + path.replace(".", "_"),)

    def make_tiny(self, out_dir: Path, *, seed: int) -> None:
        from diffusers import (
            AutoencoderKL,
            EulerDiscreteScheduler,
            StableDiffusionXLPipeline,
            UNet2DConditionModel,
        )
        from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

        from lyco_bench.families._clip import clip_tokenizer

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            unet = UNet2DConditionModel(**TINY_SDXL_UNET)
            vae = AutoencoderKL(**TINY_SDXL_VAE)
            text_encoder = CLIPTextModel(CLIPTextConfig(**TINY_TEXT_1))
            text_encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig(**TINY_TEXT_2))
        pipe = StableDiffusionXLPipeline(
            vae=vae,
            text_encoder=text_encoder,
            text_encoder_2=text_encoder_2,
            tokenizer=clip_tokenizer(),
            tokenizer_2=clip_tokenizer(),
            unet=unet,
            scheduler=EulerDiscreteScheduler(**SDXL_SCHEDULE),
            add_watermarker=False,
        )
        pipe.save_pretrained(out_dir, safe_serialization=True)


def add_time_ids(geometry: list[ImageGeometry]) -> torch.Tensor:
    """(B, 6) float32: original (h, w), crop (top, left), target (h, w) per sample, the order of
    diffusers' ``_get_add_time_ids`` and kohya's ``get_size_embeddings``."""
    rows = [[g.original[1], g.original[0], g.crop[0], g.crop[1], g.target[1], g.target[0]] for g in geometry]
    return torch.tensor(rows, dtype=torch.float32)


SDXL = register_family(SDXLFamily())
