"""Adapter speed and memory on Stable Diffusion 1.5, SDXL and FLUX.1 layer shapes, next to LyCORIS and peft.

For each algorithm at its paper default (docs/protocol.md §3) and a family's layers
(benchmarks/adapter_shapes.py: five SD1.5 layers at batch 2 by default; fp32
or under bf16/fp16 autocast, CPU or a CUDA device) this measures, as multiples of the frozen layer
alone under the same precision (input requires grad, weights frozen):
train forward+backward time, bytes saved for backward (torch.autograd.graph.saved_tensors_hooks,
unique storages, parameters included), unmerged inference and merged inference time. Peers
run in the same process, round-robin with ours, so load on the machine hits all alike.

    .venv/bin/python benchmarks/adapters.py [--quick] [--repeats N] [--layers attn320,conv640]
        [--autocast bf16|fp16] [--device cuda] [--family sd15|sdxl|flux] [--tokens N] [--algos lora,loha]

``--tokens N`` runs each layer at its real widths on at most N tokens (a CPU run of SDXL/FLUX).

With ``--autocast`` every variant (ours, LyCORIS, peft, the frozen layer) runs its forward under
``torch.autocast(device, dtype)`` with fp32 weights, as mixed-precision training does; the output
gradient is given in the output's dtype.
"""

from __future__ import annotations

import argparse
import copy
import math
import statistics
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field

import torch
from adapter_shapes import FAMILIES, LayerCase  # benchmarks/adapter_shapes.py (run as a script)
from torch import nn

from lyco_bench.adapters.algorithms.loha import LoHaModule  # noqa: F401
from lyco_bench.adapters.algorithms.lokr import LoKrModule  # noqa: F401  (registers the algorithms)
from lyco_bench.adapters.algorithms.lora import LoRAModule  # noqa: F401
from lyco_bench.adapters.algorithms.native import NativeModule  # noqa: F401
from lyco_bench.adapters.base import ALGORITHMS

# (label, family, algorithm, settings): paper defaults, LoKr both full-block and dim 8.
ALGOS = [
    ("LoRA d8 a4", "lora", dict(dim=8, alpha=4)),
    ("LoHa d4 a2", "loha", dict(dim=4, alpha=2)),
    ("LoKr f8 full", "lokr", dict(dim=10000, alpha=10000, factor=8)),
    ("LoKr f8 d8", "lokr", dict(dim=8, alpha=8, factor=8)),
    ("native", "native", dict()),
    # the other methods, at their reference defaults
    ("LoRA d8 a4 DoRA", "lora", dict(dim=8, alpha=4, dora=True)),
    ("LoHa d4 a2 DoRA", "loha", dict(dim=4, alpha=2, dora=True)),
    ("LoKr f8 full DoRA", "lokr", dict(dim=10000, alpha=10000, factor=8, dora=True)),
    ("DyLoRA d32 a16 b4", "dylora", dict(dim=32, alpha=16, block_size=4)),
    ("GLoRA d8 a4", "glora", dict(dim=8, alpha=4)),
    ("GLoKr f8 full", "glokr", dict(factor=8)),
    ("IA3 (output)", "ia3", dict(on_input=False)),
]


def ours(algo: str, settings: dict) -> Callable[[nn.Module], nn.Module]:
    return lambda layer: ALGORITHMS[algo](layer, **settings)


def lycoris(algo: str, settings: dict, *, bypass: bool) -> Callable[[nn.Module], nn.Module] | None:
    from lycoris.modules import dylora, full, glora, ia3, locon, loha, lokr

    cls = {
        "lora": locon.LoConModule,
        "loha": loha.LohaModule,
        "lokr": lokr.LokrModule,
        "native": full.FullModule,
        "dylora": dylora.DyLoraModule,
        "glora": glora.GLoRAModule,
        "ia3": ia3.IA3Module,
    }
    if algo not in cls:
        return None  # GLoKr: lyco-bench's own, no peer
    kw = {"lora_dim": settings.get("dim", 1), "alpha": settings.get("alpha", 1)}
    if algo == "lokr":
        kw["factor"] = settings["factor"]
    if algo == "dylora":
        kw["block_size"] = settings["block_size"]
    if settings.get("dora"):
        kw["weight_decompose"] = True
    if algo == "ia3":
        kw["train_on_input"] = bool(settings.get("on_input"))
    if algo == "native" and bypass:
        return None  # FullModule has no bypass path; its default path is the one to compare
    if settings.get("dora") and bypass:
        return None  # LyCORIS's bypass path leaves the weight decomposition out: not DoRA
    if algo == "dylora" and bypass:
        return None  # LyCORIS's DyLoRA bypass views its sampled-rank factors at the full rank: it fails

    def build(layer: nn.Module) -> nn.Module:
        module = cls[algo]("bench", layer, multiplier=1.0, bypass_mode=bypass, **kw)
        module.apply_to()
        return _Holder(layer, module)

    return build


