"""Trainer speed and memory: the tiny model per algorithm, and one step of the full-size SD1.5 UNet.

1. Tiny model + demo dataset (64 px, batch 4, UNet + text encoder adapted, attn-mlp): training
   throughput in images/s and the peak resident memory above the starting point, per algorithm.
2. The SD1.5 UNet architecture (random weights, fp32, CPU, 64×64 latent, batch 1, 77×768 text):
   one optimizer step (forward, backward, grad clip, AdamW) per algorithm at its paper default,
   next to the forward+backward of the same UNet with every weight frozen and gradients flowing only
   to the input latent. All cases run round-robin in one process, so load from other work on the
   machine hits them alike; the ratio column is the median step over the median frozen pass.
   Target: LoRA and LoKr ≤ 1.10× the frozen forward+backward.
3. Model-level methods on SD1.5 shapes (random weights), same round-robin: a training step of
   Textual Inversion (SD1.5's 12-layer text encoder in front, gradients back to the new vectors)
   and of a hypernetwork (A1111's 1-2-1 MLPs on every attention context), each beside the frozen
   pass it extends; then the cost at generation — one UNet inference step with the hypernetwork
   attached vs the base UNet (target: within the cost of its MLPs, printed from their FLOPs), and
   the text encoding of a prompt with TI attached vs the base text encoder (target ≤ 1.01×; the
   UNet steps are the base model's own).

    .venv/bin/python benchmarks/training.py [--quick] [--repeats N] [--skip-tiny] [--skip-full] [--skip-methods]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("LYCO_BENCH_NO_PROGRESS", "1")

# SD1.5's UNet (runwayml/stable-diffusion-v1-5 unet/config.json, architecture fields).
SD15_UNET = dict(
    sample_size=64,
    in_channels=4,
    out_channels=4,
    layers_per_block=2,
    block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    cross_attention_dim=768,
    attention_head_dim=8,
    norm_num_groups=32,
)

# SD1.5's text encoder (CLIP ViT-L/14 text tower).
SD15_TEXT = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                 max_position_embeddings=77, vocab_size=49408, projection_dim=768, hidden_act="quick_gelu")  # fmt: skip

# Paper defaults, attn-mlp preset.
ALGOS = [
    ("LoRA d8 a4", {"algo": "lora", "dim": 8, "alpha": 4}),
    ("LoHa d4 a2", {"algo": "loha", "dim": 4, "alpha": 2}),
    ("LoKr f8 full", {"algo": "lokr", "dim": 10000, "alpha": 1, "factor": 8}),
    ("native", {"algo": "native"}),
]


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def reset_peak_rss() -> int:
    """Reset the kernel's peak-RSS counter (Linux clear_refs 5); return the current RSS in KiB."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass
    return _status_kib("VmRSS")


def peak_rss_above(start_kib: int) -> float:
    """MiB of peak RSS above ``start_kib`` since the last reset."""
    return max(_status_kib("VmHWM") - start_kib, 0) / 1024


def _timed(fn: Callable[[], None]) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


# --- 1. tiny model -----------------------------------------------------------------------------
def tiny_table(*, steps: int) -> list[str]:
    from lyco_bench.data import make_demo_dataset
    from lyco_bench.models import load_pipeline, make_tiny_model
    from lyco_bench.training import RunConfig
    from lyco_bench.training.session import Session

    root = Path(tempfile.mkdtemp(prefix="lyco-bench-train-"))
    model = make_tiny_model(root / "tiny")
    dataset = make_demo_dataset(root / "demo")
    pipe = load_pipeline(model)
    rows = [
        "| algorithm | trainable params | images/s | wall s/step | CPU s/step | peak RSS above start (MiB) |",
        "|---|---|---|---|---|---|",
    ]
    for label, adapter in ALGOS:
        cfg = RunConfig(
            model=str(model),
            dataset=str(dataset),
            adapter=adapter,
            resolution=64,
            buckets={"min": 32, "max": 128, "step": 16},
            batch_size=4,
            warmup_steps=0,
            epochs=1,
            checkpoint_epochs=[],
            cache_dir=str(root / "cache"),
            device="cpu",
        )
        start = reset_peak_rss()
        session = Session(cfg, device=torch.device("cpu"), pipeline=pipe)
        try:
            batches = [b for _ in range(4) for b in session.epoch_batches()]
            session.step(batches[0])  # first step allocates optimizer state
            images, began, began_cpu = 0, time.perf_counter(), time.process_time()
            for batch in batches[1 : steps + 1]:
                session.step(batch)
                images += len(batch)
            elapsed, cpu = time.perf_counter() - began, time.process_time() - began_cpu
            params = session.net.num_trainable()
        finally:
            session.close()
        rows.append(
            f"| {label} | {params:,} | {images / elapsed:.2f} | {elapsed / steps:.3f} | {cpu / steps:.3f} "
            f"| {peak_rss_above(start):.0f} |"
        )
    return rows


