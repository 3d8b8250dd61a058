"""The training GPU-memory estimate (lyco_bench.sweep.gpu_memory) and ``plan``'s table and check."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lyco_bench.sweep.gpu_memory import (
    CUDA_CONTEXT_BYTES,
    TrainingShape,
    denoiser_inputs,
    estimate_training_memory,
    optimizer_bytes,
    saved_bytes,
)

PAPER = Path(__file__).resolve().parents[1] / "experiments" / "paper.yaml"


class _Attention(nn.Module):
    """A frozen fused qkv projection and SDPA: B·L tokens, H heads of width d."""

    def __init__(self, heads: int, width: int) -> None:
        super().__init__()
        self.heads, self.width = heads, width
        self.qkv = nn.Linear(heads * width, 3 * heads * width, bias=False).requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, self.width).permute(2, 0, 3, 1, 4)
        return F.scaled_dot_product_attention(q, k, v)


@pytest.mark.parametrize("dtype", [None, torch.bfloat16], ids=["fp32", "bf16-autocast"])
def test_trace_counts_what_flash_attention_and_autocast_keep(dtype):
    B, L, H, d = 2, 10, 3, 4
    D = H * d
    with torch.device("meta"):
        module = _Attention(H, d)
        x = torch.empty(B, L, D, requires_grad=True)
    got = saved_bytes(module, (x,), {}, compute_dtype=dtype)
    # The projection keeps its weight for dL/dx: the parameter itself in fp32 (counted as weights,
    # not here), a bf16 copy under autocast. Attention keeps q, k, v (views of one projection
    # output), its output and the fp32 row log-sum-exp — never the L×L scores.
    size = 4 if dtype is None else 2
    weight_copy = 0 if dtype is None else size * 3 * D * D
    assert got == weight_copy + size * B * L * 3 * D + size * B * L * D + 4 * B * H * L


def _tiny_models(device: str = "meta"):
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from lyco_bench.models import TINY_TEXT, TINY_UNET

    with torch.device(device):
        torch.manual_seed(0)
        unet = UNet2DConditionModel.from_config(dict(TINY_UNET)).requires_grad_(False)
        text = CLIPTextModel(CLIPTextConfig(**TINY_TEXT)).requires_grad_(False)
    return unet, text


def test_emulated_trace_is_autograds_own_count_on_the_cpu_within_attentions_share():
    from lyco_bench.adapters import AdapterSpec, inject

    spec = AdapterSpec(algo="lora", dim=4, alpha=2)
    counts = []
    for device in ("cpu", "meta"):
        unet, _ = _tiny_models(device)
        inject(unet, None, spec)
        args, kwargs = denoiser_inputs(unet, 1, 32, 32)
        if device == "cpu":
            kwargs = {k: torch.randn(v.shape) for k, v in kwargs.items()}
        counts.append(saved_bytes(unet, args, kwargs, emulate_gpu=device == "meta"))
    real, emulated = counts
    # The CPU's own attention keeps a little else than FlashAttention does; the rest is the same ops.
    assert real > 0 and abs(emulated - real) <= 0.05 * real


def test_checkpointing_keeps_block_inputs_and_one_block():
    from lyco_bench.adapters import AdapterSpec, inject

    unet, _ = _tiny_models()
    inject(unet, None, AdapterSpec(algo="lora", dim=4, alpha=2))
    args, kwargs = denoiser_inputs(unet, 2, 128, 128)
    plain = saved_bytes(unet, args, kwargs)
    recomputed = saved_bytes(unet, args, kwargs, checkpointing=True)
    assert 0 < recomputed < plain / 2
    assert not unet.is_gradient_checkpointing  # the trace gives the model back as it was


def test_weights_adapter_and_optimizer_parts_are_exact():
    from lyco_bench.adapters import AdapterSpec, inject

    unet, text = _tiny_models()
    n_unet = sum(p.numel() for p in unet.parameters())
    n_text = sum(p.numel() for p in text.parameters())
    net = inject(unet, None, AdapterSpec(algo="lora", dim=4, alpha=2))
    trained = net.num_trainable()
    shape = TrainingShape(batch=1, width=64, height=64)
    est = estimate_training_memory(unet, [text], shape)
    assert est.weights == 4 * (n_unet + n_text)
    assert est.adapter == 8 * trained and est.optimizer == 8 * trained
    half = estimate_training_memory(unet, [text], TrainingShape(1, 64, 64, "bf16", "bfloat16"))
    assert half.weights == 2 * (n_unet + n_text)
    cached = estimate_training_memory(unet, [text], TrainingShape(1, 64, 64, cached_text=True))
    assert cached.weights == 4 * n_unet
    assert est.total == est.weights + est.adapter + est.optimizer + est.activations + CUDA_CONTEXT_BYTES
    assert all(p.dtype == torch.float32 for p in unet.parameters())  # the trace's cast is undone


def test_eight_bit_optimizer_bytes_are_bitsandbytes_own():
    sizes = [1000, 4096, 5000]
    # < 4,096 values: fp32 states; else uint8 states + one fp32 absmax per 256-value block
    assert optimizer_bytes(sizes, "adamw8bit") == 8 * 1000 + 2 * (4096 + 4 * 16) + 2 * (5000 + 4 * 20)
    assert optimizer_bytes(sizes, "adamw") == 8 * sum(sizes)
    from lyco_bench.training.optim import eight_bit_error

    if eight_bit_error(torch.device("cpu")) is not None:
        pytest.skip("bitsandbytes cannot step on this CPU")
    import bitsandbytes as bnb

    params = [nn.Parameter(torch.randn(n)) for n in sizes]
    opt = bnb.optim.AdamW8bit(params, lr=1e-3)
    sum(p.sum() for p in params).backward()
    opt.step()
    held = sum(
        t.numel() * t.element_size()
        for state in opt.state.values()
        for key, t in state.items()
        if isinstance(t, torch.Tensor) and t.dim() and not key.startswith("qmap")  # maps: shared, 2 KB
    )
    assert held == optimizer_bytes(sizes, "adamw8bit")


def _plan_args(tmp_path, tiny_model_dir, small_dataset) -> list[str]:
    return [
        "plan", str(PAPER), f"model={tiny_model_dir}", f"dataset={small_dataset}", "encoders.dino=tiny:",
        "encoders.clip=tiny:", "encoders.vgg=tiny:", "seeds=[23]", "checkpoint_epochs=[1]",
        "training.resolution=64", "training.buckets.min=32", "training.buckets.max=128", "training.buckets.step=16",
        "--store", str(tmp_path),
    ]  # fmt: skip


@pytest.mark.e2e  # estimates the 26 configurations of the paper study (~20 s on two cores)
def test_plan_prints_memory_and_refuses_what_a_declared_gpu_cannot_hold(
    tmp_path, tiny_model_dir, small_dataset, capsys
):
    import yaml

    from lyco_bench.cli import main
    from lyco_bench.sweep.costs import DEFAULT_TABLE

    args = _plan_args(tmp_path, tiny_model_dir, small_dataset)
    assert main([*args, "--gpu", "h100"]) == 0
    out = capsys.readouterr()
    text = out.out + out.err
    assert "training GPU memory" in text and "fits h100 (80 GB)" in text
    assert "1001-lora8a4" in text and "  NO" not in text
    table = yaml.safe_load(DEFAULT_TABLE.read_text())
    table["h100"]["memory_gb"] = 0.5  # less than the CUDA context alone
    small = tmp_path / "gpus.yaml"
    small.write_text(yaml.safe_dump(table))
    assert main([*args, "--gpu", "h100", "--gpu-costs", str(small)]) == 2
    out = capsys.readouterr()
    lines = [line for line in out.err.splitlines() if line.strip()]
    assert len(lines) == 1 and "--gpu h100: configuration 1001-lora8a4 needs ~" in lines[0]
    assert "more than the h100's 0.5 GB" in lines[0] and "gradient_checkpointing" in lines[0]
    assert out.out == ""


def test_table_marks_and_check_refuses_in_one_line_naming_the_configuration():
    from lyco_bench.errors import BadInput
    from lyco_bench.sweep.costs import load_hardware
    from lyco_bench.sweep.gpu_memory import MemoryEstimate
    from lyco_bench.sweep.memory_plan import check_fits, memory_table

    h100 = load_hardware("h100")
    small = MemoryEstimate(weights=2 * 10**9, adapter=10**6, optimizer=10**6, activations=10**9)
    big = MemoryEstimate(weights=24 * 10**9, adapter=10**8, optimizer=10**8, activations=60 * 10**9)
    estimates = {
        "fits": (TrainingShape(2, 1024, 1024, "bf16", "bfloat16", True), small),
        "flux-lora": (TrainingShape(1, 1024, 1024), big),
    }
    table = memory_table(estimates, h100)
    rows = {line.split()[0]: line for line in table.splitlines()[1:3]}
    assert rows["fits"].endswith("yes") and rows["flux-lora"].endswith("NO")
    assert "1×1024×1024" in rows["flux-lora"] and "84.7 GB" in rows["flux-lora"]  # + 0.5 GiB context
    with pytest.raises(BadInput) as err:
        check_fits(estimates, h100)
    message = str(err.value)
    assert "\n" not in message and message.startswith("--gpu h100: configuration flux-lora needs ~84.7 GB")
    assert "gradient_checkpointing: true or base_dtype: auto" in message
    check_fits({"fits": estimates["fits"]}, h100)  # nothing to refuse


@pytest.mark.e2e  # plans the paper study three times (~30 s on two cores)
def test_memory_settings_and_job_ids(tmp_path):
    from lyco_bench.sweep.planner import build_plan
    from lyco_bench.sweep.stages import run_config_for
    from lyco_bench.sweep.store import StudyStore
    from lyco_bench.sweep.study import load_study

    local = [
        "model=tiny:",
        "dataset=demo:",
        "encoders.dino=tiny:",
        "encoders.clip=tiny:",
        "encoders.vgg=tiny:",
    ]

    def plan(*extra):
        study = load_study(PAPER, [*local, *extra])
        return build_plan(study, StudyStore.open(tmp_path, study.name))

    plain = plan()
    ckpt = plan("training.gradient_checkpointing=true")
    half = plan("training.base_dtype=auto")  # the paper trains under bf16 autocast: bfloat16
    assert [j.id for j in ckpt.jobs] == [j.id for j in plain.jobs]  # the same numbers: the same jobs
    train = ckpt.of_kind("train")[0]
    assert train.spec["run"]["gradient_checkpointing"] is False
    assert run_config_for(train, ckpt.store).gradient_checkpointing is True  # the worker still gets it
    assert not run_config_for(plain.of_kind("train")[0], plain.store).gradient_checkpointing
    changed = {j.kind for j, k in zip(half.jobs, plain.jobs, strict=True) if j.id != k.id}
    assert "train" in changed and "prepare" not in changed
    assert half.of_kind("train")[0].spec["run"]["base_dtype"] == "bfloat16"