def peft_builder(algo: str, settings: dict) -> Callable[[nn.Module], nn.Module] | None:
    import peft

    if algo == "lora":
        cfg = peft.LoraConfig(
            r=settings["dim"], lora_alpha=settings["alpha"], target_modules=["layer"],
            use_dora=bool(settings.get("dora")),
        )  # fmt: skip
    elif algo == "ia3":
        cfg = peft.IA3Config(
            target_modules=["layer"], feedforward_modules=["layer"] if settings.get("on_input") else []
        )
    elif settings.get("dora"):
        return None  # PEFT has DoRA for LoRA only
    elif algo == "loha":
        cfg = peft.LoHaConfig(r=settings["dim"], alpha=settings["alpha"], target_modules=["layer"])
    elif algo == "lokr":
        cfg = peft.LoKrConfig(
            r=settings["dim"],
            alpha=settings["alpha"],
            decompose_factor=settings["factor"],
            target_modules=["layer"],
        )
    else:
        return None

    def build(layer: nn.Module) -> nn.Module:
        holder = nn.Module()
        holder.layer = layer
        holder.forward = lambda x: holder.layer(x)
        return peft.inject_adapter_in_model(cfg, holder)

    return build


class _Holder(nn.Module):
    """Keeps a LyCORIS module's parameters reachable and calls the patched layer."""

    def __init__(self, layer: nn.Module, module: nn.Module) -> None:
        super().__init__()
        self.layer, self.adapter = layer, module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


@dataclass
class Result:
    train: list[float] = field(default_factory=list)
    infer: list[float] = field(default_factory=list)
    merged: list[float] = field(default_factory=list)
    saved_bytes: int = 0
    act_bytes: int = 0
    dw_sized: int = 0


@dataclass(frozen=True)
class Setup:
    """Where and in which precision every variant runs."""

    device: torch.device = torch.device("cpu")
    autocast: torch.dtype | None = None

    def precision(self) -> AbstractContextManager:
        dtype = self.autocast or torch.float32
        return torch.autocast(self.device.type, dtype=dtype, enabled=self.autocast is not None)

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def describe(self) -> str:
        precision = f"{self.autocast} autocast".replace("torch.", "") if self.autocast else "fp32"
        name = torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else "CPU"
        return f"{precision}, {name}"


SETUP = Setup()


def _timed(fn: Callable[[], object]) -> float:
    SETUP.sync()
    t0 = time.perf_counter()
    fn()
    SETUP.sync()
    return time.perf_counter() - t0


def train_step(model: nn.Module, x: torch.Tensor, g: torch.Tensor) -> Callable[[], None]:
    params = [p for p in model.parameters() if p.requires_grad]

    def step() -> None:
        for p in params:
            p.grad = None
        x.grad = None
        with SETUP.precision():
            y = model(x)
        y.backward(g)

    return step


def infer_step(model: nn.Module, x: torch.Tensor) -> Callable[[], None]:
    def step() -> None:
        with torch.no_grad(), SETUP.precision():
            model(x)

    return step


def saved_for_backward(model: nn.Module, x: torch.Tensor, weight_shape: torch.Size) -> tuple[int, int, int]:
    """Saved for backward: (bytes of unique storages, of those not parameters or buffers,
    how many non-parameter ΔW-sized tensors)."""
    resident = [*model.parameters(), *model.buffers()]
    if isinstance(getattr(model, "base", None), nn.Module):  # ours keeps the frozen layer outside
        resident += [*model.base.parameters()]
    param_ptrs = {t.untyped_storage().data_ptr() for t in resident}
    act_bytes = 0
    storages: dict[int, int] = {}
    dw_sized: set[int] = set()

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal act_bytes
        ptr = t.untyped_storage().data_ptr()
        if ptr not in storages and ptr not in param_ptrs:
            act_bytes += t.untyped_storage().nbytes()
        storages[ptr] = t.untyped_storage().nbytes()
        if ptr not in param_ptrs and t.numel() == math.prod(weight_shape):
            dw_sized.add(ptr)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), SETUP.precision():
        y = model(x)
    del y
    return sum(storages.values()), act_bytes, len(dw_sized)


