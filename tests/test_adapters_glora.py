"""GLoRA (LyCORIS's layout, LyCORIS as the oracle) and GLoKr (lyco-bench's own definition).

For both: ΔW = 0 at init, forward and gradients against the dense formula in float64, bypass =
ΔW·x, file round trip, rank bounds and parameter counts, a tiny UNet + text encoder injected,
saved, loaded and merged, and the settings a study may give. GLoRA also: files LyCORIS writes
give LyCORIS's outputs here and ours give ours in LyCORIS, and older LyCORIS's layout.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from pydantic import ValidationError
from torch import nn
from torch.testing import assert_close

from lyco_bench.adapters import (
    ALGORITHMS,
    AdapterSpec,
    delta_weights,
    inject,
    load_adapter,
    merge_adapters,
    unmerge_adapters,
)
from lyco_bench.adapters.algorithms.glokr import GLoKrModule
from lyco_bench.adapters.algorithms.glora import GLoRAModule
from lyco_bench.adapters.algorithms.lokr import factorize
from lyco_bench.adapters.base import detect_algorithm
from lyco_bench.config import validate
from lyco_bench.errors import BadInput
from tests.helpers import one_thread, perturb, run_models, tiny_models  # noqa: F401 - autouse fixture

F64 = torch.float64


def linear(i: int, o: int) -> nn.Linear:
    return nn.Linear(i, o, dtype=F64).requires_grad_(False)


def conv(i: int, o: int, k: int, **kw) -> nn.Conv2d:
    return nn.Conv2d(i, o, k, dtype=F64, **kw).requires_grad_(False)


def randomize(module: nn.Module, seed: int = 1) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * 0.5)


def flat_rank(w: torch.Tensor) -> int:
    return int(torch.linalg.matrix_rank(w.reshape(w.shape[0], -1)))


LAYERS = {
    "linear": (lambda: linear(16, 12), (2, 5, 16)),
    "conv3x3": (lambda: conv(8, 12, 3, stride=2, padding=1), (2, 8, 9, 7)),
    "conv3x3-dilated": (lambda: conv(8, 12, 3, padding=2, dilation=2), (1, 8, 7, 6)),
    "conv1x1": (lambda: conv(8, 12, 1), (2, 8, 5, 5)),
}
SETTINGS = {
    "glora": dict(dim=3, alpha=1.5),
    "glora-rank1": dict(dim=1, alpha=2.0),
    "glokr-full": dict(factor=4),
    "glokr-lowrank": dict(dim=1, alpha=2.0, factor=4),
    "glokr-tucker": dict(dim=1, alpha=2.0, factor=4, use_tucker=True),
    "glokr-both": dict(dim=1, alpha=2.0, factor=-1, decompose_both=True),
}
CASES = list(itertools.product(SETTINGS, LAYERS))


def make(setting: str, layer: str) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    build, shape = LAYERS[layer]
    return ALGORITHMS[setting.split("-")[0]](build(), **SETTINGS[setting]), torch.randn(shape, dtype=F64)


def dense_glora(m: GLoRAModule) -> torch.Tensor:
    """ΔW = s·(W0·a1·a2 + b1·b2) element by element over the kernel positions."""
    w0 = m.base.weight.detach()
    a = m.a1.detach().flatten(1) @ m.a2.detach().flatten(1)  # (in, in)
    if m.is_conv:
        positions = itertools.product(*map(range, w0.shape[2:]))
        wa = torch.stack([w0[..., h, w] @ a for h, w in positions], dim=-1).view_as(w0)
    else:
        wa = w0 @ a
    wb = (m.b1.detach().flatten(1) @ m.b2.detach().flatten(1)).view_as(w0)
    return m.scale * (wa + wb)


def dense_glokr(m: GLoKrModule) -> torch.Tensor:
    """ΔW = s·(W0·(A1 ⊗ A2) + W1 ⊗ W2) with explicit Kronecker matrices."""
    w0 = m.base.weight.detach()
    a = torch.kron(m.a1().detach(), m.a2().detach())  # (in, in)
    if m.is_conv:
        wa = torch.einsum("oihw,ij->ojhw", w0, a)
        w1, w2 = m.w1().detach(), m.w2().detach()
        wk = torch.zeros_like(w0)
        lay = m.w_layout
        for x, y, c, d in itertools.product(range(lay.out1), range(lay.in1), range(lay.out2), range(lay.in2)):
            wk[x * lay.out2 + c, y * lay.in2 + d] = w1[x, y] * w2[c, d]
    else:
        wa = w0 @ a
        wk = torch.kron(m.w1().detach(), m.w2().detach())
    return m.scale * (wa + wk)


# --- ΔW by hand and against the dense formula ------------------------------------------------------


def test_glora_linear_delta_by_hand():
    base = linear(2, 2)
    with torch.no_grad():
        base.weight.copy_(torch.tensor([[1.0, 2.0], [0.0, 1.0]]))
    m = GLoRAModule(base, dim=1, alpha=2.0)  # s = 2
    with torch.no_grad():
        m.a1.copy_(torch.tensor([[1.0], [0.0]]))  # (in, r)
        m.a2.copy_(torch.tensor([[0.0, 1.0]]))  # (r, in): a1·a2 = [[0, 1], [0, 0]]
        m.b1.copy_(torch.tensor([[1.0], [-1.0]]))  # (out, r)
        m.b2.copy_(torch.tensor([[3.0, 0.0]]))  # (r, in): b1·b2 = [[3, 0], [-3, 0]]
    # W0·a1·a2 = [[0, 1], [0, 0]]
    assert_close(m.delta_weight(), torch.tensor([[6.0, 2.0], [-6.0, 0.0]], dtype=F64))


def test_glokr_linear_delta_by_hand():
    base = linear(4, 2)
    with torch.no_grad():
        base.weight.copy_(torch.tensor([[1.0, 0, 0, 2.0], [0, 1.0, 0, 0]]))
    m = GLoKrModule(base, factor=2)  # out 2 = 1·2, in 4 = 2·2, every block full: s = 1
    assert m.scale == 1.0 and set(m.file_tensors()) == {
        "glokr_a1",
        "glokr_a2",
        "glokr_w1",
        "glokr_w2",
        "alpha",
    }
    with torch.no_grad():
        m.glokr_a1.copy_(torch.tensor([[1.0, 0], [0, 2.0]]))
        m.glokr_a2.copy_(torch.tensor([[0, 1.0], [1.0, 0]]))  # A1 ⊗ A2 swaps within pairs, ×2 in the second
        m.glokr_w1.copy_(torch.tensor([[1.0, -1.0]]))
        m.glokr_w2.copy_(torch.tensor([[1.0, 0], [0, 0]]))
    a = torch.tensor([[0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 2], [0, 0, 2, 0]], dtype=F64)
    kron = torch.tensor([[1, 0, -1, 0], [0, 0, 0, 0]], dtype=F64)
    assert_close(m.delta_weight(), base.weight @ a + kron)


@pytest.mark.parametrize(("setting", "layer"), CASES)
def test_zero_delta_at_init(setting, layer):
    m, _ = make(setting, layer)
    assert_close(m.delta_weight(), torch.zeros_like(m.base.weight), rtol=0, atol=0)
    assert any(p.abs().max() > 0 for p in m.parameters())


@pytest.mark.parametrize(("setting", "layer"), CASES)
def test_delta_weight_and_bypass_match_the_dense_formula(setting, layer):
    m, x = make(setting, layer)
    randomize(m)
    dense = dense_glora(m) if isinstance(m, GLoRAModule) else dense_glokr(m)
    assert_close(m.delta_weight(), dense)
    assert_close(m.bypass(x), m.base_op(x, dense, None))


@pytest.mark.parametrize("merged", [False, True], ids=["bypass", "merged"])
@pytest.mark.parametrize(("setting", "layer"), CASES)
def test_forward_and_grads_match_dense_formula(setting, layer, merged, monkeypatch):
    m, x = make(setting, layer)
    randomize(m)
    m.multiplier = 0.7
    monkeypatch.setattr(m, "prefers_merged", lambda _x: merged)
    x.requires_grad_(True)
    params = [x, *m.parameters()]
    y = m(x)
    ref = m.base_op(x, m.base.weight + 0.7 * m.delta_weight(), m.base.bias)
    assert_close(y, ref)
    g = torch.randn_like(y)
    got = torch.autograd.grad(y, params, g)
    want = torch.autograd.grad(ref, params, g)
    for a, b in zip(got, want, strict=True):
        assert_close(a, b)


@pytest.mark.parametrize("setting", list(SETTINGS))
def test_gradients_without_input_grad_and_multiplier_zero(setting):
    m, x = make(setting, "conv3x3")
    randomize(m)
    y = m(x)  # x needs no gradient: the factors still get theirs
    y.square().sum().backward()
    assert all(p.grad is not None and p.grad.abs().max() > 0 for p in m.parameters())
    m.multiplier = 0.0
    assert torch.equal(m(x), m.base(x))


def test_glokr_kronecker_orders_agree(monkeypatch):
    for layer in LAYERS:
        m, x = make("glokr-lowrank", layer)
        randomize(m)
        ref = m.base_op(x, m.delta_weight(), None)
        for first in (True, False):
            monkeypatch.setattr(m, "_w_orders", lambda _x, f=first: (0.0, 1.0) if f else (1.0, 0.0))
            assert_close(m.bypass(x), ref)


def test_glokr_gradcheck():
    m = GLoKrModule(linear(6, 4), dim=1, alpha=3.0, factor=2)
    randomize(m)
    params = tuple(m.parameters())
    assert torch.autograd.gradcheck(lambda *_: m.delta_weight(), params)
    x = torch.randn(3, 6, dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda inp, *_: m(inp), (x, *params))


def test_prefers_merged_follows_the_token_count():
    for cls, settings in ((GLoRAModule, dict(dim=4)), (GLoKrModule, dict(factor=4))):
        m = cls(nn.Linear(64, 64).requires_grad_(False), **settings)
        with torch.no_grad():
            assert not m.prefers_merged(torch.randn(1, 64))
            assert m.prefers_merged(torch.randn(4096, 64))


# --- ranks and parameter counts ------------------------------------------------------------------


def test_rank_bounds_are_reached():
    torch.manual_seed(0)
    cases = [
        (GLoRAModule(linear(24, 20), dim=3), 6),  # rank(W0·a1·a2) + rank(b1·b2) = 3 + 3
        (GLoRAModule(conv(16, 24, 3), dim=1), 10),  # W0·a1 keeps 9 kernel positions: 9 + 1
        (GLoRAModule(conv(8, 12, 1), dim=2), 4),
        # A1 4×4 ⊗ A2 of rank 1, plus W1 4×4 ⊗ W2 (6×4) of rank 1
        (GLoKrModule(linear(16, 24), dim=1, factor=4), 4 * 1 + 4 * 1),
        (GLoKrModule(linear(16, 16), factor=4), 16),
    ]
    for m, rank in cases:
        randomize(m)
        assert flat_rank(m.delta_weight()) == type(m).rank_bound(m.file_tensors()) == rank, m


def test_parameter_counts():
    m = GLoRAModule(conv(8, 12, 3), dim=2)
    # a1 [in, r], a2 [r, in] (1×1), b1 [out, r] (1×1), b2 [r, in, 3, 3]
    assert GLoRAModule.parameter_count(m.file_tensors()) == 8 * 2 * 2 + 12 * 2 + 2 * 8 * 9
    assert m.dim == 2 and sum(p.numel() for p in m.parameters()) == 8 * 2 * 2 + 12 * 2 + 2 * 8 * 9
    lin = nn.Linear(320, 640)
    k = GLoKrModule(lin, factor=8)  # in 320 = 8·40, out 640 = 8·80: every block full
    lokr = ALGORITHMS["lokr"](lin, factor=8)
    extra = 8 * 8 + 40 * 40  # A1 ⊗ A2 on top of LoKr's W1 ⊗ W2
    lokr_count = ALGORITHMS["lokr"].parameter_count(lokr.file_tensors())
    assert GLoKrModule.parameter_count(k.file_tensors()) == lokr_count + extra
    low = GLoKrModule(lin, dim=4, factor=8)  # A2 40×40 → 40×4 + 4×40, W2 80×40 → 80×4 + 4×40
    assert GLoKrModule.parameter_count(low.file_tensors()) == 64 + 2 * 4 * 40 + 8 * 8 + 4 * (80 + 40)
    assert low.scale == 1.0 and k.scale == 1.0  # α left out with dim 4: α = dim


# --- files ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("setting", "layer"), CASES)
def test_file_round_trip(setting, layer):
    m, x = make(setting, layer)
    randomize(m)
    tensors = m.file_tensors()
    cls = detect_algorithm(set(tensors), name="lora_unet_x")
    assert cls is type(m)
    back = cls.from_file_tensors(m.base, tensors, name="lora_unet_x")
    assert_close(back.delta_weight(), m.delta_weight())
    assert_close(back(x), m(x))
    for key, t in back.file_tensors().items():
        assert_close(t, tensors[key])


def test_glora_older_layout_is_read_by_shape():
    for base in (linear(16, 12), conv(8, 12, 1)):
        m = GLoRAModule(base, dim=3, alpha=1.5)
        randomize(m)
        t = m.file_tensors()
        # older LyCORIS: a1 [r, in], a2 [in, r], b1 [r, in], b2 [out, r]; ΔW = s·(W0·a2·a1 + b2·b1)
        old = {"a1.weight": t["a2.weight"], "a2.weight": t["a1.weight"], "b1.weight": t["b2.weight"]}
        old |= {"b2.weight": t["b1.weight"], "alpha": t["alpha"]}
        back = GLoRAModule.from_file_tensors(base, old, name="lora_unet_x")
        w0 = base.weight.flatten(1)
        want = 0.5 * (w0 @ old["a2.weight"].flatten(1) @ old["a1.weight"].flatten(1))
        want += 0.5 * old["b2.weight"].flatten(1) @ old["b1.weight"].flatten(1)
        assert_close(back.delta_weight(), want.view_as(base.weight))
        assert GLoRAModule.rank_bound(old) == GLoRAModule.rank_bound(t) == 6
    # r = in = out fits both layouts: read as the current one (what LyCORIS writes now)
    square = GLoRAModule(linear(4, 4), dim=4)
    randomize(square)
    back = GLoRAModule.from_file_tensors(square.base, square.file_tensors(), name="x")
    assert_close(back.delta_weight(), square.delta_weight())
    # the older layout had no k×k convs
    k3 = GLoRAModule(conv(8, 12, 3), dim=2).file_tensors()
    old3 = {"a1.weight": k3["a2.weight"], "a2.weight": k3["a1.weight"], "b1.weight": k3["b2.weight"]}
    with pytest.raises(BadInput, match="lora_unet_c: a1.weight has shape"):
        GLoRAModule.from_file_tensors(
            conv(8, 12, 3), old3 | {"b2.weight": k3["b1.weight"]}, name="lora_unet_c"
        )


def test_bad_files_name_the_module():
    base = linear(16, 12)
    good = GLoRAModule(base, dim=2).file_tensors()
    with pytest.raises(BadInput, match=r"^lora_unet_g: b1.weight has shape \(11, 2\)"):
        GLoRAModule.from_file_tensors(
            base, dict(good, **{"b1.weight": torch.zeros(11, 2)}), name="lora_unet_g"
        )
    with pytest.raises(BadInput, match=r"lora_unet_g: glora needs .* \(missing b2.weight\)"):
        GLoRAModule.from_file_tensors(
            base, {k: v for k, v in good.items() if k != "b2.weight"}, name="lora_unet_g"
        )
    with pytest.raises(BadInput, match="unknown key suffix 'bm.weight' for glora"):
        detect_algorithm(set(good) | {"bm.weight"}, name="lora_unet_g")
    kr = GLoKrModule(base, dim=1, factor=4).file_tensors()
    with pytest.raises(BadInput, match="lora_unet_k: glokr_a2_b has shape"):
        GLoKrModule.from_file_tensors(base, dict(kr, glokr_a2_b=torch.zeros(1, 5)), name="lora_unet_k")
    with pytest.raises(BadInput, match="lora_unet_k: glokr block W1 5×4"):
        GLoKrModule.from_file_tensors(base, dict(kr, glokr_w1=torch.zeros(5, 4)), name="lora_unet_k")
    with pytest.raises(BadInput, match="lora_unet_k: glokr needs glokr_a2 or"):
        GLoKrModule.from_file_tensors(
            base, {k: v for k, v in kr.items() if not k.startswith("glokr_a2")}, name="lora_unet_k"
        )
    with pytest.raises(BadInput, match="lora_unet_k: glokr_t2 given"):
        GLoKrModule.from_file_tensors(base, dict(kr, glokr_t2=torch.zeros(1, 1, 3, 3)), name="lora_unet_k")
    assert (
        detect_algorithm({"glokr_a1", "glokr_a2", "glokr_w1", "glokr_w2", "alpha"}, name="k") is GLoKrModule
    )
    assert detect_algorithm(set(good), name="g") is GLoRAModule


# --- settings ------------------------------------------------------------------------------------


def test_spec_settings_and_defaults():
    assert AdapterSpec(algo="glora", dim=4).options == {"dim": 4, "alpha": 4.0}  # only dim: α = dim
    assert AdapterSpec(algo="glora").options == {"dim": 8, "alpha": 4.0}
    assert AdapterSpec(algo="glokr").options == {
        "dim": 10000,
        "alpha": 1.0,
        "factor": 8,
        "use_tucker": False,
        "decompose_both": False,
    }
    spec = AdapterSpec(algo="glokr", factor=4, dim=2, conv_dim=1)
    assert (spec.options["factor"], spec.options["dim"], spec.options["alpha"]) == (4, 2, 2.0)
    assert (spec.conv_options["factor"], spec.conv_options["dim"]) == (4, 1)
    with pytest.raises(
        ValidationError, match=r"use_tucker: not a setting of glora \(its settings: dim, alpha\)"
    ):
        AdapterSpec(algo="glora", use_tucker=True)
    with pytest.raises(BadInput, match=r"factor: not a setting of glora"):
        validate(AdapterSpec, {"algo": "glora", "factor": 4}, source="x")
    with pytest.raises(BadInput, match=r"rank: not a setting of glokr"):
        validate(AdapterSpec, {"algo": "glokr", "rank": 4}, source="x")
    with pytest.raises(BadInput, match=r"factor"):
        validate(AdapterSpec, {"algo": "glokr", "factor": 0}, source="x")
    with pytest.raises(BadInput, match=r"dim"):
        validate(AdapterSpec, {"algo": "glora", "dim": 0}, source="x")
    with pytest.raises(BadInput, match=r"glora.*unknown_opt"):
        GLoRAModule(linear(4, 4), unknown_opt=1)


def test_glokr_blocks_follow_the_factor_rule():
    m = GLoKrModule(nn.Linear(320, 1280), dim=4, factor=8)
    assert (m.w_layout.out1, m.w_layout.out2) == factorize(1280, 8)
    assert (m.a_layout.in1, m.a_layout.in2) == factorize(320, 8) == (m.w_layout.in1, m.w_layout.in2)
    assert (m.a_layout.w1_rank, m.a_layout.w2_rank, m.w_layout.w2_rank) == (None, 4, 4)
    assert m.scale == 1.0  # α = dim
    assert GLoKrModule(nn.Linear(320, 1280), dim=4, alpha=2.0, factor=8).scale == 0.5
    assert GLoKrModule(nn.Linear(320, 1280), alpha=3.0, factor=8).scale == 1.0  # every block full


# --- the tiny models: inject, train, save, load, merge --------------------------------------------

SPECS = {
    "glora": AdapterSpec(algo="glora", dim=4, alpha=2, preset="full"),
    "glokr": AdapterSpec(algo="glokr", dim=2, alpha=1, factor=4, preset="full"),
    "glokr-full": AdapterSpec(algo="glokr", factor=-1, preset="attn-mlp"),
}


@pytest.mark.parametrize("case", list(SPECS))
def test_tiny_models_inject_save_load_merge(tmp_path, case):
    spec = SPECS[case]
    unet, te = tiny_models(0)
    base = run_models(unet, te)
    torch.manual_seed(0)
    net = inject(unet, te, spec)
    assert torch.equal(run_models(unet, te)[0], base[0])  # ΔW = 0 at init
    perturb(net, scale=0.1)
    ours = run_models(unet, te)
    assert all((a - b).abs().max() > 1e-3 for a, b in zip(ours, base, strict=True))
    path = tmp_path / "a.safetensors"
    net.save(path, metadata={"base_model": "tiny"})
    net.remove()

    file = load_adapter(path)
    assert file.algorithms() == {spec.algo: len(net.adapters)}
    # resume into a fresh network: same outputs unmerged
    unet2, te2 = tiny_models(0)
    torch.manual_seed(1)
    net2 = inject(unet2, te2, spec)
    net2.load_weights(path)
    for got, want in zip(run_models(unet2, te2), ours, strict=True):
        assert_close(got, want, rtol=1e-5, atol=1e-5)
    net2.remove()
    # merged into the weights: the unmerged outputs; unmerged: the base bit for bit
    before = [{k: v.clone() for k, v in m.state_dict().items()} for m in (unet2, te2)]
    handle = merge_adapters(unet2, te2, [(path, 1.0)])
    for got, want in zip(run_models(unet2, te2), ours, strict=True):
        assert_close(got, want, rtol=1e-4, atol=1e-4)
    unmerge_adapters(handle)
    for model, snap in zip((unet2, te2), before, strict=True):
        assert all(torch.equal(v, snap[k]) for k, v in model.state_dict().items())
    deltas = delta_weights(file, unet2, te2)
    key = next(iter(deltas))
    assert deltas[key][0].shape == handle.originals[key][1].shape


# --- LyCORIS as the oracle for GLoRA ----------------------------------------------------------------


LYCO_LAYERS = {
    "linear": (lambda: nn.Linear(16, 12), (3, 16)),
    "conv3x3": (lambda: nn.Conv2d(8, 12, 3, stride=2, padding=1), (2, 8, 9, 7)),
    "conv1x1": (lambda: nn.Conv2d(8, 12, 1), (2, 8, 5, 5)),
}


@pytest.mark.parametrize("layer", list(LYCO_LAYERS))
def test_glora_layer_matches_lycoris_both_ways(layer):
    modules = pytest.importorskip("lycoris.modules")
    build, shape = LYCO_LAYERS[layer]
    torch.manual_seed(0)
    base = build().double().requires_grad_(False)
    x = torch.randn(shape, dtype=F64)
    # LyCORIS's module → its state dict → ours
    lyco = modules.GLoRAModule("x", base, 1.0, lora_dim=3, alpha=1.5).double()
    assert {k: tuple(v.shape) for k, v in lyco.state_dict().items()} == {
        k: tuple(v.shape) for k, v in GLoRAModule(base, dim=3, alpha=1.5).file_tensors().items()
    }
    assert_close(lyco(x), base(x), rtol=0, atol=0)  # LyCORIS's init is ΔW = 0 too
    randomize(lyco, seed=2)
    mine = GLoRAModule.from_file_tensors(base, lyco.state_dict(), name="x")
    assert_close(mine(x), lyco(x), rtol=1e-12, atol=1e-12)
    assert_close(mine.delta_weight(), lyco.get_diff_weight()[0], rtol=1e-12, atol=1e-12)
    # ours → LyCORIS's loader
    mine = GLoRAModule(base, dim=2, alpha=3.0)
    randomize(mine, seed=3)
    with torch.no_grad():  # LyCORIS's loader builds float32 factors: give it float32 values
        for p in mine.parameters():
            p.copy_(p.float())
    t = mine.file_tensors()
    theirs = modules.GLoRAModule.make_module_from_state_dict(
        "x", base, t["a1.weight"], t["a2.weight"], t["b1.weight"], t["b2.weight"], None, t["alpha"]
    ).double()
    assert_close(theirs(x), mine(x), rtol=1e-12, atol=1e-12)


@pytest.fixture
def lycoris_tools():
    pytest.importorskip("lycoris")
    from tests import helpers as interop

    return interop


def test_lycoris_loads_our_glora_file_and_gives_our_outputs(tmp_path, lycoris_tools):
    from lycoris import create_lycoris_from_weights
    from lycoris.utils.preset import read_preset
    from lycoris.wrapper import LycorisNetwork

    spec = SPECS["glora"]
    unet, te = tiny_models(0)
    torch.manual_seed(0)
    net = inject(unet, te, spec)
    perturb(net, scale=0.1)
    ours = run_models(unet, te)
    path = tmp_path / "ours.safetensors"
    net.save(path)
    net.remove()

    fresh_unet, fresh_te = tiny_models(0)
    count = 0
    for module, prefix in ((fresh_unet, "lora_unet"), (lycoris_tools.TextModelHolder(fresh_te), "lora_te")):
        with lycoris_tools.lycoris_preset(tmp_path, f'lora_prefix = "{prefix}"\n', prefix) as preset_path:
            LycorisNetwork.apply_preset(read_preset(preset_path))
            network, _ = create_lycoris_from_weights(1.0, str(path), module)
            network.apply_to()
            count += len(network.loras)
    assert count == len(load_adapter(path).modules)
    for got, want in zip(run_models(fresh_unet, fresh_te), ours, strict=True):
        assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_we_load_lycoris_glora_files_and_give_their_outputs(tmp_path, lycoris_tools):
    from lycoris import create_lycoris

    from lyco_bench.adapters.fileformat import adapter_file_from_tensors

    unet, te = tiny_models(0)
    torch.manual_seed(0)
    networks = []
    presets = (
        (unet, lycoris_tools.UNET_PRESET, "unet"),
        (lycoris_tools.TextModelHolder(te), lycoris_tools.TE_PRESET, "te"),
    )
    for module, preset, name in presets:
        with lycoris_tools.lycoris_preset(tmp_path, preset, name) as preset_path:
            network = create_lycoris(
                module, 1.0, preset=preset_path, algo="glora", linear_dim=4, linear_alpha=2
            )
            network.apply_to()
            perturb(network, scale=0.1, seed=3 if name == "unet" else 4)
            networks.append(network)
    theirs = run_models(unet, te)
    state: dict[str, torch.Tensor] = {}
    for i, network in enumerate(networks):
        path = tmp_path / f"lycoris-{i}.safetensors"
        network.save_weights(str(path), torch.float32, {"ss_network_module": "lycoris.kohya"})
        state.update(load_adapter(path).tensors)
    file = adapter_file_from_tensors(state)
    assert set(file.algorithms()) == {"glora"}
    from lyco_bench.adapters import find_targets

    assert set(file.modules) == {t.key for t in find_targets(*tiny_models(0), SPECS["glora"])}
    fresh_unet, fresh_te = tiny_models(0)
    base = run_models(fresh_unet, fresh_te)
    assert all((a - b).abs().max() > 1e-3 for a, b in zip(base, theirs, strict=True))
    merge_adapters(fresh_unet, fresh_te, [(file, 1.0)])
    for got, want in zip(run_models(fresh_unet, fresh_te), theirs, strict=True):
        assert_close(got, want, rtol=1e-4, atol=1e-4)
    # and unmerged, through our forward
    unet3, te3 = tiny_models(0)
    torch.manual_seed(0)
    net = inject(unet3, te3, SPECS["glora"])
    for key, module in net.adapters.items():
        rebuilt = GLoRAModule.from_file_tensors(module.base, file.module_tensors(key), name=key)
        with torch.no_grad():
            for name, p in module.named_parameters():
                p.copy_(getattr(rebuilt, name))
    for got, want in zip(run_models(unet3, te3), theirs, strict=True):
        assert_close(got, want, rtol=1e-4, atol=1e-4)
    assert math.isclose(float(file.module_tensors(next(iter(file.modules)))["alpha"]), 2.0)
