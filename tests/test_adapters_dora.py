"""DoRA on LoRA, LoHa and LoKr: ΔW by hand, init, forward and gradients against the dense formula,
files, LyCORIS (``weight_decompose``) and PEFT (``use_dora``) as oracles, a tiny UNet end to end."""

from __future__ import annotations

import itertools
import logging

import pytest
import torch
from torch import nn
from torch.testing import assert_close

from lyco_bench.adapters import AdapterSpec, inject, load_adapter, merge_adapters, unmerge_adapters
from lyco_bench.adapters.algorithms.lora import LoRAModule
from lyco_bench.adapters.base import ALGORITHMS, detect_algorithm
from lyco_bench.config import validate
from lyco_bench.errors import BadInput
from tests.helpers import F64, conv, linear, one_thread, perturb, run_models, set_params, tiny_models  # noqa: F401 - autouse fixture

LAYERS = {
    "linear": (lambda: linear(32, 24), (2, 5, 32)),
    "conv3x3": (lambda: conv(32, 24, 3, stride=2, padding=1), (2, 32, 7, 6)),
    "conv1x1": (lambda: conv(32, 24, 1), (2, 32, 4, 4)),
}
SETTINGS = {
    "lora": dict(dim=3, alpha=1.5),
    "lora-tucker": dict(dim=3, alpha=1.5, use_tucker=True),
    "loha": dict(dim=2, alpha=1.0),
    "loha-tucker": dict(dim=2, alpha=1.0, use_tucker=True),
    "lokr-lowrank": dict(dim=2, alpha=1.0, factor=4),
    "lokr-full": dict(dim=10000, factor=4),
    "lokr-tucker": dict(dim=2, alpha=1.0, factor=4, use_tucker=True),
    "lokr-both": dict(dim=1, alpha=2.0, factor=-1, decompose_both=True),
}
CASES = list(itertools.product(SETTINGS, LAYERS))


def make(setting: str, layer: str, *, seed: int = 0):
    """A DoRA module with random factors and magnitude (ΔW ≠ 0), and an input."""
    torch.manual_seed(seed)
    build, shape = LAYERS[layer]
    module = ALGORITHMS[setting.split("-")[0]](build(), **SETTINGS[setting], dora=True)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * 0.3)
    return module, torch.randn(shape, dtype=F64)


def dora_dense(w0: torch.Tensor, u: torch.Tensor, m: torch.Tensor, *, per_output: bool = True):
    """The paper's ΔW = m·(W0 + U)/‖W0 + U‖ − W0 with the norm a constant (its §4.3)."""
    v = w0 + u
    keep = 0 if per_output else 1
    dims = [d for d in range(v.dim()) if d != keep]
    return m * v / v.detach().square().sum(dims, keepdim=True).sqrt() - w0


def column_scale(module) -> None:
    """Turn a module's magnitude into a per-input-column one, as a file written that way gives."""
    w0 = module.base.weight
    m = w0.transpose(0, 1).reshape(w0.shape[1], -1).norm(dim=1)  # ‖W0‖ of each input column
    m = (m * 1.3).reshape(1, w0.shape[1], *([1] * (w0.dim() - 2)))
    module.load_dora_scale({"dora_scale": m}, name="x")
    assert not module.dora_per_output and module.dora_scale.shape == m.shape


# --- ΔW -------------------------------------------------------------------------------------------


def test_lora_dora_delta_by_hand():
    base = linear(2, 2, bias=False)
    with torch.no_grad():
        base.weight.copy_(torch.tensor([[3.0, 0.0], [0.0, 4.0]]))
    m = LoRAModule(base, dim=1, alpha=1.0, dora=True)
    assert_close(m.dora_scale, torch.tensor([[3.0], [4.0]], dtype=F64))  # ‖W0‖ of each row
    set_params(m, lora_down=[[1, 0]], lora_up=[[0], [3]], dora_scale=[[6], [10]])
    # V = W0 + B·A = [[3, 0], [3, 4]], row norms 3 and 5: W′ = [[6, 0], [6, 8]]
    assert_close(m.delta_weight(), torch.tensor([[3.0, 0.0], [6.0, 4.0]], dtype=F64))
    assert_close(m.merged_weight(), torch.tensor([[6.0, 0.0], [6.0, 8.0]], dtype=F64))
    x = torch.tensor([[1.0, 1.0]], dtype=F64)
    assert_close(m(x), torch.tensor([[6.0, 14.0]], dtype=F64))