def merged_layer(layer: nn.Module, adapter: nn.Module) -> nn.Module:
    merged = copy.deepcopy(layer)
    with torch.no_grad():
        merged.weight.copy_(adapter.merged_weight())
        if adapter.delta_bias() is not None:
            merged.bias.add_(adapter.delta_bias())
    return merged


def variants(
    families: list[str], algos: list[str] | None = None
) -> list[tuple[str, str, Callable[[nn.Module], nn.Module]]]:
    """(row label, algorithm label, builder) for ours and the peers that implement it."""
    rows = []
    for label, algo, settings in ALGOS:
        if algos is not None and algo not in algos:
            continue
        rows.append((f"{label} [lyco-bench]", label, ours(algo, settings)))
        if "lycoris" in families:
            for bypass, tag in ((True, "bypass"), (False, "default")):
                build = lycoris(algo, settings, bypass=bypass)
                if build is not None:
                    rows.append((f"{label} [LyCORIS {tag}]", label, build))
        if "peft" in families and (build := peft_builder(algo, settings)) is not None:
            rows.append((f"{label} [peft]", label, build))
    return rows


def run_layer(case: LayerCase, rows: list, *, repeats: int) -> dict[str, Result]:
    """Per repeat and variant, the frozen layer and the variant are timed back to back, so each
    ratio compares two runs under the same machine load; results hold those paired ratios."""
    torch.manual_seed(0)
    base = case.make().requires_grad_(False).to(SETUP.device)
    x = torch.randn(case.input_shape, device=SETUP.device, requires_grad=True)
    with torch.no_grad(), SETUP.precision():
        g = torch.randn_like(base(x))  # in the output's dtype
    frozen = copy.deepcopy(base)
    models: dict[str, nn.Module] = {}
    for label, _, build in rows:
        model = build(copy.deepcopy(base)).to(SETUP.device)
        with torch.no_grad():  # non-zero factors, so no path can skip work on zeros
            for p in model.parameters():
                if p.requires_grad:
                    p.add_(torch.randn_like(p) * 1e-3)
        models[label] = model
    merged = {label: merged_layer(m.base, m) for label, m in models.items() if label.endswith("[lyco-bench]")}
    results = {label: Result() for label in ["frozen", *models]}
    for label, model in [("frozen", frozen), *models.items()]:
        r = results[label]
        r.saved_bytes, r.act_bytes, r.dw_sized = saved_for_backward(model, x, base.weight.shape)
        train_step(model, x, g)()  # warm up
        infer_step(model, x)()
    frozen_train, frozen_infer = train_step(frozen, x, g), infer_step(frozen, x)
    for _ in range(repeats):
        for label, model in models.items():
            r = results[label]
            t_ref = _timed(frozen_train)
            r.train.append(_timed(train_step(model, x, g)) / t_ref)
            results["frozen"].train.append(t_ref)
            i_ref = _timed(frozen_infer)
            r.infer.append(_timed(infer_step(model, x)) / i_ref)
            if label in merged:
                r.merged.append(_timed(infer_step(merged[label], x)) / i_ref)
    return results


def ratios(results: dict[str, Result], *, stat: str = "median") -> dict[str, dict[str, float]]:
    pick = statistics.median if stat == "median" else min
    ref = results["frozen"]
    out = {}
    for label, r in results.items():
        if label == "frozen":
            out[label] = {"frozen_ms": pick(ref.train) * 1e3, "act_mb": ref.act_bytes / 2**20}
            continue
        out[label] = {
            "train": pick(r.train),
            "infer": pick(r.infer),
            "merged": pick(r.merged) if r.merged else float("nan"),
            "saved": r.saved_bytes / ref.saved_bytes,
            "act_mb": r.act_bytes / 2**20,
            "dw_sized": r.dw_sized,
        }
    return out


