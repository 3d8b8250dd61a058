"""Image and text encoders of the paper (§5): DINOv2 (transformers), OpenCLIP, VGG19 Gram features;
and the HPS v2.1 preference model (an OpenCLIP ViT-H-14 with the HPS checkpoint).

Each encoder takes a hub id / open_clip tag or a local path, so tests and the CPU demo use tiny
random-weight models saved locally and loaded through the same code as the real ones. Every
encoder exposes an ``id`` (what the feature cache keys on: it changes when the weights change)
and ``encode_images(list[PIL.Image], mode) -> (B, D) float32 tensor`` run batched under
``torch.no_grad`` on the GPU when there is one.

Reference-image modes (the paper, §5, as the paper's evaluation code did with open_clip's
transform): ``resize`` squashes to S×S, ``crop`` resizes the short side to S then centre-crops,
``padding`` resizes the long side to S and pads the rest with black. For a square image all three
give the same pixels, which the feature cache uses (see ``canonical_mode``).
"""

from __future__ import annotations

import functools
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image

from lyco_bench.errors import BadInput
from lyco_bench.metrics import profiles
from lyco_bench.utils import sha256_bytes, sha256_file

MODES = ("resize", "crop", "padding")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
ENCODER_KINDS = ("dinov2", "clip", "vgg19", "hps")
ENCODER_FIELDS = {"dinov2": "dino", "clip": "clip", "vgg19": "vgg", "hps": "hps"}
"""The EncoderSettings field naming each kind's weights."""
MODELESS_KINDS = ("vgg19", "hps")
"""Kinds with one preprocessing of their own, whatever the reference mode: cached under ``native``."""
STREAMED_KINDS = ("vgg19",)
"""Kinds whose features of generated images are reduced as they are computed, never stored."""
TEXT_KINDS = ("clip", "hps")
"""Kinds with a text tower."""
HPS_ARCH = "ViT-H-14"
HPS_CHECKPOINT = "xswu/HPSv2/HPS_v2.1_compressed.pt"
"""HPS v2.1 on the hub: ``<owner>/<repo>/<file>``."""

# VGG19 ("E" configuration) up to stage 4's pool: conv widths per stage, 'M' = max-pool; with
# conv5_1 appended (index 28) the nn.Sequential's indices match torchvision's vgg19().features[:29].
_VGG19_LAYOUT = (0, 0, "M", 1, 1, "M", 2, 2, 2, 2, "M", 3, 3, 3, 3, "M")
VGG19_WIDTHS = (64, 128, 256, 512, 512)
# conv1_1, conv2_1, conv3_1, conv4_1, conv5_1 taken before their ReLU (the paper, §5).
GRAM_LAYERS = (0, 5, 10, 19, 28)


def canonical_mode(size: tuple[int, int], mode: str) -> str:
    """The mode under which an image of ``size`` is cached: square images look alike in every mode."""
    return "resize" if size[0] == size[1] else mode


