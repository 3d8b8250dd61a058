"""The conformance check of a layer algorithm (an :class:`~lyco_bench.adapters.base.AdapterModule`).

:func:`check_algorithm` builds the algorithm on tiny float64 layers (a Linear, a 3×3 and a 1×1
Conv2d; a layer kind the algorithm refuses with TypeError/BadInput is skipped, at least one must be
accepted), moves its parameters away from the zero init with seeded noise, and checks the contract
of docs/protocol.md §1.1 that injection, files, merging and training rely on:

* zero init: ΔW = 0 (and Δb = 0) before training;
* ΔW vs forward: forward(x) = op(x, W0 + λ·ΔW, b0 + λ·Δb), on the bypass path and on the merged
  path (``prefers_merged`` forced both ways), where the algorithm ``merges_exactly``;
* gradients: on both paths, dL/dx and dL/dθ equal autograd through that formula (the merged path
  has a backward of its own);
* merge = forward: a copy of the layer with λ·ΔW (λ·Δb) added to its weight (bias) gives the
  module's outputs;
* multiplier linearity: forward(λ) − base = λ·(forward(1) − base);
* file round trip: ``file_tensors`` → ``from_file_tensors`` gives the same ΔW and tensors, also
  through a real safetensors file in the kohya/LyCORIS key layout (lyco_bench.adapters.fileformat);
* detection by keys: with the file's metadata hint the detected class is the algorithm; without it
  too, where its keys identify it (``detects``), else the class that reads them gives the same ΔW
  (a DyLoRA file is a LoRA file);
* resume: a fresh module given the state dict computes bit-identical outputs.

An algorithm exempts itself from a property with a ClassVar ``conformance_exempt`` (a mapping
property name → the documented reason); the kit reads it and skips only those properties.
"""

from __future__ import annotations

import copy
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lyco_bench.adapters.base import AdapterModule, detect_algorithm
from lyco_bench.adapters.fileformat import adapter_file_from_tensors, load_adapter, save_tensors
from lyco_bench.errors import BadInput
from lyco_bench.testing.common import Failure, close, exempt, perturb

F64 = torch.float64
MULTIPLIER = 0.7
PROPERTIES = (
    "zero init",
    "delta vs forward",
    "gradients",
    "merge = forward",
    "multiplier linearity",
    "file round trip",
    "detection by keys",
    "resume",
)


def _layers() -> dict[str, tuple[Callable[[], nn.Module], tuple[int, ...]]]:
    """Tiny frozen layers (float64, seeded) and an input shape for each."""

    def linear() -> nn.Module:
        return nn.Linear(16, 12, dtype=F64).requires_grad_(False)

    def conv3() -> nn.Module:
        return nn.Conv2d(8, 12, 3, stride=2, padding=1, dtype=F64).requires_grad_(False)

    def conv1() -> nn.Module:
        return nn.Conv2d(8, 12, 1, dtype=F64).requires_grad_(False)

    return {
        "linear": (linear, (2, 5, 16)),
        "conv3x3": (conv3, (2, 8, 7, 6)),
        "conv1x1": (conv1, (2, 8, 5, 5)),
    }


def check_algorithm(
    cls: type[AdapterModule], settings: Mapping[str, Any] | None = None, *, seed: int = 0
) -> None:
    """Check every property of the module docstring on ``cls`` built with ``settings`` (its
    defaults when None); AssertionError naming the algorithm, the layer and the failed property."""
    if not (isinstance(cls, type) and issubclass(cls, AdapterModule)):
        raise AssertionError(f"{cls!r}: not an AdapterModule subclass")
    fail = Failure(f"algorithm {getattr(cls, 'algo', cls.__name__)}")
    skipped = exempt(cls, PROPERTIES, fail)
    try:
        cls.parse_options(settings)
    except BadInput as exc:  # before the layers: a refused layer kind is skipped, bad settings fail
        fail.prop("settings")(str(exc))
    with torch.random.fork_rng(devices=[]):  # the caller's RNG state is left as it was
        built = _check_layers(cls, dict(settings or {}), seed, skipped, fail)
    if not built:
        fail.prop("layers")("adapts none of Linear, Conv2d 3×3, Conv2d 1×1")


