"""Every algorithm under bf16 autocast (CPU): the fast path is taken, runs in bf16 forward and
backward, and agrees with the fp32 reference and with the plain bypass path."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from lyco_bench.adapters.base import ALGORITHMS, AdapterModule, _MergedForward

BF16 = torch.bfloat16
# (label, algorithm, settings); each is run on a Linear and a 3×3 Conv2d.
CASES = [
    ("lora", "lora", dict(dim=4, alpha=2.0)),
    ("lora-tucker", "lora", dict(dim=4, alpha=2.0, use_tucker=True)),
    ("lora-dora", "lora", dict(dim=4, alpha=2.0, dora=True)),
    ("loha", "loha", dict(dim=4, alpha=2.0)),
    ("loha-tucker", "loha", dict(dim=4, alpha=2.0, use_tucker=True)),
    ("loha-dora", "loha", dict(dim=4, alpha=2.0, dora=True)),
    ("lokr-full", "lokr", dict(dim=10000, alpha=10000, factor=4)),
    ("lokr-lowrank", "lokr", dict(dim=2, alpha=2.0, factor=4)),
    ("lokr-dora", "lokr", dict(dim=10000, alpha=10000, factor=4, dora=True)),
    ("dylora", "dylora", dict(dim=8, alpha=4.0, block_size=2)),
    ("glora", "glora", dict(dim=4, alpha=2.0)),
    ("glokr", "glokr", dict(factor=4)),
    ("ia3", "ia3", dict()),
    ("native", "native", dict()),
]
# Large token counts, so that every algorithm with a merged forward prefers it in training.
LAYERS = {
    "linear": (lambda: nn.Linear(64, 48), (4096, 64)),
    "conv": (lambda: nn.Conv2d(16, 24, 3, padding=1), (4, 16, 32, 32)),
}
MATMULS = {"mm", "addmm", "bmm", "baddbmm", "convolution", "convolution_backward", "_convolution"}


def build(algo: str, settings: dict, layer: str, seed: int = 0) -> tuple[AdapterModule, torch.Tensor]:
    torch.manual_seed(seed)
    make, shape = LAYERS[layer]
    m = ALGORITHMS[algo](make().requires_grad_(False), **settings)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():  # every factor nonzero, so no gradient is trivially zero
        for p in m.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.05)
    if algo == "native":  # the copy trains; the frozen base stays outside the module tree
        m.base.requires_grad_(False)
    return m, torch.randn(shape, generator=gen)


def run(m: AdapterModule, x0: torch.Tensor, *, autocast: bool) -> tuple[torch.Tensor, dict]:
    """(output, gradients of x and of every parameter) of ⟨y, g⟩ with a fixed g."""
    for p in m.parameters():
        p.grad = None
    x = x0.clone().requires_grad_(True)
    with torch.autocast("cpu", dtype=BF16, enabled=autocast):
        y = m(x)
    g = torch.randn(y.shape, generator=torch.Generator().manual_seed(9)).to(y.dtype)
    y.backward(g)
    grads = {"x": x.grad, **{n: p.grad for n, p in m.named_parameters()}}
    return y, grads


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def assert_agree(got: tuple, want: tuple, tol: float) -> None:
    """Relative error (Frobenius) within ``tol``: bf16 keeps 8 significant bits (2⁻⁸ ≈ 0.4%),
    products accumulate in fp32, so a few times that bounds the error of a whole layer."""
    (y, grads), (y_ref, grads_ref) = got, want
    assert rel_err(y, y_ref) < tol
    assert grads.keys() == grads_ref.keys()
    for name, g in grads.items():
        assert g is not None and g.dtype == grads_ref[name].dtype, name
        assert rel_err(g, grads_ref[name]) < tol, (name, rel_err(g, grads_ref[name]))


class MatmulDtypes(TorchDispatchMode):
    """Records the operand dtypes of every matmul/convolution with an operand larger than
    ``limit`` elements (activation-sized: x, dL/dy or what is computed from them)."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit
        self.seen: list[tuple[str, set[torch.dtype]]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        flat = [a for a in args if isinstance(a, torch.Tensor) and a.is_floating_point()]
        if name in MATMULS and max((a.numel() for a in flat), default=0) > self.limit:
            self.seen.append((name, {a.dtype for a in flat}))
        return func(*args, **(kwargs or {}))


def force_bypass(monkeypatch: pytest.MonkeyPatch, m: AdapterModule) -> None:
    monkeypatch.setattr(type(m), "can_merge_forward", lambda self, x: False)


@pytest.mark.parametrize("layer", list(LAYERS))
@pytest.mark.parametrize(("label", "algo", "settings"), CASES, ids=[c[0] for c in CASES])
def test_fast_path_under_autocast(label, algo, settings, layer, monkeypatch):
    m, x = build(algo, settings, layer)
    with torch.enable_grad():  # DoRA chooses by its own rule (low-rank: the bypass form in training)
        prefers = m.dora_prefers_merged if getattr(m, "dora", False) else m.prefers_merged
        merged = m.can_merge_forward(x) and prefers(x)
    with torch.autocast("cpu", dtype=BF16):
        assert m.can_merge_forward(x) or algo in ("ia3", "native")
        y = m(x.requires_grad_(True))
    x.requires_grad_(False)
    assert y.dtype == BF16
    fn = type(y.grad_fn).__name__
    merged_fn = [c.__name__ + "Backward" for c in (_MergedForward, *_MergedForward.__subclasses__())]
    if merged:  # the choice of path does not depend on autocast
        assert fn in merged_fn, fn
    else:
        assert fn not in merged_fn, fn

    fast = run(m, x, autocast=True)
    fp32 = run(m, x, autocast=False)
    assert fp32[0].dtype == torch.float32
    assert_agree(fast, fp32, tol=0.03)
    force_bypass(monkeypatch, m)
    bypass = run(m, x, autocast=True)
    assert bypass[0].dtype == BF16
    assert_agree(fast, bypass, tol=0.03)


@pytest.mark.parametrize("layer", list(LAYERS))
@pytest.mark.parametrize(
    ("label", "algo", "settings"),
    [c for c in CASES if c[1] in ("lora", "loha", "lokr", "glora", "glokr", "dylora")],
    ids=[c[0] for c in CASES if c[1] in ("lora", "loha", "lokr", "glora", "glokr", "dylora")],
)
def test_backward_runs_in_the_forward_dtype(label, algo, settings, layer):
    """Every matmul and convolution over the tokens, forward and backward, takes bf16 operands:
    the custom autograd Functions replay the forward's autocast state instead of falling back
    to fp32. (Rebuilding W0 + λΔW from the factors, which has no token dimension, runs in the
    parameters' dtype and is cast once, as autocast casts a layer's weight.)"""
    m, x = build(algo, settings, layer)
    x.requires_grad_(True)
    mode = MatmulDtypes(limit=m.base.weight.numel())
    with mode:
        with torch.autocast("cpu", dtype=BF16):
            y = m(x)
        y.backward(torch.ones_like(y))
    assert mode.seen, "no matmul recorded"
    fp32 = [(name, dtypes) for name, dtypes in mode.seen if dtypes != {BF16}]
    assert not fp32, fp32
    assert all(p.grad.dtype == torch.float32 for p in m.parameters())
    assert x.grad.dtype == torch.float32


def test_every_built_in_algorithm_has_a_case():
    built_in = {
        name
        for name, cls in ALGORITHMS.items()
        if isinstance(cls, type)
        and issubclass(cls, AdapterModule)
        and cls.__module__.startswith("lyco_bench.")
    }
    assert built_in <= {algo for _, algo, _ in CASES}
