"""Layer shapes for benchmarks/adapters.py: one list per model family, at its usual resolution.

SD1.5 at 512 px, batch 2 (the paper's). SDXL at 1024 px, batch 1: its attention runs at 640 and
1280 channels on 64² and 32² latent tokens, cross-attention keys/values come from the 2048-wide
text context (77 tokens), the GEGLU feed-forward goes 640 → 5120 (2 × 2560) and back from 5120 at
1280 channels (diffusers' SDXL UNet config). FLUX.1 at 1024 px, batch 1: 4096 image tokens (2×2
packed 128² latents) + 512 T5 tokens, hidden 3072; a double block's fused qkv 3072 → 9216 and MLP
3072 → 12288; a single block's linear1 3072 → 21504 (qkv 9216 + MLP 12288) on image and text
tokens together (BFL's flux/model.py and modules/layers.py).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from torch import nn


@dataclass(frozen=True)
class LayerCase:
    name: str
    make: Callable[[], nn.Module]
    input_shape: tuple[int, ...]

    def capped(self, tokens: int | None) -> LayerCase:
        """The same layer on at most ``tokens`` tokens (a CPU run at the real widths)."""
        if tokens is None:
            return self
        if len(self.input_shape) == 3:  # (batch, tokens, features)
            b, n, c = self.input_shape
            return LayerCase(self.name, self.make, (b, min(n, tokens), c))
        b, c, h, w = self.input_shape  # a conv: a square of at most `tokens` pixels
        side = min(h, math.isqrt(tokens))
        return LayerCase(self.name, self.make, (b, c, side, side))


FAMILIES = {
    "sd15": [
        LayerCase("attn320", lambda: nn.Linear(320, 320), (2, 4096, 320)),
        LayerCase("attn640", lambda: nn.Linear(640, 640), (2, 1024, 640)),
        LayerCase("attn1280", lambda: nn.Linear(1280, 1280), (2, 256, 1280)),
        LayerCase("ff1280", lambda: nn.Linear(1280, 5120), (2, 256, 1280)),
        LayerCase("conv640", lambda: nn.Conv2d(640, 640, 3, padding=1), (2, 640, 32, 32)),
    ],
    "sdxl": [
        LayerCase("xl-attn640", lambda: nn.Linear(640, 640), (1, 4096, 640)),
        LayerCase("xl-attn1280", lambda: nn.Linear(1280, 1280), (1, 1024, 1280)),
        LayerCase("xl-ctx2048", lambda: nn.Linear(2048, 1280), (1, 77, 2048)),
        LayerCase("xl-ff640", lambda: nn.Linear(640, 5120), (1, 4096, 640)),
        LayerCase("xl-ffout5120", lambda: nn.Linear(5120, 1280), (1, 1024, 5120)),
        LayerCase("xl-conv1280", lambda: nn.Conv2d(1280, 1280, 3, padding=1), (1, 1280, 32, 32)),
    ],
    "flux": [
        LayerCase("flux-qkv", lambda: nn.Linear(3072, 9216), (1, 4096, 3072)),
        LayerCase("flux-mlp", lambda: nn.Linear(3072, 12288), (1, 4096, 3072)),
        LayerCase("flux-linear1", lambda: nn.Linear(3072, 21504), (1, 4608, 3072)),
    ],
}
