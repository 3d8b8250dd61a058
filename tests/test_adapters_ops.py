"""Merge/unmerge, dense ΔW, combining files, applying to another base, and SVD extraction."""

from __future__ import annotations

import math

import pytest
import torch

from lyco_bench.adapters import (
    AdapterSpec,
    combined_delta,
    delta_weights,
    extract_lora,
    inject,
    load_adapter,
    merge_adapters,
    unmerge_adapters,
)
from lyco_bench.adapters.fileformat import adapter_file_from_tensors, save_tensors
from lyco_bench.errors import BadInput
from tests.helpers import one_thread, perturb, run_models, tiny_models  # noqa: F401 - autouse fixture

Q_KEY = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
CONV_KEY = "lora_unet_down_blocks_0_resnets_0_conv1"

CASES = {
    "lora": AdapterSpec(algo="lora", dim=4, alpha=2, preset="full"),
    "lora-tucker-norm": AdapterSpec(
        algo="lora", dim=4, alpha=8, preset="full", use_tucker=True, train_norm=True
    ),
    "loha": AdapterSpec(algo="loha", dim=2, alpha=1, preset="full"),
    "lokr-decomposed": AdapterSpec(algo="lokr", dim=2, alpha=1, factor=-1, preset="full"),
    "lokr-full": AdapterSpec(algo="lokr", dim=10000, alpha=1, factor=4, preset="full"),
    "native": AdapterSpec(algo="native", preset="full"),
    "lora+loha-conv": AdapterSpec(algo="lora", dim=4, conv_algo="loha", conv_dim=2, preset="full"),
}


def snapshot(*models) -> list[dict[str, torch.Tensor]]:
    return [{k: v.detach().clone() for k, v in m.state_dict().items()} for m in models]


def assert_same_weights(models, snaps) -> None:
    for model, snap in zip(models, snaps, strict=True):
        for key, value in model.state_dict().items():
            assert torch.equal(value, snap[key]), key


def trained_file(path, spec: AdapterSpec, *, seed: int = 0, model_seed: int = 0):
    """Inject ``spec`` into fresh tiny models, give it random weights, save it; return outputs."""
    unet, te = tiny_models(model_seed)
    torch.manual_seed(seed)
    net = inject(unet, te, spec)
    perturb(net, scale=0.1, seed=seed + 1)
    outputs = run_models(unet, te)
    net.save(path, metadata={"base_model": "tiny"})
    return outputs


