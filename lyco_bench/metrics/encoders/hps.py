"""The HPS v2.1 preference model (``hps_delta``): an OpenCLIP ViT-H-14 with the HPS checkpoint.

Settings: ``hps`` (the open_clip architecture, or a local ``open_clip_config.json`` folder) and
``hps_checkpoint`` (a local ``.pt``/``.safetensors`` file or ``<owner>/<repo>/<file>`` on the hub).
"""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image

from lyco_bench.config import StrictModel
from lyco_bench.errors import BadInput
from lyco_bench.metrics.encoders import base
from lyco_bench.metrics.encoders.base import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    EncoderKind,
    load_error,
    load_state_file,
    normalize,
    profile_tag,
    register_encoder,
    resolve_device,
    source_tag,
    split_hub_file,
    to_tensor,
)
from lyco_bench.metrics.encoders.clip import (
    TINY_CLIP_CONFIG,
    ClipEncoder,
    open_clip_embed_dim,
    open_clip_flops,
    write_open_clip_config,
)

HPS_ARCH = "ViT-H-14"
HPS_CHECKPOINT = "xswu/HPSv2/HPS_v2.1_compressed.pt"
"""HPS v2.1 on the hub: ``<owner>/<repo>/<file>``."""
VIT_H14 = (32, 1280, 14)
"""(layers, width, patch) of ViT-H/14, HPS v2.1's architecture."""


class HpsSettings(StrictModel):
    hps: str = HPS_ARCH
    """HPS v2.1's OpenCLIP architecture (or a local ``open_clip_config.json`` folder) (``hps_delta``)."""
    hps_checkpoint: str | None = HPS_CHECKPOINT
    """The HPS weights: a local ``.pt`` (read with ``weights_only``) or ``.safetensors`` file, or
    ``<owner>/<repo>/<file>`` on the Hugging Face hub (``<owner>/<repo>@<rev>/<file>`` pins a
    commit; a sweep pins it at plan time); None: the architecture's random init."""


def hps_id(model: str, checkpoint: str | None, precision: str = "float32") -> str:
    weights = source_tag(checkpoint) if checkpoint else checkpoint
    return f"hps:{source_tag(model)}/{weights}:p{base.PREPROCESS_VERSION}{profile_tag('lyco', precision)}"


def hps_label(model: str, checkpoint: str | None) -> str:
    name = Path(model).name if Path(model).exists() else model
    return f"hps:{name}/{Path(checkpoint).name if checkpoint else checkpoint}"


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
    return normalize(to_tensor(canvas), mean, std)


def _hub_file(spec: str) -> Path:
    """``<owner>/<repo>[@<rev>]/<file>`` from the Hugging Face hub (or its local cache offline), at
    ``rev`` when given: a sweep's workers load the commit its job ids recorded."""
    parsed = split_hub_file(spec)
    if parsed is None:
        raise BadInput(
            f"encoders.hps_checkpoint {spec!r}: no such file, and not <owner>/<repo>/<file> on the hub"
        )
    from huggingface_hub import hf_hub_download

    repo, revision, filename = parsed
    try:
        return Path(hf_hub_download(repo, filename, revision=revision))
    except Exception as exc:  # hub errors: offline, missing, no access
        raise load_error("hps", spec, exc) from None


def check_hps_source(model: str, checkpoint: str | None) -> None:
    """BadInput when HPS's architecture or checkpoint cannot be found (local path, HF cache or hub)."""
    hps_pin(model, checkpoint)


def hps_pin(model: str, checkpoint: str | None) -> dict[str, str]:
    """``{"hps_checkpoint": "<owner>/<repo>@<commit>/<file>"}`` for a hub checkpoint ({} for a
    local one or none); BadInput when the architecture or checkpoint cannot be found."""
    import open_clip

    from lyco_bench.hub import hub_identity

    folder = Path(model).expanduser()
    if folder.is_dir():
        if not (folder / "open_clip_config.json").is_file():
            raise BadInput(f"encoders.hps {model}: not an open_clip folder (no open_clip_config.json)")
    elif model not in open_clip.list_models():
        raise BadInput(f"encoders.hps {model!r}: not an open_clip architecture nor a local folder")
    if not checkpoint or Path(checkpoint).expanduser().is_file():
        return {}
    parsed = split_hub_file(checkpoint)
    if parsed is None:
        raise BadInput(f"encoders.hps_checkpoint {checkpoint!r}: no such file, and not <owner>/<repo>/<file>")
    repo, revision, filename = parsed
    pinned, _ = hub_identity(repo, filename, what="encoders.hps_checkpoint", revision=revision)
    return {"hps_checkpoint": f"{pinned}/{filename}"}


