"""Adapter files: save → load round trip, resume, metadata, and every kind of bad file."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lyco_bench.adapters import AdapterSpec, inject, load_adapter
from lyco_bench.adapters.fileformat import safetensors_bytes, save_tensors
from lyco_bench.adapters.norm import NormAdapter
from lyco_bench.errors import BadInput
from tests.helpers import one_thread, perturb, run_models, tiny_models  # noqa: F401 - autouse fixture

Q_KEY = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"


def make_net(spec: AdapterSpec, *, seed: int = 0, model_seed: int = 0):
    unet, te = tiny_models(model_seed)
    torch.manual_seed(seed)
    return unet, te, inject(unet, te, spec)


def test_save_load_round_trip_with_metadata(tmp_path):
    spec = AdapterSpec(
        algo="lora", dim=4, alpha=2, conv_algo="loha", conv_dim=2, preset="full", train_norm=True
    )
    _, _, net = make_net(spec)
    perturb(net)
    path = tmp_path / "a.safetensors"
    net.save(path, metadata={"base_model": "tiny-sd", "epoch": 10})
    f = load_adapter(path)
    want = net.state_dict_for_file()
    assert set(f.tensors) == set(want)
    assert all(torch.equal(f.tensors[k], want[k]) for k in want)
    assert load_file(str(path)).keys() == want.keys()  # plain safetensors reads it too
    counts = f.algorithms()
    # 8 resnets × 2 + conv_in/out + 2 samplers = 20 k×k convs (LoHa); 33 norm layers
    assert counts == {"loha": 20, "lora": 95 - 20, "norm": 33}
    assert f.modules[Q_KEY].algo == "lora"
    meta = f.metadata
    assert meta["lyco_bench.algo"] == "lora+loha"
    assert json.loads(meta["lyco_bench.settings"]) == spec.model_dump(mode="json")
    assert meta["lyco_bench.base_model"] == meta["ss_sd_model_name"] == "tiny-sd"
    assert meta["lyco_bench.epoch"] == "10"
    assert meta["ss_network_module"] == "lycoris.kohya"
    assert json.loads(meta["ss_network_args"])["algo"] == "locon"
    assert "lyco_bench.version" in meta
    assert f.tensors[f"{Q_KEY}.alpha"].shape == ()
    assert list(tmp_path.iterdir()) == [path]  # no temp files left


def test_load_weights_resumes_in_place(tmp_path):
    spec = AdapterSpec(algo="lokr", dim=2, factor=4, preset="attn-mlp")
    unet, te, net = make_net(spec, seed=0)
    perturb(net)
    want = run_models(unet, te)
    path = tmp_path / "a.safetensors"
    net.save(path)
    unet2, te2, net2 = make_net(spec, seed=99)
    params = net2.trainable_parameters()
    net2.load_weights(path)
    assert all(a is b for a, b in zip(params, net2.trainable_parameters(), strict=True))
    got = net2.state_dict_for_file()
    assert all(torch.equal(got[k], v) for k, v in net.state_dict_for_file().items())
    for a, b in zip(run_models(unet2, te2), want, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_native_resume_restores_the_trained_copy(tmp_path):
    spec = AdapterSpec(algo="native", preset="attn-only", train_text_encoder=False)
    unet, te, net = make_net(spec)
    perturb(net, scale=0.01)
    want = run_models(unet, te)
    net.save(tmp_path / "n.safetensors")
    unet2, te2, net2 = make_net(spec)
    net2.load_weights(tmp_path / "n.safetensors")
    torch.testing.assert_close(run_models(unet2, te2)[0], want[0], rtol=1e-5, atol=1e-6)


def test_load_weights_rejects_a_file_of_another_network(tmp_path):
    _, _, net = make_net(AdapterSpec(algo="lora", dim=4, preset="attn-only"))
    path = tmp_path / "a.safetensors"
    net.save(path)
    _, _, other = make_net(AdapterSpec(algo="lora", dim=4, preset="attn-mlp"))
    with pytest.raises(BadInput, match="missing"):
        other.load_weights(path)
    _, _, smaller = make_net(AdapterSpec(algo="lora", dim=2, preset="attn-only"))
    with pytest.raises(BadInput, match=r"has shape \(4, 32\), the network needs \(2, 32\)"):
        smaller.load_weights(path)
    _, _, alpha = make_net(AdapterSpec(algo="lora", dim=4, alpha=1, preset="attn-only"))
    with pytest.raises(BadInput, match="alpha is 4.0, the network uses 1.0"):
        alpha.load_weights(path)


def test_norm_adapter_round_trip():
    norm = torch.nn.GroupNorm(2, 4)
    adapter = NormAdapter(norm)
    x = torch.randn(1, 4, 3, 3)
    torch.testing.assert_close(adapter(x), norm(x), rtol=0, atol=0)  # Δ = 0 at init
    with torch.no_grad():
        adapter.w_norm.copy_(torch.tensor([1.0, 0.0, -0.5, 2.0]))
        adapter.b_norm.fill_(0.25)
    adapter.multiplier = 0.5
    ref = torch.nn.GroupNorm(2, 4)
    with torch.no_grad():
        ref.weight.copy_(norm.weight + 0.5 * adapter.w_norm)
        ref.bias.copy_(norm.bias + 0.125)
    torch.testing.assert_close(adapter(x), ref(x))
    rebuilt = NormAdapter.from_file_tensors(norm, adapter.file_tensors(), name="n")
    assert torch.equal(rebuilt.w_norm, adapter.w_norm)
    with pytest.raises(BadInput, match=r"n: w_norm has shape \(3,\)"):
        NormAdapter.from_file_tensors(norm, {"w_norm": torch.zeros(3)}, name="n")


def test_safetensors_bytes_are_deterministic_and_standard(tmp_path):
    tensors = {"b.x": torch.randn(3, 4), "a.alpha": torch.tensor(2.0), "c.y": torch.randn(2).half()}
    one = safetensors_bytes(tensors, {"z": "1", "a": "2"})
    two = safetensors_bytes(dict(reversed(tensors.items())), {"a": "2", "z": "1"})
    assert one == two
    (tmp_path / "t.safetensors").write_bytes(one)
    loaded = load_file(str(tmp_path / "t.safetensors"))
    assert all(torch.equal(loaded[k], v) for k, v in tensors.items())


class _Trap:
    """Unpickling this creates a marker file: proof that a loader unpickled user input."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.mark.parametrize(
    "kind", ["pickle", "torch-save", "text", "empty", "truncated", "json-list", "missing"]
)
def test_non_safetensors_files_are_bad_input_and_never_unpickled(tmp_path, kind):
    path = tmp_path / "adapter.safetensors"
    marker = tmp_path / "unpickled"
    if kind == "pickle":
        path.write_bytes(pickle.dumps({"lora_unet_x.alpha": _Trap(marker)}))
    elif kind == "torch-save":
        torch.save({"lora_unet_x.alpha": _Trap(marker)}, path)
    elif kind == "text":
        path.write_text("lora_unet_x.alpha = 1\n")
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":
        path.write_bytes(safetensors_bytes({"m.lora_down.weight": torch.randn(64, 64)}, {})[:200])
    elif kind == "json-list":
        header = b"[1, 2]  "
        path.write_bytes(len(header).to_bytes(8, "little") + header)
    with pytest.raises(BadInput, match=str(path)) as err:
        load_adapter(path)
    assert "\n" not in str(err.value)
    assert not marker.exists()


