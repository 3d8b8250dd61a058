"""Hypernetworks (A1111's) on the tiny model: k/v against a hand computation of A1111's formula,
exact merge, processors restored, files (ours and A1111's .pt), generation and training."""

from __future__ import annotations

import json
from collections import OrderedDict
from pathlib import Path

import pytest
import torch

from lyco_bench.adapters import ALGORITHMS, AdapterModule
from lyco_bench.errors import BadInput
from lyco_bench.methods import method_of_file
from lyco_bench.methods.hypernetwork import Hypernetwork, attention_layers
from lyco_bench.training import RunConfig

SELF_64 = "mid_block.attentions.0.transformer_blocks.0.attn1"  # self-attention, context width 64
CROSS_32 = "mid_block.attentions.0.transformer_blocks.0.attn2"  # cross-attention, text width 32
SELF_32 = "down_blocks.0.attentions.0.transformer_blocks.0.attn1"  # self-attention, width 32


class Payload:
    """A pickled class: torch.load(weights_only=True) must refuse it."""


@pytest.fixture(scope="module")
def pipe(tiny_model_dir):
    from lyco_bench.models import load_pipeline

    return load_pipeline(str(tiny_model_dir))


def _module(pipe, name):
    return dict(pipe.unet.named_modules())[name]


def _randomize(method: Hypernetwork, std: float = 0.2, seed: int = 0) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in method.parameters():
            param.copy_(torch.randn(param.shape, generator=gen) * std)