# --- 2. the full-size SD1.5 UNet -----------------------------------------------------------------
def full_table(*, repeats: int) -> list[str]:
    from diffusers import UNet2DConditionModel

    from lyco_bench.adapters import AdapterSpec, inject

    torch.manual_seed(0)
    unet = UNet2DConditionModel(**SD15_UNET).requires_grad_(False)
    unet.train()
    gen = torch.Generator().manual_seed(0)
    x = torch.randn((1, 4, 64, 64), generator=gen)  # (B, 4, 64, 64) latent = 512 px
    cond = torch.randn((1, 77, 768), generator=gen)  # (B, 77, 768) CLIP ViT-L/14 text states
    t = torch.tensor([500])
    target = torch.randn((1, 4, 64, 64), generator=gen)

    def frozen() -> Callable[[], None]:
        def run() -> None:
            inp = x.clone().requires_grad_(True)
            F.mse_loss(unet(inp, t, cond).sample, target).backward()

        return run

    cases: dict[str, dict] = {"frozen fwd+bwd (grad to input only)": {}}
    cases.update({label: adapter for label, adapter in ALGOS})
    wall: dict[str, list[float]] = {k: [] for k in cases}
    cpu: dict[str, list[float]] = {k: [] for k in cases}
    mem: dict[str, float] = {}
    params: dict[str, int] = {}
    for _ in range(repeats):
        for label, adapter in cases.items():
            start = reset_peak_rss()
            net = None
            if adapter:
                net = inject(unet, None, AdapterSpec(**adapter, train_text_encoder=False))
                trainable = net.trainable_parameters()
                params[label] = sum(p.numel() for p in trainable)
                opt = torch.optim.AdamW(trainable, lr=5e-4, betas=(0.9, 0.99), weight_decay=0.1)

                def run(trainable=trainable, opt=opt) -> None:
                    F.mse_loss(unet(x, t, cond).sample, target).backward()
                    torch.nn.utils.clip_grad_norm_(trainable, 1.0)
                    opt.step()
                    opt.zero_grad(set_to_none=True)
            else:
                run = frozen()
            run()  # warm-up; allocates optimizer state
            w, c = _timed(run)
            wall[label].append(w)
            cpu[label].append(c)
            print(f"  {label}: {w:.2f} s wall, {c:.2f} s CPU", file=sys.stderr, flush=True)
            mem[label] = max(mem.get(label, 0.0), peak_rss_above(start))
            if net is not None:
                net.remove()
                del net, opt, trainable
    base_w = statistics.median(wall["frozen fwd+bwd (grad to input only)"])
    base_c = statistics.median(cpu["frozen fwd+bwd (grad to input only)"])
    rows = [
        "| case | trainable params | wall s (median) | × frozen (wall) | × frozen (CPU time) | peak RSS above start (MiB) |",
        "|---|---|---|---|---|---|",
    ]
    for label in cases:
        w, c = statistics.median(wall[label]), statistics.median(cpu[label])
        rows.append(
            f"| {label} | {params.get(label, 0):,} | {w:.2f} | {w / base_w:.2f} | {c / base_c:.2f} | {mem[label]:.0f} |"
        )
    return rows


