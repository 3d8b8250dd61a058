"""OpenCLIP image and text towers (the paper, §5): text similarity, CLIP-IQA, and image metrics
when ``image_encoders`` lists ``clip``.

Settings: ``clip`` (an open_clip architecture name, ``hf-hub:…`` or a local ``open_clip_config.json``
folder) and ``clip_pretrained`` (a pretrained tag or weights file; ignored for a local folder).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image

from lyco_bench.config import StrictModel
from lyco_bench.errors import BadInput
from lyco_bench.metrics import profiles
from lyco_bench.metrics.encoders import base
from lyco_bench.metrics.encoders.base import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    MODES,
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

TINY_CLIP_CONFIG = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}
VIT_L14 = (24, 1024, 14)
"""(layers, width, patch) of ViT-L/14, the default's architecture."""


class ClipSettings(StrictModel):
    clip: str = "ViT-L-14"
    """OpenCLIP architecture name (or ``hf-hub:…``, or a local ``open_clip_config.json`` folder)."""
    clip_pretrained: str | None = "datacomp_xl_s13b_b90k"
    """OpenCLIP pretrained tag or weights file; ignored for a local folder."""


def clip_id(model: str, pretrained: str | None, profile: str = "lyco", precision: str = "float32") -> str:
    if Path(model).is_dir():
        return f"clip:{source_tag(model)}:p{base.PREPROCESS_VERSION}{profile_tag(profile, precision)}"
    weights = source_tag(pretrained) if pretrained else pretrained
    return f"clip:{model}/{weights}:p{base.PREPROCESS_VERSION}{profile_tag(profile, precision)}"


def clip_label(model: str, pretrained: str | None) -> str:
    return source_label("clip", model) if Path(model).is_dir() else f"clip:{model}/{pretrained}"


class ClipEncoder:
    """OpenCLIP image and text towers (any open_clip name + pretrained tag, hf-hub: id or local dir).

    A local directory holds ``open_clip_config.json`` (``model_cfg`` + ``preprocess_cfg``) and
    ``open_clip_model.safetensors``, the layout of open_clip models on the hub. Images go through
    open_clip's own eval transform for the model (its size, interpolation, mean/std), with resize
    mode ``squash``/``shortest``/``longest`` for our ``resize``/``crop``/``padding``.
    """

    kind = "clip"

    def __init__(
        self,
        model: str,
        pretrained: str | None = None,
        *,
        device: str | None = None,
        profile: str = "lyco",
        precision: str = "auto",
    ):
        import open_clip

        self.device, self.profile = resolve_device(device), profile
        local = Path(model)
        name = f"local-dir:{local}" if local.is_dir() else model
        try:
            self.model = open_clip.create_model(name, pretrained=None if local.is_dir() else pretrained)
            self.tokenizer = open_clip.get_tokenizer(name)
        except (OSError, ValueError, RuntimeError) as exc:
            raise load_error(self.kind, model, exc) from None
        self.model = self.model.eval().to(self.device)
        cfg = open_clip.get_model_preprocess_cfg(self.model)
        size = cfg.get("size", 224)
        self.image_size = size if isinstance(size, int) else size[0]
        self.mean, self.std = tuple(cfg.get("mean", IMAGENET_MEAN)), tuple(cfg.get("std", IMAGENET_STD))
        # OpenCLIP's own eval transforms (the paper, §5), one per mode: its resize modes are our modes.
        self._transforms = {
            mode: open_clip.image_transform(
                size,
                is_train=False,
                mean=self.mean,
                std=self.std,
                resize_mode=resize_mode,
                interpolation=cfg.get("interpolation"),
                fill_color=cfg.get("fill_color", 0),
            )
            for mode, resize_mode in (("resize", "squash"), ("crop", "shortest"), ("padding", "longest"))
        }
        self.context_length = getattr(self.model, "context_length", 77)
        self.precision = profiles.resolve_precision(precision, self.device)
        self.id = clip_id(model, pretrained, profile, self.precision)
        self.label = clip_label(model, pretrained)

    def prepare(self, image: Image.Image, mode: str) -> torch.Tensor:
        """One picture → its input tensor (thread-safe: scoring runs it in loader threads)."""
        if mode not in MODES:
            raise BadInput(f"mode {mode!r}: expected one of {', '.join(MODES)}")
        if self.profile == "paper":  # the paper's own copy of open_clip's transform (resize, then RGB)
            return preprocess(
                image, mode=mode, size=self.image_size, mean=self.mean, std=self.std, profile="paper"
            )
        return self._transforms[mode](image.convert("RGB"))

    def encode_images(self, images: list[Image.Image], mode: str) -> torch.Tensor:
        return self.forward([self.prepare(im, mode) for im in images])

    @torch.no_grad()
    def forward(self, inputs: list[torch.Tensor]) -> torch.Tensor:
        """Features of prepared inputs (``prepare``'s tensors), one batch."""
        x = torch.stack(inputs).to(self.device)  # (B, 3, S, S)
        with profiles.encoding(self.precision, self.device):
            feats = self.model.encode_image(x)  # (B, D)
        return F.normalize(feats.float(), dim=-1).cpu()

    def tokenize(self, texts: list[str]) -> torch.Tensor:
        """Token ids (B, context_length), cut to the context but always ending with end-of-text.

        CLIP pools the text at its end-of-text token (the argmax id); losing it to truncation
        would pool an arbitrary word.
        """
        tokens = self.tokenizer(texts, context_length=self.context_length)  # (B, L)
        eot = getattr(self.tokenizer, "eot_token_id", None)
        if eot is not None:
            for row in tokens:
                if not (row == eot).any():
                    row[-1] = eot
        return tokens

    @torch.no_grad()
    def encode_texts(self, texts: list[str]) -> torch.Tensor:
        tokens = self.tokenize(texts).to(self.device)
        with profiles.encoding(self.precision, self.device):
            feats = self.model.encode_text(tokens)
        return F.normalize(feats.float(), dim=-1).cpu()  # (B, D)

    def logit_scale(self) -> float:
        return float(self.model.logit_scale.detach().exp())


