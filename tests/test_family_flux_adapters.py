"""FLUX.1 adapters against the ecosystem: kohya's file keys on BFL's fused layers, diffusers'
kohya→diffusers FLUX converter (``load_lora_weights``), and LyCORIS on the tiny FLUX transformer
(the same modules per preset, the same forward per algorithm, files both ways).
"""

from __future__ import annotations

import pytest
import torch

from lyco_bench.adapters import AdapterSpec, find_targets, inject, load_adapter, merge_adapters
from tests.helpers import lycoris_preset, one_thread, perturb  # noqa: F401 - autouse fixture

# kohya's sd-scripts FLUX names (networks/lora_flux.py) of one double and one single block.
DOUBLE = ["img_mod_lin", "txt_mod_lin", "img_attn_qkv", "img_attn_proj", "txt_attn_qkv", "txt_attn_proj"]
DOUBLE += ["img_mlp_0", "img_mlp_2", "txt_mlp_0", "txt_mlp_2"]
SINGLE = ["linear1", "linear2", "modulation_lin"]
BLOCK_KEYS = {f"lora_unet_double_blocks_0_{n}" for n in DOUBLE} | {
    f"lora_unet_single_blocks_0_{n}" for n in SINGLE
}
TOP_KEYS = {
    f"lora_unet_{n}"
    for n in ("img_in", "txt_in", "final_layer_linear", "final_layer_adaLN_modulation_1")
    + tuple(f"{e}_{io}_layer" for e in ("time_in", "guidance_in", "vector_in") for io in ("in", "out"))
}


def tiny_flux(seed: int = 0):
    from diffusers import FluxTransformer2DModel

    from lyco_bench.families.flux import TINY_TRANSFORMER

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return FluxTransformer2DModel(**TINY_TRANSFORMER).eval()


