"""One-GPU check of the paper sweep's real-size path, offline, in under 10 minutes; prints a table.

    python benchmarks/gpu_check.py                 # on a GPU: SD1.5-shaped random-weight models
    python benchmarks/gpu_check.py --cpu-smoke     # tiny models on the CPU: proves the script runs

Models are built from configs with random weights (SD1.5's UNet/text encoder/VAE shapes, the
real CLIP tokenizer), so nothing is downloaded. Sections, each guarded so that one failure
leaves the rest of the table:

1. train: it/s and peak memory of one training step (noise-prediction MSE through the UNet with
   the adapter injected by the project) for LoRA, LoHa, LoKr, native and native-full: bf16
   autocast, AdamW8bit (bitsandbytes), batch 8, 512 px;
2. 8-bit optimizer save + resume: the project's trainer, 1 epoch then resumed to 2, against 2
   epochs straight: the adapter files must be equal;
3. generation images/s (``sample_batch``, batch 8, DDIM 25, CFG 7, 512 px) in fp32, tf32, fp16,
   bf16, and ``generate`` end to end with PNG and manifest writes (fp16);
4. encoder images/s: OpenCLIP ViT-L/14 (random init) on 512 px pictures, the project's encoder;
5. the paper study shrunk to three configurations (one LoRA, LoHa, LoKr; one seed, one epoch,
   one image per prompt) run end to end by ``lyco-bench run``;
6. the paper sweep's extrapolated GPU-hours: the cost model (lyco_bench/sweep/costs.py) with the
   efficiencies measured in 1, 3 and 4 (fraction of the device's peak in benchmarks/gpu_costs.yaml);
7. one SDXL- and one FLUX-shaped training step, peak memory beside the estimate (gpu_check_large.py).

``--cpu-smoke`` uses the tiny model, 64 px, batch 2, 2 steps and fp32 where the CPU lacks a mode;
its figures say nothing about a GPU, and its extrapolation uses the table's efficiencies.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("LYCO_BENCH_NO_PROGRESS", "1")

import torch  # noqa: E402

ALGOS = {
    "lora": {"algo": "lora", "dim": 8, "alpha": 4, "preset": "attn-mlp"},
    "loha": {"algo": "loha", "dim": 4, "alpha": 2, "preset": "attn-mlp"},
    "lokr": {"algo": "lokr", "dim": 10000, "alpha": 1, "factor": 8, "preset": "attn-mlp"},
    "native": {"algo": "native", "preset": "attn-mlp"},
    "native-full": {"algo": "native", "preset": "full"},
}


class Check:
    """The run's size and device, and the table it fills."""

    def __init__(self, smoke: bool, device: str, work: Path, hardware: str):
        self.smoke, self.device, self.work, self.hardware = smoke, torch.device(device), work, hardware
        self.px = 64 if smoke else 512
        self.batch = 2 if smoke else 8
        self.steps = 2 if smoke else 25
        self.train_steps = 2 if smoke else 10
        self.rows: list[tuple[str, str, str]] = []
        self.measured: dict[str, float] = {}
        self._model: Path | None = None

    def row(self, what: str, value: str, note: str = "") -> None:
        self.rows.append((what, value, note))
        print(f"  {what:<34} {value:>16}  {note}", flush=True)

    def model(self) -> Path:
        """A random-weight diffusers folder: SD1.5's shapes (tiny ones in the smoke run)."""
        if self._model is None:
            self._model = make_model(self.work / "model", smoke=self.smoke)
        return self._model

    def configs(self) -> tuple[dict, dict]:
        from sweep import SD15_UNET

        from lyco_bench.models import TINY_UNET, TINY_VAE
        from lyco_bench.sweep.costs import SD_VAE

        return (dict(TINY_UNET), dict(TINY_VAE)) if self.smoke else (dict(SD15_UNET), dict(SD_VAE))