def test_bad_keys_are_bad_input(tmp_path):
    path = tmp_path / "a.safetensors"
    save_tensors(
        path,
        {
            "lora_unet_x.lora_down.weight": torch.zeros(2, 2),
            "lora_unet_x.lora_up.weight": torch.zeros(2, 2),
            "lora_unet_x.hada_w1_a": torch.zeros(1),
        },
        {},
    )
    with pytest.raises(BadInput, match=r"lora_unet_x: unknown key suffix 'hada_w1_a' for lora"):
        load_adapter(path)
    save_tensors(path, {"lora_unet_x.weird": torch.zeros(2)}, {})
    with pytest.raises(BadInput, match=r"lora_unet_x: unknown key suffixes \['weird'\]"):
        load_adapter(path)
    save_tensors(path, {"nodot": torch.zeros(2)}, {})
    with pytest.raises(BadInput, match="'nodot' is not <module>.<suffix>"):
        load_adapter(path)
    save_tensors(path, {}, {"a": "b"})
    with pytest.raises(BadInput, match="no tensors"):
        load_adapter(path)


def test_a_failed_save_leaves_nothing_behind(tmp_path):
    _, _, net = make_net(AdapterSpec(algo="lora", dim=2, preset="attn-only"))
    path = tmp_path / "a.safetensors"
    with pytest.raises(TypeError):
        save_tensors(path, net.state_dict_for_file(), {"x": 1})  # type: ignore[dict-item]
    assert list(tmp_path.iterdir()) == []
