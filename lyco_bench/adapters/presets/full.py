"""``full``: every Linear and Conv2d of the UNet (ResNet convs, time embedding, samplers,
conv_in/out) and the text encoder as in attn-mlp; with ``train_norm`` also the UNet's norm layers
(as the paper trained them)."""

from lyco_bench.adapters.presets.base import Preset, register_preset, te_attention_mlp

register_preset(
    Preset(
        name="full",
        unet=lambda info: True,
        text_encoder=te_attention_mlp,
        description="every UNet Linear/Conv2d (norm layers with train_norm), the text encoder as attn-mlp",
        norm=True,
    )
)