def preprocess(image: Image.Image, *, mode: str, size: int, mean, std, profile: str = "lyco") -> torch.Tensor:
    """PIL image → normalized (3, size, size) tensor, bicubic resampling.

    ``profile="paper"``: the paper's order (resize in the image's own mode, then RGB; see
    :func:`lyco_bench.metrics.profiles.paper_square`).
    """
    if mode not in MODES:
        raise BadInput(f"mode {mode!r}: expected one of {', '.join(MODES)}")
    if profile == "paper":
        return _normalize(_to_tensor(profiles.paper_square(image, mode=mode, size=size)), mean, std)
    image = image.convert("RGB")
    w, h = image.size
    if mode == "resize":
        image = image.resize((size, size), Image.BICUBIC)
    elif mode == "crop":
        # torchvision's Resize(size) + CenterCrop(size), as in open_clip's eval transform: the long
        # side is truncated, the crop offset rounded (half to even).
        long = int(size * max(w, h) / min(w, h))
        nw, nh = (size, long) if w <= h else (long, size)
        image = image.resize((nw, nh), Image.BICUBIC)
        left, top = int(round((nw - size) / 2.0)), int(round((nh - size) / 2.0))
        image = image.crop((left, top, left + size, top + size))
    else:
        # open_clip's ResizeKeepRatio(longest=1) + CenterCropOrPad: sides rounded, pad split low-first.
        ratio = max(w / size, h / size)
        nw, nh = max(1, round(w / ratio)), max(1, round(h / ratio))
        canvas = Image.new("RGB", (size, size), (0, 0, 0))
        canvas.paste(image.resize((nw, nh), Image.BICUBIC), ((size - nw) // 2, (size - nh) // 2))
        image = canvas
    return _normalize(_to_tensor(image), mean, std)


def _to_tensor(image: Image.Image) -> torch.Tensor:
    data = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8)
    return data.view(image.size[1], image.size[0], 3).permute(2, 0, 1).float() / 255.0  # (3, H, W)


def _normalize(x: torch.Tensor, mean, std) -> torch.Tensor:
    return (x - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)


def _resolve_device(device: str | None) -> torch.device:
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(device)


def _load_error(kind: str, source: str, exc: Exception) -> BadInput:
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return BadInput(f"encoder {kind} {source!r}: cannot load ({first[:200]})")


@functools.lru_cache(maxsize=64)
def _local_weights_id(path: Path, stamp: tuple) -> str:
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    suffixes = {".safetensors", ".json", ".bin", ".pt", ".pth"}
    digest = "".join(sha256_file(p) for p in files if p.suffix in suffixes)
    return f"{path.name}@{sha256_bytes(digest.encode())[:12]}"


def source_tag(source: str) -> str:
    """A hub id as given; a local path as its name plus a content hash of its weights.

    The cache keys on this, so replacing a local weights file invalidates its features.
    """
    path = Path(source)
    if not path.exists():
        return source
    files = sorted(path.rglob("*")) if path.is_dir() else [path]
    stamp = tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in files if p.is_file())
    return _local_weights_id(path.resolve(), stamp)


def source_label(kind: str, source: str) -> str:
    """Readable encoder name for result rows (a local path shows its last component)."""
    return f"{kind}:{Path(source).name}" if Path(source).exists() else f"{kind}:{source}"


# Bumped when the image preprocessing changes, so cached features of the old pixels go unused
# (2: crop/padding round as open_clip's transforms; CLIP images through open_clip's own).
PREPROCESS_VERSION = 2


def _profile_tag(profile: str) -> str:
    """What a profile adds to an encoder id (``lyco``: nothing, so its cached features stay valid)."""
    return "" if profile == "lyco" else f":{profile}"


def dinov2_id(source: str, image_size: int, profile: str = "lyco") -> str:
    return f"dinov2:{source_tag(source)}:{image_size}:p{PREPROCESS_VERSION}{_profile_tag(profile)}"


def clip_id(model: str, pretrained: str | None, profile: str = "lyco") -> str:
    if Path(model).is_dir():
        return f"clip:{source_tag(model)}:p{PREPROCESS_VERSION}{_profile_tag(profile)}"
    weights = source_tag(pretrained) if pretrained else pretrained
    return f"clip:{model}/{weights}:p{PREPROCESS_VERSION}{_profile_tag(profile)}"


def vgg19_id(source: str, short_side: int, profile: str = "lyco") -> str:
    return f"vgg19:{source_tag(source)}:{short_side}{_profile_tag(profile)}"


def hps_id(model: str, checkpoint: str | None) -> str:
    return f"hps:{source_tag(model)}/{source_tag(checkpoint) if checkpoint else checkpoint}:p{PREPROCESS_VERSION}"


def hps_label(model: str, checkpoint: str | None) -> str:
    name = Path(model).name if Path(model).exists() else model
    return f"hps:{name}/{Path(checkpoint).name if checkpoint else checkpoint}"


class DinoV2Encoder:
    """DINOv2 through transformers: the final-layernormed CLS token, L2-normalized.

    ``Dinov2Model`` applies its last layernorm to every token, so ``last_hidden_state[:, 0]``
    (= ``pooler_output``) is the ``x_norm_clstoken`` of the reference implementation the paper used.
    """

    kind = "dinov2"

    def __init__(
        self, source: str, *, device: str | None = None, image_size: int = 224, profile: str = "lyco"
    ):
        from transformers import Dinov2Model

        self.source, self.image_size, self.profile = source, image_size, profile
        self.device = _resolve_device(device)
        try:
            # use_safetensors: a folder holding only pickled weights is refused, never unpickled.
            self.model = Dinov2Model.from_pretrained(source, use_safetensors=True).eval().to(self.device)
        except (OSError, ValueError, RuntimeError) as exc:
            raise _load_error(self.kind, source, exc) from None
        if profile == "paper":
            profiles.use_hub_interpolation(self.model)
        self.id, self.label = dinov2_id(source, image_size, profile), source_label(self.kind, source)

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
        with profiles.encoding(self.profile, self.device):
            cls = self.model(pixel_values=x).last_hidden_state[:, 0]  # (B, D)
        return F.normalize(cls.float(), dim=-1).cpu()


