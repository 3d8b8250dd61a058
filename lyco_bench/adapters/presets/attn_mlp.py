"""``attn-mlp`` (the default): every Linear/Conv2d inside the UNet's transformer blocks (attention,
feed-forward, proj_in/proj_out) and the text encoder's attention and MLP (fc1/fc2)."""

from lyco_bench.adapters.presets.base import Preset, register_preset, te_attention_mlp

register_preset(
    Preset(
        name="attn-mlp",
        unet=lambda info: info.in_transformer_block,
        text_encoder=te_attention_mlp,
        description="the UNet's transformer blocks whole, the text encoder's attention and MLP",
    )
)
