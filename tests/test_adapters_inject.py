"""Injection by preset: module keys, counts per preset, freezing, removal, spec validation.

Also builds the tiny UNet + CLIP text encoder the other adapter tests use (`tiny_models`).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lyco_bench.adapters import AdapterSpec, find_targets, inject
from lyco_bench.adapters.inject import layer_index
from lyco_bench.config import validate
from lyco_bench.errors import BadInput
from tests.helpers import (
    one_thread,  # noqa: F401 - autouse fixture
    perturb,
    run_models,
    tiny_models,
)


@pytest.fixture(scope="module")
def models():
    return tiny_models(0)


def test_keys_follow_the_kohya_naming_rule(models):
    unet, te = models
    keys = [t.key for t in find_targets(unet, te, AdapterSpec(preset="full"))]
    assert "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q" in keys
    assert "lora_unet_mid_block_attentions_0_transformer_blocks_0_attn2_to_out_0" in keys
    assert "lora_unet_down_blocks_0_resnets_0_conv1" in keys
    assert "lora_te_text_model_encoder_layers_0_self_attn_q_proj" in keys
    assert "lora_te_text_model_encoder_layers_1_mlp_fc2" in keys
    unet_paths = {f"lora_unet_{n.replace('.', '_')}" for n, _ in unet.named_modules()}
    te_paths = {f"lora_te_text_model_{n.replace('.', '_')}" for n, _ in te.named_modules()}
    assert all(k in unet_paths or k in te_paths for k in keys)
    assert len(set(keys)) == len(keys)


# (UNet, text encoder) modules per preset on the tiny model, counted by hand: 4 transformer blocks
# (down0, mid, up1 ×2) × 8 attention projections; + proj_in/proj_out + ff (2) = 12 per block;
# full adds conv_in/out, 2 time-embedding linears, 8 resnets (3 each + 5 conv_shortcuts),
# 1 downsampler, 1 upsampler = 35. Text encoder: 2 layers × (4 attention + 2 MLP).
@pytest.mark.parametrize(
    ("preset", "unet_count", "te_count"), [("attn-only", 32, 8), ("attn-mlp", 48, 12), ("full", 83, 12)]
)
def test_preset_module_counts(models, preset, unet_count, te_count):
    targets = find_targets(*models, AdapterSpec(preset=preset))
    assert sum(not t.text_encoder for t in targets) == unet_count
    assert sum(t.text_encoder for t in targets) == te_count


def test_ia3_preset_selects_keys_values_and_feed_forward_outputs(models):
    """The (IA)³ layers, as LyCORIS's ia3 preset: to_k/to_v of attn1/attn2 and ff.net.2 of each
    transformer block (in module order: down0, up1 ×2, mid), text-encoder k/v_proj and mlp.fc2."""
    blocks = ["down_blocks_0_attentions_0", "up_blocks_1_attentions_0", "up_blocks_1_attentions_1"]
    blocks.append("mid_block_attentions_0")
    unet_layers = ["attn1_to_k", "attn1_to_v", "attn2_to_k", "attn2_to_v", "ff_net_2"]
    te_layers = ["self_attn_k_proj", "self_attn_v_proj", "mlp_fc2"]
    expected = [f"lora_unet_{b}_transformer_blocks_0_{layer}" for b in blocks for layer in unet_layers]
    expected += [f"lora_te_text_model_encoder_layers_{i}_{layer}" for i in range(2) for layer in te_layers]
    targets = find_targets(*models, AdapterSpec(preset="ia3"))
    assert [t.key for t in targets] == expected
    assert all(isinstance(t.layer, nn.Linear) for t in targets)
    assert len(find_targets(*models, AdapterSpec(preset="ia3", train_text_encoder=False))) == 20


def test_attn_only_selects_only_attention_projections(models):
    keys = [t.key for t in find_targets(*models, AdapterSpec(preset="attn-only"))]
    ends = ("to_q", "to_k", "to_v", "to_out_0", "q_proj", "k_proj", "v_proj", "out_proj")
    assert all(k.endswith(ends) for k in keys)


def test_text_encoder_switch_and_include_exclude(models):
    no_te = find_targets(*models, AdapterSpec(train_text_encoder=False))
    assert len(no_te) == 48 and not any(t.text_encoder for t in no_te)
    only_q = find_targets(*models, AdapterSpec(include=["*_to_q", "*_q_proj"]))
    assert len(only_q) == 4 * 2 + 2
    no_ff = find_targets(*models, AdapterSpec(exclude=["*_ff_*", "lora_te_*"]))
    assert len(no_ff) == 48 - 4 * 2


def test_train_norm_adds_the_norm_layers_in_full(models):
    targets = find_targets(*models, AdapterSpec(preset="full", train_norm=True))
    norms = [t for t in targets if isinstance(t.layer, (nn.GroupNorm, nn.LayerNorm))]
    # 8 resnets × 2 GroupNorm + 4 Transformer2DModel GroupNorm + 4 blocks × 3 LayerNorm + conv_norm_out
    assert len(norms) == 8 * 2 + 4 + 4 * 3 + 1
    assert len(find_targets(*models, AdapterSpec(preset="attn-mlp", train_norm=True))) == 60


@pytest.mark.parametrize("algo", ["lora", "dylora"])
def test_a_network_with_norm_layers_prepares_a_step(algo):
    """Normalisation layers trained in full have no per-step hook; the network's step hook skips
    them beside modules that have one (DyLoRA's rank draw)."""
    unet, te = tiny_models(0)
    net = inject(unet, te, AdapterSpec(algo=algo, dim=4, preset="full", train_norm=True))
    net.before_step(3, seed=1)
    assert any(
        isinstance(t, nn.Module) and not hasattr(type(t), "before_step") for t in net.adapters.values()
    )


def test_conv_settings_apply_to_kxk_convs_only(models):
    spec = AdapterSpec(algo="lora", dim=4, alpha=2, conv_dim=2, conv_alpha=1, preset="full")
    unet, te = tiny_models(0)
    torch.manual_seed(0)
    net = inject(unet, te, spec)
    conv3 = net.adapters["lora_unet_down_blocks_0_resnets_0_conv1"]
    conv1 = net.adapters["lora_unet_down_blocks_1_resnets_0_conv_shortcut"]
    linear = net.adapters["lora_unet_time_embedding_linear_1"]
    assert (conv3.dim, conv3.alpha) == (2, 1.0)
    assert (conv1.dim, conv1.alpha) == (4, 2.0)
    assert (linear.dim, linear.alpha) == (4, 2.0)
    assert spec.settings_for(nn.Linear(3, 3)) == (
        "lora",
        {"dim": 4, "alpha": 2.0, "use_tucker": False, "dora": False},
    )
    assert AdapterSpec(dim=6).settings_for(nn.Conv2d(2, 2, 3))[1]["alpha"] == 6.0  # α = dim when only dim
    assert AdapterSpec().options == {"dim": 8, "alpha": 4.0, "use_tucker": False, "dora": False}  # LoRA's


def test_inject_freezes_the_models_and_remove_restores_them():
    unet, te = tiny_models(0)
    before = run_models(unet, te)
    originals = dict(unet.named_modules())
    torch.manual_seed(0)
    net = inject(unet, te, AdapterSpec(algo="lora", dim=4, preset="full"))
    assert all(not p.requires_grad for n, p in unet.named_parameters() if ".lora_" not in n)
    assert all(p.requires_grad for p in net.trainable_parameters())
    assert len(net.trainable_parameters()) == 2 * 95
    assert type(unet.conv_in).__name__ == "LoRAModule"
    # ΔW = 0 at init: the injected models compute what the originals did
    for got, want in zip(run_models(unet, te), before, strict=True):
        torch.testing.assert_close(got, want)
    perturb(net)
    changed = run_models(unet, te)
    assert (changed[0] - before[0]).abs().max() > 1e-3
    net.set_multiplier(0.0)
    torch.testing.assert_close(run_models(unet, te)[0], before[0], rtol=0, atol=0)
    net.remove()
    assert unet.conv_in is originals["conv_in"]
    for got, want in zip(run_models(unet, te), before, strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_parameter_groups_put_unet_first_with_their_learning_rates():
    unet, te = tiny_models(0)
    torch.manual_seed(0)
    net = inject(unet, te, AdapterSpec(algo="lora", dim=2, preset="attn-only"))
    groups = net.parameter_groups(lr=1e-3, text_encoder_lr=5e-5)
    assert [(g["name"], g["lr"], len(g["params"])) for g in groups] == [("unet", 1e-3, 64), ("te", 5e-5, 16)]
    assert net.parameter_groups(lr=2e-4)[1]["lr"] == 2e-4
    assert net.trainable_parameters() == groups[0]["params"] + groups[1]["params"]
    # 32 UNet projections: 16 at 32×32 (r=2: 2·32 + 32·2) + mid 6 at 64×64, 2 at 64×32; TE 8 at 32×32
    assert net.num_trainable() == 24 * 128 + 6 * 256 + 2 * (2 * 32 + 64 * 2) + 8 * 128


def test_network_to_moves_the_frozen_bases_too():
    unet, te = tiny_models(0)
    torch.manual_seed(0)
    net = inject(unet, te, AdapterSpec(algo="lora", dim=2, preset="attn-only"))
    net.double()
    mod = net.adapters["lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"]
    assert mod.base.weight.dtype == torch.float64 and mod.lora_down.dtype == torch.float64


def test_same_seed_gives_byte_identical_files(tmp_path):
    paths = []
    for i in range(2):
        unet, te = tiny_models(0)
        torch.manual_seed(7)
        net = inject(unet, te, AdapterSpec(algo="lora", dim=4, preset="attn-mlp"))
        perturb(net)
        paths.append(tmp_path / f"{i}.safetensors")
        net.save(paths[-1], metadata={"base_model": "tiny"})
    assert paths[0].read_bytes() == paths[1].read_bytes()


def test_spec_validation_names_the_field():
    with pytest.raises(BadInput, match=r"run.yaml: algo: .*unknown algorithm 'lorx'"):
        validate(AdapterSpec, {"algo": "lorx"}, source="run.yaml")
    with pytest.raises(BadInput, match=r"conv_algo"):
        validate(AdapterSpec, {"conv_algo": "nope"}, source="x")
    with pytest.raises(BadInput, match=r"preset"):
        validate(AdapterSpec, {"preset": "everything"}, source="x")
    with pytest.raises(BadInput, match=r"dim"):
        validate(AdapterSpec, {"dim": 0}, source="x")
    with pytest.raises(
        BadInput, match=r"ranks: not a setting of lora \(its settings: dim, alpha, use_tucker, dora"
    ):
        validate(AdapterSpec, {"ranks": 3}, source="x")
    with pytest.raises(BadInput, match=r"factor: not a setting of loha"):
        validate(AdapterSpec, {"algo": "loha", "factor": 4}, source="x")  # each algorithm's own settings


def test_injecting_nothing_is_bad_input(models):
    with pytest.raises(BadInput, match="selects no module"):
        inject(*tiny_models(0), AdapterSpec(include=["lora_unet_nothing*"]))


def test_layer_index_lists_flat_text_encoder_aliases(models):
    unet, te = models
    index = layer_index(unet, te)
    q = te.encoder.layers[0].self_attn.q_proj
    assert index["lora_te_text_model_encoder_layers_0_self_attn_q_proj"] is q
    assert index["lora_te_encoder_layers_0_self_attn_q_proj"] is q
    assert "lora_te_encoder_layers_0_self_attn_q_proj" not in layer_index(unet, te, aliases=False)