def _median_pair(fn: Callable[[], None], ref: Callable[[], None], repeats: int) -> tuple[float, float]:
    """(median seconds of fn, median of fn/ref per round): each round times both back to back."""
    fn(), ref()  # warm-up
    times, ratios = [], []
    for _ in range(repeats):
        r = _timed(ref)[0]
        f = _timed(fn)[0]
        times.append(f)
        ratios.append(f / r)
    return statistics.median(times), statistics.median(ratios)


def methods_table(*, repeats: int) -> list[str]:
    from types import SimpleNamespace

    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from lyco_bench.adapters import ALGORITHMS
    from lyco_bench.models import clip_tokenizer

    torch.manual_seed(0)
    unet = UNet2DConditionModel(**SD15_UNET).requires_grad_(False)
    text = CLIPTextModel(CLIPTextConfig(**SD15_TEXT)).requires_grad_(False).eval()
    pipe = SimpleNamespace(unet=unet, text_encoder=text, tokenizer=clip_tokenizer())
    gen = torch.Generator().manual_seed(0)
    x = torch.randn((1, 4, 64, 64), generator=gen)
    t = torch.tensor([500])
    target = torch.randn((1, 4, 64, 64), generator=gen)
    concept = SimpleNamespace(key="toys/bunny", name="bunny", category="toys", subclass=None,
                              trigger="olis stuffed toy", descriptive="bunny")  # fmt: skip
    prompt = "olis stuffed toy sitting on a stack of old books"

    def ids(text_: str) -> torch.Tensor:
        return pipe.tokenizer([text_], padding="max_length", max_length=77, truncation=True,
                              return_tensors="pt").input_ids  # fmt: skip

    with torch.no_grad():
        cond = text(ids(prompt))[0]

    def frozen_unet() -> None:
        inp = x.clone().requires_grad_(True)
        F.mse_loss(unet(inp, t, cond).sample, target).backward()

    def frozen_te_unet() -> None:
        with torch.no_grad():
            c = text(ids(prompt))[0]
        inp = x.clone().requires_grad_(True)
        F.mse_loss(unet(inp, t, c).sample, target).backward()

    rows = ["| case | trainable params | median s | × its frozen pass |", "|---|---|---|---|"]
    ti = ALGORITHMS["textual_inversion"]().attach(pipe, concepts=[concept])
    ti_params = ti.trainable_parameters()
    ti_opt = torch.optim.AdamW(ti_params, lr=5e-3)
    ti_ids = ids(ti.caption(prompt, concept))

    def ti_step() -> None:
        F.mse_loss(unet(x, t, text(ti_ids)[0]).sample, target).backward()
        ti_opt.step()
        ti_opt.zero_grad(set_to_none=True)

    w, r = _median_pair(ti_step, frozen_te_unet, repeats)
    rows.append(
        f"| Textual Inversion, 1 vector (step) | {sum(p.numel() for p in ti_params):,} | {w:.2f} | {r:.2f} |"
    )
    base_ids = ids(prompt)

    def encode_base() -> None:
        with torch.no_grad():
            text(base_ids)

    prompt_ids = ids(ti.prompt(prompt))

    def encode_ti() -> None:
        with torch.no_grad():
            text(prompt_ids)

    w, r = _median_pair(encode_ti, encode_base, repeats * 5)
    rows.append(
        f"| Textual Inversion, prompt encoding at generation | – | {w:.3f} | {r:.2f} (target ≤ 1.01) |"
    )
    ti.detach()

    hyper = ALGORITHMS["hypernetwork"]().attach(pipe)
    h_params = hyper.trainable_parameters()
    h_opt = torch.optim.AdamW(h_params, lr=1e-5)

    def h_step() -> None:
        F.mse_loss(unet(x, t, cond).sample, target).backward()
        h_opt.step()
        h_opt.zero_grad(set_to_none=True)

    w, r = _median_pair(h_step, frozen_unet, repeats)
    rows.append(
        f"| Hypernetwork 1-2-1, linear (step) | {sum(p.numel() for p in h_params):,} | {w:.2f} | {r:.2f} |"
    )
    hyper.eval()

    def infer() -> None:
        with torch.no_grad():
            unet(x, t, cond)

    infer()  # warm-up, attached
    attached, base = [], []
    for _ in range(repeats):  # attached and base passes back to back, per round
        attached.append(_timed(infer)[0])
        hyper.detach()
        base.append(_timed(infer)[0])
        hyper.attach(pipe)
    hyper.detach()
    ratio = statistics.median(a / b for a, b in zip(attached, base, strict=True))
    mlp_flops, unet_flops = _hypernetwork_flops(unet, hyper, tokens=cond.shape[1])
    rows.append(f"| Hypernetwork attached, one UNet inference step | – | {statistics.median(attached):.2f} | "
                f"{ratio:.2f} (its MLPs: +{mlp_flops / unet_flops:.1%} of the UNet's multiply-adds) |")  # fmt: skip
    return rows