@pytest.mark.parametrize(("setting", "layer"), CASES)
def test_delta_is_the_decomposed_update_row_by_row(setting, layer):
    m, _ = make(setting, layer)
    w0, u = m.base.weight, m.update_weight().detach()
    v = w0 + u
    expected = torch.empty_like(w0)
    for o in range(w0.shape[0]):  # W′[o] = m[o]·V[o]/‖V[o]‖
        row_norm = v[o].square().sum().sqrt()
        expected[o] = m.dora_scale[o].detach() * v[o] / row_norm - w0[o]
    assert_close(m.delta_weight(), expected)
    # the update is the algorithm's own ΔW: the same factors without dora give it
    plain = type(m).from_file_tensors(
        m.base, {k: v for k, v in m.file_tensors().items() if k != "dora_scale"}, name="x"
    )
    assert not plain.dora
    assert_close(plain.delta_weight(), u)


@pytest.mark.parametrize("layer", ["linear", "conv3x3"])
def test_per_input_column_delta_by_hand(layer):
    m, _ = make("lora", layer)
    column_scale(m)
    w0, v = m.base.weight, m.base.weight + m.update_weight().detach()
    expected = torch.empty_like(w0)
    for i in range(w0.shape[1]):  # W′[:, i] = m[i]·V[:, i]/‖V[:, i]‖
        expected[:, i] = m.dora_scale[0, i].detach() * v[:, i] / v[:, i].square().sum().sqrt() - w0[:, i]
    assert_close(m.delta_weight(), expected)


@pytest.mark.parametrize(("setting", "layer"), CASES)
def test_zero_delta_and_base_output_at_init(setting, layer):
    torch.manual_seed(0)
    build, shape = LAYERS[layer]
    m = ALGORITHMS[setting.split("-")[0]](build(), **SETTINGS[setting], dora=True)
    x = torch.randn(shape, dtype=F64)
    assert_close(m.delta_weight(), torch.zeros_like(m.base.weight), rtol=0, atol=0)
    for merged in (False, True):
        m.dora_prefers_merged = lambda _x, merged=merged: merged
        assert torch.equal(m(x), m.base(x))


# --- forward and gradients ------------------------------------------------------------------------


@pytest.mark.parametrize("per_output", [True, False], ids=["rows", "columns"])
@pytest.mark.parametrize("merged", [False, True], ids=["bypass", "merged"])
@pytest.mark.parametrize(("setting", "layer"), CASES)
def test_forward_and_grads_match_the_dense_formula(setting, layer, merged, per_output, monkeypatch):
    m, x = make(setting, layer)
    if not per_output:
        column_scale(m)
    m.multiplier = 0.7
    monkeypatch.setattr(m, "dora_prefers_merged", lambda _x: merged)
    x.requires_grad_(True)
    params = [x, *m.parameters()]

    def dense(inp: torch.Tensor) -> torch.Tensor:
        dw = dora_dense(m.base.weight, m.update_weight(), m.dora_scale, per_output=per_output)
        return m.base_op(inp, m.base.weight + 0.7 * dw, m.base.bias)

    y, ref = m(x), dense(x)
    assert_close(y, ref)
    assert_close(m.bypass(x), m.base_op(x, m.delta_weight(), None))
    assert_close(m.merged_weight(), m.base.weight + 0.7 * m.delta_weight())
    g = torch.randn_like(y)
    for got, want in zip(torch.autograd.grad(y, params, g), torch.autograd.grad(ref, params, g), strict=True):
        assert_close(got, want)
    monkeypatch.undo()
    with torch.no_grad():  # inference: whichever path the module prefers
        assert_close(m(x), ref)


