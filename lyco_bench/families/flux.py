"""The FLUX.1 family: a rectified-flow MMDiT (``FluxTransformer2DModel``) with CLIP-L and T5 text
encoders, trained by flow matching and sampled by FLUX's flow-matching Euler sampler.

- Conditioning: CLIP-L's pooled embedding (``pooled_projections``) and T5's token sequence
  (``encoder_hidden_states``), text ids all zero, as ``FluxPipeline.encode_prompt``; in training
  FLUX.1-dev's guidance embedding reads :data:`TRAIN_GUIDANCE` (1.0: kohya's FLUX LoRA guide,
  ``--guidance_scale 1.0``, and diffusers' FLUX DreamBooth README); the latents are packed into
  2×2 patches with their image ids (:mod:`lyco_bench.families._flux_flow`).
- Objective: flow matching with kohya's ``flux_shift`` timestep density (``_flux_flow``).
- Evaluation sampler: ``flow-euler`` — diffusers' ``FlowMatchEulerDiscreteScheduler`` with the
  pipeline's resolution-dependent shift; the sampler's ``cfg`` is the distilled guidance
  (:data:`GUIDANCE`, FluxPipeline's default, in experiments/flux.yaml); no negative prompt.
- Adapters: the transformer's Linear layers by module class (``FluxTransformerBlock`` /
  ``FluxSingleTransformerBlock``, BFL's ``DoubleStreamBlock`` / ``SingleStreamBlock`` in LyCORIS's
  presets) and CLIP-L (``lora_te1``); T5 is never adapted. Files use kohya's names on BFL's fused
  layers (:mod:`lyco_bench.families._flux_keys`).
- Model-level methods: Textual Inversion trains CLIP-L's embedding only (``clip_l`` in the file;
  T5 reads the placeholder as plain characters). Hypernetworks are refused: FLUX has no
  cross-attention (text and image tokens attend jointly). DreamBooth prior preservation works as for
  every family.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lyco_bench.errors import BadInput
from lyco_bench.families._flux_flow import FlowMatchObjective, image_ids, pack, unpack
from lyco_bench.families.base import ModelFamily, Objective, TextEncoderSlot, register_family
from lyco_bench.families.sd1 import TINY_TEXT
from lyco_bench.families.sd1 import TINY_VAE as SD1_TINY_VAE

GUIDANCE = 3.5
"""FLUX.1-dev's distilled guidance for sampling (``FluxPipeline``'s default)."""
TRAIN_GUIDANCE = 1.0
"""The guidance embedding's input in training (kohya's and diffusers' FLUX LoRA recipes)."""

# The tiny FLUX (built from config): one double and one single block of 2 heads × 16, FLUX's
# 16-channel VAE latents packed 2×2 (64 input channels), RoPE axes summing to the head size.
TINY_TRANSFORMER = dict(
    patch_size=1,
    in_channels=64,
    num_layers=1,
    num_single_layers=1,
    attention_head_dim=16,
    num_attention_heads=2,
    joint_attention_dim=32,
    pooled_projection_dim=32,
    guidance_embeds=True,
    axes_dims_rope=(4, 6, 6),
)
# SD1's tiny VAE with FLUX.1's 16 latent channels, scaling and no quant convs (ae.safetensors'
# diffusers config: latents are (z − 0.1159)·0.3611).
TINY_VAE = dict(
    SD1_TINY_VAE,
    latent_channels=16,
    scaling_factor=0.3611,
    shift_factor=0.1159,
    use_quant_conv=False,
    use_post_quant_conv=False,
)
TINY_T5 = dict(
    d_model=32,
    d_kv=8,
    d_ff=64,
    num_layers=2,
    num_heads=4,
    feed_forward_proj="gated-gelu",  # T5 v1.1 (T5-XXL's)
    is_encoder_decoder=False,
    pad_token_id=0,
    eos_token_id=1,
    decoder_start_token_id=0,
)
# FLUX.1-dev's scheduler (scheduler/scheduler_config.json).
FLUX_SCHEDULE = dict(
    num_train_timesteps=1000,
    shift=3.0,
    use_dynamic_shifting=True,
    base_shift=0.5,
    max_shift=1.15,
    base_image_seq_len=256,
    max_image_seq_len=4096,
)
BLOCKS = ("FluxTransformerBlock", "FluxSingleTransformerBlock")
ATTENTION = ("FluxAttention", "Attention")
SAMPLER = "flow-euler"