def check_clip_source(model: str, pretrained: str | None) -> None:
    import open_clip

    from lyco_bench.hub import cached_hub_file, hub_identity
    from lyco_bench.models import hub_offline

    path = Path(model).expanduser()
    if path.is_dir():
        if not (path / "open_clip_config.json").is_file():
            raise BadInput(f"encoders.clip {model}: not an open_clip folder (no open_clip_config.json)")
        return
    if model.startswith("hf-hub:"):
        hub_identity(model[len("hf-hub:") :], "open_clip_config.json", what="encoders.clip")
        return
    if model not in open_clip.list_models():
        raise BadInput(f"encoders.clip {model!r}: not an open_clip architecture nor a local folder")
    if pretrained is None:
        return
    if Path(pretrained).expanduser().is_file():
        return
    cfg = open_clip.get_pretrained_cfg(model, pretrained)
    if not cfg:
        known = ", ".join(open_clip.list_pretrained_tags_by_model(model)) or "none"
        raise BadInput(
            f"encoders.clip_pretrained {pretrained!r}: not a weights file nor a tag of {model} ({known})"
        )
    repo = (cfg.get("hf_hub") or "").strip("/")
    if repo:
        for filename in ("open_clip_model.safetensors", "open_clip_pytorch_model.bin"):
            if cached_hub_file(repo, filename) is not None:
                return
        if hub_offline():
            raise BadInput(
                f"encoders.clip {model}/{pretrained}: weights not in the local Hugging Face cache "
                "(HF_HUB_OFFLINE is set)"
            )


def open_clip_embed_dim(value: str, default: int = 768) -> int:
    """Feature width of an open_clip model (a local config folder or a known architecture)."""
    folder = Path(value).expanduser()
    try:
        if folder.is_dir():
            cfg = json.loads((folder / "open_clip_config.json").read_text(encoding="utf-8"))
            return int(cfg.get("model_cfg", cfg)["embed_dim"])
        import open_clip

        return int(open_clip.get_model_config(value)["embed_dim"])
    except (OSError, ValueError, KeyError, TypeError):
        return default


def open_clip_flops(value: str, tiny: bool, default: tuple[int, int, int]) -> float:
    """One image's forward of an open_clip vision tower, from its config where one is at hand."""
    vision = None
    config = Path(value).expanduser() / "open_clip_config.json"
    if tiny:
        vision = TINY_CLIP_CONFIG["vision_cfg"]
    elif config.is_file():
        cfg = json.loads(config.read_text(encoding="utf-8"))
        vision = cfg.get("model_cfg", cfg)["vision_cfg"]
    if vision is None:
        return vit_flops(*default, 224)
    return vit_flops(
        int(vision["layers"]), int(vision["width"]), int(vision["patch_size"]), int(vision["image_size"])
    )


def write_open_clip_config(out_dir: Path, model_cfg: dict) -> Path:
    """An open_clip ``local-dir:`` folder's config: ``model_cfg`` and OpenAI CLIP's normalisation."""
    import open_clip

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cfg = {
        "model_cfg": model_cfg,
        "preprocess_cfg": {
            "mean": list(open_clip.OPENAI_DATASET_MEAN),
            "std": list(open_clip.OPENAI_DATASET_STD),
        },
    }
    (out_dir / "open_clip_config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    return out_dir


def make_tiny_open_clip(out_dir: Path, *, seed: int = 0) -> Path:
    import open_clip
    from safetensors.torch import save_file

    out_dir = write_open_clip_config(out_dir, TINY_CLIP_CONFIG)
    torch.manual_seed(seed)
    model = open_clip.create_model(f"local-dir:{out_dir}", load_weights=False)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out_dir / "open_clip_model.safetensors"))
    return out_dir


def _feature_dim(fields: dict[str, Any], tiny: bool) -> int:
    return (
        TINY_CLIP_CONFIG["embed_dim"]
        if tiny
        else open_clip_embed_dim(fields.get("clip", ClipSettings().clip))
    )


register_encoder(
    EncoderKind(
        name="clip",
        settings=ClipSettings,
        weights_field="clip",
        identity=lambda s: clip_id(s.clip, s.clip_pretrained, s.profile, s.resolved_precision()),
        label=lambda s: clip_label(s.clip, s.clip_pretrained),
        load=lambda s: ClipEncoder(
            s.clip, s.clip_pretrained, device=s.device, profile=s.profile, precision=s.precision
        ),
        check_source=lambda s: check_clip_source(s.clip, s.clip_pretrained),
        feature_dim=_feature_dim,
        flops=lambda fields, tiny: open_clip_flops(str(fields.get("clip", "")), tiny, VIT_L14),
        make_tiny=lambda out, seed: {
            "clip": str(make_tiny_open_clip(out / "open_clip", seed=seed)),
            "clip_pretrained": None,
        },
        path_fields=("clip_pretrained",),
        title="an OpenCLIP",
        text=True,
        image=True,
        order=1,
    )
)