class ClipEncoder:
    """OpenCLIP image and text towers (any open_clip name + pretrained tag, hf-hub: id or local dir).

    A local directory holds ``open_clip_config.json`` (``model_cfg`` + ``preprocess_cfg``) and
    ``open_clip_model.safetensors``, the layout of open_clip models on the hub. Images go through
    open_clip's own eval transform for the model (its size, interpolation, mean/std), with resize
    mode ``squash``/``shortest``/``longest`` for our ``resize``/``crop``/``padding``.
    """

    kind = "clip"

    def __init__(
        self, model: str, pretrained: str | None = None, *, device: str | None = None, profile: str = "lyco"
    ):
        import open_clip

        self.device, self.profile = _resolve_device(device), profile
        local = Path(model)
        name = f"local-dir:{local}" if local.is_dir() else model
        try:
            self.model = open_clip.create_model(name, pretrained=None if local.is_dir() else pretrained)
            self.tokenizer = open_clip.get_tokenizer(name)
        except (OSError, ValueError, RuntimeError) as exc:
            raise _load_error(self.kind, model, exc) from None
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
        self.id = clip_id(model, pretrained, profile)
        self.label = source_label(self.kind, model) if local.is_dir() else f"clip:{model}/{pretrained}"

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
        with profiles.encoding(self.profile, self.device):
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
        with profiles.encoding(self.profile, self.device):
            feats = self.model.encode_text(tokens)
        return F.normalize(feats.float(), dim=-1).cpu()  # (B, D)

    def logit_scale(self) -> float:
        return float(self.model.logit_scale.detach().exp())


