"""The world's evaluators, in the classes the metrics load (lyco_bench.metrics.encoders).

- DINOv2 (transformers ``Dinov2Model``, 64 px, patch 8): an attribute and identity encoder. Its
  CLS token is trained with linear heads on every label the world has (kind, shape, colour,
  background, rendering, size, hat) and the object's position and size, so cosine similarity of
  CLS features says "same concept, same look", and Vendi over them sees layout variety.
- OpenCLIP (an open_clip ``local-dir`` model, 64 px ViT + 32-token text transformer with CLIP's
  BPE; world prompts are short): contrastive on world pictures and their tag captions, a caption's positives being every
  picture in the batch that has all its tags (tags dropped in the caption are not claims).

Both see the held-out concepts under their descriptive names (robot, doll, comic style): real
DINOv2 and CLIP have seen most things too. Both train on drawn pictures and their VAE
reconstructions, so generated pictures are in their domain.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lyco_bench.world.captions import caption_tags, varied_caption
from lyco_bench.world.classifier import HEADS, augment, label_array
from lyco_bench.world.draw import CANVAS, Scene

DINO_CONFIG = dict(
    hidden_size=96,
    num_hidden_layers=4,
    num_attention_heads=4,
    mlp_ratio=2,
    patch_size=8,
    image_size=CANVAS,
)
DINO_IMAGE_SIZE = CANVAS
CLIP_CONFIG = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": CANVAS, "layers": 3, "width": 64, "patch_size": 8, "head_width": 16},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 64, "heads": 4, "layers": 2},
}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _normalize(x: torch.Tensor, mean, std) -> torch.Tensor:
    """[-1, 1] pictures → normalized as the encoders' preprocessing does."""
    x = (x + 1) / 2
    return (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


def _layout(scenes: list[Scene]) -> torch.Tensor:
    return torch.tensor(
        [[s.cx / CANVAS, s.cy / CANVAS, s.side / CANVAS] for s in scenes], dtype=torch.float32
    )


def train_dinov2(
    images: np.ndarray,
    scenes: list[Scene],
    *,
    seed: int = 0,
    steps: int = 2000,
    batch: int = 32,
    lr: float = 1e-3,
    log=None,
):
    """A Dinov2Model whose CLS token carries the world's labels and layout."""
    from transformers import Dinov2Config, Dinov2Model

    from lyco_bench.world.pretrain import to_tensor

    torch.manual_seed(seed)
    model = Dinov2Model(Dinov2Config(**DINO_CONFIG))
    heads = nn.ModuleDict({h: nn.Linear(DINO_CONFIG["hidden_size"], len(v)) for h, v in HEADS.items()})
    layout_head = nn.Linear(DINO_CONFIG["hidden_size"], 3)
    y, layout = label_array(scenes), _layout(scenes)
    params = [*model.parameters(), *heads.parameters(), *layout_head.parameters()]
    gen = torch.Generator().manual_seed(seed + 31)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    model.train()
    start = time.time()
    for step in range(steps):
        idx = torch.randint(0, len(images), (batch,), generator=gen)
        x = _normalize(augment(to_tensor(images[idx.numpy()]), gen), IMAGENET_MEAN, IMAGENET_STD)
        cls = model(pixel_values=x).last_hidden_state[:, 0]
        loss = sum(
            F.cross_entropy(heads[h](cls), y[h][idx], ignore_index=-1)
            for h in HEADS
            if (y[h][idx] >= 0).any()
        )
        loss = loss + 10 * F.mse_loss(layout_head(cls), layout[idx])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        if log is not None and (step % 200 == 0 or step == steps - 1):
            log(f"dinov2 step {step}/{steps} loss {loss.item():.4f} ({time.time() - start:.0f} s)")
    return model.eval()


def save_dinov2(model, out_dir: Path) -> Path:
    """fp16 weights; the config says float32, so the metrics load it in float32."""
    out_dir = Path(out_dir)
    model.half().save_pretrained(out_dir, safe_serialization=True)
    model.float()
    config = json.loads((out_dir / "config.json").read_text())
    config["dtype"] = "float32"
    (out_dir / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return out_dir


def _clip_positives(captions: list[str], scenes: list[Scene]) -> torch.Tensor:
    """pos[i, j]: picture j has every tag caption i says."""
    said = [{t.removeprefix("a ") for t in c.split(", ") if t} for c in captions]
    has = [set(caption_tags(s)) for s in scenes]
    return torch.tensor([[s <= h for h in has] for s in said], dtype=torch.float32)


def write_clip_config(out_dir: Path) -> Path:
    from lyco_bench.metrics.tiny import write_open_clip_config

    return write_open_clip_config(out_dir, CLIP_CONFIG)


def train_open_clip(
    images: np.ndarray,
    scenes: list[Scene],
    config_dir: Path,
    *,
    seed: int = 0,
    steps: int = 2000,
    batch: int = 64,
    lr: float = 1e-3,
    log=None,
):
    """An open_clip model (built from ``config_dir``'s config) trained contrastively."""
    import open_clip

    from lyco_bench.world.pretrain import to_tensor

    torch.manual_seed(seed)
    model = open_clip.create_model(f"local-dir:{config_dir}", load_weights=False)
    tokenizer = open_clip.get_tokenizer(f"local-dir:{config_dir}")
    mean, std = open_clip.OPENAI_DATASET_MEAN, open_clip.OPENAI_DATASET_STD
    gen = torch.Generator().manual_seed(seed + 41)
    rng = np.random.default_rng([seed, 42])
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    memo: dict[str, torch.Tensor] = {}
    model.train()
    start = time.time()
    for step in range(steps):
        idx = torch.randint(0, len(images), (batch,), generator=gen)
        batch_scenes = [scenes[i] for i in idx.tolist()]
        captions = [varied_caption(s, rng, drop=0.3, empty=0.0) for s in batch_scenes]
        for c in captions:
            if c not in memo:
                memo[c] = tokenizer([c])[0]
        tokens = torch.stack([memo[c] for c in captions])
        x = _normalize(augment(to_tensor(images[idx.numpy()]), gen), mean, std)
        img = F.normalize(model.encode_image(x), dim=-1)
        txt = F.normalize(model.encode_text(tokens), dim=-1)
        logits = model.logit_scale.exp().clamp(max=100) * txt @ img.T  # (text, image)
        pos = _clip_positives(captions, batch_scenes)
        loss_t = -(pos / pos.sum(1, keepdim=True) * F.log_softmax(logits, dim=1)).sum(1).mean()
        loss_i = -(pos.T / pos.T.sum(1, keepdim=True) * F.log_softmax(logits.T, dim=1)).sum(1).mean()
        loss = (loss_t + loss_i) / 2
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        if log is not None and (step % 200 == 0 or step == steps - 1):
            log(f"open_clip step {step}/{steps} loss {loss.item():.4f} ({time.time() - start:.0f} s)")
    return model.eval()


def save_open_clip(model, out_dir: Path) -> Path:
    from safetensors.torch import save_file

    out_dir = write_clip_config(out_dir)
    state = {k: v.detach().to(torch.float16).contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out_dir / "open_clip_model.safetensors"))
    return out_dir
