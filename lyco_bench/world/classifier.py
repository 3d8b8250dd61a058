"""The attribute classifier: a small CNN that reads a world picture's labels back (the gates' judge).

Heads: kind (object, pair, robot, doll), shape, colour (of a lone object), background, rendering,
size, and the doll's hat.
Trained on real world pictures — drawn ones and their VAE reconstructions (``decoded``), so it
judges generated pictures, which come out of the same decoder, on what they show rather than on
how sharp they are — and never on generated pictures. A head's label is -1 where it does not
apply (an object has no hat; a character has no single shape or colour), and the loss skips it.
"""

from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lyco_bench.world.draw import ALL_BACKGROUNDS, ALL_STYLES, COLOURS, HATS, KINDS, SHAPES, SIZES, Scene

HEADS = {
    "kind": list(KINDS),
    "shape": list(SHAPES),
    "colour": list(COLOURS),
    "background": list(ALL_BACKGROUNDS),
    "style": list(ALL_STYLES),
    "size": list(SIZES),
    "hat": list(HATS),
}


def labels(scene: Scene) -> dict[str, int]:
    """Class index per head, -1 where the head does not apply."""

    def index(head: str, value: str) -> int:
        return HEADS[head].index(value) if value in HEADS[head] else -1

    return {
        "kind": index("kind", scene.kind),
        "shape": index("shape", scene.shape) if scene.kind == "object" else -1,
        "colour": index("colour", scene.colour) if scene.kind == "object" else -1,
        "background": index("background", scene.background),
        "style": index("style", scene.style) if scene.kind in ("object", "pair") else -1,
        "size": index("size", scene.size),
        "hat": index("hat", scene.hat),
    }


def label_array(scenes: list[Scene]) -> dict[str, torch.Tensor]:
    rows = [labels(s) for s in scenes]
    return {head: torch.tensor([r[head] for r in rows], dtype=torch.long) for head in HEADS}


class AttributeClassifier(nn.Module):
    """64×64 RGB in [-1, 1] → one logit vector per head."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        w = width
        layers: list[nn.Module] = [nn.Conv2d(3, w, 4, stride=2, padding=1), nn.GroupNorm(8, w), nn.SiLU()]
        chans = [w, 2 * w, 4 * w, 4 * w]
        for a, b in zip(chans[:-1], chans[1:], strict=True):
            layers += [nn.Conv2d(a, b, 3, padding=1), nn.GroupNorm(8, b), nn.SiLU()]
            layers += [nn.Conv2d(b, b, 3, stride=2, padding=1), nn.GroupNorm(8, b), nn.SiLU()]
        self.trunk = nn.Sequential(*layers)  # 64 → 32 → 4
        self.heads = nn.ModuleDict({h: nn.Linear(4 * w * 2, len(v)) for h, v in HEADS.items()})

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        f = self.trunk(x)
        pooled = torch.cat([f.mean(dim=(2, 3)), f.amax(dim=(2, 3))], dim=1)
        return {h: head(pooled) for h, head in self.heads.items()}


def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Mild pixel noise and brightness jitter (colour names must survive it)."""
    b = x.shape[0]
    noise = torch.randn(x.shape, generator=gen) * (torch.rand((b, 1, 1, 1), generator=gen) * 0.08)
    shift = (torch.rand((b, 1, 1, 1), generator=gen) - 0.5) * 0.1
    return (x + noise + shift).clamp(-1, 1)


def train_classifier(
    images: np.ndarray,
    scenes: list[Scene],
    *,
    seed: int = 0,
    steps: int = 1500,
    batch: int = 32,
    lr: float = 2e-3,
    log=None,
) -> AttributeClassifier:
    from lyco_bench.world.pretrain import to_tensor

    torch.manual_seed(seed)
    model = AttributeClassifier()
    y = label_array(scenes)
    gen = torch.Generator().manual_seed(seed + 5)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    model.train()
    start = time.time()
    for step in range(steps):
        idx = torch.randint(0, len(images), (batch,), generator=gen)
        x = augment(to_tensor(images[idx.numpy()]), gen)
        out = model(x)
        loss = sum(
            F.cross_entropy(out[h], y[h][idx], ignore_index=-1) for h in HEADS if (y[h][idx] >= 0).any()
        )
        loss.backward()
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        if log is not None and (step % 200 == 0 or step == steps - 1):
            log(f"classifier step {step}/{steps} loss {loss.item():.4f} ({time.time() - start:.0f} s)")
    return model.eval()


@torch.no_grad()
def predict(model: AttributeClassifier, images: np.ndarray, *, batch: int = 128) -> dict[str, np.ndarray]:
    """Predicted class index per head, (N,) each."""
    from lyco_bench.world.pretrain import to_tensor

    outs: dict[str, list] = {h: [] for h in HEADS}
    for i in range(0, len(images), batch):
        logits = model(to_tensor(images[i : i + batch]))
        for h in HEADS:
            outs[h].append(logits[h].argmax(dim=1).numpy())
    return {h: np.concatenate(v) for h, v in outs.items()}


def accuracy(model: AttributeClassifier, images: np.ndarray, scenes: list[Scene]) -> dict[str, float]:
    pred = predict(model, images)
    y = label_array(scenes)
    out = {}
    for h in HEADS:
        mask = y[h].numpy() >= 0
        if mask.any():
            out[h] = float((pred[h][mask] == y[h].numpy()[mask]).mean())
    return out
