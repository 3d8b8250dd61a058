"""``attn-only``: the attention projections of the UNet's transformer blocks (attn1/attn2
to_q/to_k/to_v/to_out.0) and of the text encoder (self_attn q/k/v/out_proj)."""

from lyco_bench.adapters.presets.base import ATTN_PROJECTIONS, Preset, register_preset, te_attention

register_preset(
    Preset(
        name="attn-only",
        unet=lambda info: info.attention_projection(ATTN_PROJECTIONS),
        text_encoder=te_attention,
        description="attention projections of the UNet's transformer blocks and of the text encoder",
    )
)