def _unet_inputs(seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    return (
        torch.randn(2, 4, 8, 8, generator=gen),
        torch.tensor([10, 500]),
        torch.randn(2, 7, 32, generator=gen),
    )


def _unet_out(pipe):
    x, t, c = _unet_inputs()
    with torch.no_grad():
        return pipe.unet(x, t, c).sample


# --- the maths: A1111's formula by hand ----------------------------------------------------------
def _hand_mlp(c, t, prefix, layers):
    """A1111's MLP in float64 from the file tensors: layers = [(kind, index)] in order."""
    h = c
    for kind, index in layers:
        w = t.get(f"{prefix}.{index}.weight")
        b = t.get(f"{prefix}.{index}.bias")
        if kind == "linear":
            h = h @ w.T + b
        elif kind == "relu":
            h = torch.clamp(h, min=0)
        elif kind == "ln":
            mean = h.mean(-1, keepdim=True)
            var = ((h - mean) ** 2).mean(-1, keepdim=True)
            h = (h - mean) / torch.sqrt(var + 1e-5) * w + b
    return h


LAYOUTS = {  # A1111's layer lists for [1, 2, 1]: where each layer sits
    ("linear", False): [("linear", 0), ("linear", 1)],
    ("linear", True): [("linear", 0), ("ln", 1), ("linear", 2), ("ln", 3)],
    ("relu", False): [("linear", 0), ("relu", 1), ("linear", 2)],
    ("relu", True): [("linear", 0), ("relu", 1), ("ln", 2), ("linear", 3), ("ln", 4)],
}


@pytest.mark.parametrize(("activation", "layer_norm"), list(LAYOUTS))
def test_keys_and_values_follow_a1111s_formula(pipe, activation, layer_norm):
    torch.manual_seed(0)
    method = Hypernetwork(activation_func=activation, add_layer_norm=layer_norm).attach(pipe)
    try:
        assert method.widths == [32, 64]
        # A1111's init: weights N(0, 0.01²) (LayerNorm's too), biases 0 — not zero.
        for key, value in method.file_tensors().items():
            if key.endswith("bias"):
                assert not value.any()
            else:
                assert 0.005 < float(value.std()) < 0.015
        _randomize(method)
        method.set_multiplier(0.7)
        t = {k: v.double() for k, v in method.file_tensors().items()}
        gen = torch.Generator().manual_seed(1)
        for name, width, text in ((SELF_64, 64, False), (CROSS_32, 32, True), (SELF_32, 32, False)):
            attn = _module(pipe, name)
            x = torch.randn(2, 5, attn.to_q.in_features, generator=gen)
            c = torch.randn(2, 7, 32, generator=gen) if text else x
            seen = {}
            hooks = [
                getattr(attn, f"to_{kv}").register_forward_hook(
                    lambda m, i, o, kv=kv, seen=seen: seen.__setitem__(kv, o)
                )
                for kv in "kv"
            ]
            try:
                for lam, train in ((0.7, False), (1.0, True)):  # training: λ = 1, as A1111
                    attn.train(train)
                    with torch.no_grad():
                        attn(x, encoder_hidden_states=c if text else None)
                    for kv in "kv":
                        prefix = f"hypernet.{width}.{kv}"
                        context = c.double()
                        inner = context + _hand_mlp(context, t, prefix, LAYOUTS[activation, layer_norm]) * lam
                        expected = inner @ getattr(attn, f"to_{kv}").weight.double().T
                        torch.testing.assert_close(seen[kv].double(), expected, rtol=1e-5, atol=1e-6)
            finally:
                attn.train(False)
                for hook in hooks:
                    hook.remove()
    finally:
        method.detach()


def test_zero_effect_only_at_zero_mlps_or_multiplier_and_detach_restores(pipe):
    layers = attention_layers(pipe.unet)
    originals = {name: attn.processor for name, attn in layers}
    base = _unet_out(pipe)
    torch.manual_seed(0)
    method = Hypernetwork().attach(pipe)
    try:
        assert len(method._installed) == len(layers) == 8  # every self- and cross-attention
        assert not torch.equal(_unet_out(pipe), base)  # A1111's init is not zero
        method.set_multiplier(0.0)
        assert torch.equal(_unet_out(pipe), base)
        method.set_multiplier(1.0)
        with torch.no_grad():
            for param in method.parameters():
                param.zero_()
        assert torch.equal(_unet_out(pipe), base)  # c + 0 = c: the base computation, bit for bit
    finally:
        method.detach()
    for name, attn in layers:
        assert attn.processor is originals[name]
        assert not attn.to_k._forward_pre_hooks and not attn.to_v._forward_pre_hooks
    assert torch.equal(_unet_out(pipe), base)


def test_sizes_select_widths():
    method = Hypernetwork(sizes=[64])
    assert method.options.sizes == [64]
    with pytest.raises(BadInput, match="layer_structure: must start and end with 1"):
        Hypernetwork(layer_structure=[2, 1])
    with pytest.raises(BadInput, match="activation_func: unknown activation 'bogus'"):
        Hypernetwork(activation_func="bogus")
    with pytest.raises(BadInput, match="dropout_structure"):
        Hypernetwork(dropout_structure=[0, 0.3])
    assert Hypernetwork(use_dropout=True, layer_structure=[1, 2, 2, 1]).options.dropout_probs() == [
        0,
        0.3,
        0,
        0,
    ]
    assert Hypernetwork(
        use_dropout=True, last_layer_dropout=True, layer_structure=[1, 2, 2, 1]
    ).options.dropout_probs() == [0, 0.3, 0.3, 0]
    assert ALGORITHMS["hypernetwork"] is Hypernetwork
    # its own learning rate (A1111's scale, not the LyCORIS algorithms') reaches a run that names none
    assert RunConfig(model="m", dataset="d", adapter={"algo": "hypernetwork"}).lr == Hypernetwork.default_lr
    assert Hypernetwork.default_lr != AdapterModule.default_lr


def test_sizes_only_their_layers(pipe):
    torch.manual_seed(0)
    method = Hypernetwork(sizes=[64]).attach(pipe)
    try:
        assert [attn for attn, _, _ in method._installed] == [_module(pipe, SELF_64)]
    finally:
        method.detach()
    with pytest.raises(BadInput, match="sizes: 768 is not a width"):
        Hypernetwork(sizes=[768]).attach(pipe)


# --- merge ----------------------------------------------------------------------------------------
def test_merge_equals_attached_and_unmerge_restores_bit_for_bit(pipe):
    before = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    base = _unet_out(pipe)
    torch.manual_seed(0)
    method = Hypernetwork().attach(pipe)
    _randomize(method, std=0.1)
    method.set_multiplier(0.8)
    attached = _unet_out(pipe)
    method.detach()
    assert method.merges_exactly
    handle = method.merge(pipe)
    try:
        merged = _unet_out(pipe)
        # every attention layer reading width 32 or 64 (all 8) got W(I + λA) and a bias λ·W·a
        assert all(
            attn.to_k.bias is not None and attn.to_v.bias is not None
            for _, attn in attention_layers(pipe.unet)
        )
    finally:
        method.unmerge(handle)
    assert (merged - base).abs().max() > 1e-3
    torch.testing.assert_close(merged, attached, rtol=1e-5, atol=1e-5)
    after = pipe.unet.state_dict()
    assert after.keys() == before.keys()
    assert all(torch.equal(after[k], before[k]) for k in before)
    assert all(attn.to_k.bias is None for _, attn in attention_layers(pipe.unet))
    assert torch.equal(_unet_out(pipe), base)


def test_nonlinear_or_layer_norm_does_not_merge(pipe):
    for settings in ({"activation_func": "relu"}, {"add_layer_norm": True}):
        method = Hypernetwork(settings)
        assert not method.merges_exactly
        with pytest.raises(BadInput, match="cannot be merged"):
            method.merge(pipe)
    # an activation on the hidden layer only would be affine again only if linear
    assert Hypernetwork(activation_func="linear", activate_output=True).merges_exactly


# --- files ----------------------------------------------------------------------------------------
def test_file_round_trip(pipe, tmp_path):
    from safetensors import safe_open

    torch.manual_seed(0)
    method = Hypernetwork(activation_func="relu", add_layer_norm=True).attach(pipe)
    try:
        _randomize(method)
        path = tmp_path / "hn.safetensors"
        method.save(path, metadata={"epoch": 3})
        method.save(tmp_path / "again.safetensors", metadata={"epoch": 3})
        assert path.read_bytes() == (tmp_path / "again.safetensors").read_bytes()
        with safe_open(str(path), framework="pt") as fh:
            meta, keys = fh.metadata(), sorted(fh.keys())
        assert meta["lyco_bench.algo"] == "hypernetwork" and meta["lyco_bench.epoch"] == "3"
        settings = json.loads(meta["lyco_bench.settings"])
        assert settings["sizes"] == [32, 64] and settings["layer_structure"] == [1.0, 2.0, 1.0]
        assert (settings["activation_func"], settings["add_layer_norm"]) == ("relu", True)
        assert keys[:5] == [
            f"hypernet.32.k.{i}" for i in ("0.bias", "0.weight", "2.bias", "2.weight", "3.bias")
        ]
        assert len(keys) == 2 * 2 * 8
        assert method_of_file(path) is Hypernetwork
        loaded = Hypernetwork.from_file(path)
        assert loaded.options.activation_func == "relu" and loaded.widths == [32, 64]
        mine, theirs = method.file_tensors(), loaded.file_tensors()
        assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)
        fresh = Hypernetwork(method.options).attach(pipe)  # resume: weights into a built network
        try:
            fresh.load_weights(path)
            assert all(torch.equal(fresh.file_tensors()[k], mine[k]) for k in mine)
        finally:
            fresh.detach()
    finally:
        method.detach()
    other = Hypernetwork(
        layer_structure=[1, 2, 2, 1], activation_func="relu", add_layer_norm=True, sizes=[32, 64]
    )
    other._build([32, 64], init=True)
    with pytest.raises(
        BadInput,
        match=r"hn.safetensors: hypernet.32.k.3.bias has shape \(32,\), expected \(64,\) for layer_structure \[1.0, 2.0, 2.0",
    ):
        other.load_weights(path)
    bad = dict(method.file_tensors())
    bad["hypernet.32.k.0.weight"] = bad["hypernet.32.k.0.weight"].clone().fill_(float("nan"))
    from lyco_bench.adapters.fileformat import save_tensors

    save_tensors(tmp_path / "nan.safetensors", bad, method.file_metadata())
    with pytest.raises(BadInput, match=r"nan.safetensors: hypernet.32.k.0.weight holds NaN"):
        Hypernetwork.from_file(tmp_path / "nan.safetensors")


