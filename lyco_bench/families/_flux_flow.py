"""FLUX.1's rectified-flow training objective and its latent packing.

Flow matching (Lipman et al. 2023; rectified flow, Liu et al. 2023; as SD3 and FLUX train):

    x_t = (1 − σ)·x0 + σ·ε,   target v = ε − x0,   loss = ‖v̂(x_t, σ) − v‖²

σ is drawn as kohya's sd-scripts FLUX default for LoRA (``--timestep_sampling flux_shift``):
logit-normal u = sigmoid(N(0, 1)) (Esser et al. 2024, SD3 §3.1), then shifted by the image's
resolution as FLUX.1's sampler shifts its schedule,

    σ = e^μ / (e^μ + 1/u − 1),   μ = base_shift + (max_shift − base_shift)·(n − n_base)/(n_max − n_base)

with n the packed sequence length (latent h·w / 4) and the constants of the pipeline's
``FlowMatchEulerDiscreteScheduler`` config (FLUX.1-dev: 0.5, 1.15, 256, 4096: diffusers'
``calculate_shift`` and ``time_shift``). A scheduler without dynamic shifting (FLUX.1-schnell)
uses its static ``shift`` s: σ = s·u / (1 + (s − 1)·u). The transformer reads t = σ (it scales
by 1000 itself), as ``FluxPipeline`` passes it.

Packing (``FluxPipeline._pack_latents``): 2×2 patches of the 16-channel latents become tokens of 64
channels, row-major; each token's id is (0, row, column) of its patch (``_prepare_latent_image_ids``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch

from lyco_bench.families.base import Objective


def shift_mu(seq_len: int, config: Mapping[str, Any]) -> float:
    """μ of FLUX's resolution-dependent shift for ``seq_len`` packed tokens (linear in seq_len)."""
    base, top = float(config.get("base_shift", 0.5)), float(config.get("max_shift", 1.15))
    n0, n1 = int(config.get("base_image_seq_len", 256)), int(config.get("max_image_seq_len", 4096))
    return base + (top - base) * (seq_len - n0) / (n1 - n0)


def shifted_sigma(u: torch.Tensor, seq_len: int, config: Mapping[str, Any]) -> torch.Tensor:
    """σ for uniform-in-(0, 1) ``u`` under the scheduler's shift (module docstring)."""
    if config.get("use_dynamic_shifting", False):
        e = math.exp(shift_mu(seq_len, config))
        return e / (e + (1.0 / u - 1.0))
    s = float(config.get("shift", 1.0))
    return s * u / (1.0 + (s - 1.0) * u)


class FlowMatchObjective(Objective):
    """x_t = (1 − σ)·x0 + σ·ε, target ε − x0, σ logit-normal and shifted (module docstring)."""

    name = "flow_matching"

    def __init__(
        self, scheduler_config: Mapping[str, Any], *, logit_mean: float = 0.0, logit_std: float = 1.0
    ) -> None:
        self.config = dict(scheduler_config)
        self.logit_mean = float(logit_mean)
        self.logit_std = float(logit_std)

    def sample(
        self, x0: torch.Tensor, noise: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        normal = torch.randn(x0.shape[0], generator=generator, dtype=torch.float32)
        u = torch.sigmoid(self.logit_mean + self.logit_std * normal)
        seq_len = (x0.shape[-2] // 2) * (x0.shape[-1] // 2)
        sigma = shifted_sigma(u, seq_len, self.config)
        s = sigma.view(-1, *([1] * (x0.dim() - 1))).to(x0.dtype)
        return (1 - s) * x0 + s * noise, sigma, noise - x0


def pack(latents: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) → (B, H/2·W/2, 4C): 2×2 patches as tokens, row-major."""
    b, c, h, w = latents.shape
    x = latents.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, (h // 2) * (w // 2), c * 4)


def unpack(tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """The inverse of :func:`pack` for latents of ``height`` × ``width``."""
    b, _, d = tokens.shape
    x = tokens.view(b, height // 2, width // 2, d // 4, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, d // 4, height, width)


def image_ids(
    height: int, width: int, *, device: torch.device | str = "cpu", dtype=torch.float32
) -> torch.Tensor:
    """(H/2·W/2, 3) position ids of the packed tokens of a ``height`` × ``width`` latent: (0, row, col)."""
    rows = torch.arange(height // 2).repeat_interleave(width // 2)
    cols = torch.arange(width // 2).repeat(height // 2)
    ids = torch.stack([torch.zeros_like(rows), rows, cols], dim=1)
    return ids.to(device=device, dtype=dtype)