def _hypernetwork_flops(unet, hyper, *, tokens: int) -> tuple[float, float]:
    """Multiply-adds of the hypernetwork's MLPs per UNet call (k and v context of every attention
    layer) and of the UNet's own Linear/Conv2d layers at a 64×64 latent (counted by hooks)."""
    counts = {"unet": 0.0}
    hooks = []

    def count(module, inputs, output):
        w = module.weight
        rows = output.numel() // output.shape[1 if isinstance(module, torch.nn.Conv2d) else -1]
        counts["unet"] += rows * w[0].numel() * w.shape[0] / 1.0

    for m in unet.modules():
        if isinstance(m, torch.nn.Linear | torch.nn.Conv2d):
            hooks.append(m.register_forward_hook(count))
    with torch.no_grad():
        unet(torch.zeros(1, 4, 64, 64), torch.tensor([500]), torch.zeros(1, tokens, 768))
    for h in hooks:
        h.remove()
    mlp = 0.0
    for _, attn in __import__(
        "lyco_bench.methods.hypernetwork", fromlist=["attention_layers"]
    ).attention_layers(unet):
        width = attn.to_k.in_features
        ctx_rows = tokens if width == 768 else None
        if ctx_rows is None:  # self-attention: the context is the block's hidden states
            ctx_rows = _self_attention_tokens(attn)
        if str(width) in hyper.mlps:
            per_row = sum(
                p.numel() for n, p in hyper.mlps[str(width)].named_parameters() if n.endswith("weight")
            )
            mlp += ctx_rows * per_row
    return mlp, counts["unet"]


def _self_attention_tokens(attn) -> int:
    """Tokens an SD1.5 self-attention layer sees at a 64×64 latent, from its width."""
    return {320: 64 * 64, 640: 32 * 32, 1280: 16 * 16}.get(attn.to_k.in_features, 0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 timed repeat, 4 tiny steps")
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds on the full-size UNet")
    parser.add_argument("--skip-tiny", action="store_true")
    parser.add_argument("--skip-full", action="store_true")
    parser.add_argument("--skip-methods", action="store_true")
    args = parser.parse_args()
    repeats = 1 if args.quick else args.repeats
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU fp32")
    if not args.skip_tiny:
        print("\nTiny model, demo dataset, 64 px, batch 4, UNet + text encoder, attn-mlp:")
        print("\n".join(tiny_table(steps=4 if args.quick else 12)))
    if not args.skip_full:
        print(
            f"\nSD1.5 UNet (random weights), 64×64 latent, batch 1, one optimizer step, {repeats} round(s):"
        )
        print("\n".join(full_table(repeats=repeats)))
    if not args.skip_methods:
        print(f"\nModel-level methods on SD1.5 shapes (random weights), {repeats} round(s):")
        print("\n".join(methods_table(repeats=max(repeats, 2))))


if __name__ == "__main__":
    main()
