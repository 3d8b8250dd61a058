"""Pretraining the world's base model: a tiny SD1.x (VAE, CLIP text encoder, cross-attention UNet).

Stages, each from a fixed seed, on the CPU with one thread (``torch.set_num_threads(1)``), so the
same code, library versions and CPU kind rebuild the same bytes:

1. draw the pictures (``draw_images``): base-world objects, plus held-out pictures for the VAE
   only — SD's VAE can encode any picture, so ours is trained on every rendering of the world;
2. train the VAE (``train_vae``): L1 + L2 reconstruction from a posterior sample, a small KL term;
   ``scaling_factor`` set so the latents have unit variance, as SD's 0.18215 does;
3. encode the base-world pictures once (posterior mean and std, as the trainer's latent cache);
4. train the text encoder and the UNet together from scratch on ε-prediction with SD1.x's noise
   schedule (``train_unet``), captions varied per step (lyco_bench.world.captions), 10% empty for
   classifier-free guidance. The held-out concepts never reach the UNet or the text encoder.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from lyco_bench.models import SD_SCHEDULE
from lyco_bench.world.captions import varied_caption
from lyco_bench.world.draw import CANVAS, Scene, draw_scene, sample_base, sample_character, sample_object

# 64 px pictures → VAE 8× → 8×8×4 latents → UNet 8 → 4 → 2.
WORLD_VAE = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(16, 32, 64, 64),
    layers_per_block=1,
    latent_channels=4,
    norm_num_groups=4,  # 4+ channels per group: one channel per group breeds blob artifacts
    sample_size=CANVAS,
)
WORLD_TEXT = dict(
    hidden_size=64,
    intermediate_size=256,
    num_hidden_layers=3,
    num_attention_heads=4,
    max_position_embeddings=77,
    vocab_size=49408,
    projection_dim=64,
    bos_token_id=49406,
    eos_token_id=49407,
    pad_token_id=49407,
)
WORLD_UNET = dict(
    sample_size=8,
    in_channels=4,
    out_channels=4,
    layers_per_block=1,
    block_out_channels=(64, 128, 128),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=64,
    attention_head_dim=4,
    norm_num_groups=32,
)
THREADS = 1
"""Intra-op threads of every stage: float sums depend on how work is split across threads."""


@dataclass(frozen=True)
class PretrainSettings:
    seed: int = 0
    images: int = 12000  # base-world pictures the UNet sees
    held_out_vae_images: int = 3000  # held-out pictures the VAE also sees
    vae_steps: int = 4000
    vae_batch: int = 8
    vae_lr: float = 5e-4
    vae_kl: float = 1e-4
    unet_steps: int = 4000
    unet_batch: int = 32
    unet_lr: float = 4e-4
    text_lr: float = 2e-4
    warmup: int = 300
    eval_base_images: int = 6000  # evaluator/classifier pictures (drawn + VAE reconstruction each)
    eval_held_out_images: int = 3000
    classifier_steps: int = 1500
    dino_steps: int = 2000
    clip_steps: int = 2000


def _log(message: str, log: Callable[[str], None] | None) -> None:
    if log is not None:
        log(message)


def base_scenes(seed: int, n: int) -> list[Scene]:
    rng = np.random.default_rng([seed, 1])
    return [sample_base(rng) for _ in range(n)]


def held_out_scenes(seed: int, n: int, *, stream: int = 2) -> list[Scene]:
    """``n`` held-out pictures: a third robots, a third dolls (either hat), a third comic style."""
    rng = np.random.default_rng([seed, stream])
    scenes = []
    for i in range(n):
        k = i % 3
        if k == 0:
            scenes.append(sample_character(rng, "robot"))
        elif k == 1:
            scenes.append(sample_character(rng, "doll"))
        else:
            scenes.append(sample_object(rng, style="comic"))
    return scenes


def draw_images(scenes: list[Scene]) -> np.ndarray:
    """(N, 64, 64, 3) uint8."""
    out = np.empty((len(scenes), CANVAS, CANVAS, 3), dtype=np.uint8)
    for i, scene in enumerate(scenes):
        out[i] = np.asarray(draw_scene(scene))
    return out


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, 3) → float (N, 3, H, W) in [-1, 1]."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def _lr_lambda(warmup: int, total: int) -> Callable[[int], float]:
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return f


def train_vae(images: np.ndarray, settings: PretrainSettings, *, log=None):
    """An AutoencoderKL trained on ``images``; its scaling_factor set from the base latents later."""
    from diffusers import AutoencoderKL

    torch.manual_seed(settings.seed)
    vae = AutoencoderKL(**WORLD_VAE)
    gen = torch.Generator().manual_seed(settings.seed + 11)
    opt = torch.optim.AdamW(vae.parameters(), lr=settings.vae_lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(100, settings.vae_steps))
    vae.train()
    start, n = time.time(), len(images)
    for step in range(settings.vae_steps):
        idx = torch.randint(0, n, (settings.vae_batch,), generator=gen)
        x = to_tensor(images[idx.numpy()])
        post = vae.encode(x).latent_dist
        z = post.mean + post.std * torch.randn(post.mean.shape, generator=gen)
        rec = vae.decode(z).sample
        kl = 0.5 * (post.mean.pow(2) + post.var - 1.0 - post.logvar).mean()
        loss = F.l1_loss(rec, x) + F.mse_loss(rec, x) + settings.vae_kl * kl
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        if step % 100 == 0 or step == settings.vae_steps - 1:
            _log(
                f"vae step {step}/{settings.vae_steps} loss {loss.item():.4f} kl {kl.item():.3f} "
                f"({time.time() - start:.0f} s)",
                log,
            )
    return vae.eval()


@torch.no_grad()
def encode(vae, images: np.ndarray, *, batch: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior (mean, std) of each picture, (N, 4, 8, 8) each, unscaled."""
    means, stds = [], []
    for i in range(0, len(images), batch):
        post = vae.encode(to_tensor(images[i : i + batch])).latent_dist
        means.append(post.mean)
        stds.append(post.std)
    return torch.cat(means), torch.cat(stds)


