"""The SDXL family against the ecosystem's own code: LyCORIS (module selection per preset, forward
per algorithm, files both ways) and diffusers (its kohya→diffusers SDXL converter in
``load_lora_weights``; its ``encode_prompt`` and ``_get_add_time_ids`` for the conditioning)."""

from __future__ import annotations

import pytest
import torch

from lyco_bench.adapters import AdapterSpec, find_targets, inject, load_adapter, merge_adapters
from lyco_bench.adapters.fileformat import adapter_file_from_tensors
from lyco_bench.adapters.inject import layer_index
from lyco_bench.families import ImageGeometry, family_of, get_family
from lyco_bench.families.sdxl import sgm_path
from tests.helpers import CASES, TextModelHolder, lycoris_preset, one_thread, perturb  # noqa: F401

lycoris = pytest.importorskip("lycoris")
SDXL = get_family("sdxl")


@pytest.fixture(scope="module")
def sdxl(tiny_sdxl_dir):
    """A fresh copy of the tiny SDXL per call (loaded once: a copy costs a fraction of a load)."""
    import copy

    from lyco_bench.models import load_pipeline

    loaded = load_pipeline(str(tiny_sdxl_dir))
    return lambda: copy.deepcopy(loaded)


def _models(pipe):
    return SDXL.denoiser(pipe), SDXL.encoders(pipe)


def _held(encoder):
    """An encoder under ``text_model`` as in transformers 4 (CLIPTextModelWithProjection keeps it)."""
    return encoder if hasattr(encoder, "text_model") else TextModelHolder(encoder)


def run_sdxl(unet, encoders, seed: int = 0) -> list[torch.Tensor]:
    """UNet output (with SDXL's added conditioning) and both text encoders' outputs."""
    g = torch.Generator().manual_seed(seed)
    cfg = unet.config
    sample = torch.randn(2, 4, 8, 8, generator=g)
    hidden = torch.randn(2, 5, cfg.cross_attention_dim, generator=g)
    pooled = torch.randn(
        2, cfg.projection_class_embeddings_input_dim - 6 * cfg.addition_time_embed_dim, generator=g
    )
    time_ids = torch.tensor([[64.0, 48, 0, 8, 64, 64], [32, 32, 0, 0, 64, 64]])
    ids = torch.tensor([[49406, 5, 17, 99, 49407], [49406, 7, 8, 49407, 49407]])
    added = {"text_embeds": pooled, "time_ids": time_ids}
    with torch.no_grad():
        out = [unet(sample, torch.tensor([10, 500]), hidden, added_cond_kwargs=added).sample]
        for encoder in encoders.values():
            result = encoder(ids, output_hidden_states=True)
            out += [result.hidden_states[-2], result[0]]
    return out