@pytest.mark.parametrize("setting", ["lora", "loha", "lokr-lowrank"])
def test_the_norm_passes_no_gradient(setting):
    """dL/dθ = r·dL/dW′ through U alone, as the paper's §4.3 (not through ‖V‖)."""
    m, _ = make(setting, "linear")
    grad_w = torch.randn_like(m.base.weight)
    got = dict(zip([n for n, _ in m.named_parameters()], m.delta_weight_vjp(grad_w), strict=True))
    v = (m.base.weight + m.update_weight()).detach()
    norm = v.norm(dim=1, keepdim=True)
    assert_close(got["dora_scale"], (grad_w * v).sum(1, keepdim=True) / norm)
    want = m.update_vjp(grad_w * m.dora_scale.detach() / norm)
    for (name, _), w in zip(m.named_update_parameters(), want, strict=True):
        assert_close(got[name], w)


@pytest.mark.parametrize("setting", ["lora", "loha", "lokr-lowrank"])
def test_autocast_trains_and_stays_close(setting):
    torch.manual_seed(0)
    base = nn.Linear(32, 24).requires_grad_(False)
    m = ALGORITHMS[setting.split("-")[0]](base, **SETTINGS[setting], dora=True)
    perturb(m, scale=0.1)
    x = torch.randn(64, 32, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = m(x)
    y.float().sum().backward()
    assert all(p.grad is not None for p in m.parameters())
    with torch.no_grad():
        ref = m.base_op(x, m.merged_weight(), base.bias)
    assert_close(y.float(), ref, atol=0.1, rtol=0.05)


# --- files, settings, labels ----------------------------------------------------------------------


@pytest.mark.parametrize(("setting", "layer"), CASES)
def test_file_round_trip(setting, layer):
    m, _ = make(setting, layer)
    tensors = m.file_tensors()
    w0 = m.base.weight
    assert tensors["dora_scale"].shape == (w0.shape[0], *([1] * (w0.dim() - 1)))
    cls = detect_algorithm(set(tensors), name="lora_unet_x")
    assert cls is type(m)
    back = cls.from_file_tensors(m.base, tensors, name="lora_unet_x")
    assert back.dora
    assert_close(back.delta_weight(), m.delta_weight())
    assert back.file_tensors().keys() == tensors.keys()
    for key, t in back.file_tensors().items():
        assert_close(t, tensors[key])


def test_per_column_file_round_trip_and_bad_shapes():
    m, x = make("loha", "conv3x3")
    column_scale(m)
    tensors = m.file_tensors()
    assert tensors["dora_scale"].shape == (1, 32, 1, 1)
    back = type(m).from_file_tensors(m.base, tensors, name="k")
    assert not back.dora_per_output
    assert_close(back(x), m(x))
    flat = dict(tensors, dora_scale=m.dora_scale.detach().new_ones(24))  # (out,): per row
    assert type(m).from_file_tensors(m.base, flat, name="k").dora_per_output
    bad = dict(tensors, dora_scale=torch.ones(5, 1))
    with pytest.raises(
        BadInput, match=r"^lora_unet_k: dora_scale has shape \(5, 1\), expected \(24, 1, 1, 1\)"
    ):
        type(m).from_file_tensors(m.base, bad, name="lora_unet_k")


def test_settings_labels_and_rank_bounds():
    spec = AdapterSpec(algo="lokr", dora=True, dim=4, factor=8)
    assert spec.options["dora"] is True and spec.label() == "lokr+dora"
    assert AdapterSpec(algo="lokr", factor=8).label() == "lokr"
    assert AdapterSpec(algo="lora", dora=True).label() == "lora+dora"
    assert validate(AdapterSpec, {"algo": "loha", "dora": True}, source="x").label() == "loha+dora"
    with pytest.raises(BadInput, match=r"dora: not a setting of native"):
        validate(AdapterSpec, {"algo": "native", "dora": True}, source="x")
    with pytest.raises(ValueError, match=r"dora: not a setting of native"):
        AdapterSpec(algo="native", dora=True)
    with pytest.raises(BadInput, match=r"dora"):
        LoRAModule(linear(4, 4), dora="often")
    for setting in ("lora", "loha", "lokr-lowrank"):
        m, _ = make(setting, "conv3x3")
        tensors = m.file_tensors()
        plain = {k: v for k, v in tensors.items() if k != "dora_scale"}
        assert type(m).rank_bound(plain) < 24  # the update alone is low-rank …
        assert type(m).rank_bound(tensors) == 24  # … W′ − W0 rescales W0 too
        assert int(torch.linalg.matrix_rank(m.delta_weight().reshape(24, -1))) == 24


# --- LyCORIS as the oracle (weight_decompose) ------------------------------------------------------

LYCORIS_CASES = {
    "lora": ("LoConModule", {}),
    "lora-tucker": ("LoConModule", {"use_tucker": True}),
    "loha": ("LohaModule", {}),
    "loha-tucker": ("LohaModule", {"use_tucker": True}),
    "lokr-lowrank": ("LokrModule", {"factor": 4}),
    "lokr-full": ("LokrModule", {"factor": 4}),
    "lokr-tucker": ("LokrModule", {"factor": 4, "use_tucker": True}),
    "lokr-both": ("LokrModule", {"factor": -1, "decompose_both": True}),
}


def lycoris_module(setting: str, base: nn.Module, **kw):
    modules = pytest.importorskip("lycoris.modules")
    logging.getLogger("LyCORIS").setLevel(logging.ERROR)
    name, theirs = LYCORIS_CASES[setting]
    ours = SETTINGS[setting]
    cls = getattr(modules, name)
    alpha = ours.get("alpha", ours["dim"])
    return cls, cls("x", base, lora_dim=ours["dim"], alpha=alpha, weight_decompose=True, **theirs, **kw)


@pytest.mark.parametrize("on_out", [True, False], ids=["rows", "columns"])
@pytest.mark.parametrize(("setting", "layer"), CASES)
def test_we_load_lycoris_modules_and_give_their_outputs(setting, layer, on_out):
    build, shape = LAYERS[layer]
    torch.manual_seed(0)
    base = build()
    _, lyco = lycoris_module(setting, base, wd_on_out=on_out)
    lyco = lyco.double()
    gen = torch.Generator().manual_seed(2)
    state = {
        k: v + (0.3 * torch.randn(v.shape, generator=gen, dtype=v.dtype) if k != "alpha" else 0)
        for k, v in lyco.state_dict().items()
    }
    lyco.load_state_dict(state)
    w0, ones = base.weight, (1,) * (base.weight.dim() - 2)
    assert state["dora_scale"].shape == ((w0.shape[0], 1, *ones) if on_out else (1, w0.shape[1], *ones))
    ours = ALGORITHMS[setting.split("-")[0]].from_file_tensors(base, state, name="x")
    assert ours.dora and ours.dora_per_output == on_out
    x = torch.randn(shape, dtype=F64)
    with torch.no_grad():
        want = lyco(x)
        assert_close(ours(x), want)
        assert_close(ours.base_op(x, ours.merged_weight(), base.bias), want)


@pytest.mark.parametrize(("setting", "layer"), CASES)
def test_lycoris_loads_our_modules_and_gives_our_outputs(setting, layer):
    if setting == "lokr-tucker" and layer == "conv3x3":
        # with or without DoRA: its loader takes the rank from lokr_w2_a's 2nd side, out₂ under Tucker
        pytest.skip("LyCORIS's loader cannot rebuild a Tucker LoKr")
    m, x = make(setting, layer)
    cls, _ = lycoris_module(setting, m.base)
    from lycoris.modules import get_module, make_module  # what its file loader runs per module

    found, params = get_module({f"x.{k}": v for k, v in m.file_tensors().items()}, "x")
    assert found is cls
    lyco = make_module(cls, params, "x", m.base)
    assert lyco.wd
    lyco = lyco.double()
    lyco.load_state_dict(m.file_tensors())  # its loader keeps dora_scale in float32: restore float64
    with torch.no_grad():
        assert_close(lyco(x), m(x))


# --- PEFT as the oracle (LoRA with use_dora) -------------------------------------------------------


class TwoLayers(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(32, 24)
        self.conv = nn.Conv2d(32, 24, 3, stride=2, padding=1)


@pytest.mark.parametrize("layer", ["lin", "conv"])
def test_lora_dora_matches_peft_outputs_and_gradients(layer):
    peft = pytest.importorskip("peft")
    torch.manual_seed(0)
    model = peft.get_peft_model(
        TwoLayers().double(),
        peft.LoraConfig(r=3, lora_alpha=1.5, use_dora=True, target_modules=["lin", "conv"]),
    )
    theirs = getattr(model.base_model.model, layer)
    a, b = theirs.lora_A["default"].weight, theirs.lora_B["default"].weight
    mag = theirs.lora_magnitude_vector["default"].weight
    base = theirs.get_base_layer()
    ours = LoRAModule(base, dim=3, alpha=1.5, dora=True)
    assert_close(ours.dora_scale.flatten(), mag.detach().flatten())  # both start at ‖W0‖
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in (a, b, mag):
            p.add_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * 0.3)
        ours.lora_down.copy_(a.reshape(ours.lora_down.shape))
        ours.lora_up.copy_(b.reshape(ours.lora_up.shape))
        ours.dora_scale.copy_(mag.reshape(ours.dora_scale.shape))
    shape = (2, 5, 32) if layer == "lin" else (2, 32, 7, 6)
    x = torch.randn(shape, dtype=F64, requires_grad=True)
    y, want = ours(x), theirs(x)
    assert_close(y, want)
    g = torch.randn_like(y)
    got = torch.autograd.grad(y, [x, ours.lora_down, ours.lora_up, ours.dora_scale], g)
    ref = torch.autograd.grad(want, [x, a, b, mag], g)
    for ours_grad, peft_grad in zip(got, ref, strict=True):
        assert_close(ours_grad.flatten(), peft_grad.flatten())


# --- a tiny UNet + text encoder end to end -------------------------------------------------------

NETWORKS = {
    "lora": (AdapterSpec(algo="lora", dim=4, alpha=2, dora=True, preset="full"), dict(algo="lora")),
    "loha": (AdapterSpec(algo="loha", dim=2, alpha=1, dora=True, preset="full"), dict(algo="loha")),
    "lokr": (
        AdapterSpec(algo="lokr", dim=2, alpha=1, factor=4, dora=True, preset="full"),
        dict(algo="lokr", factor=4),
    ),
}


@pytest.mark.parametrize("case", list(NETWORKS))
def test_inject_save_load_merge_unmerge(tmp_path, case):
    spec, _ = NETWORKS[case]
    unet, te = tiny_models(0)
    base = run_models(unet, te)
    torch.manual_seed(0)
    net = inject(unet, te, spec)
    assert all(m.dora for m in net.adapters.values())
    for got, want in zip(run_models(unet, te), base, strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=0)  # W′ = W0 at init
    perturb(net, scale=0.1)
    trained = run_models(unet, te)
    net.set_multiplier(0.5)
    half = run_models(unet, te)
    net.set_multiplier(1.0)
    path = tmp_path / "dora.safetensors"
    net.save(path)
    file = load_adapter(path)
    assert file.algorithms() == {case: len(net.adapters)}
    assert all(f"{key}.dora_scale" in file.tensors for key in file.modules)

    unet2, te2 = tiny_models(0)
    torch.manual_seed(1)
    net2 = inject(unet2, te2, spec)
    net2.load_weights(path)  # resume
    for got, want in zip(run_models(unet2, te2), trained, strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    net2.remove()
    before = [layer.weight.detach().clone() for layer in unet2.modules() if isinstance(layer, nn.Conv2d)]
    for lam, want_outputs in ((1.0, trained), (0.5, half)):
        handle = merge_adapters(unet2, te2, [(path, lam)])
        for got, want in zip(run_models(unet2, te2), want_outputs, strict=True):
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
        unmerge_adapters(handle)
    after = [layer.weight for layer in unet2.modules() if isinstance(layer, nn.Conv2d)]
    assert all(torch.equal(a, b) for a, b in zip(after, before, strict=True))
    for got, want in zip(run_models(unet2, te2), base, strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=0)


@pytest.mark.parametrize("case", list(NETWORKS))
def test_lycoris_networks_with_dora_both_ways(tmp_path, case):
    """Our file in create_lycoris_from_weights gives our outputs; a file LyCORIS's network writes
    (dora_wd, weights per output row and per input column) merged by us gives LyCORIS's outputs."""
    pytest.importorskip("lycoris")
    from lycoris import create_lycoris, create_lycoris_from_weights
    from lycoris.utils.preset import read_preset
    from lycoris.wrapper import LycorisNetwork

    from lyco_bench.adapters.fileformat import adapter_file_from_tensors
    from tests.helpers import TE_PRESET, UNET_PRESET, TextModelHolder, lycoris_preset

    spec, lyco_args = NETWORKS[case]
    unet, te = tiny_models(0)
    torch.manual_seed(0)
    net = inject(unet, te, spec)
    perturb(net, scale=0.1)
    ours = run_models(unet, te)
    path = tmp_path / "ours.safetensors"
    net.save(path)
    fresh_unet, fresh_te = tiny_models(0)
    for module, prefix in ((fresh_unet, "lora_unet"), (TextModelHolder(fresh_te), "lora_te")):
        with lycoris_preset(tmp_path, f'lora_prefix = "{prefix}"\n', prefix) as preset_path:
            LycorisNetwork.apply_preset(read_preset(preset_path))
            network, _ = create_lycoris_from_weights(1.0, str(path), module)
            network.apply_to()
            assert all(lora.wd for lora in network.loras)
    for got, want in zip(run_models(fresh_unet, fresh_te), ours, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)

    for on_out in (True, False):
        unet, te = tiny_models(0)
        torch.manual_seed(0)
        state: dict[str, torch.Tensor] = {}
        for i, (module, preset, name) in enumerate(
            ((unet, UNET_PRESET, "unet"), (TextModelHolder(te), TE_PRESET, "te"))
        ):
            with lycoris_preset(tmp_path, preset, name) as preset_path:
                network = create_lycoris(
                    module, 1.0, preset=preset_path, linear_dim=spec.options["dim"],
                    linear_alpha=spec.options["alpha"], dora_wd=True, wd_on_output=on_out, **lyco_args,
                )  # fmt: skip
                network.apply_to()
                perturb(network, scale=0.1, seed=3 + i)
            file_path = tmp_path / f"lycoris-{name}-{on_out}.safetensors"
            network.save_weights(str(file_path), torch.float32, {"ss_network_module": "lycoris.kohya"})
            state.update(load_adapter(file_path).tensors)
        scales = [t for key, t in state.items() if key.endswith(".dora_scale")]
        assert scales and all((t.shape[0] == 1) != on_out for t in scales)  # rows or columns
        theirs = run_models(unet, te)
        file = adapter_file_from_tensors(state)
        assert {cls.algo for cls in file.modules.values()} == {case}
        fresh_unet, fresh_te = tiny_models(0)
        merge_adapters(fresh_unet, fresh_te, [(file, 1.0)])
        for got, want in zip(run_models(fresh_unet, fresh_te), theirs, strict=True):
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