def _a1111_dict(activation: str, *, old_names: bool = False, seed: int = 0) -> dict:
    """What A1111's Hypernetwork.save pickles, built by hand: width → (sd_k, sd_v) + settings."""
    gen = torch.Generator().manual_seed(seed)
    data: dict = {}
    for width in (32, 64):
        pair = []
        for _ in "kv":
            names = (
                ["linear1", "linear2"]
                if old_names
                else ["linear.0", "linear.2" if activation != "linear" else "linear.1"]
            )
            sd = OrderedDict()
            sd[f"{names[0]}.weight"] = torch.randn(2 * width, width, generator=gen) * 0.1
            sd[f"{names[0]}.bias"] = torch.randn(2 * width, generator=gen) * 0.1
            sd[f"{names[1]}.weight"] = torch.randn(width, 2 * width, generator=gen) * 0.1
            sd[f"{names[1]}.bias"] = torch.randn(width, generator=gen) * 0.1
            pair.append(sd)
        data[width] = tuple(pair)
    data.update(
        step=120, name="hand-made", layer_structure=[1.0, 2.0, 1.0], activation_func=activation,
        is_layer_norm=False, weight_initialization="Normal", sd_checkpoint="a1b2c3d4",
        sd_checkpoint_name="sd15", activate_output=False, use_dropout=False,
        dropout_structure=[0.0, 0.0, 0.0], last_layer_dropout=False, optional_info=None,
    )  # fmt: skip
    return data


