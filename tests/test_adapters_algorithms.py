"""The four adapter algorithms: ΔW by hand, init, bypass = dense forward, gradients, ranks, files."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn
from torch.testing import assert_close
from torch.utils._python_dispatch import TorchDispatchMode

from lyco_bench.adapters.algorithms.loha import LoHaModule
from lyco_bench.adapters.algorithms.lokr import LoKrModule, factorize
from lyco_bench.adapters.algorithms.lora import LoRAModule
from lyco_bench.adapters.algorithms.native import NativeModule
from lyco_bench.adapters.base import ALGORITHMS, detect_algorithm, get_algorithm
from lyco_bench.errors import BadInput
from tests.helpers import F64, conv, linear, set_params


def randomize(module: nn.Module, seed: int = 1) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * 0.5)


# --- ΔW against hand computations ---------------------------------------------------------------


def test_lora_linear_delta_by_hand():
    m = LoRAModule(linear(3, 2), dim=2, alpha=1.0)  # s = 1/2
    set_params(m, lora_down=[[1, 0, 2], [0, 1, 1]], lora_up=[[1, 2], [3, -1]])
    # B·A = [[1, 2, 4], [3, -1, 5]]
    assert_close(m.delta_weight(), torch.tensor([[0.5, 1.0, 2.0], [1.5, -0.5, 2.5]], dtype=F64))


def test_locon_conv_delta_by_hand():
    m = LoRAModule(conv(1, 1, 2), dim=1, alpha=1.0)
    set_params(m, lora_down=[[[[1, 2], [3, 4]]]], lora_up=[[[[2]]]])
    assert_close(m.delta_weight(), torch.tensor([[[[2.0, 4.0], [6.0, 8.0]]]], dtype=F64))


def test_locon_tucker_delta_by_hand():
    m = LoRAModule(conv(2, 1, 2), dim=1, alpha=1.0, use_tucker=True)
    assert m.lora_down.shape == (1, 2, 1, 1) and m.lora_mid.shape == (1, 1, 2, 2)
    set_params(m, lora_down=[1, -1], lora_mid=[[1, 2], [3, 4]], lora_up=[3])
    expected = torch.tensor([[[[3, 6], [9, 12]], [[-3, -6], [-9, -12]]]], dtype=F64)
    assert_close(m.delta_weight(), expected)


def test_loha_linear_delta_by_hand():
    m = LoHaModule(linear(2, 2), dim=1, alpha=2.0)  # s = 2
    set_params(m, hada_w1_a=[[1], [2]], hada_w1_b=[[3, 4]], hada_w2_a=[[1], [-1]], hada_w2_b=[[1, 0.5]])
    # (W1a·W1b) ⊙ (W2a·W2b) = [[3, 4], [6, 8]] ⊙ [[1, .5], [-1, -.5]]
    assert_close(m.delta_weight(), torch.tensor([[6.0, 4.0], [-12.0, -8.0]], dtype=F64))


def test_loha_tucker_delta_matches_elementwise_formula():
    m = LoHaModule(conv(3, 2, 3), dim=2, alpha=1.0, use_tucker=True)
    randomize(m)
    p = {k: v.detach() for k, v in m.named_parameters()}
    expected = torch.zeros(2, 3, 3, 3, dtype=F64)
    for o, i, h, w in itertools.product(range(2), range(3), range(3), range(3)):
        sides = []
        for j in (1, 2):
            t, a, b = p[f"hada_t{j}"], p[f"hada_w{j}_a"], p[f"hada_w{j}_b"]
            sides.append(sum(t[x, y, h, w] * a[x, o] * b[y, i] for x in range(2) for y in range(2)))
        expected[o, i, h, w] = 0.5 * sides[0] * sides[1]
    assert_close(m.delta_weight(), expected)


def test_lokr_full_blocks_delta_by_hand_and_scale_one():
    m = LoKrModule(linear(4, 4), dim=10000, alpha=3.0, factor=2)
    assert set(m.file_tensors()) == {"lokr_w1", "lokr_w2", "alpha"} and m.scale == 1.0
    set_params(m, lokr_w1=[[1, 2], [3, 4]], lokr_w2=[[0, 1], [1, 0]])
    expected = [[0, 1, 0, 2], [1, 0, 2, 0], [0, 3, 0, 4], [3, 0, 4, 0]]
    assert_close(m.delta_weight(), torch.tensor(expected, dtype=F64))


def test_lokr_low_rank_conv_delta_matches_index_formula():
    m = LoKrModule(conv(8, 4, 3, padding=1), dim=1, alpha=3.0, factor=2)  # out (2,2), in (2,4)
    assert m.layout.w2_rank == 1 and m.scale == 3.0
    randomize(m)
    w1, w2 = m.lokr_w1.detach(), (m.lokr_w2_a @ m.lokr_w2_b).detach().view(2, 4, 3, 3)
    expected = torch.zeros(4, 8, 3, 3, dtype=F64)
    for a, b, c, d in itertools.product(range(2), range(2), range(2), range(4)):
        expected[a * 2 + c, b * 4 + d] = 3.0 * w1[a, b] * w2[c, d]
    assert_close(m.delta_weight(), expected)


@pytest.mark.parametrize("rank", [1, 2, 3])
def test_lokr_tucker_delta_at_every_rank_by_hand_and_as_lycoris(rank):
    base = conv(16, 32, 3, padding=1)  # factor 4: W1 4×4, W2 8×4×3×3 (decomposed while r < 4)
    m = LoKrModule(base, dim=rank, alpha=1.5, factor=4, use_tucker=True)
    assert m.layout.tucker and m.layout.w2_rank == rank and m.scale == 1.5 / rank
    randomize(m)
    w1, t, a, b = (getattr(m, k).detach() for k in ("lokr_w1", "lokr_t2", "lokr_w2_a", "lokr_w2_b"))
    w2 = torch.zeros(8, 4, 3, 3, dtype=F64)  # W2[c, d] = Σ_xy T[x, y]·A[x, c]·B[y, d]
    for c, d, x, y in itertools.product(range(8), range(4), range(rank), range(rank)):
        w2[c, d] += t[x, y] * a[x, c] * b[y, d]
    expected = torch.zeros(32, 16, 3, 3, dtype=F64)
    for i, j, c, d in itertools.product(range(4), range(4), range(8), range(4)):
        expected[i * 8 + c, j * 4 + d] = m.scale * w1[i, j] * w2[c, d]
    assert_close(m.delta_weight(), expected)
    assert_close(m.merged_weight(), base.weight + expected)

    modules = pytest.importorskip("lycoris.modules")
    lyco = modules.LokrModule("x", base, lora_dim=rank, alpha=1.5, factor=4, use_tucker=True).double()
    lyco.load_state_dict(m.file_tensors())
    x = torch.randn(2, 16, 6, 6, dtype=F64)
    with torch.no_grad():
        assert_close(lyco(x) - base(x), m.bypass(x))
        assert_close(lyco(x), m(x))


def test_lokr_scale_rule():
    lin = linear(64, 64)
    assert LoKrModule(lin, dim=10000, alpha=1.0, factor=8).scale == 1.0  # both full
    low = LoKrModule(lin, dim=2, alpha=1.0, factor=8)  # W2 8×8, 2 < 4: low-rank
    assert (low.layout.w1_rank, low.layout.w2_rank, low.scale) == (None, 2, 0.5)
    both = LoKrModule(lin, dim=2, alpha=1.0, factor=8, decompose_both=True)
    assert (both.layout.w1_rank, both.scale) == (2, 0.5)
    assert LoKrModule(lin, dim=4, alpha=None, factor=8).scale == 1.0  # 4 ≥ 8/2: full; alpha=dim


def test_native_delta_is_copy_minus_base():
    base = linear(3, 2)
    m = NativeModule(base)
    with torch.no_grad():
        m.weight.add_(torch.tensor([[1.0, 0, 0], [0, 0, -2.0]], dtype=F64))
        m.bias.add_(torch.tensor([0.5, 0.0], dtype=F64))
    assert_close(m.delta_weight(), torch.tensor([[1.0, 0, 0], [0, 0, -2.0]], dtype=F64))
    assert_close(m.delta_bias(), torch.tensor([0.5, 0.0], dtype=F64))
    assert set(m.file_tensors()) == {"diff", "diff_b"}


@pytest.mark.parametrize(
    ("dim", "factor", "expected"),
    [
        (320, 8, (8, 40)),
        (768, -1, (24, 32)),
        (320, -1, (16, 20)),
        (640, 8, (8, 80)),
        (1280, -1, (32, 40)),
        (100, 8, (5, 20)),
        (127, -1, (1, 127)),
        (128, 16, (8, 16)),
        (360, 16, (15, 24)),
        (40, 12, (5, 8)),
        (4, 12, (2, 2)),
        (1024, 4, (4, 256)),
    ],
)
def test_factorize_table(dim, factor, expected):
    assert factorize(dim, factor) == expected


def test_factorize_matches_lycoris():
    general = pytest.importorskip("lycoris.functional.general")
    for dim, factor in itertools.product(range(1, 400), (-1, 1, 2, 3, 4, 8, 12, 16)):
        assert factorize(dim, factor) == general.factorization(dim, factor), (dim, factor)


# --- generic properties over every algorithm and layer kind ----------------------------------------

LAYERS = {
    "linear": (lambda: linear(16, 12), (2, 5, 16)),
    "conv3x3": (lambda: conv(8, 12, 3, stride=2, padding=1), (2, 8, 9, 7)),
    "conv1x1": (lambda: conv(8, 12, 1), (2, 8, 5, 5)),
}
SETTINGS = {
    "lora": dict(dim=3, alpha=1.5),
    "lora-tucker": dict(dim=3, alpha=1.5, use_tucker=True),
    "loha": dict(dim=2, alpha=1.0),
    "loha-tucker": dict(dim=2, alpha=1.0, use_tucker=True),
    "lokr-full": dict(dim=10000, factor=4),
    "lokr-lowrank": dict(dim=1, alpha=2.0, factor=4),
    "lokr-tucker": dict(dim=1, alpha=2.0, factor=4, use_tucker=True),
    "lokr-both": dict(dim=1, alpha=2.0, factor=-1, decompose_both=True),
    "native": dict(),
}


def make(setting: str, layer: str) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    build, shape = LAYERS[layer]
    cls = ALGORITHMS[setting.split("-")[0]]
    return cls(build(), **SETTINGS[setting]), torch.randn(shape, dtype=F64)


CASES = list(itertools.product(SETTINGS, LAYERS))


@pytest.mark.parametrize(("setting", "layer"), CASES)
def test_zero_delta_at_init(setting, layer):
    m, _ = make(setting, layer)
    assert_close(m.delta_weight(), torch.zeros_like(m.base.weight), rtol=0, atol=0)


@pytest.mark.parametrize("merged", [False, True], ids=["bypass", "merged"])
@pytest.mark.parametrize(("setting", "layer"), CASES)
def test_forward_and_grads_match_dense_formula(setting, layer, merged, monkeypatch):
    m, x = make(setting, layer)
    randomize(m)
    m.multiplier = 0.7
    if not isinstance(m, NativeModule):
        monkeypatch.setattr(m, "prefers_merged", lambda _x: merged)
    x.requires_grad_(True)
    params = [x, *m.parameters()]

    def dense(inp: torch.Tensor) -> torch.Tensor:
        db = m.delta_bias()
        bias = m.base.bias if db is None else m.base.bias + 0.7 * db
        return m.base_op(inp, m.base.weight + 0.7 * m.delta_weight(), bias)

    y, ref = m(x), dense(x)
    assert_close(y, ref)
    g = torch.randn_like(y)
    for got, want in zip(torch.autograd.grad(y, params, g), torch.autograd.grad(ref, params, g), strict=True):
        assert_close(got, want)


def test_lokr_both_orders_of_the_kronecker_bypass(monkeypatch):
    for layer in LAYERS:
        m, x = make("lokr-lowrank", layer)
        randomize(m)
        ref = m.base_op(x, m.delta_weight(), None)
        for first in (True, False):
            monkeypatch.setattr(m, "_w2_first", lambda _x, f=first: f)
            assert_close(m.bypass(x), ref)


def test_loha_hadamard_gradcheck_and_merged_forward_gradcheck():
    m = LoHaModule(linear(5, 4), dim=2, alpha=3.0)
    randomize(m)
    params = tuple(m.parameters())
    # gradcheck perturbs its inputs in place; the inputs are the module's own parameters.
    assert torch.autograd.gradcheck(lambda *_: m.delta_weight(), params)
    x = torch.randn(3, 5, dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda inp, *_: m(inp), (x, *params))
    mt = LoHaModule(conv(2, 3, 3, padding=1), dim=2, alpha=1.0, use_tucker=True)
    randomize(mt)
    assert torch.autograd.gradcheck(lambda *_: mt.delta_weight(), tuple(mt.parameters()))


def saved_tensors(fn) -> list[torch.Tensor]:
    saved: list[torch.Tensor] = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        fn()
    return saved


@pytest.mark.parametrize("layer", list(LAYERS))
def test_loha_saves_no_delta_sized_tensor_for_backward(layer):
    m, x = make("loha", layer)
    randomize(m)
    x.requires_grad_(True)
    owned = {p.data_ptr() for p in m.parameters()} | {p.data_ptr() for p in m.base.parameters()}
    big = [
        t
        for t in saved_tensors(lambda: m(x))
        if t.data_ptr() not in owned and t.numel() >= m.base.weight.numel()
    ]
    assert all(t.data_ptr() == x.data_ptr() for t in big)  # only the input itself
    assert saved_tensors(lambda: m.delta_weight()) == []


# --- ranks ----------------------------------------------------------------------------------------


def flat_rank(w: torch.Tensor) -> int:
    return int(torch.linalg.matrix_rank(w.reshape(w.shape[0], -1)))


def test_rank_bounds():
    torch.manual_seed(0)
    lora = LoRAModule(linear(24, 20), dim=3)
    randomize(lora)
    assert flat_rank(lora.delta_weight()) == LoRAModule.rank_bound(lora.file_tensors()) == 3
    loha = LoHaModule(linear(24, 20), dim=3)
    randomize(loha)
    assert flat_rank(loha.delta_weight()) == LoHaModule.rank_bound(loha.file_tensors()) == 9
    full = LoKrModule(linear(16, 16), dim=10000, factor=4)
    randomize(full)
    assert flat_rank(full.delta_weight()) == LoKrModule.rank_bound(full.file_tensors()) == 16
    low = LoKrModule(conv(8, 16, 3), dim=1, factor=4)  # W1 4×2 (rank 2), W2 4×4×3×3 of rank 1
    randomize(low)
    assert flat_rank(low.delta_weight()) == LoKrModule.rank_bound(low.file_tensors()) == 2
    native = NativeModule(conv(4, 6, 1))
    assert NativeModule.rank_bound(native.file_tensors()) == 4


def test_parameter_count_excludes_alpha():
    m = LoRAModule(linear(16, 12), dim=3)
    assert LoRAModule.parameter_count(m.file_tensors()) == 3 * 16 + 12 * 3


# --- files ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("setting", "layer"), CASES)
def test_file_round_trip(setting, layer):
    m, _ = make(setting, layer)
    randomize(m)
    tensors = m.file_tensors()
    cls = detect_algorithm(set(tensors), name="lora_unet_x")
    assert cls is type(m)
    back = cls.from_file_tensors(m.base, tensors, name="lora_unet_x")
    assert_close(back.delta_weight(), m.delta_weight())
    for key, t in back.file_tensors().items():
        assert_close(t, tensors[key])


LYCORIS_CASES = [
    ("lora", "LoConModule", dict(dim=4, alpha=2.0), {}),
    ("lora", "LoConModule", dict(dim=4, alpha=2.0, use_tucker=True), {"use_tucker": True}),
    ("loha", "LohaModule", dict(dim=4, alpha=2.0), {}),
    ("loha", "LohaModule", dict(dim=4, alpha=2.0, use_tucker=True), {"use_tucker": True}),
    ("lokr", "LokrModule", dict(dim=4, alpha=2.0, factor=8), {"factor": 8}),
    ("lokr", "LokrModule", dict(dim=10000, factor=8), {"factor": 8}),
    (
        "lokr",
        "LokrModule",
        dict(dim=4, alpha=2.0, factor=8, use_tucker=True),
        {"factor": 8, "use_tucker": True},
    ),
    ("lokr", "LokrModule", dict(dim=2, alpha=2.0, factor=-1, decompose_both=True), {"decompose_both": True}),
    ("native", "FullModule", dict(), {}),
]


@pytest.mark.parametrize(("algo", "lyco_cls", "ours", "theirs"), LYCORIS_CASES)
def test_file_shapes_and_alpha_match_lycoris(algo, lyco_cls, ours, theirs):
    modules = pytest.importorskip("lycoris.modules")
    for base in (nn.Linear(640, 320), nn.Conv2d(64, 96, 3, padding=1), nn.Conv2d(64, 96, 1)):
        base.requires_grad_(False)
        lyco = getattr(modules, lyco_cls)(
            "x", base, lora_dim=ours.get("dim", 1), alpha=ours.get("alpha", ours.get("dim", 1)), **theirs
        )
        mine = ALGORITHMS[algo](base, **ours)
        want = {k: tuple(v.shape) for k, v in lyco.state_dict().items() if not k.startswith("dora")}
        got = {k: tuple(v.shape) for k, v in mine.file_tensors().items()}
        assert got == want, (algo, base)
        if "alpha" in want:
            assert float(mine.file_tensors()["alpha"]) == pytest.approx(float(lyco.state_dict()["alpha"]))


def test_bad_file_tensors_name_the_module():
    base = linear(16, 12)
    good = LoRAModule(base, dim=3).file_tensors()
    wrong = dict(good, **{"lora_up.weight": torch.zeros(11, 3)})
    with pytest.raises(BadInput, match=r"^lora_unet_mid: lora_up.weight has shape \(11, 3\)"):
        LoRAModule.from_file_tensors(base, wrong, name="lora_unet_mid")
    with pytest.raises(BadInput, match="lora_unet_mid: unknown key suffix 'lora_side.weight'"):
        detect_algorithm(set(good) | {"lora_side.weight"}, name="lora_unet_mid")
    with pytest.raises(BadInput, match="lora_te_q: unknown key suffixes"):
        detect_algorithm({"weird"}, name="lora_te_q")
    lokr = LoKrModule(base, dim=1, factor=4).file_tensors()
    with pytest.raises(BadInput, match="lora_unet_k: lokr_w2_b has shape"):
        LoKrModule.from_file_tensors(base, dict(lokr, lokr_w2_b=torch.zeros(1, 5)), name="lora_unet_k")
    with pytest.raises(BadInput, match="lora_unet_k: lokr block W1 5×4"):
        LoKrModule.from_file_tensors(base, dict(lokr, lokr_w1=torch.zeros(5, 4)), name="lora_unet_k")
    loha = LoHaModule(base, dim=2).file_tensors()
    with pytest.raises(BadInput, match="lora_unet_h: hada_t1/hada_t2 given"):
        LoHaModule.from_file_tensors(base, dict(loha, hada_t1=torch.zeros(2, 2, 3, 3)), name="lora_unet_h")
    with pytest.raises(BadInput, match="lora_unet_n: diff has shape"):
        NativeModule.from_file_tensors(base, {"diff": torch.zeros(12, 15)}, name="lora_unet_n")
    with pytest.raises(BadInput, match="unknown algorithm 'dora'"):
        get_algorithm("dora")


def test_seeded_init_is_deterministic():
    for algo, settings in (("lora", {}), ("loha", {}), ("lokr", {"factor": 4})):
        states = []
        for _ in range(2):
            torch.manual_seed(7)
            states.append(ALGORITHMS[algo](linear(16, 12), dim=2, **settings).file_tensors())
        for key in states[0]:
            assert torch.equal(states[0][key], states[1][key])


def test_alpha_defaults_to_dim_and_multiplier_zero_is_base():
    m = LoRAModule(linear(16, 12), dim=4)
    assert m.alpha == 4.0 and m.scale == 1.0
    randomize(m)
    m.multiplier = 0.0
    x = torch.randn(2, 16, dtype=F64)
    assert torch.equal(m(x), m.base(x))


@pytest.mark.parametrize("algo", ["lora", "loha", "lokr"])
def test_autocast_keeps_the_merged_forward_and_trains(algo):
    # (every algorithm and layer kind in detail: tests/test_adapters_autocast.py)
    torch.manual_seed(0)
    base = nn.Linear(16, 16).requires_grad_(False)
    m = ALGORITHMS[algo](base, dim=2)
    randomize(m)
    x = torch.randn(64, 16, requires_grad=True)  # many rows: the merged forward is chosen
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert m.can_merge_forward(x)
        y = m(x)
    assert y.dtype == torch.bfloat16 and "Merged" in type(y.grad_fn).__name__
    y.float().sum().backward()
    assert all(p.grad is not None for p in m.parameters())
    ref = base(x) + m.bypass(x)
    assert_close(y.float(), ref, atol=0.1, rtol=0.05)


def test_host_to_moves_the_frozen_base_with_the_adapter():
    # The base layer sits outside the module tree; `host.to(dtype)` must still convert it, or
    # the adapted layer would mix dtypes/devices after `unet.to(...)`.
    base = nn.Linear(4, 3)
    module = get_algorithm("lora")(base, dim=2, alpha=1)
    host = nn.Sequential(module).to(torch.float64)
    assert module.base.weight.dtype == torch.float64
    assert all(p.dtype == torch.float64 for p in module.parameters())
    out = host(torch.ones(2, 4, dtype=torch.float64))
    assert out.dtype == torch.float64


class _RandomDraws(TorchDispatchMode):
    """Records the device of every random fill and the source of every copy into a meta tensor."""

    RANDOM = {"uniform_", "normal_", "random_", "bernoulli_", "exponential_", "randn", "rand"}

    def __init__(self) -> None:
        super().__init__()
        self.devices: list[str] = []
        self.copied: list[torch.Tensor] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if name in self.RANDOM:
            out = args[0] if args and isinstance(args[0], torch.Tensor) else None
            self.devices.append(str(out.device) if out is not None else str((kwargs or {}).get("device")))
        if name == "copy_" and args[0].device.type == "meta" and args[1].device.type == "cpu":
            self.copied.append(args[1].clone())
        return func(*args, **(kwargs or {}))


INIT_CASES = [
    ("lora", dict(dim=4)),
    ("lora", dict(dim=4, use_tucker=True)),
    ("loha", dict(dim=4)),
    ("loha", dict(dim=4, use_tucker=True)),
    ("lokr", dict(dim=2, factor=4, decompose_both=True)),
    ("lokr", dict(dim=10000, factor=4)),
    ("dylora", dict(dim=8, block_size=2)),
    ("glora", dict(dim=4)),
    ("glokr", dict(factor=4)),
]


@pytest.mark.parametrize(
    ("algo", "settings"), INIT_CASES, ids=[f"{a}-{i}" for i, (a, _) in enumerate(INIT_CASES)]
)
def test_init_draws_on_the_cpu_whatever_the_device(algo, settings):
    """The same seed gives the same factors on any device: every random draw of construction
    happens on a CPU tensor, and on another device ("meta" here, standing for CUDA) the layer
    receives exactly the values a CPU-built layer holds."""
    cpu_modules, drawn = [], []
    for device in ("cpu", "meta"):
        base = nn.Conv2d(16, 24, 3, padding=1, device=device).requires_grad_(False)
        torch.manual_seed(5)
        mode = _RandomDraws()
        with mode:
            m = ALGORITHMS[algo](base, **settings)
        assert mode.devices and set(mode.devices) == {"cpu"}, mode.devices
        (cpu_modules if device == "cpu" else drawn).append((m, mode.copied))
    cpu_module, (meta_module, copied) = cpu_modules[0][0], drawn[0]
    assert all(p.device.type == "meta" for p in meta_module.parameters())
    random_params = [p for p in cpu_module.parameters() if p.abs().sum() > 0]
    if algo == "dylora":  # one draw of the whole A, then split into blocks
        random_params = [torch.cat(random_params)]
    assert len(copied) == len(random_params) > 0
    for want in random_params:  # (drawn in construction order, not registration order)
        assert sum(torch.equal(got, want.detach()) for got in copied) == 1