def hps_preprocess(image: Image.Image, *, size: int, mean, std, fill: int = 0) -> torch.Tensor:
    """HPS v2's evaluation transform: the longest side to ``size`` (bicubic, sides rounded), the
    rest padded with ``fill`` (split low-first), no centre crop; then normalized (3, size, size).

    HPS v2 skips the step for an image whose longest side already equals ``size``; it is padded
    here too, so that every image comes out square.
    """
    image = image.convert("RGB")
    w, h = image.size
    scale = size / float(max(w, h))
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    if (nw, nh) != (w, h):
        image = image.resize((nw, nh), Image.BICUBIC)
    canvas = Image.new("RGB", (size, size), (fill, fill, fill))
    canvas.paste(image, ((size - nw) // 2, (size - nh) // 2))
    return _normalize(_to_tensor(canvas), mean, std)


def _hub_file(spec: str) -> Path:
    """``<owner>/<repo>/<file>`` from the Hugging Face hub (or its local cache when offline)."""
    parts = spec.split("/")
    if len(parts) < 3:
        raise BadInput(
            f"encoders.hps_checkpoint {spec!r}: no such file, and not <owner>/<repo>/<file> on the hub"
        )
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download("/".join(parts[:2]), "/".join(parts[2:])))
    except Exception as exc:  # hub errors: offline, missing, no access
        raise _load_error("hps", spec, exc) from None


def load_state_file(path: str | Path, *, what: str) -> dict[str, torch.Tensor]:
    """A state dict from safetensors or a torch file read with ``weights_only=True`` (never a general
    unpickle); ``{"state_dict": …}`` wrappers and ``module.`` prefixes (DDP) are removed."""
    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # safetensors / the restricted unpickler raise many types
        raise _load_error(what, str(path), exc) from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise BadInput(f"encoder {what} {str(path)!r}: not a state dict of tensors")
    if state and all(k.startswith("module.") for k in state):
        state = {k.removeprefix("module."): v for k, v in state.items()}
    return state


def check_hps_source(model: str, checkpoint: str | None) -> None:
    """BadInput when HPS's architecture or checkpoint cannot be found (local path, HF cache or hub)."""
    import os

    import open_clip

    folder = Path(model).expanduser()
    if folder.is_dir():
        if not (folder / "open_clip_config.json").is_file():
            raise BadInput(f"encoders.hps {model}: not an open_clip folder (no open_clip_config.json)")
    elif model not in open_clip.list_models():
        raise BadInput(f"encoders.hps {model!r}: not an open_clip architecture nor a local folder")
    if not checkpoint or Path(checkpoint).expanduser().is_file():
        return
    parts = checkpoint.split("/")
    if len(parts) < 3:
        raise BadInput(f"encoders.hps_checkpoint {checkpoint!r}: no such file, and not <owner>/<repo>/<file>")
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache("/".join(parts[:2]), "/".join(parts[2:]))
    if not isinstance(cached, str) and os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0"):
        raise BadInput(
            f"encoders.hps_checkpoint {checkpoint}: not in the local Hugging Face cache (HF_HUB_OFFLINE is set)"
        )


class HpsEncoder(ClipEncoder):
    """HPS v2.1: an OpenCLIP model (``ViT-H-14``, or a local ``open_clip_config.json`` folder) whose
    weights are replaced by the HPS checkpoint (a local ``.pt``/``.safetensors`` file, or
    ``<owner>/<repo>/<file>`` on the hub). Image and text features are L2-normalized, so the HPS
    of an image for a text is their dot product. Images go through :func:`hps_preprocess`
    whatever the mode; texts are tokenized as for CLIP (end-of-text kept).
    """

    kind = "hps"

    def __init__(self, model: str = HPS_ARCH, checkpoint: str | None = HPS_CHECKPOINT, *, device=None):
        import open_clip

        self.device, self.profile = _resolve_device(device), "lyco"  # not in the paper: one preprocessing
        local = Path(model)
        name = f"local-dir:{local}" if local.is_dir() else model
        try:
            self.model = open_clip.create_model(name, pretrained=None, load_weights=False)
            self.tokenizer = open_clip.get_tokenizer(name)
        except (OSError, ValueError, RuntimeError) as exc:
            raise _load_error(self.kind, model, exc) from None
        if checkpoint:
            file = Path(checkpoint).expanduser()
            state = load_state_file(file if file.is_file() else _hub_file(checkpoint), what=self.kind)
            try:
                self.model.load_state_dict(state, strict=True)
            except RuntimeError as exc:
                first = str(exc).strip().splitlines()[1:2] or [str(exc)[:200]]
                raise BadInput(
                    f"encoder hps {checkpoint!r}: does not fit {model} ({first[0].strip()[:200]})"
                ) from None
        self.model = self.model.eval().to(self.device)
        cfg = open_clip.get_model_preprocess_cfg(self.model)
        size = cfg.get("size", 224)
        self.image_size = size if isinstance(size, int) else size[0]
        self.mean, self.std = tuple(cfg.get("mean", IMAGENET_MEAN)), tuple(cfg.get("std", IMAGENET_STD))
        self.context_length = getattr(self.model, "context_length", 77)
        self.id, self.label = hps_id(model, checkpoint), hps_label(model, checkpoint)

    def prepare(self, image: Image.Image, mode: str = "resize") -> torch.Tensor:
        """One picture → its input tensor, whatever the mode (HPS's own preprocessing)."""
        return hps_preprocess(image, size=self.image_size, mean=self.mean, std=self.std)

    def encode_images(self, images: list[Image.Image], mode: str = "resize") -> torch.Tensor:
        return self.forward([self.prepare(im, mode) for im in images])


def vgg19_features(widths: tuple[int, ...] = VGG19_WIDTHS) -> torch.nn.Sequential:
    """VGG19's convolutional trunk up to conv5_1 (torchvision indices), with given stage widths."""
    layers: list[torch.nn.Module] = []
    in_ch = 3
    for item in _VGG19_LAYOUT:
        if item == "M":
            layers.append(torch.nn.MaxPool2d(kernel_size=2, stride=2))
            continue
        layers += [
            torch.nn.Conv2d(in_ch, widths[item], kernel_size=3, padding=1),
            torch.nn.ReLU(inplace=False),
        ]
        in_ch = widths[item]
    layers.append(torch.nn.Conv2d(in_ch, widths[4], kernel_size=3, padding=1))  # conv5_1 = index 28
    return torch.nn.Sequential(*layers)


def _vgg_from_state_dict(state: dict[str, torch.Tensor], source: str) -> torch.nn.Sequential:
    state = {k.removeprefix("features."): v for k, v in state.items() if not k.startswith("classifier.")}
    try:
        widths = tuple(int(state[f"{i}.weight"].shape[0]) for i in GRAM_LAYERS)
        trunk = vgg19_features(widths)
        wanted = trunk.state_dict().keys()
        trunk.load_state_dict({k: state[k] for k in wanted})
    except (KeyError, RuntimeError) as exc:
        raise BadInput(
            f"encoder vgg19 {source!r}: not a VGG19 state dict ({str(exc).splitlines()[0][:120]})"
        ) from None
    return trunk


def gram_features(feature_maps: list[torch.Tensor]) -> torch.Tensor:
    """Packed Gram matrices G = F·Fᵀ/(C·H·W) of each layer, concatenated: (B, Σ C(C+1)/2).

    G is symmetric, so only its upper triangle is kept, with off-diagonal entries scaled by √2:
    squared L2 distances (and means/variances) of these vectors equal those of the full flattened
    Grams (the paper, §5) at half the storage.
    """
    packed = []
    for fm in feature_maps:
        b, c, h, w = fm.shape
        flat = fm.reshape(b, c, h * w).float()
        gram = flat @ flat.transpose(1, 2) / (c * h * w)  # (B, C, C)
        rows, cols = torch.triu_indices(c, c)
        weight = torch.where(rows == cols, 1.0, math.sqrt(2.0)).to(gram)
        packed.append(gram[:, rows, cols] * weight)  # (B, C(C+1)/2)
    return torch.cat(packed, dim=1).float()


class VggGramEncoder:
    """VGG19 Gram features (the paper, §5): ImageNet weights by default, or a local safetensors file.

    The short side is resized to ``short_side`` keeping the aspect ratio (no crop), so images of
    different shapes are encoded one shape-group at a time.
    """

    kind = "vgg19"

    def __init__(
        self,
        source: str = "IMAGENET1K_V1",
        *,
        device: str | None = None,
        short_side: int = 224,
        profile: str = "lyco",
    ):
        self.source, self.short_side, self.profile = source, short_side, profile
        self.device = _resolve_device(device)
        local = Path(source)
        if local.is_file():
            from safetensors.torch import load_file

            try:
                state = load_file(str(local))
            except Exception as exc:  # safetensors raises its own error types
                raise _load_error(self.kind, source, exc) from None
            self.trunk = _vgg_from_state_dict(state, source)
        else:
            import torchvision

            try:
                trunk = torchvision.models.vgg19(weights=source).features
            except (ValueError, KeyError, OSError, RuntimeError) as exc:
                raise _load_error(self.kind, source, exc) from None
            self.trunk = trunk[: GRAM_LAYERS[-1] + 1]
            for module in self.trunk:
                if isinstance(module, torch.nn.ReLU):
                    module.inplace = False  # an in-place ReLU would rectify the captured conv outputs
        self.trunk = self.trunk.eval().to(self.device)
        self.id, self.label = vgg19_id(source, short_side, profile), source_label(self.kind, source)
        # The paper's in-place ReLUs rectify the captured conv1_1–conv4_1 outputs (docs/protocol.md §5.7).
        self._relu_after = profiles.PAPER_RELU_LAYERS if profile == "paper" else ()

    def _tensor(self, image: Image.Image) -> torch.Tensor:
        resize = profiles.paper_short_side if self.profile == "paper" else profiles.lyco_short_side
        return _normalize(_to_tensor(resize(image, self.short_side)), IMAGENET_MEAN, IMAGENET_STD)

    def prepare(self, image: Image.Image, mode: str = "resize") -> torch.Tensor:
        """One picture → its input tensor, whatever the mode (short side resized)."""
        return self._tensor(image)

    def encode_images(self, images: list[Image.Image], mode: str = "resize") -> torch.Tensor:
        return self.forward([self.prepare(im, mode) for im in images])

    @torch.no_grad()
    def forward(self, tensors: list[torch.Tensor]) -> torch.Tensor:
        """Gram features of prepared inputs, encoded one input shape at a time."""
        out: list[torch.Tensor | None] = [None] * len(tensors)
        for shape in sorted({t.shape for t in tensors}):
            idx = [i for i, t in enumerate(tensors) if t.shape == shape]
            x = torch.stack([tensors[i] for i in idx]).to(self.device)  # (b, 3, H, W)
            maps = []
            with profiles.encoding(self.profile, self.device):
                for i, layer in enumerate(self.trunk):
                    x = layer(x)
                    if i in GRAM_LAYERS:
                        maps.append(torch.relu(x) if i in self._relu_after else x)
            for j, row in zip(idx, gram_features(maps).cpu(), strict=True):
                out[j] = row
        return torch.stack(out)  # (B, Σ C(C+1)/2)