@torch.no_grad()
def decode(vae, latents: torch.Tensor, *, batch: int = 64) -> np.ndarray:
    """Unscaled latents → uint8 (N, 64, 64, 3)."""
    out = []
    for i in range(0, len(latents), batch):
        x = vae.decode(latents[i : i + batch]).sample
        out.append(((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy())
    return np.concatenate(out)


class _Tokens:
    """CLIP token ids per caption, memoized (a few thousand distinct captions recur)."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer, self.memo = tokenizer, {}

    def __call__(self, captions: list[str]) -> torch.Tensor:
        missing = [c for c in dict.fromkeys(captions) if c not in self.memo]
        if missing:
            ids = self.tokenizer(
                missing, padding="max_length", max_length=77, truncation=True, return_tensors="pt"
            ).input_ids
            self.memo.update(zip(missing, ids, strict=True))
        return torch.stack([self.memo[c] for c in captions])


def min_snr_weights(alphas_cumprod: torch.Tensor, t: torch.Tensor, gamma: float = 5.0) -> torch.Tensor:
    """Min-SNR-γ loss weights for ε-prediction: min(SNR, γ) / SNR."""
    ab = alphas_cumprod[t]
    snr = ab / (1 - ab)
    return snr.clamp(max=gamma) / snr


def build_text_encoder(seed: int):
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    return CLIPTextModel(CLIPTextConfig(**WORLD_TEXT))


def build_unet(seed: int):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    return UNet2DConditionModel(**WORLD_UNET)


def train_unet(
    means: torch.Tensor,
    stds: torch.Tensor,
    scenes: list[Scene],
    scaling: float,
    settings: PretrainSettings,
    *,
    log=None,
    on_step=None,
):
    """Train the text encoder and UNet together; returns their EMA copies (decay 0.999)."""
    import copy

    from diffusers import DDPMScheduler

    from lyco_bench.models import clip_tokenizer

    text_encoder = build_text_encoder(settings.seed + 1)
    unet = build_unet(settings.seed + 2)
    ema_te, ema_unet = copy.deepcopy(text_encoder).eval(), copy.deepcopy(unet).eval()
    for p in (*ema_te.parameters(), *ema_unet.parameters()):
        p.requires_grad_(False)
    tokens = _Tokens(clip_tokenizer())
    scheduler = DDPMScheduler(**SD_SCHEDULE)
    alphas = scheduler.alphas_cumprod
    # Token rows no caption uses get no gradient and, without weight decay, stay as initialized
    # (random, like a rare token's): the held-out triggers are such rows.
    te_params = list(text_encoder.parameters())
    opt = torch.optim.AdamW(
        [
            {"params": list(unet.parameters()), "lr": settings.unet_lr},
            {"params": te_params, "lr": settings.text_lr},
        ],
        weight_decay=0.0,
        fused=True,
    )
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(settings.warmup, settings.unet_steps))
    pairs = [
        (p, q)
        for model, ema in ((unet, ema_unet), (text_encoder, ema_te))
        for p, q in zip(model.parameters(), ema.parameters(), strict=True)
        if p.requires_grad
    ]
    live_params, ema_params = [p for p, _ in pairs], [q for _, q in pairs]
    gen = torch.Generator().manual_seed(settings.seed + 21)
    caption_rng = np.random.default_rng([settings.seed, 22])
    unet.train()
    text_encoder.train()
    n, start, running = len(scenes), time.time(), []
    for step in range(settings.unet_steps):
        idx = torch.randint(0, n, (settings.unet_batch,), generator=gen)
        x0 = (means[idx] + stds[idx] * torch.randn(means[idx].shape, generator=gen)) * scaling
        noise = torch.randn(x0.shape, generator=gen)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (x0.shape[0],), generator=gen)
        x_t = scheduler.add_noise(x0, noise, t)
        captions = [varied_caption(scenes[i], caption_rng) for i in idx.tolist()]
        cond = text_encoder(tokens(captions))[0]
        pred = unet(x_t, t, cond).sample
        per = (pred - noise).pow(2).mean(dim=(1, 2, 3))
        loss = (per * min_snr_weights(alphas, t)).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_([*unet.parameters(), *te_params], 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        decay = min(0.999, (1 + step) / (10 + step))
        with torch.no_grad():
            torch._foreach_lerp_(ema_params, live_params, 1 - decay)
        running.append(per.mean().item())
        if step % 200 == 0 or step == settings.unet_steps - 1:
            _log(
                f"unet step {step}/{settings.unet_steps} loss {np.mean(running):.4f} "
                f"({time.time() - start:.0f} s)",
                log,
            )
            running = []
        if on_step is not None:
            on_step(step, ema_unet, ema_te)
    return ema_unet, ema_te


def make_pipeline(unet, vae, text_encoder):
    from diffusers import DDPMScheduler, StableDiffusionPipeline

    from lyco_bench.models import clip_tokenizer

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
    pipe.set_progress_bar_config(disable=True)
    return pipe


@torch.no_grad()
def sample(
    pipe, prompts: list[str], *, seeds: list[int], steps: int = 20, cfg: float = 7.0, batch: int = 32
) -> np.ndarray:
    """uint8 (N, 64, 64, 3) pictures for ``prompts`` with DDIM (one generator per seed)."""
    from diffusers import DDIMScheduler

    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    out = []
    for i in range(0, len(prompts), batch):
        gens = [torch.Generator().manual_seed(s) for s in seeds[i : i + batch]]
        res = pipe(
            prompt=prompts[i : i + batch],
            num_inference_steps=steps,
            guidance_scale=cfg,
            width=CANVAS,
            height=CANVAS,
            generator=gens,
            output_type="np",
        ).images
        out.append(np.clip(np.round(np.asarray(res) * 255), 0, 255).astype(np.uint8))
    return np.concatenate(out)