@pytest.mark.parametrize("case", list(CASES))
def test_merged_forward_equals_bypass_and_unmerge_restores_bit_for_bit(tmp_path, case):
    path = tmp_path / "a.safetensors"
    bypass = trained_file(path, CASES[case])
    unet, te = tiny_models(0)
    before = snapshot(unet, te)
    handle = merge_adapters(unet, te, [(path, 1.0)])
    merged = run_models(unet, te)
    assert any(not torch.equal(layer.weight, w0) for layer, w0, _ in handle.originals.values())
    for got, want in zip(merged, bypass, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    unmerge_adapters(handle)
    assert_same_weights((unet, te), before)


def test_multiplier_matches_the_bypass_multiplier(tmp_path):
    path = tmp_path / "a.safetensors"
    unet, te = tiny_models(0)
    torch.manual_seed(0)
    net = inject(unet, te, AdapterSpec(algo="loha", dim=2, preset="attn-mlp"))
    perturb(net, scale=0.1)
    net.set_multiplier(-0.6)
    bypass = run_models(unet, te)
    net.save(path)
    net.remove()
    merge_adapters(unet, te, [(path, -0.6)])
    for got, want in zip(run_models(unet, te), bypass, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_delta_weight_of_a_lora_file_by_hand():
    unet, te = tiny_models(0)
    down = torch.zeros(2, 32)  # (r, in)
    up = torch.zeros(32, 2)  # (out, r)
    down[0, 0], down[1, 1], up[0, 0], up[1, 1], up[5, 0] = 1.0, 2.0, 3.0, 4.0, -1.0
    conv_down = torch.zeros(1, 32, 3, 3)  # k×k down-conv (r=1)
    conv_up = torch.zeros(32, 1, 1, 1)  # 1×1 up-conv
    conv_down[0, 2, 1, 1], conv_up[3, 0, 0, 0] = 5.0, 0.5
    file = adapter_file_from_tensors(
        {
            f"{Q_KEY}.lora_down.weight": down,
            f"{Q_KEY}.lora_up.weight": up,
            f"{Q_KEY}.alpha": torch.tensor(1.0),  # scale α/r = 0.5
            f"{CONV_KEY}.lora_down.weight": conv_down,
            f"{CONV_KEY}.lora_up.weight": conv_up,  # no alpha: α = r, scale 1
        }
    )
    deltas = delta_weights(file, unet, te)
    want = torch.zeros(32, 32)
    want[0, 0], want[1, 1], want[5, 0] = 0.5 * 3 * 1, 0.5 * 4 * 2, 0.5 * -1 * 1
    torch.testing.assert_close(deltas[Q_KEY][0], want, rtol=0, atol=0)
    want_conv = torch.zeros(32, 32, 3, 3)
    want_conv[3, 2, 1, 1] = 2.5
    torch.testing.assert_close(deltas[CONV_KEY][0], want_conv, rtol=0, atol=0)
    assert deltas[Q_KEY][1] is None
    handle = merge_adapters(unet, te, [(file, 2.0)])
    q = unet.down_blocks[0].attentions[0].transformer_blocks[0].attn1.to_q
    original = handle.originals[Q_KEY][1]
    torch.testing.assert_close(q.weight - original, 2.0 * want)


def test_apply_to_a_different_base(tmp_path):
    path = tmp_path / "a.safetensors"
    trained_file(path, CASES["lora+loha-conv"], model_seed=0)
    other_unet, other_te = tiny_models(5)  # same architecture, other weights
    torch.manual_seed(123)
    net = inject(other_unet, other_te, CASES["lora+loha-conv"])
    net.load_weights(path)
    bypass = run_models(other_unet, other_te)
    net.remove()
    merge_adapters(other_unet, other_te, [(path, 1.0)])
    for got, want in zip(run_models(other_unet, other_te), bypass, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_combining_files_sums_their_scaled_deltas(tmp_path):
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    trained_file(a, AdapterSpec(algo="lora", dim=4, preset="attn-only"), seed=0)
    trained_file(b, CASES["native"], seed=3)
    unet, te = tiny_models(0)
    da, db = delta_weights(a, unet, te), delta_weights(load_adapter(b), unet, te)
    before = dict(unet.named_parameters()) | {f"te.{k}": v for k, v in te.named_parameters()}
    before = {k: v.detach().clone() for k, v in before.items()}
    total = combined_delta([(a, 0.7), (b, -0.3)], unet, te)
    assert set(total) == set(da) | set(db)
    handle = merge_adapters(unet, te, [(a, 0.7), (b, -0.3)])
    assert set(handle.originals) == set(total)
    q = unet.down_blocks[0].attentions[0].transformer_blocks[0].attn1.to_q
    name = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"
    torch.testing.assert_close(q.weight - before[f"{name}.weight"], 0.7 * da[Q_KEY][0] - 0.3 * db[Q_KEY][0])
    torch.testing.assert_close(q.bias - before[f"{name}.bias"] if q.bias is not None else None, None)
    conv = unet.down_blocks[0].resnets[0].conv1
    cname = "down_blocks.0.resnets.0.conv1"
    assert CONV_KEY not in da
    torch.testing.assert_close(conv.weight - before[f"{cname}.weight"], -0.3 * db[CONV_KEY][0])
    torch.testing.assert_close(conv.bias - before[f"{cname}.bias"], -0.3 * db[CONV_KEY][1])


def _orthonormal(n: int, k: int, seed: int) -> torch.Tensor:
    q, _ = torch.linalg.qr(
        torch.randn(n, k, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    )
    return q  # (n, k), orthonormal columns


def test_extraction_recovers_a_known_rank_two_difference_and_reports_the_error():
    base_unet, base_te = tiny_models(0)
    tuned_unet, tuned_te = tiny_models(0)
    q = tuned_unet.down_blocks[0].attentions[0].transformer_blocks[0].attn1.to_q
    conv = tuned_unet.down_blocks[0].resnets[0].conv1
    u, v = _orthonormal(32, 2, 1), _orthonormal(32, 2, 2)
    d_q = 3 * torch.outer(u[:, 0], v[:, 0]) + 4 * torch.outer(u[:, 1], v[:, 1])  # singular values 4, 3
    uc, vc = _orthonormal(32, 2, 3), _orthonormal(32 * 9, 2, 4)
    d_conv = (1 * torch.outer(uc[:, 0], vc[:, 0]) + 2 * torch.outer(uc[:, 1], vc[:, 1])).reshape(32, 32, 3, 3)
    with torch.no_grad():
        q.weight.add_(d_q.float())
        conv.weight.add_(d_conv.float())

    tensors, rows = extract_lora(base_unet, base_te, tuned_unet, tuned_te, rank=2)
    assert [r.key for r in rows] == [CONV_KEY, Q_KEY] or sorted(r.key for r in rows) == sorted(
        [CONV_KEY, Q_KEY]
    )
    assert all(r.relative_error < 1e-6 and r.rank == 2 for r in rows)
    assert tuple(tensors[f"{CONV_KEY}.lora_down.weight"].shape) == (2, 32, 3, 3)
    assert tuple(tensors[f"{CONV_KEY}.lora_up.weight"].shape) == (32, 2, 1, 1)
    assert float(tensors[f"{Q_KEY}.alpha"]) == 2.0
    file = adapter_file_from_tensors(tensors)
    assert set(cls.algo for cls in file.modules.values()) == {"lora"}
    merge_adapters(base_unet, base_te, [(file, 1.0)])
    torch.testing.assert_close(
        base_unet.down_blocks[0].resnets[0].conv1.weight, conv.weight, rtol=0, atol=2e-6
    )
    torch.testing.assert_close(
        base_unet.down_blocks[0].attentions[0].transformer_blocks[0].attn1.to_q.weight,
        q.weight,
        rtol=0,
        atol=2e-6,
    )

    # rank 1 keeps the largest singular value: error = σ₂/‖σ‖ = 3/5 (Linear), 1/√5 (conv)
    base_unet, base_te = tiny_models(0)
    _, rows = extract_lora(base_unet, base_te, tuned_unet, tuned_te, rank=1)
    errors = {r.key: r.relative_error for r in rows}
    assert errors[Q_KEY] == pytest.approx(3 / 5, abs=1e-5)
    assert errors[CONV_KEY] == pytest.approx(1 / math.sqrt(5), abs=1e-5)
    _, rows = extract_lora(base_unet, base_te, tuned_unet, tuned_te, rank=2, conv_rank=1)
    assert {r.key: r.rank for r in rows} == {Q_KEY: 2, CONV_KEY: 1}


def test_extraction_of_identical_models_is_bad_input():
    unet, te = tiny_models(0)
    with pytest.raises(BadInput, match="does not differ"):
        extract_lora(unet, te, *tiny_models(0), rank=4)
    with pytest.raises(BadInput, match="rank"):
        extract_lora(unet, te, unet, te, rank=0)


def test_bad_files_leave_the_model_untouched(tmp_path):
    good = tmp_path / "good.safetensors"
    trained_file(good, AdapterSpec(algo="lora", dim=2, preset="attn-only"))
    unet, te = tiny_models(0)
    before = snapshot(unet, te)
    down, up = torch.randn(2, 32), torch.randn(32, 2)

    nomatch = tmp_path / "nomatch.safetensors"
    save_tensors(
        nomatch,
        {"lora_unet_no_such_layer.lora_down.weight": down, "lora_unet_no_such_layer.lora_up.weight": up},
        {},
    )
    with pytest.raises(BadInput, match="lora_unet_no_such_layer matches no layer"):
        merge_adapters(unet, te, [(good, 1.0), (nomatch, 1.0)])

    wrong = tmp_path / "wrong.safetensors"
    save_tensors(wrong, {f"{Q_KEY}.lora_down.weight": torch.randn(2, 48), f"{Q_KEY}.lora_up.weight": up}, {})
    with pytest.raises(BadInput, match=rf"{Q_KEY}.*\(2, 48\).*\(2, 32\)"):
        merge_adapters(unet, te, [(good, 1.0), (wrong, 1.0)])

    unknown = tmp_path / "unknown.safetensors"
    save_tensors(
        unknown,
        {f"{Q_KEY}.lora_down.weight": down, f"{Q_KEY}.lora_up.weight": up, f"{Q_KEY}.lora_side.weight": up},
        {},
    )
    with pytest.raises(BadInput, match=rf"{unknown}.*{Q_KEY}.*unknown key suffix 'lora_side.weight'"):
        merge_adapters(unet, te, [(good, 1.0), (unknown, 1.0)])

    norm_on_linear = adapter_file_from_tensors({f"{Q_KEY}.w_norm": torch.zeros(32)})
    with pytest.raises(BadInput, match=Q_KEY):
        merge_adapters(unet, te, [(good, 1.0), (norm_on_linear, 1.0)])
    assert_same_weights((unet, te), before)


def test_flat_text_encoder_names_merge_into_the_same_layer_and_unmerge_exactly():
    unet, te = tiny_models(0)
    before = snapshot(unet, te)
    down, up = torch.zeros(1, 32), torch.zeros(32, 1)
    down[0, 3], up[7, 0] = 2.0, 1.5  # ΔW[7, 3] = 3 (no alpha: scale 1)
    canonical = "lora_te_text_model_encoder_layers_0_self_attn_q_proj"
    flat = "lora_te_encoder_layers_0_self_attn_q_proj"  # what tools see on a transformers-5 model
    files = [
        adapter_file_from_tensors({f"{name}.lora_down.weight": down, f"{name}.lora_up.weight": up})
        for name in (canonical, flat)
    ]
    handle = merge_adapters(unet, te, [(files[0], 1.0), (files[1], 0.5)])
    q = te.encoder.layers[0].self_attn.q_proj
    delta = q.weight.detach() - before[1]["encoder.layers.0.self_attn.q_proj.weight"]
    assert float(delta[7, 3]) == pytest.approx(4.5, abs=1e-6)
    assert float(delta.abs().sum() - delta[7, 3].abs()) == pytest.approx(0.0, abs=1e-5)
    unmerge_adapters(handle)
    assert_same_weights((unet, te), before)