def geomean(values: list[float]) -> float:
    values = [v for v in values if not math.isnan(v)]
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else float("nan")


def print_tables(per_layer: dict[str, dict[str, dict[str, float]]], labels: list[str]) -> None:
    names = list(per_layer)
    print("\nTrain forward+backward time, multiple of the frozen layer (geomean over layers)")
    print(f"{'':34}" + "".join(f"{n:>10}" for n in names) + f"{'geomean':>10}")
    frozen_ms = "".join(f"{per_layer[n]['frozen']['frozen_ms']:>8.1f}ms" for n in names)
    print(f"{'frozen layer (absolute)':34}" + frozen_ms)
    for label in labels:
        vals = [per_layer[n][label]["train"] for n in names]
        print(f"{label:34}" + "".join(f"{v:>10.2f}" for v in vals) + f"{geomean(vals):>10.2f}")
    print("\nSummary, geomean over layers: train, unmerged and merged inference, bytes saved for backward")
    print("(saved×: all saved storages vs the frozen layer; act MB: non-parameter ones, summed over layers)")
    print(f"{'':34}{'train':>8}{'infer':>8}{'merged':>8}{'saved×':>8}{'act MB':>10}{'ΔW-sized':>10}")
    frozen_act = sum(per_layer[n]["frozen"]["act_mb"] for n in names)
    print(f"{'frozen layer':34}{1:>8.2f}{1:>8.2f}{1:>8.2f}{1:>8.2f}{frozen_act:>10.1f}{0:>10d}")
    for label in labels:
        g = {
            k: geomean([per_layer[n][label][k] for n in names]) for k in ("train", "infer", "merged", "saved")
        }
        mb = sum(per_layer[n][label]["act_mb"] for n in names)
        dw = max(per_layer[n][label]["dw_sized"] for n in names)
        merged = f"{g['merged']:>8.2f}" if not math.isnan(g["merged"]) else f"{'-':>8}"
        print(f"{label:34}{g['train']:>8.2f}{g['infer']:>8.2f}{merged}{g['saved']:>8.2f}{mb:>10.1f}{dw:>10d}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 repeats, no LyCORIS default path")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats per case (default 7)")
    parser.add_argument(
        "--family", choices=sorted(FAMILIES), default="sd15", help="layer shapes (default sd15)"
    )
    parser.add_argument("--layers", default=None, help="comma-separated subset of the family's layers")
    parser.add_argument("--tokens", type=int, default=None, help="at most this many tokens per layer")
    parser.add_argument("--algos", default=None, help="comma-separated algorithms (default: every one)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    parser.add_argument("--stat", choices=["median", "min"], default="median", help="statistic over repeats")
    parser.add_argument("--peers", default="lycoris,peft", help="peers to compare: lycoris,peft or none")
    parser.add_argument(
        "--autocast", choices=["bf16", "fp16"], default=None, help="run every variant under autocast"
    )
    parser.add_argument("--device", default="cpu", help="cpu (default) or a CUDA device")
    args = parser.parse_args(argv)
    global SETUP
    SETUP = Setup(
        torch.device(args.device), {"bf16": torch.bfloat16, "fp16": torch.float16, None: None}[args.autocast]
    )
    repeats = args.repeats or (3 if args.quick else 7)
    if args.threads:
        torch.set_num_threads(args.threads)
    layers = FAMILIES[args.family]
    cases = [c.capped(args.tokens) for c in layers if args.layers is None or c.name in args.layers.split(",")]
    rows = variants(args.peers.split(","), None if args.algos is None else args.algos.split(","))
    if args.quick:
        rows = [r for r in rows if "default]" not in r[0]]
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {SETUP.describe()}, "
        f"{repeats} repeats, {args.family} layers"
    )
    print("  " + ", ".join(f"{c.name} {tuple(c.input_shape)}" for c in cases))
    per_layer = {}
    for case in cases:
        t0 = time.perf_counter()
        per_layer[case.name] = ratios(run_layer(case, rows, repeats=repeats), stat=args.stat)
        print(f"  {case.name}: {time.perf_counter() - t0:.0f}s", flush=True)
    print_tables(per_layer, [r[0] for r in rows])


if __name__ == "__main__":
    main()
