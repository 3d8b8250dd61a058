"""Training GPU memory (lyco_bench/sweep/gpu_memory.py): the activation count checked against
autograd's own on the CPU, and the planned memory of SDXL and FLUX.1 configurations.

    .venv/bin/python benchmarks/memory.py [--part validate|sdxl|flux|all] [--quick]

validate: bytes autograd saves for backward, counted on real tensors on the CPU (its own attention
and autocast), beside the estimate's count on ``meta`` tensors (FlashAttention and CUDA autocast
emulated), for the tiny UNet and for one full-width SDXL and FLUX block at a CPU-sized token count.
sdxl / flux: the estimate for the models' published configs (no weights: ``meta``), at 1024 px,
with cached latents and text-encoder outputs (text encoders frozen), bf16 autocast + bf16 base
weights, AdamW8bit — the usual settings at these sizes — against an 80 GB H100.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from lyco_bench.sweep.gpu_memory import TrainingShape, denoiser_inputs, estimate_training_memory, saved_bytes

GB = 1e9
# stabilityai/stable-diffusion-xl-base-1.0 unet/config.json (the keys that differ from diffusers' defaults)
SDXL_UNET = {
    "sample_size": 128, "cross_attention_dim": 2048, "block_out_channels": [320, 640, 1280],
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    "transformer_layers_per_block": [1, 2, 10], "attention_head_dim": [5, 10, 20], "use_linear_projection": True,
    "addition_embed_type": "text_time", "addition_time_embed_dim": 256, "projection_class_embeddings_input_dim": 2816,
}  # fmt: skip
# black-forest-labs/FLUX.1-dev transformer/config.json
FLUX_TRANSFORMER = {
    "attention_head_dim": 128, "guidance_embeds": True, "in_channels": 64, "joint_attention_dim": 4096,
    "num_attention_heads": 24, "num_layers": 19, "num_single_layers": 38, "patch_size": 1,
    "pooled_projection_dim": 768, "axes_dims_rope": [16, 56, 56],
}  # fmt: skip
# FLUX's usual adapters (kohya/diffusers FLUX LoRA practice): rank 16 on every Linear of the blocks.
FLUX_BLOCKS = ["*transformer_blocks*"]
FLUX_CONFIGS = {
    "lora16a16": {"algo": "lora", "dim": 16, "alpha": 16},
    "dora16a16": {"algo": "lora", "dim": 16, "alpha": 16, "dora": True},
    "loha8a8": {"algo": "loha", "dim": 8, "alpha": 8},
    "lokr-f16": {"algo": "lokr", "factor": 16},
    "native": {"algo": "native"},
}


def _unet_meta(config: dict):
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        return UNet2DConditionModel.from_config(config).requires_grad_(False)


def _flux_meta():
    from diffusers import FluxTransformer2DModel

    with torch.device("meta"):
        return FluxTransformer2DModel.from_config(FLUX_TRANSFORMER).requires_grad_(False)


# --- validation ---------------------------------------------------------------------------------
def _both_ways(build, inputs, compute_dtype=None) -> tuple[int, int]:
    """(autograd's count on the CPU, the estimate's on meta) for ``build()`` with a LoRA on it."""
    from lyco_bench.adapters import AdapterSpec, inject

    counts = []
    for device in ("cpu", "meta"):
        with torch.device(device):
            torch.manual_seed(0)
            module = build().requires_grad_(False)
        inject(module, None, AdapterSpec(algo="lora", dim=8, alpha=4, preset="full", include=["*"]))
        args, kwargs = inputs(module, device)
        counts.append(
            saved_bytes(module, args, kwargs, compute_dtype=compute_dtype, emulate_gpu=device == "meta")
        )
    return counts[0], counts[1]


def _random(tree: dict, device: str) -> dict:
    if device == "meta":
        return tree
    return {k: (_random(v, device) if isinstance(v, dict) else torch.randn(v.shape)) for k, v in tree.items()}


def validate(quick: bool) -> None:
    from diffusers.models.attention import BasicTransformerBlock
    from diffusers.models.transformers.transformer_flux import FluxTransformerBlock

    from lyco_bench.models import TINY_UNET

    tokens = 256 if quick else 1024
    cases = [
        (
            "tiny UNet, 64² px, batch 2",
            lambda: __import__("diffusers").UNet2DConditionModel.from_config(dict(TINY_UNET)),
            lambda m, d: ((), _random(denoiser_inputs(m, 2, 64, 64)[1], d)),
        ),
        (
            f"SDXL transformer block (1280 wide, 20 heads, 2048 context), {tokens} tokens",
            lambda: BasicTransformerBlock(1280, 20, 64, cross_attention_dim=2048),
            lambda m, d: ((_t((1, tokens, 1280), d),), {"encoder_hidden_states": _t((1, 77, 2048), d)}),
        ),
        (
            f"FLUX double block (3072 wide, 24 heads), {tokens // 4} image + 64 text tokens",
            lambda: FluxTransformerBlock(3072, 24, 128),
            lambda m, d: (
                (),
                {
                    "hidden_states": _t((1, tokens // 4, 3072), d),
                    "encoder_hidden_states": _t((1, 64, 3072), d),
                    "temb": _t((1, 3072), d),
                },
            ),  # fmt: skip
        ),
    ]
    print(
        "saved for backward, LoRA d8 on every Linear/Conv, fp32: autograd on the CPU vs the estimate (meta)"
    )
    print(f"{'case':<72}{'CPU MB':>10}{'estimate MB':>13}{'ratio':>8}")
    for name, build, inputs in cases:
        start = time.perf_counter()
        real, est = _both_ways(build, inputs)
        print(
            f"{name:<72}{real / 2**20:>10.1f}{est / 2**20:>13.1f}{est / real:>8.3f}  ({time.perf_counter() - start:.0f} s)"
        )


def _t(shape: tuple[int, ...], device: str) -> torch.Tensor:
    return torch.empty(shape, device="meta") if device == "meta" else torch.randn(shape)


# --- extrapolation ------------------------------------------------------------------------------
def _paper_adapters() -> dict[str, dict]:
    """The paper study's configurations (experiments/paper.yaml) with distinct adapters."""
    from lyco_bench.sweep.study import load_study

    local = [
        "model=tiny:",
        "dataset=demo:",
        "encoders.dino=tiny:",
        "encoders.clip=tiny:",
        "encoders.vgg=tiny:",
    ]
    study = load_study("experiments/paper.yaml", local)
    unique: dict[str, dict] = {}
    for config in study.configs:
        key = json.dumps(config.adapter, sort_keys=True)
        unique.setdefault(key, {"name": config.name, "adapter": config.adapter, "also": []})["also"].append(
            config.name
        )
    return {u["name"]: u for u in unique.values()}


