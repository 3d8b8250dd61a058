"""DINOv2 through transformers (the paper's main image encoder, §5): fidelity, diversity, Fréchet.

Settings: ``dino`` (a hub id or a local transformers folder) and ``dino_image_size``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image
from pydantic import Field

from lyco_bench.config import StrictModel
from lyco_bench.errors import BadInput
from lyco_bench.metrics import profiles
from lyco_bench.metrics.encoders import base
from lyco_bench.metrics.encoders.base import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    EncoderKind,
    load_error,
    preprocess,
    profile_tag,
    register_encoder,
    resolve_device,
    source_label,
    source_tag,
    vit_flops,
)

KNOWN_DIMS = {"facebook/dinov2-large": 1024, "facebook/dinov2-base": 768, "facebook/dinov2-small": 384,
              "facebook/dinov2-giant": 1536}  # fmt: skip
"""Feature widths of the hub's DINOv2 models, for ``plan`` when their config is not cached."""
VIT_L14 = (24, 1024, 14)
"""(layers, width, patch) of ViT-L/14, the default's architecture."""
TINY_DINO_IMAGE_SIZE = 56


class DinoSettings(StrictModel):
    dino: str = "facebook/dinov2-large"
    """DINOv2 weights: a hub id (``org/repo@rev`` pins a commit; a sweep pins it at plan time) or a
    local transformers folder (fidelity, diversity, Fréchet)."""
    dino_image_size: int = Field(224, ge=14)


def dinov2_id(source: str, image_size: int, profile: str = "lyco", precision: str = "float32") -> str:
    return f"dinov2:{source_tag(source)}:{image_size}:p{base.PREPROCESS_VERSION}{profile_tag(profile, precision)}"


class DinoV2Encoder:
    """DINOv2 through transformers: the final-layernormed CLS token, L2-normalized.

    ``Dinov2Model`` applies its last layernorm to every token, so ``last_hidden_state[:, 0]``
    (= ``pooler_output``) is the ``x_norm_clstoken`` of the reference implementation the paper used.
    """

    kind = "dinov2"

    def __init__(
        self,
        source: str,
        *,
        device: str | None = None,
        image_size: int = 224,
        profile: str = "lyco",
        precision: str = "auto",
    ):
        from transformers import Dinov2Model

        from lyco_bench.models import split_revision

        local = Path(source).expanduser().is_dir()
        repo, revision = (source, None) if local else split_revision(source)
        self.source, self.image_size, self.profile = source, image_size, profile
        self.device = resolve_device(device)
        try:
            # use_safetensors: a folder holding only pickled weights is refused, never unpickled.
            # revision: a sweep's workers load the commit its job ids recorded (``repo@commit``).
            model = Dinov2Model.from_pretrained(repo, revision=revision, use_safetensors=True)
            self.model = model.eval().to(self.device)
        except (OSError, ValueError, RuntimeError) as exc:
            raise load_error(self.kind, source, exc) from None
        if profile == "paper":
            profiles.use_hub_interpolation(self.model)
        self.precision = profiles.resolve_precision(precision, self.device)
        self.id = dinov2_id(source, image_size, profile, self.precision)
        self.label = source_label(self.kind, source)

    def prepare(self, image: Image.Image, mode: str) -> torch.Tensor:
        """One picture → its input tensor (thread-safe: scoring runs it in loader threads)."""
        return preprocess(
            image, mode=mode, size=self.image_size, mean=IMAGENET_MEAN, std=IMAGENET_STD, profile=self.profile
        )

    def encode_images(self, images: list[Image.Image], mode: str) -> torch.Tensor:
        return self.forward([self.prepare(im, mode) for im in images])

    @torch.no_grad()
    def forward(self, inputs: list[torch.Tensor]) -> torch.Tensor:
        """Features of prepared inputs (``prepare``'s tensors), one batch."""
        x = torch.stack(inputs).to(self.device)  # (B, 3, S, S)
        with profiles.encoding(self.precision, self.device):
            cls = self.model(pixel_values=x).last_hidden_state[:, 0]  # (B, D)
        return F.normalize(cls.float(), dim=-1).cpu()


def check_transformers_source(value: str, *, what: str) -> None:
    """BadInput when a transformers model (local folder or hub id) cannot be found."""
    transformers_pin(value, what=what)


def transformers_pin(value: str, *, what: str) -> str | None:
    """A transformers model's hub id at the commit it resolves to (``repo@commit``); None for a
    local folder; BadInput when it cannot be found."""
    from lyco_bench.hub import hub_identity
    from lyco_bench.models import _looks_like_path, split_revision

    path = Path(value).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise BadInput(f"{what} {value}: not a transformers model folder (no config.json)")
        return None
    repo, revision = split_revision(value)
    if path.exists() or _looks_like_path(repo):
        raise BadInput(f"{what} {value}: no such folder")
    return hub_identity(repo, "config.json", what=what, revision=revision)[0]


def _config(value: str) -> dict[str, Any] | None:
    """The model's config.json: a local folder's, or the hub's from the local cache."""
    folder = Path(value).expanduser()
    config = folder / "config.json" if folder.is_dir() else None
    if config is None:
        from lyco_bench.hub import cached_hub_file
        from lyco_bench.models import split_revision

        repo, revision = split_revision(value)
        config = cached_hub_file(repo, "config.json", revision)
    if config is None:
        return None
    try:
        return json.loads(Path(config).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _feature_dim(fields: dict[str, Any], tiny: bool) -> int:
    if tiny:
        return 32
    value = fields.get("dino", DinoSettings().dino)
    cfg = _config(value)
    if cfg is not None and "hidden_size" in cfg:
        return int(cfg["hidden_size"])
    from lyco_bench.models import split_revision

    return KNOWN_DIMS.get(split_revision(value)[0], 1024)


def _flops(fields: dict[str, Any], tiny: bool) -> float:
    image = int(fields.get("dino_image_size", 224))
    if tiny:
        return vit_flops(2, 32, 8, image)
    config = Path(str(fields.get("dino", ""))).expanduser() / "config.json"
    if config.is_file():
        cfg = json.loads(config.read_text(encoding="utf-8"))
        return vit_flops(
            int(cfg["num_hidden_layers"]), int(cfg["hidden_size"]), int(cfg["patch_size"]), image
        )
    return vit_flops(*VIT_L14, image)


def make_tiny_dinov2(out_dir: Path, *, seed: int = 0) -> Path:
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(seed)
    config = Dinov2Config(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        mlp_ratio=2,
        patch_size=14,
        image_size=TINY_DINO_IMAGE_SIZE,
    )
    Dinov2Model(config).save_pretrained(out_dir, safe_serialization=True)
    return Path(out_dir)


register_encoder(
    EncoderKind(
        name="dinov2",
        settings=DinoSettings,
        weights_field="dino",
        identity=lambda s: dinov2_id(s.dino, s.dino_image_size, s.profile, s.resolved_precision()),
        load=lambda s: DinoV2Encoder(
            s.dino, device=s.device, image_size=s.dino_image_size, profile=s.profile, precision=s.precision
        ),
        check_source=lambda s: check_transformers_source(s.dino, what="encoders.dino"),
        pin=lambda s: {"dino": pinned} if (pinned := transformers_pin(s.dino, what="encoders.dino")) else {},
        feature_dim=_feature_dim,
        flops=_flops,
        make_tiny=lambda out, seed: {
            "dino": str(make_tiny_dinov2(out / "dinov2", seed=seed)),
            "dino_image_size": TINY_DINO_IMAGE_SIZE,
        },
        title="a DINOv2",
        image=True,
        order=0,
    )
)