def _check_layers(
    cls: type[AdapterModule], settings: dict, seed: int, skipped: set[str], fail: Failure
) -> int:
    """The checks on each layer kind the algorithm adapts; returns how many it adapts."""
    built = 0
    for layer, (build, shape) in _layers().items():
        torch.manual_seed(seed)
        base = build()
        try:
            module = cls(base, settings)
        except (TypeError, BadInput):
            continue  # a layer kind the algorithm does not adapt
        built += 1
        x = torch.randn(shape, dtype=F64, generator=torch.Generator().manual_seed(seed + 1))
        where = fail.at(layer)
        if "zero init" not in skipped:
            _check_zero_init(module, where)
        perturb(module, seed + 2)
        module.eval()
        if cls.merges_exactly:
            for name, check in (
                ("delta vs forward", _check_delta_vs_forward),
                ("gradients", _check_gradients),
                ("merge = forward", _check_merge),
                ("multiplier linearity", _check_linearity),
            ):
                if name not in skipped:
                    check(module, x, where.prop(name))
        if "file round trip" not in skipped or "detection by keys" not in skipped:
            _check_files(module, where, skipped)
        if "resume" not in skipped:
            _check_resume(cls, module, x, settings, where.prop("resume"))
    return built


def _dense(module: AdapterModule, x: torch.Tensor, lam: float) -> torch.Tensor:
    """op(x, W0 + λ·ΔW, b0 + λ·Δb): the frozen layer's operation on the merged weights."""
    db = module.delta_bias()
    bias = module.base.bias
    if db is not None:
        bias = db * lam if bias is None else bias + lam * db
    return module.base_op(x, module.base.weight + lam * module.delta_weight(), bias)


def _forward(
    module: AdapterModule, x: torch.Tensor, lam: float, *, merged: bool | None = None
) -> torch.Tensor:
    """module(x) at multiplier ``lam``; ``merged`` forces the merged or the bypass path."""
    saved = module.multiplier
    module.multiplier = lam
    if merged is not None:
        module.prefers_merged = lambda _x: merged  # type: ignore[method-assign]
    try:
        with torch.no_grad():
            return module(x)
    finally:
        module.multiplier = saved
        module.__dict__.pop("prefers_merged", None)


def _check_zero_init(module: AdapterModule, where: Failure) -> None:
    fail = where.prop("zero init")
    with torch.no_grad():
        delta = module.delta_weight()
        if tuple(delta.shape) != tuple(module.base.weight.shape):
            fail(f"ΔW has shape {tuple(delta.shape)}, the layer's weight {tuple(module.base.weight.shape)}")
        if bool(delta.abs().max() > 0):
            fail(f"ΔW ≠ 0 at init (max |ΔW| = {float(delta.abs().max()):.3g})")
        db = module.delta_bias()
        if db is not None and bool(db.abs().max() > 0):
            fail("Δb ≠ 0 at init")


def _check_delta_vs_forward(module: AdapterModule, x: torch.Tensor, fail: Failure) -> None:
    with torch.no_grad():
        want = _dense(module, x, MULTIPLIER)
        if bool((want - module.base(x)).abs().max() == 0):
            fail("the perturbed module has no effect (ΔW stays 0 whatever its parameters)")
    for merged in (False, True):
        got = _forward(module, x, MULTIPLIER, merged=merged)
        path = "merged" if merged else "bypass"
        close(got, want, fail, f"forward ({path} path) ≠ the layer on W0 + λ·ΔW")


def _check_gradients(module: AdapterModule, x: torch.Tensor, fail: Failure) -> None:
    """dL/dx and dL/dθ of the forward (both paths: the merged one has its own backward) equal
    autograd through op(x, W0 + λ·ΔW)."""
    params = [p for p in module.parameters() if p.requires_grad]
    saved = module.multiplier
    module.multiplier = MULTIPLIER
    try:
        for merged in (False, True):
            module.prefers_merged = lambda _x, m=merged: m  # type: ignore[method-assign]
            inp = x.clone().requires_grad_(True)
            y, ref = module(inp), _dense(module, inp, MULTIPLIER)
            g = torch.randn(y.shape, dtype=y.dtype, generator=torch.Generator().manual_seed(7))
            got = torch.autograd.grad(y, [inp, *params], g, allow_unused=True)
            want = torch.autograd.grad(ref, [inp, *params], g, allow_unused=True)
            names = ["x", *(n for n, p in module.named_parameters() if p.requires_grad)]
            for name, a, b in zip(names, got, want, strict=True):
                a = torch.zeros_like(inp if name == "x" else b) if a is None and b is not None else a
                if a is not None and b is not None:
                    path = "merged" if merged else "bypass"
                    close(a, b, fail, f"dL/d{name} ({path} path) ≠ autograd through W0 + λ·ΔW")
    finally:
        module.multiplier = saved
        module.__dict__.pop("prefers_merged", None)