def test_a1111_pt_loads(tmp_path):
    relu = tmp_path / "relu.pt"
    data = _a1111_dict("relu")
    torch.save(data, relu)
    assert method_of_file(relu) is Hypernetwork
    method = Hypernetwork.from_file(relu)
    assert (method.options.activation_func, method.widths, method.merges_exactly) == ("relu", [32, 64], False)
    assert torch.equal(method.file_tensors()["hypernet.64.v.2.weight"], data[64][1]["linear.2.weight"])
    old = tmp_path / "old.pt"  # the oldest layout: linear1/linear2, no settings but the widths
    old_data = _a1111_dict("linear", old_names=True)
    torch.save({k: v for k, v in old_data.items() if isinstance(k, int)}, old)
    method = Hypernetwork.from_file(old)
    assert method.merges_exactly and method.options.activate_output  # A1111's default when absent
    assert torch.equal(method.file_tensors()["hypernet.32.k.1.bias"], old_data[32][0]["linear2.bias"])


def test_a1111_pt_refused(tmp_path):
    pickled = tmp_path / "payload.pt"
    torch.save({768: (Payload(), Payload()), "layer_structure": [1, 2, 1]}, pickled)
    with pytest.raises(BadInput) as err:
        Hypernetwork.from_file(pickled)
    assert str(pickled) in str(err.value) and "Payload, which torch.load(weights_only=True)" in str(err.value)
    assert "\n" not in str(err.value)
    assert method_of_file(pickled) is not Hypernetwork  # not claimed: unsafe files are not known to be ours
    structure = tmp_path / "structure.pt"
    torch.save({**_a1111_dict("relu"), "layer_structure": [1.0, 3.0, 1.0]}, structure)
    with pytest.raises(
        BadInput, match=r"structure.pt: hypernet.32.k.0.bias has shape \(64,\), expected \(96,\)"
    ) as err:
        Hypernetwork.from_file(structure)
    assert "\n" not in str(err.value)
    extra = tmp_path / "extra.pt"
    data = _a1111_dict("linear")
    data[32][0]["linear.4.weight"] = torch.zeros(2)
    torch.save(data, extra)
    with pytest.raises(
        BadInput, match=r"extra.pt: unexpected hypernet.32.k.4.weight: the weights do not fit"
    ):
        Hypernetwork.from_file(extra)
    wrong = tmp_path / "wrong.pt"
    torch.save({**_a1111_dict("linear"), "layer_structure": [2.0, 1.0]}, wrong)
    with pytest.raises(BadInput, match=r"wrong.pt: hypernetwork: layer_structure: must start and end with 1"):
        Hypernetwork.from_file(wrong)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a torch file at all")
    with pytest.raises(BadInput, match="garbage.pt: unreadable .pt file"):
        Hypernetwork.from_file(garbage)


# --- generation and training ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def items(demo_dataset_dir):
    from lyco_bench.data import load_dataset
    from lyco_bench.prompts import expand_prompts, load_prompt_set

    chosen = expand_prompts(
        load_prompt_set("demo"), load_dataset(demo_dataset_dir), ["trigger"], images_per_prompt=1
    )
    return chosen[:2]


def _pngs(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*.png"))}


def test_a1111_pt_generates(pipe, items, tmp_path):
    from lyco_bench.generation import SamplerSettings, generate

    sampler = SamplerSettings(steps=2, width=64, height=64, batch_size=2)
    pt = tmp_path / "relu.pt"
    torch.save(_a1111_dict("relu"), pt)
    linear = tmp_path / "linear.pt"
    torch.save(_a1111_dict("linear", seed=1), linear)
    processors = [attn.processor for _, attn in attention_layers(pipe.unet)]
    weights = {k: v.clone() for k, v in pipe.unet.state_dict().items()}

    def run(out, adapters):
        generate(model="tiny", items=items, out_dir=out, sampler=sampler, pipeline=pipe, adapters=adapters)
        return _pngs(out)

    base = run(tmp_path / "base", [])
    first, second = run(tmp_path / "a", [(pt, 1.0)]), run(tmp_path / "b", [(pt, 1.0)])
    assert first == second and len(first) == 2  # deterministic
    assert all(first[k] != base[k] for k in base)  # and not the base model
    merged = run(tmp_path / "merged", [(linear, 1.0)])  # linear: merged into to_k/to_v
    assert all(merged[k] != base[k] for k in base)
    assert [attn.processor for _, attn in attention_layers(pipe.unet)] == processors
    assert all(torch.equal(v, weights[k]) for k, v in pipe.unet.state_dict().items())


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory) -> Path:
    from lyco_bench.data import make_demo_dataset

    return make_demo_dataset(tmp_path_factory.mktemp("hn-data") / "demo", seed=0, images_per_concept=2)