def _attention(info: Any) -> bool:
    """attn-only: the Linear layers of the blocks' attention modules (``FluxAttention``: q/k/v, out,
    the text stream's add_q/k/v and to_add_out), as LyCORIS's attn-only takes BFL's SelfAttention."""
    return isinstance(info.layer, nn.Linear) and any(c in ATTENTION for c in info.enclosing)


def _ia3(info: Any) -> bool:
    """ia3: to_k, to_v and ff.net.2 inside the blocks (LyCORIS's ia3 target names)."""
    tail = info.path.split(".")[-3:]
    return info.in_transformer_block and (
        tail[-2:] in (["attn", "to_k"], ["attn", "to_v"]) or tail == ["ff", "net", "2"]
    )


PRESET_MAPS = {"attn-only": _attention, "ia3": _ia3}
"""FLUX's layers for the presets written against SD's module names (docs/internals.md)."""


class FluxFamily(ModelFamily):
    """FLUX.1 dev/schnell (``FluxPipeline``): module docstring."""

    name = "flux"
    description = (
        "FLUX.1: MMDiT transformer, CLIP-L pooled + T5, flow matching, flow-matching Euler evaluation"
    )
    pipeline_classes = ("FluxPipeline",)
    denoiser_attr = "transformer"
    text_encoders = (
        TextEncoderSlot("text_encoder", "tokenizer", "lora_te1", trainable=True, ti_key="clip_l"),
        TextEncoderSlot(
            "text_encoder_2", "tokenizer_2", "lora_te3", trainable=False, textual_inversion=False
        ),
    )
    transformer_blocks = BLOCKS
    eval_sampler = SAMPLER
    samplers = (SAMPLER,)
    cross_attention = False
    file_layout = True

    # --- loading ---------------------------------------------------------------------------------
    def claims_denoiser_config(self, config: Mapping[str, Any]) -> bool:
        return (
            "joint_attention_dim" in config
            and "pooled_projection_dim" in config
            and "num_single_layers" in config
        )

    def claims_checkpoint(self, keys: Collection[str]) -> bool:
        names = {k.removeprefix("model.diffusion_model.") for k in keys}
        return any(k.startswith("double_blocks.") for k in names) and any(
            k.startswith("single_blocks.") for k in names
        )

    def make_tiny(self, out_dir: Path, *, seed: int) -> None:
        from diffusers import (
            AutoencoderKL,
            FlowMatchEulerDiscreteScheduler,
            FluxPipeline,
            FluxTransformer2DModel,
        )
        from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

        from lyco_bench.families._clip import clip_tokenizer
        from lyco_bench.families._flux_t5 import pieces, t5_tokenizer

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            transformer = FluxTransformer2DModel(**TINY_TRANSFORMER)
            vae = AutoencoderKL(**TINY_VAE)
            clip = CLIPTextModel(CLIPTextConfig(**TINY_TEXT))
            t5 = T5EncoderModel(T5Config(vocab_size=len(pieces()), **TINY_T5))
        pipe = FluxPipeline(
            scheduler=FlowMatchEulerDiscreteScheduler(**FLUX_SCHEDULE),
            vae=vae,
            text_encoder=clip,
            tokenizer=clip_tokenizer(),
            text_encoder_2=t5,
            tokenizer_2=t5_tokenizer(),
            transformer=transformer,
        )
        pipe.save_pretrained(out_dir, safe_serialization=True)

    # --- components ------------------------------------------------------------------------------
    def latent_multiple(self, pipe: Any) -> int:
        """The VAE's factor × 2: packing takes 2×2 latent patches."""
        return 2 ** (len(pipe.vae.config.block_out_channels) - 1) * 2

    def max_sequence_length(self, pipe: Any) -> int:
        """T5 tokens read per prompt: FluxPipeline's 512, or less when the tokenizer says so."""
        return int(min(512, getattr(pipe.tokenizer_2, "model_max_length", 512)))

    # --- conditioning and the objective ----------------------------------------------------------
    def encode_prompts(self, pipe: Any, captions: list[str], device: torch.device) -> dict[str, Any]:
        clip_ids = pipe.tokenizer(
            captions,
            padding="max_length",
            max_length=pipe.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids
        t5_ids = pipe.tokenizer_2(
            captions,
            padding="max_length",
            max_length=self.max_sequence_length(pipe),
            truncation=True,
            return_tensors="pt",
        ).input_ids
        pooled = pipe.text_encoder(clip_ids.to(device), output_hidden_states=False).pooler_output
        sequence = pipe.text_encoder_2(t5_ids.to(device), output_hidden_states=False)[0]
        return {"pooled_projections": pooled, "encoder_hidden_states": sequence}

    def objective(self, pipe: Any) -> Objective:
        return FlowMatchObjective(pipe.scheduler.config)

    def predict(self, pipe: Any, x_t: torch.Tensor, t: torch.Tensor, cond: dict[str, Any]) -> torch.Tensor:
        """v̂ for latents ``x_t`` (B, 16, H, W) at σ = ``t``: packed, run, unpacked."""
        transformer = self.denoiser(pipe)
        dtype = transformer.dtype
        b, _, h, w = x_t.shape
        text = cond["encoder_hidden_states"]
        guidance = None
        if transformer.config.guidance_embeds:
            guidance = torch.full((b,), TRAIN_GUIDANCE, device=x_t.device, dtype=torch.float32)
        out = transformer(
            hidden_states=pack(x_t).to(dtype),
            timestep=t.to(x_t.device, torch.float32),
            guidance=guidance,
            pooled_projections=cond["pooled_projections"].to(dtype),
            encoder_hidden_states=text.to(dtype),
            txt_ids=torch.zeros(text.shape[1], 3, device=x_t.device, dtype=dtype),
            img_ids=image_ids(h, w, device=x_t.device, dtype=dtype),
            return_dict=False,
        )[0]
        return unpack(out, h, w)

    def make_scheduler(self, pipe: Any, sampler: str) -> Any:
        from diffusers import FlowMatchEulerDiscreteScheduler

        if sampler != SAMPLER:
            raise BadInput(f"sampler: FLUX samples with {SAMPLER!r} only (got {sampler!r})")
        return FlowMatchEulerDiscreteScheduler.from_config(pipe.scheduler.config)

    def noise_shape(self, pipe: Any, height: int, width: int) -> tuple[int, ...]:
        """FluxPipeline's draw: 16 latent channels at the VAE's scale, sides even (for packing)."""
        factor = pipe.vae_scale_factor * 2
        return (1, self.denoiser(pipe).config.in_channels // 4, 2 * (height // factor), 2 * (width // factor))

    def pipeline_latents(self, pipe: Any, noise: torch.Tensor) -> torch.Tensor:
        """The noise packed into 2×2 patch tokens, as FluxPipeline takes ``latents=``."""
        return pack(noise)

    def pipeline_kwargs(self, pipe: Any, sampler: Any) -> dict[str, Any]:
        """T5's sequence length as in training; ``cfg`` is FLUX.1-dev's distilled guidance
        (FluxPipeline's ``guidance_scale``: :data:`GUIDANCE` in experiments/flux.yaml); FLUX has no
        negative prompt (FluxPipeline would silently ignore one)."""
        if sampler.negative_prompt:
            raise BadInput(
                "sampler.negative_prompt: FLUX.1 samples with distilled guidance and no negative prompt "
                "(leave it empty)"
            )
        return {"max_sequence_length": self.max_sequence_length(pipe)}

    # --- module maps and file keys ---------------------------------------------------------------
    def select(self, preset: Any, info: Any) -> bool:
        """The presets whose SD rule names SD's attention modules (``attn1``/``attn2``), mapped by
        :data:`PRESET_MAPS`; every other preset decides by itself (attn-mlp: the double and single
        blocks whole; full-lin: those and the timestep/guidance embedders, as LyCORIS; full: every
        Linear of the transformer)."""
        rule = PRESET_MAPS.get(getattr(preset, "name", ""))
        return rule(info) if rule is not None else bool(preset.unet(info))

    def to_file(self, tensors: dict[str, torch.Tensor], modules: dict[str, type], denoiser: nn.Module):
        from lyco_bench.families._flux_keys import to_file

        return to_file(tensors, modules, denoiser)

    def from_file(
        self, tensors: dict[str, torch.Tensor], modules: dict[str, type], denoiser: nn.Module, *, name: str
    ):
        from lyco_bench.families._flux_keys import from_file

        return from_file(tensors, modules, denoiser, name=name)


FLUX = register_family(FluxFamily())