def _merged_copy(module: AdapterModule, lam: float) -> nn.Module:
    """A copy of the frozen layer with λ·ΔW (and λ·Δb) added, as generation merges."""
    layer = copy.deepcopy(module.base)
    with torch.no_grad():
        layer.weight.add_(module.delta_weight(), alpha=lam)
        db = module.delta_bias()
        if db is not None:
            layer.bias = nn.Parameter(db * lam if layer.bias is None else layer.bias + lam * db)
    return layer


def _check_merge(module: AdapterModule, x: torch.Tensor, fail: Failure) -> None:
    layer = _merged_copy(module, MULTIPLIER)
    with torch.no_grad():
        close(_forward(module, x, MULTIPLIER), layer(x), fail, "a merged copy of the layer ≠ forward")


def _check_linearity(module: AdapterModule, x: torch.Tensor, fail: Failure) -> None:
    with torch.no_grad():
        base = module.base(x)
        one = _forward(module, x, 1.0) - base
        for lam in (0.0, 0.5, 2.0, -1.0):
            close(
                _forward(module, x, lam) - base,
                lam * one,
                fail,
                f"forward(λ={lam}) − base ≠ λ·(forward(1) − base)",
            )


def _check_files(module: AdapterModule, where: Failure, skipped: set[str]) -> None:
    cls = type(module)
    tensors = {k: v.detach().clone() for k, v in module.file_tensors().items()}
    with torch.no_grad():
        want = module.delta_weight()
    if "file round trip" not in skipped:
        fail = where.prop("file round trip")
        back = cls.from_file_tensors(module.base, tensors, name="lora_unet_kit")
        with torch.no_grad():
            close(back.delta_weight(), want, fail, "from_file_tensors(file_tensors()) gives another ΔW")
        again = back.file_tensors()
        if set(again) != set(tensors):
            fail(f"file_tensors keys {sorted(tensors)} come back as {sorted(again)}")
        for key in tensors:
            close(again[key], tensors[key], fail, f"tensor {key!r} changes through the round trip")
        _through_safetensors(module, tensors, want, fail)
    if "detection by keys" not in skipped:
        _check_detection(module, tensors, want, where.prop("detection by keys"))


def _through_safetensors(module: AdapterModule, tensors: dict, want: torch.Tensor, fail: Failure) -> None:
    """Save in the kohya/LyCORIS layout (``<module key>.<suffix>``) and load it as a user file."""
    key = "lora_unet_kit_layer"
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "kit.safetensors"
        save_tensors(path, {f"{key}.{s}": t for s, t in tensors.items()}, {"lyco_bench.algo": module.algo})
        file = load_adapter(path)
    found = file.modules.get(key)
    if found is not type(module):
        fail(f"a saved file's module is read as {getattr(found, 'algo', found)!r}")
    back = found.from_file_tensors(module.base, file.module_tensors(key), name=key)
    with torch.no_grad():
        close(back.delta_weight(), want, fail, "ΔW changes through a safetensors file")


def _check_detection(module: AdapterModule, tensors: dict, want: torch.Tensor, fail: Failure) -> None:
    cls, suffixes = type(module), set(tensors)
    hinted = detect_algorithm(suffixes, name="lora_unet_kit", hints={cls.algo})
    if hinted is not cls:
        fail(f"with the metadata hint {cls.algo!r} the keys {sorted(suffixes)} are read as {hinted.algo!r}")
    # Without metadata: an algorithm whose keys identify it (``detects``) is found by them alone;
    # one that shares another's layout (a DyLoRA file is a LoRA file) is read by that one, which
    # must give the same ΔW.
    file = adapter_file_from_tensors({f"lora_unet_kit.{s}": t for s, t in tensors.items()})
    other = file.modules["lora_unet_kit"]
    if cls.detects(suffixes) and other is not cls:
        fail(f"without metadata the keys {sorted(suffixes)} are read as {other.algo!r}")
    back = other.from_file_tensors(module.base, dict(tensors), name="lora_unet_kit")
    with torch.no_grad():
        close(back.delta_weight(), want, fail, f"without metadata read as {other.algo!r}, to another ΔW")


def _check_resume(cls: type, module: AdapterModule, x: torch.Tensor, settings: dict, fail: Failure) -> None:
    torch.manual_seed(12345)  # another init than the module's: the state dict must carry everything
    fresh = cls(module.base, settings)
    fresh.load_state_dict(module.state_dict())
    fresh.eval()
    with torch.no_grad():
        a, b = _forward(module, x, MULTIPLIER), _forward(fresh, x, MULTIPLIER)
    if not torch.equal(a, b):
        fail(f"outputs after a state-dict round trip differ (max {float((a - b).abs().max()):.3g})")