def run_flux(transformer, seed: int = 0) -> torch.Tensor:
    """The transformer's output on fixed inputs: a 4×6 latent (6 packed tokens), 5 text tokens."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        return transformer(
            hidden_states=torch.randn(2, 6, 64, generator=g),
            encoder_hidden_states=torch.randn(2, 5, 32, generator=g),
            pooled_projections=torch.randn(2, 32, generator=g),
            timestep=torch.tensor([0.3, 0.9]),
            guidance=torch.tensor([3.5, 3.5]),
            img_ids=torch.stack([torch.zeros(6), torch.arange(6) // 3, torch.arange(6) % 3], 1),
            txt_ids=torch.zeros(5, 3),
            return_dict=False,
        )[0]


def _file_keys(path) -> set[str]:
    from lyco_bench.adapters.fileformat import read_tensors

    return {k.partition(".")[0] for k in read_tensors(path)[0]}


# spec, whether every module is written in kohya's fused form
ROUND_TRIPS = {
    "lora-attn-mlp": (AdapterSpec(algo="lora", dim=4, alpha=2, preset="attn-mlp"), True),
    "lora-dora-full": (AdapterSpec(algo="lora", dim=4, alpha=2, dora=True, preset="full"), True),
    "loha-attn-mlp": (AdapterSpec(algo="loha", dim=2, alpha=1, preset="attn-mlp"), True),
    "loha-dora-attn-mlp": (AdapterSpec(algo="loha", dim=2, alpha=1, dora=True, preset="attn-mlp"), True),
    "native-attn-only": (AdapterSpec(algo="native", preset="attn-only"), True),
    "lora-attn-only": (AdapterSpec(algo="lora", dim=4, alpha=4, preset="attn-only"), True),
    "lora-dora-attn-only": (AdapterSpec(algo="lora", dim=4, alpha=4, dora=True, preset="attn-only"), False),
    "lokr-attn-mlp": (AdapterSpec(algo="lokr", dim=2, alpha=1, factor=4, preset="attn-mlp"), False),
}


@pytest.mark.parametrize("case", list(ROUND_TRIPS))
def test_files_use_kohyas_fused_names_and_load_back_exactly(tmp_path, case):
    from lyco_bench.adapters.fileformat import in_layer_keys
    from lyco_bench.families import key_map_of

    spec, fused = ROUND_TRIPS[case]
    transformer = tiny_flux()
    torch.manual_seed(0)
    net = inject(transformer, None, spec)
    perturb(net, scale=0.1)
    ours = run_flux(transformer)
    path = tmp_path / "a.safetensors"
    net.save(path)
    internal = net.state_dict_for_file()
    net.remove()

    keys = _file_keys(path)
    if fused:
        assert all(
            k.startswith(("lora_unet_double_blocks_", "lora_unet_single_blocks_")) for k in keys - TOP_KEYS
        )
        assert keys <= BLOCK_KEYS | TOP_KEYS
    else:  # LoKr, and DoRA on single blocks without proj_mlp: diffusers names where not fusable
        assert any(k.startswith("lora_transformer_") for k in keys)
    if spec.preset == "attn-mlp":
        assert keys == BLOCK_KEYS or not fused
    back = in_layer_keys(load_adapter(path), key_map_of(transformer)).tensors
    assert set(back) == set(internal)
    for key, value in internal.items():
        torch.testing.assert_close(back[key], value, rtol=0, atol=0, msg=key)
    fresh = tiny_flux()
    merge_adapters(fresh, None, [(path, 1.0)])
    torch.testing.assert_close(run_flux(fresh), ours, rtol=1e-4, atol=1e-5)


def test_fused_lora_is_block_diagonal_with_alpha_times_members(tmp_path):
    from lyco_bench.adapters.fileformat import read_tensors

    transformer = tiny_flux()
    torch.manual_seed(0)
    net = inject(transformer, None, AdapterSpec(algo="lora", dim=4, alpha=2, preset="attn-mlp"))
    perturb(net, scale=0.1)
    net.save(tmp_path / "a.safetensors")
    tensors, _ = read_tensors(tmp_path / "a.safetensors")
    up = tensors["lora_unet_single_blocks_0_linear1.lora_up.weight"]
    down = tensors["lora_unet_single_blocks_0_linear1.lora_down.weight"]
    sizes = [32, 32, 32, 128]  # q, k, v, proj_mlp of the tiny model
    assert up.shape == (sum(sizes), 16) and down.shape == (16, 32)
    members = ["attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp"]
    row = 0
    for i, (size, member) in enumerate(zip(sizes, members, strict=True)):
        module = net.adapters[f"lora_unet_single_transformer_blocks_0_{member.replace('.', '_')}"]
        block = up[row : row + size]
        torch.testing.assert_close(block[:, 4 * i : 4 * i + 4], module.lora_up.detach())
        assert not block[:, : 4 * i].any() and not block[:, 4 * i + 4 :].any()
        torch.testing.assert_close(down[4 * i : 4 * i + 4], module.lora_down.detach())
        row += size
    assert float(tensors["lora_unet_single_blocks_0_linear1.alpha"]) == 2 * 4  # α/r kept: 8/16 = 2/4


def _diffusers_pipeline(tmp_path):
    from lyco_bench.models import load_pipeline, make_tiny_model

    return load_pipeline(make_tiny_model(tmp_path / "flux", seed=0, family="flux"))


SINGLE_FUSED = ["*single_transformer_blocks_*_attn_to_*", "*_proj_mlp"]


def test_diffusers_load_lora_weights_gives_our_outputs(tmp_path):
    """The blocks and CLIP-L through ``FluxPipeline.load_lora_weights``. diffusers' converter hard-
    codes FLUX.1's single-block dims (3072, 12288) for linear1, checked at those dims below; the
    layers outside the blocks are checked against its converter directly (next test)."""
    pipe = _diffusers_pipeline(tmp_path)
    ids = pipe.tokenizer(["a dog"], padding="max_length", max_length=77, return_tensors="pt").input_ids
    base = run_flux(pipe.transformer)
    spec = AdapterSpec(algo="lora", dim=4, alpha=2, preset="attn-mlp", exclude=SINGLE_FUSED)
    torch.manual_seed(0)
    net = inject(pipe.transformer, {"lora_te1": pipe.text_encoder}, spec)
    perturb(net, scale=0.1)
    with torch.no_grad():
        ours = run_flux(pipe.transformer), pipe.text_encoder(ids).pooler_output
    net.save(tmp_path / "ours.safetensors")
    net.remove()  # the pipeline is as loaded again
    keys = _file_keys(tmp_path / "ours.safetensors")
    assert {"lora_unet_double_blocks_0_img_attn_qkv", "lora_unet_double_blocks_0_txt_attn_qkv"} <= keys
    assert any(k.startswith("lora_te1_") for k in keys)

    pipe.load_lora_weights(str(tmp_path / "ours.safetensors"))
    with torch.no_grad():
        got = run_flux(pipe.transformer), pipe.text_encoder(ids).pooler_output
    assert (got[0] - base).abs().max() > 1e-3  # ΔW ≠ 0
    for a, b in zip(got, ours, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_layers_outside_the_blocks_convert_as_diffusers_converts_them(tmp_path):
    """img_in, txt_in, time/guidance/vector embedders and the final layer (its halves swapped).
    diffusers 0.42 names these without the ``transformer.`` prefix, so ``load_lora_weights`` drops
    them; its converter's output is compared with our layers' ΔW. It also ignores α for the final
    layer ("TODO: alphas"), so α = rank here."""
    from diffusers.loaders.lora_conversion_utils import _convert_kohya_flux_lora_to_diffusers

    from lyco_bench.adapters import delta_weights
    from lyco_bench.adapters.fileformat import read_tensors

    transformer = tiny_flux()
    torch.manual_seed(0)
    spec = AdapterSpec(algo="lora", dim=4, alpha=4, preset="full", exclude=["*transformer_blocks_*"])
    net = inject(transformer, None, spec)
    perturb(net, scale=0.1)
    net.save(tmp_path / "top.safetensors")
    net.remove()
    tensors, _ = read_tensors(tmp_path / "top.safetensors")
    assert {k.partition(".")[0] for k in tensors} == TOP_KEYS
    converted = _convert_kohya_flux_lora_to_diffusers(dict(tensors))
    ours = delta_weights(tmp_path / "top.safetensors", transformer, None)
    assert len(ours) == len(TOP_KEYS)
    for key, (delta, _) in ours.items():
        path = dict((n.replace(".", "_"), n) for n, _ in transformer.named_modules())[
            key[len("lora_unet_") :]
        ]
        b, a = converted[f"{path}.lora_B.weight"], converted[f"{path}.lora_A.weight"]
        torch.testing.assert_close(b @ a, delta, rtol=1e-5, atol=1e-6, msg=key)


def test_single_block_linear1_splits_as_diffusers_does_at_flux_dims():
    from diffusers.loaders.lora_conversion_utils import _convert_kohya_flux_lora_to_diffusers

    from lyco_bench.adapters.algorithms.lora import LoRAModule
    from lyco_bench.families._flux_keys import Group, _fuse, _split

    sizes, rank, alpha = (3072, 3072, 3072, 12288), 2, 1.0  # FLUX.1's hidden 3072, MLP 4×
    members = tuple(f"lora_unet_m{i}" for i in range(4))
    group = Group("lora_unet_single_blocks_0_linear1", members, sizes)
    g = torch.Generator().manual_seed(0)
    parts = {
        m: {
            "lora_down.weight": torch.randn(rank, 3072, generator=g),
            "lora_up.weight": torch.randn(s, rank, generator=g),
            "alpha": torch.tensor(alpha),
        }
        for m, s in zip(members, sizes, strict=True)
    }
    fused = _fuse(LoRAModule, group, parts)
    converted = _convert_kohya_flux_lora_to_diffusers({f"{group.file_key}.{k}": v for k, v in fused.items()})
    x = torch.randn(3072, 3, generator=g)
    names = ["attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp"]
    for member, name in zip(members, names, strict=True):
        a = converted[f"transformer.single_transformer_blocks.0.{name}.lora_A.weight"]
        b = converted[f"transformer.single_transformer_blocks.0.{name}.lora_B.weight"]
        want = (alpha / rank) * parts[member]["lora_up.weight"] @ (parts[member]["lora_down.weight"] @ x)
        torch.testing.assert_close(b @ (a @ x), want, rtol=1e-4, atol=1e-4)
    back = _split(LoRAModule, group, fused, name="f")
    for member in members:
        for key, value in parts[member].items():
            torch.testing.assert_close(back[member][key], value, rtol=0, atol=0)


# preset → LyCORIS target modules on diffusers' FLUX (its BFL presets name DoubleStreamBlock /
# SingleStreamBlock; attn-only's CrossAttention/SelfAttention are diffusers' FluxAttention).
LYCORIS_TARGETS = {
    "attn-only": '["FluxAttention"]',
    "attn-mlp": '["FluxTransformerBlock", "FluxSingleTransformerBlock"]',
    "full-lin": '["FluxTransformerBlock", "FluxSingleTransformerBlock", "TimestepEmbedding"]',
    "full": '["FluxTransformer2DModel"]',
    # LyCORIS's ia3 names (to_k, to_v, ff.net.2), as regexes over module paths (its match_fn)
    "ia3": "[]\ntarget_name = ['.*[.]attn[.]to_[kv]$', '.*[.]ff[.]net[.]2$']",
}


@pytest.mark.parametrize("preset", list(LYCORIS_TARGETS))
def test_presets_select_what_lycoris_selects(tmp_path, preset):
    from lycoris import create_lycoris

    transformer = tiny_flux()
    ours = {t.key for t in find_targets(transformer, None, AdapterSpec(preset=preset))}
    text = f'lora_prefix = "lora_unet"\ntarget_module = {LYCORIS_TARGETS[preset]}\n'
    with lycoris_preset(tmp_path, text, preset) as path:
        network = create_lycoris(transformer, 1.0, preset=path, algo="lora", linear_dim=4, linear_alpha=2)
    assert {lora.lora_name for lora in network.loras} == ours
    assert (
        len(ours)
        == {
            "attn-only": 8 + 3,
            "attn-mlp": 14 + 6,
            "full-lin": 14 + 6 + 4,
            "full": 14 + 6 + 10,
            "ia3": 3 + 2,
        }[preset]
    )


# our spec, LyCORIS's create_lycoris arguments for the same adapter
LYCORIS_CASES = {
    "lora": (dict(algo="lora", dim=4, alpha=2), dict(algo="lora", linear_dim=4, linear_alpha=2)),
    "lora-dora": (
        dict(algo="lora", dim=4, alpha=2, dora=True),
        dict(algo="lora", linear_dim=4, linear_alpha=2, dora_wd=True),
    ),
    "loha": (dict(algo="loha", dim=2, alpha=1), dict(algo="loha", linear_dim=2, linear_alpha=1)),
    "lokr": (
        dict(algo="lokr", dim=2, alpha=1, factor=4),
        dict(algo="lokr", linear_dim=2, linear_alpha=1, factor=4),
    ),
    "native": (dict(algo="native"), dict(algo="full", linear_dim=4, linear_alpha=1)),
}


@pytest.mark.parametrize("case", list(LYCORIS_CASES))
def test_lycoris_files_on_flux_merge_to_its_forward_and_ours_load_into_lycoris(tmp_path, case):
    from lycoris import create_lycoris, create_lycoris_from_weights
    from lycoris.utils.preset import read_preset
    from lycoris.wrapper import LycorisNetwork

    ours_spec, lyco_args = LYCORIS_CASES[case]
    text = f'lora_prefix = "lora_unet"\ntarget_module = {LYCORIS_TARGETS["attn-mlp"]}\n'
    # LyCORIS's forward → its file → our merge.
    transformer = tiny_flux()
    torch.manual_seed(0)
    with lycoris_preset(tmp_path, text, "theirs") as path:
        network = create_lycoris(transformer, 1.0, preset=path, **lyco_args)
        network.apply_to()
        perturb(network, scale=0.1, seed=3)
        theirs = run_flux(transformer)
        network.save_weights(str(tmp_path / "lycoris.safetensors"), torch.float32, {})
    fresh = tiny_flux()
    merge_adapters(fresh, None, [(tmp_path / "lycoris.safetensors", 1.0)])
    torch.testing.assert_close(run_flux(fresh), theirs, rtol=1e-4, atol=1e-5)

    # Our forward → our (kohya-named) file, read back by layer → LyCORIS's forward.
    from lyco_bench.adapters.fileformat import in_layer_keys, save_tensors
    from lyco_bench.families import key_map_of

    transformer = tiny_flux()
    torch.manual_seed(0)
    net = inject(transformer, None, AdapterSpec(preset="attn-mlp", **ours_spec))
    perturb(net, scale=0.1)
    ours = run_flux(transformer)
    net.save(tmp_path / "ours.safetensors")
    net.remove()
    by_layer = in_layer_keys(load_adapter(tmp_path / "ours.safetensors"), key_map_of(transformer))
    save_tensors(tmp_path / "by-layer.safetensors", by_layer.tensors, {})
    fresh = tiny_flux()
    with lycoris_preset(tmp_path, text, "ours") as path:
        LycorisNetwork.apply_preset(read_preset(path))
        loaded, _ = create_lycoris_from_weights(1.0, str(tmp_path / "by-layer.safetensors"), fresh)
        loaded.apply_to()
    assert len(loaded.loras) == len(by_layer.modules) == 20
    torch.testing.assert_close(run_flux(fresh), ours, rtol=1e-4, atol=1e-5)


@pytest.mark.e2e  # a pipeline merged, written and extracted: seconds of CPU
def test_merge_then_extract_on_flux_gives_kohya_names_and_the_same_update(tmp_path):
    """``adapter merge`` bakes a FLUX file into the pipeline; ``adapter extract`` of tuned − base
    writes kohya's fused names again, with the same ΔW (rank ≥ the update's)."""
    from lyco_bench.adapters import delta_weights
    from lyco_bench.cli import main

    pipe = _diffusers_pipeline(tmp_path)
    torch.manual_seed(0)
    net = inject(pipe.transformer, None, AdapterSpec(algo="lora", dim=2, alpha=2, preset="attn-mlp"))
    perturb(net, scale=0.1)
    net.save(tmp_path / "a.safetensors")
    net.remove()
    base = str(tmp_path / "flux")
    assert (
        main(
            [
                "adapter",
                "merge",
                "--base",
                base,
                "--adapter",
                str(tmp_path / "a.safetensors"),
                "--out",
                str(tmp_path / "m"),
            ]
        )
        == 0
    )
    out = tmp_path / "x.safetensors"
    assert (
        main(
            [
                "adapter",
                "extract",
                "--base",
                base,
                "--tuned",
                str(tmp_path / "m"),
                "--rank",
                "8",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert _file_keys(out) == BLOCK_KEYS
    want = delta_weights(tmp_path / "a.safetensors", pipe.transformer, None)
    got = delta_weights(out, pipe.transformer, None)
    assert set(got) == set(want)
    for key, (delta, _) in want.items():
        torch.testing.assert_close(got[key][0], delta, rtol=1e-3, atol=1e-5, msg=key)