class HpsEncoder(ClipEncoder):
    """HPS v2.1: an OpenCLIP model (``ViT-H-14``, or a local ``open_clip_config.json`` folder) whose
    weights are replaced by the HPS checkpoint (a local ``.pt``/``.safetensors`` file, or
    ``<owner>/<repo>/<file>`` on the hub). Image and text features are L2-normalized, so the HPS
    of an image for a text is their dot product. Images go through :func:`hps_preprocess`
    whatever the mode; texts are tokenized as for CLIP (end-of-text kept).
    """

    kind = "hps"

    def __init__(
        self,
        model: str = HPS_ARCH,
        checkpoint: str | None = HPS_CHECKPOINT,
        *,
        device=None,
        precision: str = "auto",
    ):
        import open_clip

        from lyco_bench.metrics import profiles

        self.device, self.profile = resolve_device(device), "lyco"  # not in the paper: one preprocessing
        local = Path(model)
        name = f"local-dir:{local}" if local.is_dir() else model
        try:
            self.model = open_clip.create_model(name, pretrained=None, load_weights=False)
            self.tokenizer = open_clip.get_tokenizer(name)
        except (OSError, ValueError, RuntimeError) as exc:
            raise load_error(self.kind, model, exc) from None
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
        # encoders.precision, as the other encoders (ClipEncoder.forward / encode_texts autocast)
        self.precision = profiles.resolve_precision(precision, self.device)
        self.id, self.label = hps_id(model, checkpoint, self.precision), hps_label(model, checkpoint)

    def prepare(self, image: Image.Image, mode: str = "resize") -> torch.Tensor:
        """One picture → its input tensor, whatever the mode (HPS's own preprocessing)."""
        return hps_preprocess(image, size=self.image_size, mean=self.mean, std=self.std)

    def encode_images(self, images: list[Image.Image], mode: str = "resize") -> torch.Tensor:
        return self.forward([self.prepare(im, mode) for im in images])


def make_tiny_hps(out_dir: Path, *, seed: int = 0) -> tuple[Path, Path]:
    """An open_clip config folder (no weights) and an HPS-style checkpoint for it: (folder, file)."""
    import open_clip

    out_dir = Path(out_dir)
    folder = out_dir / "hps"
    write_open_clip_config(folder, TINY_CLIP_CONFIG)
    torch.manual_seed(seed + 1)  # not the tiny CLIP's weights
    model = open_clip.create_model(f"local-dir:{folder}", load_weights=False)
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    checkpoint = out_dir / "hps-v2.1.pt"
    torch.save({"state_dict": state}, checkpoint)
    return folder, checkpoint


register_encoder(
    EncoderKind(
        name="hps",
        settings=HpsSettings,
        weights_field="hps",
        identity=lambda s: hps_id(s.hps, s.hps_checkpoint, s.resolved_precision()),
        label=lambda s: hps_label(s.hps, s.hps_checkpoint),
        load=lambda s: HpsEncoder(s.hps, s.hps_checkpoint, device=s.device, precision=s.precision),
        check_source=lambda s: check_hps_source(s.hps, s.hps_checkpoint),
        pin=lambda s: hps_pin(s.hps, s.hps_checkpoint),
        # HPS v2.1 is an OpenCLIP ViT-H-14: its width is the architecture's (1024).
        feature_dim=lambda fields, tiny: (
            TINY_CLIP_CONFIG["embed_dim"] if tiny else open_clip_embed_dim(fields.get("hps", HPS_ARCH))
        ),
        flops=lambda fields, tiny: open_clip_flops(str(fields.get("hps", "")), tiny, VIT_H14),
        make_tiny=lambda out, seed: dict(
            zip(("hps", "hps_checkpoint"), map(str, make_tiny_hps(out, seed=seed)), strict=True)
        ),
        path_fields=("hps_checkpoint",),
        title="an HPS v2.1",
        native=True,
        text=True,
        order=3,
    )
)