def _row(model, adapter: dict, shape: TrainingShape):
    from lyco_bench.adapters import AdapterSpec, inject

    net = inject(model, None, AdapterSpec(**{**adapter, "train_text_encoder": False}))
    try:
        return estimate_training_memory(model, [], shape), net.num_trainable()
    finally:
        net.remove()


def sdxl(quick: bool) -> None:
    unet = _unet_meta(SDXL_UNET)
    batches = (1, 4) if quick else (1, 2, 4)
    print(
        "\nSDXL (UNet 2.57 B params) at 1024×1024, the paper's configurations, text encoders cached (off the GPU),"
    )
    print("bf16 autocast + bf16 base, AdamW8bit; GB = 10⁹ bytes, fits an 80 GB H100 unless marked")
    head = "".join(f"{f'b{b}':>9}" for b in batches) + f"{'b4 ckpt':>9}"
    print(f"{'configuration (same adapter)':<44}{'params':>10}{'weights':>9}{'optim':>8}{head}")
    for name, info in _paper_adapters().items():
        totals, params = [], 0
        for b, ckpt in [*((b, False) for b in batches), (4, True)]:
            shape = TrainingShape(
                b, 1024, 1024, "bf16", "bfloat16", ckpt, cached_text=True, optimizer="adamw8bit"
            )
            est, params = _row(unet, info["adapter"], shape)
            totals.append(est.total)
        label = name + (f" (+{len(info['also']) - 1})" if len(info["also"]) > 1 else "")
        cells = "".join(f"{t / GB:>8.1f}{'*' if t > 80 * GB else ' '}" for t in totals)
        print(f"{label:<44}{params / 1e6:>9.1f}M{est.weights / GB:>9.1f}{est.optimizer / GB:>8.2f}{cells}")
    print("(* over 80 GB; +N: N more configurations with the same adapter, e.g. another lr)")


def flux(quick: bool) -> None:
    model = _flux_meta()
    n = sum(p.numel() for p in model.parameters())
    print(
        f"\nFLUX.1-dev (transformer {n / 1e9:.2f} B params) at 1024×1024 (4096 image + 512 text tokens), batch 1,"
    )
    print(
        "every Linear of the double and single blocks adapted, T5/CLIP outputs cached, bf16 autocast, AdamW8bit"
    )
    print(
        f"{'configuration':<14}{'params':>10}{'base':>10}{'weights':>9}{'optim':>8}{'activ.':>9}{'total':>8}{'ckpt':>8}"
    )
    configs = dict(list(FLUX_CONFIGS.items())[:2]) if quick else FLUX_CONFIGS
    for i, (name, adapter) in enumerate(configs.items()):
        adapter = {**adapter, "preset": "full", "include": FLUX_BLOCKS}
        for base in ("bfloat16", "float32") if i == 0 else ("bfloat16",):  # fp32 once, for contrast
            mp = "bf16" if base == "bfloat16" else "no"
            shape = TrainingShape(1, 1024, 1024, mp, base, False, cached_text=True, optimizer="adamw8bit")
            est, params = _row(model, adapter, shape)
            ckpt, _ = _row(
                model, adapter, TrainingShape(1, 1024, 1024, mp, base, True, True, optimizer="adamw8bit")
            )
            mark = lambda t: f"{t / GB:>7.1f}{'*' if t > 80 * GB else ' '}"  # noqa: E731
            print(
                f"{name:<14}{params / 1e6:>9.1f}M{base:>10}{est.weights / GB:>9.1f}{est.optimizer / GB:>8.2f}"
                f"{est.activations / GB:>9.1f}{mark(est.total)}{mark(ckpt.total)}"
            )
    print("(* over 80 GB; ckpt: the total with gradient checkpointing)")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=["validate", "sdxl", "flux", "all"], default="all")
    parser.add_argument("--quick", action="store_true", help="fewer tokens, batches and configurations")
    args = parser.parse_args(argv)
    print(f"torch {torch.__version__}")
    for part, run in (("validate", validate), ("sdxl", sdxl), ("flux", flux)):
        if args.part in (part, "all"):
            run(args.quick)


if __name__ == "__main__":
    main()
