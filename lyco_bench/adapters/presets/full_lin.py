"""``full-lin``: LyCORIS's preset of that name — every Linear and 1×1 convolution of the denoiser's
transformer blocks, ResNet blocks and timestep embeddings (time and, for SDXL, the added
text-time embedding), no k×k convolution; the text encoder as in attn-mlp."""

from torch import nn

from lyco_bench.adapters.presets.base import LayerInfo, Preset, register_preset, te_attention_mlp

# LyCORIS's full-lin target modules (lycoris/config.py) that exist in diffusers' UNets.
BLOCKS = ("ResnetBlock2D", "TimestepEmbedding")


def _linear_layer(info: LayerInfo) -> bool:
    if isinstance(info.layer, nn.Conv2d) and max(info.layer.kernel_size) > 1:
        return False  # enable_conv = false: k×k convolutions are left out
    return info.in_transformer_block or any(name in BLOCKS for name in info.enclosing)


register_preset(
    Preset(
        name="full-lin",
        unet=_linear_layer,
        text_encoder=te_attention_mlp,
        description="LyCORIS's full-lin: every Linear/1×1 conv of transformer, ResNet and timestep blocks",
    )
)