def test_training_trains_only_the_hypernetwork_and_resumes_exactly(
    pipe, tiny_model_dir, small_dataset, tmp_path
):
    from safetensors import safe_open

    from lyco_bench.training import RunConfig, checkpoint_path, record_path, state_path, train

    adapter = {
        "algo": "hypernetwork",
        "activation_func": "relu",
        "layer_structure": [1, 2, 2, 1],
        "use_dropout": True,
    }
    cfg = RunConfig(
        model=str(tiny_model_dir), dataset=str(small_dataset), categories=["patterns"], adapter=adapter,
        train_text_encoder=False, resolution=64, buckets={"min": 32, "max": 96, "step": 16},
        batch_size=3, warmup_steps=1, lr=1e-3, epochs=3, checkpoint_epochs=[1],
        cache_dir=str(tmp_path / "cache"), seed=5,
    )  # fmt: skip
    assert cfg.adapter.options["dropout_structure"] is None
    frozen = {
        name: {k: v.clone() for k, v in module.state_dict().items()}
        for name, module in (("unet", pipe.unet), ("te", pipe.text_encoder), ("vae", pipe.vae))
    }
    processors = [attn.processor for _, attn in attention_layers(pipe.unet)]
    full_dir, resumed_dir = tmp_path / "full", tmp_path / "resumed"
    train(cfg, full_dir, pipeline=pipe)
    for name, module in (("unet", pipe.unet), ("te", pipe.text_encoder), ("vae", pipe.vae)):
        state = module.state_dict()
        assert state.keys() == frozen[name].keys()
        assert all(torch.equal(state[k], frozen[name][k]) for k in state), name
    assert [attn.processor for _, attn in attention_layers(pipe.unet)] == processors
    with safe_open(str(checkpoint_path(full_dir, 3)), framework="pt") as fh:
        final = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118
    with safe_open(str(checkpoint_path(full_dir, 1)), framework="pt") as fh:
        first = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118
    assert all(k.startswith("hypernet.") for k in final)
    assert json.loads(record_path(full_dir, 3).read_text())["trainable_params"] == sum(
        v.numel() for v in final.values()
    )
    assert any(not torch.equal(final[k], first[k]) for k in final)  # it moved

    class Killed(Exception):
        pass

    def kill_after_epoch_2(epoch: int) -> None:
        if epoch == 2:
            raise Killed

    with pytest.raises(Killed):
        train(cfg, resumed_dir, pipeline=pipe, on_epoch_end=kill_after_epoch_2)
    assert checkpoint_path(resumed_dir, 1).read_bytes() == checkpoint_path(full_dir, 1).read_bytes()
    train(cfg, resumed_dir, pipeline=pipe)
    for path in (checkpoint_path, state_path):
        assert path(resumed_dir, 3).read_bytes() == path(full_dir, 3).read_bytes()
    assert [attn.processor for _, attn in attention_layers(pipe.unet)] == processors


def test_dropout_masks_come_from_a_cpu_generator_of_seed_step_layer_and_kv():
    # The masks are drawn on the CPU whatever device x lives on, so a job gives the same training
    # on any device: the generator is a CPU one, and the mask is what that generator draws.
    from lyco_bench.methods.hypernetwork import Dropout

    method = Hypernetwork()
    assert method.dropout_generator("320", "k") is None  # outside the trainer: torch's global RNG
    method.before_step(3, seed=7)
    gen = method.dropout_generator("320", "k")
    assert gen.device.type == "cpu"
    x = torch.randn(4, 5, 6, dtype=torch.float64)
    y = Dropout(0.25)(x, method.dropout_generator("320", "k"))
    keep = torch.rand(x.shape, generator=gen) >= 0.25
    assert torch.equal(y, x * keep.to(x.dtype) * (1 / 0.75))  # inverted dropout: kept × 1/(1 − p)
    again = Dropout(0.25)(x, method.dropout_generator("320", "k"))  # a recomputation: same masks
    other = Dropout(0.25)(x, method.dropout_generator("320", "v"))
    assert torch.equal(y, again) and not torch.equal(y, other)
