"""The SD1.x / SD2.x family (the default): one CLIP text encoder, a cross-attention UNet, DDPM ε/v.

Also the shared machinery of the UNet families (:class:`UNetFamily`, :class:`DDPMObjective`):
SDXL subclasses it and changes what differs (two encoders, size conditioning, SGM file keys).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

import torch

from lyco_bench.errors import BadInput
from lyco_bench.families.base import ModelFamily, Objective, TextEncoderSlot, register_family

# The tiny model (built from config: what the tests and the CPU demo run on). Sizes are the smallest
# that keep every structural feature the adapters and trainer touch.
TINY_UNET = dict(
    sample_size=8,
    in_channels=4,
    out_channels=4,
    layers_per_block=1,
    block_out_channels=(32, 64),
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=32,
    attention_head_dim=8,
    norm_num_groups=32,
)
TINY_VAE = dict(
    in_channels=3,
    out_channels=3,
    # 4 levels → 3 downsamplers → 8× like SD's VAE.
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(8, 16, 16, 16),
    layers_per_block=1,
    latent_channels=4,
    norm_num_groups=8,
    sample_size=64,
)
TINY_TEXT = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    max_position_embeddings=77,
    vocab_size=49408,
    projection_dim=32,
    bos_token_id=49406,
    eos_token_id=49407,
    pad_token_id=49407,
)
# SD1.x's noise schedule (v1-inference.yaml: linear_start 0.00085, linear_end 0.012, 1000 steps,
# "scaled_linear" = linear in sqrt(beta)).
SD_SCHEDULE = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    clip_sample=False,
    steps_offset=1,
    prediction_type="epsilon",
)


class DDPMObjective(Objective):
    """DDPM training (Ho et al. 2020): t ~ U{0…T−1}, x_t = √ᾱ_t·x0 + √(1−ᾱ_t)·ε; the target is ε
    or, for v-prediction (Salimans & Ho 2022), v = √ᾱ_t·ε − √(1−ᾱ_t)·x0."""

    def __init__(self, scheduler_config: Mapping[str, Any]) -> None:
        from diffusers import DDPMScheduler

        self.scheduler = DDPMScheduler.from_config(scheduler_config)
        self.name = self.scheduler.config.prediction_type
        if self.name not in ("epsilon", "v_prediction"):
            raise BadInput(f"model: prediction type {self.name!r} is not supported")

    def sample(
        self, x0: torch.Tensor, noise: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        steps = self.scheduler.config.num_train_timesteps
        t = torch.randint(0, steps, (x0.shape[0],), generator=generator)
        x_t = self.scheduler.add_noise(x0, noise, t)
        target = noise if self.name == "epsilon" else self.scheduler.get_velocity(x0, noise, t)
        return x_t, t, target


class UNetFamily(ModelFamily):
    """What SD1.x/SD2.x and SDXL share: a UNet2DConditionModel, CLIP encoders, DDPM, DDIM evaluation."""

    def tokenize(self, pipe: Any, slot: TextEncoderSlot, captions: list[str]) -> torch.Tensor:
        tokenizer = getattr(pipe, slot.tokenizer)
        return tokenizer(
            captions,
            padding="max_length",
            max_length=tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids  # (B, 77)

    def objective(self, pipe: Any) -> Objective:
        return DDPMObjective(pipe.scheduler.config)

    def predict(self, pipe: Any, x_t: torch.Tensor, t: torch.Tensor, cond: dict[str, Any]) -> torch.Tensor:
        return self.denoiser(pipe)(x_t, t, **cond).sample

    def make_scheduler(self, pipe: Any, sampler: str) -> Any:
        from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler

        config = pipe.scheduler.config
        if sampler == "ddim":
            return DDIMScheduler.from_config(config)
        if sampler == "euler":
            return EulerDiscreteScheduler.from_config(config)
        if sampler == "dpm++":
            return DPMSolverMultistepScheduler.from_config(config, algorithm_type="dpmsolver++")
        raise BadInput(f"sampler: unknown sampler {sampler!r} ({', '.join(self.samplers)})")


class SD1Family(UNetFamily):
    """SD1.x and SD2.x (``StableDiffusionPipeline``): keys ``lora_unet_<diffusers path>``, ``lora_te_…``."""

    name = "sd1"
    description = "Stable Diffusion 1.x/2.x: one CLIP text encoder, UNet, DDPM ε/v, DDIM evaluation"
    pipeline_classes = ("StableDiffusionPipeline",)
    text_encoders = (TextEncoderSlot("text_encoder", "tokenizer", "lora_te"),)

    def claims_denoiser_config(self, config: Mapping[str, Any]) -> bool:
        return "cross_attention_dim" in config and config.get("addition_embed_type") != "text_time"

    def claims_checkpoint(self, keys: Collection[str]) -> bool:
        return any(k.startswith("model.diffusion_model.") for k in keys) and not any(
            k.startswith(("conditioner.embedders.", "model.diffusion_model.double_blocks.")) for k in keys
        )  # SDXL's second encoder; FLUX's double blocks (a ComfyUI-saved FLUX checkpoint)

    def load_kwargs(self) -> dict[str, Any]:
        return dict(safety_checker=None, requires_safety_checker=False)

    def encode_prompts(self, pipe: Any, captions: list[str], device: torch.device) -> dict[str, Any]:
        slot = self.text_encoders[0]
        ids = self.tokenize(pipe, slot, captions)
        hidden = getattr(pipe, slot.attr)(ids.to(device))[0]  # (B, 77, D) last hidden state
        return {"encoder_hidden_states": hidden}

    def make_tiny(self, out_dir: Path, *, seed: int) -> None:
        from diffusers import AutoencoderKL, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
        from transformers import CLIPTextConfig, CLIPTextModel

        from lyco_bench.families._clip import clip_tokenizer

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            unet = UNet2DConditionModel(**TINY_UNET)
            vae = AutoencoderKL(**TINY_VAE)
            text_encoder = CLIPTextModel(CLIPTextConfig(**TINY_TEXT))
        pipe = StableDiffusionPipeline(
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=clip_tokenizer(),
            unet=unet,
            scheduler=DDPMScheduler(**SD_SCHEDULE),
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
        pipe.save_pretrained(out_dir, safe_serialization=True)


SD1 = register_family(SD1Family())