def make_model(out: Path, *, smoke: bool) -> Path:
    from diffusers import AutoencoderKL, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from sweep import SD15_TEXT, SD15_UNET
    from transformers import CLIPTextConfig, CLIPTextModel

    from lyco_bench.models import SD_SCHEDULE, TINY_TEXT, TINY_UNET, TINY_VAE, clip_tokenizer
    from lyco_bench.sweep.costs import SD_VAE

    torch.manual_seed(0)
    unet = UNet2DConditionModel.from_config(TINY_UNET if smoke else SD15_UNET)
    vae = AutoencoderKL.from_config(TINY_VAE if smoke else SD_VAE)
    text = CLIPTextModel(CLIPTextConfig(**(TINY_TEXT if smoke else SD15_TEXT)))
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text, tokenizer=clip_tokenizer(), unet=unet,
                                   scheduler=DDPMScheduler(**SD_SCHEDULE), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)  # fmt: skip
    pipe.save_pretrained(out, safe_serialization=True)
    return out


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_reset(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _peak_gib(device: torch.device) -> str:
    return f"{torch.cuda.max_memory_allocated(device) / 2**30:.1f} GiB" if device.type == "cuda" else "-"


# --- 1. training ------------------------------------------------------------------------------
def section_train(c: Check) -> None:
    from lyco_bench.adapters import AdapterSpec, inject
    from lyco_bench.models import load_pipeline
    from lyco_bench.sweep.costs import unet_forward_flops

    unet_cfg, _ = c.configs()
    for name, adapter in ALGOS.items():
        try:
            pipe = load_pipeline(str(c.model()), device=str(c.device))
            unet, text = pipe.unet, pipe.text_encoder
            net = inject(unet, text, AdapterSpec(**adapter))
            net.to(c.device)
            params = [p for p in net.trainable_parameters() if p.requires_grad]
            opt, opt_name = _optimizer(params, c)
            latent = c.px // 8
            x = torch.randn(c.batch, 4, latent, latent, device=c.device)
            ids = torch.randint(0, 49408, (c.batch, 77), device=c.device)
            t = torch.randint(0, 1000, (c.batch,), device=c.device)
            unet.train()
            _peak_reset(c.device)
            dtype = torch.bfloat16
            for i in range(c.train_steps + 2):  # 2 warm-up steps
                if i == 2:
                    _sync(c.device)
                    start = time.perf_counter()
                with torch.autocast(c.device.type, dtype=dtype):
                    states = text(ids)[0]
                    loss = torch.nn.functional.mse_loss(
                        unet(x, t, encoder_hidden_states=states).sample.float(), x
                    )
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                opt.step()
                opt.zero_grad(set_to_none=True)
            _sync(c.device)
            its = c.train_steps / (time.perf_counter() - start)
            flops = 3 * c.batch * unet_forward_flops(unet_cfg, c.px, c.px)
            if name == "lora":  # the paper's most common algorithm stands for the training stage
                c.measured["train_flops_s"] = flops * its
            c.row(f"train {name} it/s (batch {c.batch})", f"{its:.2f}", f"peak {_peak_gib(c.device)}, {opt_name}, "
                  f"{sum(p.numel() for p in params):,} params, bf16 autocast")  # fmt: skip
            net.remove()
            del pipe, net, opt
        except Exception as exc:  # one algorithm's failure leaves the others' rows
            c.row(f"train {name}", "FAILED", _why(exc))


def _optimizer(params, c: Check):
    try:
        import bitsandbytes as bnb

        return bnb.optim.AdamW8bit(params, lr=1e-4, betas=(0.9, 0.99), weight_decay=0.1), "AdamW8bit"
    except Exception as exc:
        if not c.smoke:
            raise
        return torch.optim.AdamW(params, lr=1e-4), f"AdamW (no 8-bit here: {type(exc).__name__})"


# --- 2. 8-bit optimizer save + resume -----------------------------------------------------------
def section_resume(c: Check) -> None:
    from safetensors.torch import load_file

    from lyco_bench.data import make_demo_dataset
    from lyco_bench.training import train
    from lyco_bench.training.config import RunConfig

    # The trainer takes AdamW8bit on CUDA only: the smoke run checks the same path with AdamW.
    optimizer = "adamw" if c.device.type == "cpu" else "adamw8bit"
    dataset = c.work / "demo-dataset"
    if not dataset.is_dir():
        make_demo_dataset(dataset, seed=0)
    base = dict(model=str(c.model()), dataset=str(dataset), categories=["patterns"],
                adapter={"algo": "lora", "dim": 4, "alpha": 2}, resolution=c.px,
                buckets={"min": c.px // 2, "max": c.px * 2, "step": 16 if c.smoke else 64}, batch_size=c.batch,
                warmup_steps=1, lr=1e-3, optimizer=optimizer, cache_dir=str(c.work / "latents"), seed=5,
                mixed_precision="bf16" if c.device.type == "cuda" else "no", device=str(c.device))  # fmt: skip
    start = time.perf_counter()
    train(RunConfig(**base, epochs=2, checkpoint_epochs=[1, 2]), c.work / "straight")
    train(RunConfig(**base, epochs=1, checkpoint_epochs=[1]), c.work / "resumed")
    train(RunConfig(**base, epochs=2, checkpoint_epochs=[1, 2]), c.work / "resumed")  # resumes at epoch 1
    a = load_file(str(c.work / "straight" / "ckpt-e002.safetensors"))
    b = load_file(str(c.work / "resumed" / "ckpt-e002.safetensors"))
    same = a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    c.row(f"{optimizer} save + resume", "equal" if same else "DIFFERENT",
          f"1 epoch + resume vs 2 epochs, {time.perf_counter() - start:.0f} s")  # fmt: skip


# --- 3. generation ------------------------------------------------------------------------------
def section_generate(c: Check) -> None:
    from lyco_bench.generation import SamplerSettings, generate, make_scheduler, sample_batch
    from lyco_bench.models import load_pipeline
    from lyco_bench.prompts import PromptItem
    from lyco_bench.sweep.costs import unet_forward_flops, vae_decode_flops

    unet_cfg, vae_cfg = c.configs()
    per_image = 2 * c.steps * unet_forward_flops(unet_cfg, c.px, c.px) + vae_decode_flops(vae_cfg, c.px, c.px)
    items = [PromptItem(prompt=f"a photo of thing {i}", clip_text="a photo", prompt_class="alter", category="c",
                        concept="k", subclass=None, prompt_index=i, image_index=0, seed=1000, group=f"g{i}")
             for i in range(c.batch * 2)]  # fmt: skip
    modes = [("fp32", "float32", False), ("tf32", "float32", True), ("fp16", "float16", False),
             ("bf16", "bfloat16", False)]  # fmt: skip
    for label, dtype, tf32 in modes:
        try:
            if c.device.type == "cpu" and dtype == "float16":
                c.row(f"generate {label} images/s", "skipped", "fp16 on a CPU: no")
                continue
            torch.backends.cuda.matmul.allow_tf32 = tf32
            torch.backends.cudnn.allow_tf32 = tf32
            sampler = SamplerSettings(steps=c.steps, width=c.px, height=c.px, batch_size=c.batch, dtype=dtype)
            pipe = load_pipeline(str(c.model()), device=str(c.device), dtype=getattr(torch, dtype))
            pipe.scheduler = make_scheduler(pipe, "ddim")
            sample_batch(pipe, items[: c.batch], sampler)  # warm-up
            _peak_reset(c.device)
            _sync(c.device)
            start = time.perf_counter()
            sample_batch(pipe, items[: c.batch], sampler)
            sample_batch(pipe, items[c.batch :], sampler)
            _sync(c.device)
            rate = 2 * c.batch / (time.perf_counter() - start)
            if label == "fp16" or (c.device.type == "cpu" and label == "fp32"):
                c.measured["generate_flops_s"] = rate * per_image
                c.measured["generate_precision"] = dtype
                c.measured["generate_rate"] = rate
            c.row(
                f"generate {label} images/s",
                f"{rate:.2f}",
                f"peak {_peak_gib(c.device)}, DDIM {c.steps}, CFG 7",
            )
            del pipe
        except Exception as exc:
            c.row(f"generate {label}", "FAILED", _why(exc))
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = True  # torch's default
    dtype = "float16" if c.device.type == "cuda" else "float32"
    sampler = SamplerSettings(steps=c.steps, width=c.px, height=c.px, batch_size=c.batch, dtype=dtype)
    pipe = load_pipeline(str(c.model()), device=str(c.device), dtype=getattr(torch, dtype))
    generate(model="m", items=items[: c.batch], out_dir=c.work / "warm-up", sampler=sampler, pipeline=pipe)
    start = time.perf_counter()
    generate(model="m", items=items, out_dir=c.work / "generated", sampler=sampler, pipeline=pipe)
    rate = len(items) / (time.perf_counter() - start)
    sampler_only = c.measured.get("generate_rate")
    ratio = f", {rate / sampler_only:.2f} of sampler-only" if sampler_only and dtype == c.measured.get(
        "generate_precision") else ""  # fmt: skip
    c.row(f"generate end to end images/s ({dtype})", f"{rate:.2f}", f"PNG + manifest writes{ratio}")


# --- 4. encoders ----------------------------------------------------------------------------------
def section_encoders(c: Check) -> None:
    from PIL import Image

    from lyco_bench.metrics.encoders import ClipEncoder
    from lyco_bench.metrics.tiny import make_tiny_open_clip
    from lyco_bench.sweep.costs import vit_flops

    if c.smoke:
        encoder = ClipEncoder(str(make_tiny_open_clip(c.work / "tiny-clip")), None, device=str(c.device))
        label, arch = "tiny OpenCLIP", None
    else:
        encoder = ClipEncoder("ViT-L-14", None, device=str(c.device))  # random init: nothing downloaded
        label, arch = "OpenCLIP ViT-L/14", (24, 1024, 14, 224)
    bs = 16 if c.smoke else 64
    pictures = [Image.new("RGB", (c.px, c.px), (i * 3 % 255, 90, 160)) for i in range(bs)]
    encoder.encode_images(pictures, "resize")  # warm-up
    _sync(c.device)
    start = time.perf_counter()
    for _ in range(3):
        encoder.encode_images(pictures, "resize")
    _sync(c.device)
    rate = 3 * bs / (time.perf_counter() - start)
    if arch is not None:
        c.measured["encode_flops_s"] = rate * vit_flops(*arch)
    c.row(f"encoder {label} images/s", f"{rate:.1f}", f"batch {bs}, fp32, preprocessing included")


# --- 5. the paper study, shrunk -------------------------------------------------------------------
def section_study(c: Check) -> None:
    import yaml

    from lyco_bench.cli import main

    study = yaml.safe_load((ROOT / "experiments" / "paper.yaml").read_text(encoding="utf-8"))
    study["algorithms"] = {k: dict(v, variations={}) for k, v in study["algorithms"].items() if k != "native"}
    paper = c.work / "paper-3.yaml"  # the paper's study, its three default configurations only
    paper.write_text(yaml.safe_dump(study, sort_keys=False), encoding="utf-8")
    overrides = [
        f"model={c.model()}", "dataset=demo:", "encoders.dino=tiny:", "encoders.clip=tiny:", "encoders.vgg=tiny:",
        "seeds=[23]", "checkpoint_epochs=[1]", "prompts.images_per_prompt=1",
        f"sampler.width={c.px}", f"sampler.height={c.px}", f"sampler.steps={c.steps}",
        f"training.resolution={c.px}", f"training.batch_size={c.batch}", "training.warmup_steps=1",
    ]  # fmt: skip
    if not c.smoke:
        overrides += ["sampler.dtype=float16"]  # the GPU's fast path; fp32 is measured in section 3
    if c.smoke:
        overrides += ["training.buckets={min: 32, max: 128, step: 16}", "training.optimizer=adamw",
                      "training.mixed_precision=no"]  # fmt: skip
    start = time.perf_counter()
    code = main(["run", str(paper), *overrides, "--store", str(c.work / "store"), "--reports",
                 str(c.work / "reports")])  # fmt: skip
    c.row("paper study, 3 default configs", "ok" if code == 0 else f"exit {code}",
          f"{time.perf_counter() - start:.0f} s end to end (train, generate, score, report)")  # fmt: skip


# --- 6. extrapolation -----------------------------------------------------------------------------
def section_extrapolate(c: Check) -> None:
    from dataclasses import replace

    from costs import paper_costs

    from lyco_bench.sweep.costs import STAGES, cost_table, load_hardware

    hardware = load_hardware(c.hardware)
    if not c.smoke:
        eff, sources = dict(hardware.efficiency), dict(hardware.sources)
        for stage, key, precision in (("train", "train_flops_s", "bfloat16"),
                                      ("generate", "generate_flops_s", "float16"),
                                      ("encode", "encode_flops_s", "float32"), ("score", "encode_flops_s", "float32")):  # fmt: skip
            if key in c.measured:
                eff[stage] = min(1.0, c.measured[key] / (hardware.peak_tflops[precision] * 1e12))
                sources[stage] = f"measured by gpu_check.py on {torch.cuda.get_device_name(c.device)}"
        hardware = replace(hardware, efficiency=eff, sources=sources)
    for stage in STAGES:
        c.row(f"{stage} fraction of peak", f"{hardware.efficiency[stage]:.1%}", hardware.sources[stage][:60])
    for label, extra in (("as configured", []), ("sampler fp16", ["sampler.dtype=float16"])):
        _, costs = paper_costs(c.work / "paper-plan", hardware, extra)
        total = sum(x.seconds for x in costs.values()) / 3600
        c.row(
            f"paper sweep {hardware.name}-hours ({label})",
            f"{total:,.1f}",
            "cost model, lyco_bench/sweep/costs.py",
        )
        print(cost_table(costs, hardware))


def _why(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc).splitlines()[0][:100] if str(exc) else ''}"


from gpu_check_large import section_large  # noqa: E402  (7. SDXL- and FLUX-shaped steps)

SECTIONS = {"train": section_train, "resume": section_resume, "generate": section_generate,
            "encoders": section_encoders, "study": section_study, "extrapolate": section_extrapolate,
            "large": section_large}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--cpu-smoke", action="store_true", help="tiny models on the CPU (proves the script runs)"
    )
    ap.add_argument("--only", choices=list(SECTIONS), action="append", help="run only these sections")
    ap.add_argument("--gpu", default="h100", help="row of benchmarks/gpu_costs.yaml for the extrapolation")
    ap.add_argument("--json", help="also write the table to this JSON file")
    args = ap.parse_args(argv)
    if not args.cpu_smoke and not torch.cuda.is_available():
        print("gpu_check: no CUDA device; use --cpu-smoke to check the script on the CPU", file=sys.stderr)
        return 2
    device = "cpu" if args.cpu_smoke else "cuda"
    with tempfile.TemporaryDirectory() as tmp:
        check = Check(args.cpu_smoke, device, Path(tmp), args.gpu)
        name = "CPU (smoke: tiny models)" if args.cpu_smoke else torch.cuda.get_device_name(0)
        print(f"gpu_check on {name}, {check.px} px, batch {check.batch}, {check.steps} steps", flush=True)
        for section in args.only or list(SECTIONS):
            start = time.perf_counter()
            try:
                SECTIONS[section](check)
            except Exception as exc:  # the table keeps the other sections' rows
                check.row(section, "FAILED", _why(exc))
                traceback.print_exc(limit=3)
            print(f"  [{section}: {time.perf_counter() - start:.0f} s]", flush=True)
        width = max(len(r[0]) for r in check.rows)
        print(f"\n{'check':<{width}} {'value':>16}  note")
        for what, value, note in check.rows:
            print(f"{what:<{width}} {value:>16}  {note}")
        if args.json:
            Path(args.json).write_text(json.dumps({"device": name, "rows": check.rows}, indent=1) + "\n")
    return 0 if all(v != "FAILED" for _, v, _ in check.rows) else 1


if __name__ == "__main__":
    sys.exit(main())
