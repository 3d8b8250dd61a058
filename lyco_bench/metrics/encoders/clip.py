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
    """OpenCLIP architecture name (or ``hf-hub:org/repo[@rev]``, or a local ``open_clip_config.json``
    folder)."""
    clip_pretrained: str | None = "datacomp_xl_s13b_b90k"
    """OpenCLIP pretrained tag (``tag@rev``: its hub repo at that commit) or weights file; ignored
    for a local folder. A sweep pins hub weights to their commit at plan time."""


def clip_id(model: str, pretrained: str | None, profile: str = "lyco", precision: str = "float32") -> str:
    if Path(model).is_dir():
        return f"clip:{source_tag(model)}:p{base.PREPROCESS_VERSION}{profile_tag(profile, precision)}"
    weights = source_tag(pretrained) if pretrained else pretrained
    return f"clip:{model}/{weights}:p{base.PREPROCESS_VERSION}{profile_tag(profile, precision)}"


def clip_label(model: str, pretrained: str | None) -> str:
    """``clip:<model>/<tag>``, without the commit a sweep pinned them to."""
    if Path(model).is_dir():
        return source_label("clip", model)
    tag = _split_tag(pretrained)[0] if pretrained else pretrained
    return f"clip:{split_revision(model)[0]}/{tag}"


def split_revision(value: str) -> tuple[str, str | None]:
    """``org/repo@rev`` → (``org/repo``, rev) (:func:`lyco_bench.models.split_revision`)."""
    from lyco_bench.models import split_revision as split

    return split(value)


def _split_tag(pretrained: str) -> tuple[str, str | None]:
    """``tag@rev`` → (tag, rev); a tag or a file path → (itself, None)."""
    tag, at, revision = pretrained.rpartition("@")
    if not at or not tag or Path(pretrained).expanduser().exists():
        return pretrained, None
    return tag, revision


def _tag_hub(model: str, tag: str) -> tuple[str, str | None] | None:
    """(hub repo, file or None: open_clip's default) holding a pretrained tag's weights, or None
    when the tag is downloaded from a URL (then it cannot be pinned to a commit)."""
    import open_clip

    hub = (open_clip.get_pretrained_cfg(model, tag) or {}).get("hf_hub", "")
    if not hub:
        return None
    # open_clip's convention: ``org/repo/`` (its default file) or ``org/repo/file``.
    repo, _, filename = hub.rpartition("/")
    return repo, filename or None


def _open_clip_source(model: str, pretrained: str | None) -> tuple[str, str | None, dict[str, Any]]:
    """(open_clip model name, pretrained, create_model's extra arguments) that load ``model`` /
    ``pretrained`` at the commit written after ``@``: open_clip itself takes no revision, so the
    pinned files are fetched (or found in the local cache) here and handed over as a folder or a
    file, with the tag's preprocessing."""
    import open_clip
    from huggingface_hub import snapshot_download
    from open_clip.pretrained import download_pretrained_from_hf
    from open_clip.transform import merge_preprocess_dict

    if Path(model).is_dir():
        return f"local-dir:{model}", None, {}
    repo, revision = split_revision(model.removeprefix("hf-hub:"))
    if model.startswith("hf-hub:") and revision is not None:
        # Config and tokenizer files, then the weights (safetensors first), all at the commit.
        folder = snapshot_download(repo, revision=revision, allow_patterns=["*.json", "*.txt", "*.model"])
        download_pretrained_from_hf(repo, revision=revision)
        return f"local-dir:{folder}", None, {}
    tag, revision = _split_tag(pretrained) if pretrained else (pretrained, None)
    hub = _tag_hub(model, tag) if revision is not None else None
    if hub is None:
        return model, tag, {}
    cfg = open_clip.get_pretrained_cfg(model, tag)
    file = download_pretrained_from_hf(hub[0], filename=hub[1], revision=revision)
    return model, file, {"force_preprocess_cfg": merge_preprocess_dict({}, cfg)}


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
        try:
            # A pinned hub source (``repo@commit``, ``tag@commit``) loads the files of that commit.
            name, weights, extra = _open_clip_source(model, pretrained)
            self.model = open_clip.create_model(name, pretrained=weights, **extra)
            self.tokenizer = open_clip.get_tokenizer(name)
        except Exception as exc:  # noqa: BLE001 - open_clip and the hub raise many types
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
    """BadInput when an OpenCLIP model or its weights cannot be found (local path, cache or hub)."""
    clip_pin(model, pretrained)


def clip_pin(model: str, pretrained: str | None) -> dict[str, str]:
    """The fields naming hub weights at the commit they resolve to: ``clip: hf-hub:org/repo@<sha>``
    or ``clip_pretrained: <tag>@<sha>`` (the tag's hub repo); {} for local weights and for tags
    open_clip downloads from a URL (those cannot be pinned). BadInput when they cannot be found."""
    import open_clip

    from lyco_bench.hub import cached_hub_file, hub_identity

    path = Path(model).expanduser()
    if path.is_dir():
        if not (path / "open_clip_config.json").is_file():
            raise BadInput(f"encoders.clip {model}: not an open_clip folder (no open_clip_config.json)")
        return {}
    if model.startswith("hf-hub:"):
        repo, revision = split_revision(model.removeprefix("hf-hub:"))
        pinned, _ = hub_identity(repo, "open_clip_config.json", what="encoders.clip", revision=revision)
        return {"clip": f"hf-hub:{pinned}"}
    if model not in open_clip.list_models():
        raise BadInput(f"encoders.clip {model!r}: not an open_clip architecture nor a local folder")
    if pretrained is None or Path(pretrained).expanduser().is_file():
        return {}
    tag, revision = _split_tag(pretrained)
    if not open_clip.get_pretrained_cfg(model, tag):
        known = ", ".join(open_clip.list_pretrained_tags_by_model(model)) or "none"
        raise BadInput(
            f"encoders.clip_pretrained {pretrained!r}: not a weights file nor a tag of {model} ({known})"
        )
    hub = _tag_hub(model, tag)
    if hub is None:
        return {}
    repo, filename = hub
    # open_clip prefers a safetensors copy of the weights (open_clip.pretrained._get_safe_alternatives)
    names = [filename] if filename else ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]
    marker = next((n for n in names if cached_hub_file(repo, n, revision) is not None), names[0])
    pinned, _ = hub_identity(repo, marker, what=f"encoders.clip {model}/{tag}", revision=revision)
    return {"clip_pretrained": f"{tag}@{pinned.rpartition('@')[2]}"}


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
        pin=lambda s: clip_pin(s.clip, s.clip_pretrained),
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
