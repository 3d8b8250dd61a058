"""VGG19 Gram features (the paper, §5): the style losses (``style_loss_base``, ``style_loss_dataset``).

Settings: ``vgg`` (a torchvision weights name or a local safetensors state dict) and
``vgg_short_side``. Features of generated images are reduced as they are computed, never stored.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from PIL import Image
from pydantic import Field

from lyco_bench.config import StrictModel
from lyco_bench.errors import BadInput
from lyco_bench.metrics import profiles
from lyco_bench.metrics.encoders.base import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    EncoderKind,
    load_error,
    normalize,
    profile_tag,
    register_encoder,
    resolve_device,
    source_label,
    source_tag,
    to_tensor,
)

# VGG19 ("E" configuration) up to stage 4's pool: conv widths per stage, 'M' = max-pool; with
# conv5_1 appended (index 28) the nn.Sequential's indices match torchvision's vgg19().features[:29].
_VGG19_LAYOUT = (0, 0, "M", 1, 1, "M", 2, 2, 2, 2, "M", 3, 3, 3, 3, "M")
VGG19_WIDTHS = (64, 128, 256, 512, 512)
# conv1_1, conv2_1, conv3_1, conv4_1, conv5_1 taken before their ReLU (the paper, §5).
GRAM_LAYERS = (0, 5, 10, 19, 28)
TINY_VGG_WIDTHS = (4, 8, 8, 16, 16)
TINY_VGG_SHORT_SIDE = 32


class VggSettings(StrictModel):
    vgg: str = "IMAGENET1K_V1"
    """VGG19 weights: a torchvision weights name or a local safetensors state dict (style losses)."""
    vgg_short_side: int = Field(224, ge=16)


def vgg19_id(source: str, short_side: int, profile: str = "lyco", precision: str = "float32") -> str:
    return f"vgg19:{source_tag(source)}:{short_side}{profile_tag(profile, precision)}"


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
        precision: str = "auto",
    ):
        self.source, self.short_side, self.profile = source, short_side, profile
        self.device = resolve_device(device)
        local = Path(source)
        if local.is_file():
            from safetensors.torch import load_file

            try:
                state = load_file(str(local))
            except Exception as exc:  # safetensors raises its own error types
                raise load_error(self.kind, source, exc) from None
            self.trunk = _vgg_from_state_dict(state, source)
        else:
            import torchvision

            try:
                trunk = torchvision.models.vgg19(weights=source).features
            except (ValueError, KeyError, OSError, RuntimeError) as exc:
                raise load_error(self.kind, source, exc) from None
            self.trunk = trunk[: GRAM_LAYERS[-1] + 1]
            for module in self.trunk:
                if isinstance(module, torch.nn.ReLU):
                    module.inplace = False  # an in-place ReLU would rectify the captured conv outputs
        self.trunk = self.trunk.eval().to(self.device)
        self.precision = profiles.resolve_precision(precision, self.device)
        self.id = vgg19_id(source, short_side, profile, self.precision)
        self.label = source_label(self.kind, source)
        # The paper's in-place ReLUs rectify the captured conv1_1–conv4_1 outputs (docs/protocol.md §5.7).
        self._relu_after = profiles.PAPER_RELU_LAYERS if profile == "paper" else ()

    def _tensor(self, image: Image.Image) -> torch.Tensor:
        resize = profiles.paper_short_side if self.profile == "paper" else profiles.lyco_short_side
        return normalize(to_tensor(resize(image, self.short_side)), IMAGENET_MEAN, IMAGENET_STD)

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
            with profiles.encoding(self.precision, self.device):
                for i, layer in enumerate(self.trunk):
                    x = layer(x)
                    if i in GRAM_LAYERS:
                        maps.append(torch.relu(x) if i in self._relu_after else x)
            for j, row in zip(idx, gram_features(maps).cpu(), strict=True):
                out[j] = row
        return torch.stack(out)  # (B, Σ C(C+1)/2)


def check_vgg_source(value: str) -> None:
    path = Path(value).expanduser()
    if path.is_file():
        return
    from torchvision.models import VGG19_Weights

    if value not in VGG19_Weights.__members__:
        raise BadInput(
            f"encoders.vgg {value}: no such file, and not a torchvision VGG19 weights name "
            f"({', '.join(VGG19_Weights.__members__)})"
        )
    import torch

    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(VGG19_Weights[value].url).name
    if not cached.is_file() and _offline():
        raise BadInput(f"encoders.vgg {value}: weights not in the torch hub cache ({cached}) and offline")


def vgg_flops(widths: tuple[int, ...], side: int) -> float:
    """VGG19's convolutions up to conv5_1 on a ``side``² picture (3×3 kernels, 2 FLOPs a MAC)."""
    flops, channels, size = 0.0, 3, side
    for item in (*_VGG19_LAYOUT, 4):  # conv5_1 closes the trunk
        if item == "M":
            size //= 2
            continue
        flops += 2.0 * 9 * channels * widths[item] * size * size
        channels = widths[item]
    return flops


def _offline() -> bool:
    from lyco_bench.models import hub_offline

    return hub_offline()


def make_tiny_vgg19(out_file: Path, *, seed: int = 0) -> Path:
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    trunk = vgg19_features(TINY_VGG_WIDTHS)
    out_file = Path(out_file)
    out_file.parent.mkdir(parents=True, exist_ok=True)
    save_file({f"features.{k}": v.contiguous() for k, v in trunk.state_dict().items()}, str(out_file))
    return out_file


def _widths(tiny: bool) -> tuple[int, ...]:
    return TINY_VGG_WIDTHS if tiny else VGG19_WIDTHS


register_encoder(
    EncoderKind(
        name="vgg19",
        settings=VggSettings,
        weights_field="vgg",
        identity=lambda s: vgg19_id(s.vgg, s.vgg_short_side, s.profile, s.resolved_precision()),
        load=lambda s: VggGramEncoder(
            s.vgg, device=s.device, short_side=s.vgg_short_side, profile=s.profile, precision=s.precision
        ),
        check_source=lambda s: check_vgg_source(s.vgg),
        # The packed Gram length: C(C+1)/2 per layer.
        feature_dim=lambda fields, tiny: sum(c * (c + 1) // 2 for c in _widths(tiny)),
        flops=lambda fields, tiny: vgg_flops(_widths(tiny), int(fields.get("vgg_short_side", 224))),
        make_tiny=lambda out, seed: {
            "vgg": str(make_tiny_vgg19(out / "vgg19.safetensors", seed=seed)),
            "vgg_short_side": TINY_VGG_SHORT_SIDE,
        },
        title="a VGG19",
        native=True,
        streamed=True,
        order=2,
    )
)
