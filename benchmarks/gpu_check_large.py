"""gpu_check's ``large`` section: one SDXL-shaped and one FLUX-shaped training step.

SDXL: the full SDXL UNet built from its published config (2.57 B parameters, random weights) at
1024 px, batch 1. FLUX: FLUX.1-dev's transformer at its full widths (3072 hidden, 24 heads, T5
context 4096) with 2 double and 4 single blocks instead of 19 and 38 (the 57-block model's bf16
weights alone are 24 GB; the blocks are the same shapes), 4096 image + 512 text tokens. Both with
a LoRA (d16) on every Linear of the attention/MLP blocks, bf16 base weights and bf16 autocast
(``base_dtype: bfloat16``), gradient checkpointing, AdamW8bit where bitsandbytes runs. Each row
gives it/s and the peak memory ``torch.cuda.max_memory_allocated`` saw beside the training-memory
estimate of lyco_bench/sweep/gpu_memory.py for the same model and step (less its fixed CUDA
context, which the allocator does not see). ``--cpu-smoke``: the same code at tiny widths.
"""

from __future__ import annotations

import time
from typing import Any

import torch


def _sdxl(smoke: bool) -> tuple[Any, dict, int, int]:
    from diffusers import UNet2DConditionModel
    from memory import SDXL_UNET

    from lyco_bench.models import TINY_UNET

    if smoke:
        cfg = {**TINY_UNET, "cross_attention_dim": 32, "addition_embed_type": "text_time",
               "addition_time_embed_dim": 8, "projection_class_embeddings_input_dim": 32 + 6 * 8}  # fmt: skip
        return UNet2DConditionModel.from_config(cfg), {"include": ["*attentions*"]}, 64, 2
    return UNet2DConditionModel.from_config(SDXL_UNET), {"include": ["*attentions*"]}, 1024, 1


def _flux(smoke: bool) -> tuple[Any, dict, int, int]:
    from diffusers import FluxTransformer2DModel
    from memory import FLUX_TRANSFORMER

    cfg = {**FLUX_TRANSFORMER, "num_layers": 2, "num_single_layers": 4}
    if smoke:
        cfg.update(attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=16,
                   axes_dims_rope=[4, 6, 6])  # fmt: skip
    return (
        FluxTransformer2DModel.from_config(cfg),
        {"include": ["*transformer_blocks*"]},
        64 if smoke else 1024,
        1,
    )


def section_large(c: Any) -> None:
    from gpu_check import _optimizer, _peak_reset, _sync, _why

    from lyco_bench.adapters import AdapterSpec, inject
    from lyco_bench.sweep.gpu_memory import (
        CUDA_CONTEXT_BYTES,
        TrainingShape,
        denoiser_inputs,
        estimate_training_memory,
    )
    from lyco_bench.training.memory import FrozenCast

    for name, build in (("SDXL UNet", _sdxl), ("FLUX blocks", _flux)):
        try:
            torch.manual_seed(0)
            model, select, px, batch = build(c.smoke)
            model.requires_grad_(False)
            spec = AdapterSpec(algo="lora", dim=16, alpha=16, preset="full", **select)
            net = inject(model, None, spec)
            model.to(c.device)
            net.to(c.device)
            half = c.device.type == "cuda"
            if half:
                FrozenCast([model], torch.bfloat16, keep_originals=False)
            model.enable_gradient_checkpointing()
            params = [p for p in net.trainable_parameters() if p.requires_grad]
            opt, opt_name = _optimizer(params, c)
            shape = TrainingShape(batch, px, px, "bf16" if half else "no", "bfloat16" if half else "float32", True,
                                  cached_text=True, optimizer="adamw8bit" if "8bit" in opt_name else "adamw")  # fmt: skip
            with torch.device("meta"):
                meta = type(model).from_config(model.config).requires_grad_(False)
            inject(meta, None, spec)
            estimate = estimate_training_memory(meta, [], shape).total - CUDA_CONTEXT_BYTES
            _, kwargs = denoiser_inputs(model, batch, px, px)
            kwargs = {k: _filled(v, c.device) for k, v in kwargs.items()}
            model.train()
            _peak_reset(c.device)
            steps = 2 if c.smoke else 5
            for i in range(steps + 1):  # 1 warm-up step
                if i == 1:
                    _sync(c.device)
                    start = time.perf_counter()
                with torch.autocast(c.device.type, dtype=torch.bfloat16, enabled=half):
                    out = model(**kwargs, return_dict=False)[0]
                out.float().square().mean().backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
            _sync(c.device)
            its = steps / (time.perf_counter() - start)
            peak = torch.cuda.max_memory_allocated(c.device) if c.device.type == "cuda" else None
            measured = f"peak {_gib(peak)}" if peak is not None else "peak -"
            c.row(f"train {name} it/s (batch {batch}, {px} px)", f"{its:.2f}",
                  f"{measured}, estimate {_gib(estimate)}, LoRA d16 {sum(p.numel() for p in params):,} "
                  f"params, {opt_name}, checkpointing{', bf16 base + autocast' if half else ''}")  # fmt: skip
            del model, net, opt, meta
        except Exception as exc:  # one model's failure leaves the other's row
            c.row(f"train {name}", "FAILED", _why(exc))


def _gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def _filled(value: Any, device: torch.device) -> Any:
    """A meta input of denoiser_inputs as a real tensor: random values, ids as positions."""
    if isinstance(value, dict):
        return {k: _filled(v, device) for k, v in value.items()}
    if value.dim() == 2 and value.shape[-1] == 3:  # FLUX image/text ids (tokens, 3)
        return torch.zeros(value.shape, device=device)
    if value.dim() == 1:  # timestep (FLUX: in [0, 1]) / guidance
        return torch.full(value.shape, 0.5, device=device)
    return torch.randn(value.shape, device=device)