def test_sgm_names_of_sdxl_layers():
    """SDXL 1.0's layout (layers_per_block 2, up blocks CrossAttn, CrossAttn, Up): the names
    kohya's SDXL files use (sd-scripts' sdxl_original_unet module tree)."""
    config = {
        "layers_per_block": 2,
        "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    }
    cases = {
        "conv_in": "input_blocks.0.0",
        "time_embedding.linear_2": "time_embed.2",
        "add_embedding.linear_1": "label_emb.0.0",
        "down_blocks.0.resnets.1.conv1": "input_blocks.2.0.in_layers.2",
        "down_blocks.0.downsamplers.0.conv": "input_blocks.3.0.op",
        "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q": "input_blocks.4.1.transformer_blocks.0.attn1.to_q",
        "down_blocks.1.resnets.0.conv_shortcut": "input_blocks.4.0.skip_connection",
        "down_blocks.2.attentions.1.proj_in": "input_blocks.8.1.proj_in",
        "mid_block.resnets.1.time_emb_proj": "middle_block.2.emb_layers.1",
        "mid_block.attentions.0.transformer_blocks.9.ff.net.2": "middle_block.1.transformer_blocks.9.ff.net.2",
        "up_blocks.0.resnets.2.conv2": "output_blocks.2.0.out_layers.3",
        "up_blocks.0.upsamplers.0.conv": "output_blocks.2.2.conv",
        "up_blocks.1.attentions.2.proj_out": "output_blocks.5.1.proj_out",
        "up_blocks.1.upsamplers.0.conv": "output_blocks.5.2.conv",
        "up_blocks.2.resnets.0.norm1": "output_blocks.6.0.in_layers.0",
        "conv_norm_out": "out.0",
        "conv_out": "out.2",
    }  # fmt: skip
    assert {path: sgm_path(path, config) for path in cases} == cases


def test_family_is_read_off_the_pipeline(sdxl, tiny_model_dir):
    from lyco_bench.models import load_pipeline

    assert family_of(sdxl()).name == "sdxl"
    assert family_of(load_pipeline(str(tiny_model_dir))).name == "sd1"
    assert [s.prefix for s in SDXL.text_encoders] == ["lora_te1", "lora_te2"]


def _lycoris_preset_text(name: str, part: str) -> str:
    """A LyCORIS built-in preset's targets for one part, as the TOML LyCORIS reads, with two
    differences of names: its attn-only names diffusers' pre-0.20 attention class (CrossAttention;
    it is Attention now), and its attn-mlp lists Anima's ``TimestepEmbedding`` (a DiT's block),
    a class name diffusers' UNet time embeddings happen to share — attn-mlp (the paper's) means
    the transformer blocks, so that entry is left out there."""
    from lycoris.config import BUILTIN_PRESET_CONFIGS

    preset = BUILTIN_PRESET_CONFIGS[name]
    modules = list(getattr(preset, f"{part}_target_module"))
    if name == "attn-only" and part == "unet":
        modules = ["Attention" if m == "CrossAttention" else m for m in modules]
    if name == "attn-mlp":
        modules = [m for m in modules if m != "TimestepEmbedding"]
    names = list(getattr(preset, f"{part}_target_name"))
    return (
        f"enable_conv = {str(preset.enable_conv).lower()}\ntarget_module = {modules}\ntarget_name = {names}\n"
    )


@pytest.mark.parametrize("preset", ["attn-only", "attn-mlp", "full", "full-lin"])
def test_lycoris_selects_the_same_layers(tmp_path, sdxl, preset):
    from lycoris import create_lycoris

    pipe = sdxl()
    unet, encoders = _models(pipe)
    ours = {id(t.layer) for t in find_targets(unet, encoders, AdapterSpec(algo="lora", dim=2, preset=preset))}
    index = layer_index(unet, encoders)
    theirs = set()
    parts = [(unet, "unet", "lora_unet")] + [(_held(m), "text_encoder", p) for p, m in encoders.items()]
    for module, part, prefix in parts:
        text = _lycoris_preset_text(preset, part) + f'lora_prefix = "{prefix}"\n'
        with lycoris_preset(tmp_path, text, f"{preset}-{prefix}") as path:
            network = create_lycoris(module, 1.0, linear_dim=2, linear_alpha=1, preset=path, algo="lora")
            theirs |= {id(index[lora.lora_name]) for lora in network.loras}
    assert len(ours) > 0 and ours == theirs


# Every algorithm both ways costs 1–2 s of CPU per case on the tiny SDXL: `make test` runs them,
# `make test-fast` keeps the selection, diffusers and conditioning checks.
@pytest.mark.e2e
@pytest.mark.parametrize("case", list(CASES))
def test_we_load_lycoris_files_and_give_their_outputs(tmp_path, sdxl, case):
    """LyCORIS's full preset on the tiny SDXL (UNet, both encoders), its forward; its files
    (diffusers module paths) merged by us give the same outputs."""
    from lycoris import create_lycoris

    spec, lyco_args = CASES[case]
    unet, encoders = _models(sdxl())
    torch.manual_seed(0)
    networks = []
    parts = [(unet, "unet", "lora_unet")] + [(_held(m), "text_encoder", p) for p, m in encoders.items()]
    for i, (module, part, prefix) in enumerate(parts):
        text = _lycoris_preset_text("full", part) + f'lora_prefix = "{prefix}"\n'
        with lycoris_preset(tmp_path, text, f"full-{prefix}") as path:
            network = create_lycoris(module, 1.0, preset=path, **lyco_args)
            network.apply_to()
            perturb(network, scale=0.1, seed=3 + i)
            networks.append(network)
    theirs = run_sdxl(unet, encoders)
    state: dict[str, torch.Tensor] = {}
    for i, network in enumerate(networks):
        path = tmp_path / f"lycoris-{i}.safetensors"
        network.save_weights(str(path), torch.float32, {"ss_network_module": "lycoris.kohya"})
        state.update(load_adapter(path).tensors)
    file = adapter_file_from_tensors(state)
    fresh_unet, fresh_encoders = _models(sdxl())
    index = layer_index(fresh_unet, fresh_encoders)
    targets = find_targets(fresh_unet, fresh_encoders, spec)
    assert {id(index[k]) for k in file.modules} == {id(t.layer) for t in targets}
    base = run_sdxl(fresh_unet, fresh_encoders)
    assert all((a - b).abs().max() > 1e-3 for a, b in zip(base, theirs, strict=True))  # ΔW ≠ 0
    merge_adapters(fresh_unet, fresh_encoders, [(file, 1.0)])
    for got, want in zip(run_sdxl(fresh_unet, fresh_encoders), theirs, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.e2e
@pytest.mark.parametrize("case", list(CASES))
def test_lycoris_loads_our_files_and_gives_our_outputs(tmp_path, sdxl, case):
    """Our file (SGM keys) renamed to the module paths LyCORIS's standalone wrapper names a
    diffusers model by: LyCORIS's forward gives our bypass forward."""
    from lycoris import create_lycoris_from_weights
    from lycoris.utils.preset import read_preset
    from lycoris.wrapper import LycorisNetwork

    spec, _ = CASES[case]
    unet, encoders = _models(sdxl())
    torch.manual_seed(0)
    net = inject(unet, encoders, spec)
    perturb(net, scale=0.1)
    ours = run_sdxl(unet, encoders)
    path = tmp_path / "ours.safetensors"
    net.save(path)
    net.remove()
    assert any(k.startswith("lora_unet_input_blocks_") for k in load_adapter(path).modules)

    fresh_unet, fresh_encoders = _models(sdxl())
    diffusers_names = _diffusers_names(fresh_unet)
    tensors = {}
    for key, value in load_adapter(path).tensors.items():
        module, _, suffix = key.partition(".")
        tensors[f"{diffusers_names.get(module, module)}.{suffix}"] = value
    renamed = tmp_path / "renamed.safetensors"
    from safetensors.torch import save_file

    save_file(tensors, str(renamed))
    parts = [(fresh_unet, "lora_unet")] + [(_held(m), p) for p, m in fresh_encoders.items()]
    count = 0
    for module, prefix in parts:
        with lycoris_preset(tmp_path, f'lora_prefix = "{prefix}"\n', prefix) as preset_path:
            LycorisNetwork.apply_preset(read_preset(preset_path))
            network, _ = create_lycoris_from_weights(1.0, str(renamed), module)
            network.apply_to()
            count += len(network.loras)
    assert count == len(load_adapter(path).modules)
    for got, want in zip(run_sdxl(fresh_unet, fresh_encoders), ours, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def _diffusers_names(unet) -> dict[str, str]:
    """Our SGM key → ``lora_unet_<diffusers path>`` for every layer of ``unet``."""
    keys = SDXL.key_map(unet)
    return {keys.denoiser_key(p): "lora_unet_" + p.replace(".", "_") for p, _ in unet.named_modules() if p}


@pytest.mark.parametrize("preset", ["attn-mlp", "full"])
def test_diffusers_load_lora_weights_gives_our_merge(tmp_path, sdxl, preset):
    """diffusers' SDXL loader (kohya → diffusers key conversion, then PEFT) reads our LoRA file:
    the UNet and both encoders give what our merge gives."""
    pipe = sdxl()
    unet, encoders = _models(pipe)
    torch.manual_seed(0)
    net = inject(unet, encoders, AdapterSpec(algo="lora", dim=4, alpha=2, preset=preset))
    perturb(net, scale=0.1)
    path = tmp_path / "lora.safetensors"
    net.save(path)
    net.remove()
    base = run_sdxl(unet, encoders)
    theirs_pipe = sdxl()
    theirs_pipe.load_lora_weights(str(tmp_path), weight_name="lora.safetensors")
    theirs = run_sdxl(*_models(theirs_pipe))
    merge_adapters(unet, encoders, [(path, 1.0)])
    ours = run_sdxl(unet, encoders)
    for got, want, before in zip(theirs, ours, base, strict=True):
        assert (want - before).abs().max() > 1e-4
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_conditioning_is_diffusers_own(sdxl):
    """Prompt embeddings (both encoders' penultimate states, the second's pooled projection) and
    add_time_ids (original size, crop top-left, target size) as diffusers' SDXL pipeline makes them."""
    pipe = sdxl()
    captions = ["a photo of a cat", "an owl"]
    with torch.no_grad():
        ours = SDXL.encode_prompts(pipe, captions, torch.device("cpu"))
        embeds, _, pooled, _ = pipe.encode_prompt(captions, do_classifier_free_guidance=False)
    torch.testing.assert_close(ours["encoder_hidden_states"], embeds)
    torch.testing.assert_close(ours["text_embeds"], pooled)
    geometry = [ImageGeometry((48, 64), (0, 8), (32, 64)), ImageGeometry((64, 64), (0, 0), (64, 64))]
    time_ids = SDXL.extra_conditioning(pipe, geometry, torch.device("cpu"))["time_ids"]
    dim = pipe.text_encoder_2.config.projection_dim
    for row, g in zip(time_ids, geometry, strict=True):
        want = pipe._get_add_time_ids(
            (g.original[1], g.original[0]), g.crop, (g.target[1], g.target[0]), torch.float32, dim
        )[0]
        torch.testing.assert_close(row, want)
