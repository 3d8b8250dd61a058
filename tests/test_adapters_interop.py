"""Interoperability with lycoris-lora, both ways, compared on whole-model outputs.

Our files → ``lycoris.create_lycoris_from_weights`` (its forward, not its merge, which applies α/r
twice for LoHa/LoKr) give the UNet and text-encoder outputs our bypass forward gave; files
written by ``lycoris.create_lycoris`` + ``save_weights`` give, merged by us, the outputs of
LyCORIS's own forward. LyCORIS names modules ``<prefix>_<module path>``; the text encoder is
wrapped under ``text_model`` as in the transformers-4 layout every SD tool writes.
"""

from __future__ import annotations

import contextlib
import logging

import pytest
import torch
from torch import nn

from lyco_bench.adapters import AdapterSpec, inject, load_adapter, merge_adapters
from tests.test_adapters_inject import (
    one_thread,  # noqa: F401 (autouse fixture)
    perturb,
    run_models,
    tiny_models,
)

lycoris = pytest.importorskip("lycoris")

# Our spec, and the LyCORIS create_lycoris arguments for the same adapter.
CASES = {
    "lora": (
        AdapterSpec(algo="lora", dim=4, alpha=2, preset="full"),
        dict(algo="lora", linear_dim=4, linear_alpha=2),
    ),
    "locon-tucker": (
        AdapterSpec(algo="lora", dim=4, alpha=8, use_tucker=True, preset="full"),
        dict(algo="locon", linear_dim=4, linear_alpha=8, use_tucker=True),
    ),
    "loha": (
        AdapterSpec(algo="loha", dim=2, alpha=1, preset="full"),
        dict(algo="loha", linear_dim=2, linear_alpha=1),
    ),
    "lokr-decomposed": (
        AdapterSpec(algo="lokr", dim=2, alpha=1, factor=4, preset="full"),
        dict(algo="lokr", linear_dim=2, linear_alpha=1, factor=4),
    ),
    "lokr-full": (
        AdapterSpec(algo="lokr", dim=10000, alpha=1, factor=4, preset="full"),
        dict(algo="lokr", linear_dim=10000, linear_alpha=1, factor=4),
    ),
    "native": (AdapterSpec(algo="native", preset="full"), dict(algo="full", linear_dim=4, linear_alpha=1)),
}

UNET_PRESET = """
enable_conv = true
lora_prefix = "lora_unet"
target_module = ["Transformer2DModel", "ResnetBlock2D", "Downsample2D", "Upsample2D"]
target_name = ["conv_in", "conv_out", "time_embedding.linear_1", "time_embedding.linear_2"]
"""
TE_PRESET = """
lora_prefix = "lora_te"
target_module = ["CLIPAttention", "CLIPSdpaAttention", "CLIPMLP"]
"""


class TextModelHolder(nn.Module):
    """Puts a flat transformers-5 CLIPTextModel under ``text_model`` (the 4.x module paths)."""

    def __init__(self, te: nn.Module) -> None:
        super().__init__()
        self.text_model = te


@contextlib.contextmanager
def lycoris_preset(tmp_path, text: str, name: str):
    """Apply a LyCORIS preset (class-level state in LycorisNetwork) and restore it afterwards."""
    from lycoris.wrapper import LycorisNetwork

    attrs = ["ENABLE_CONV", "TARGET_REPLACE_MODULE", "TARGET_REPLACE_NAME", "LORA_PREFIX", "MODULE_ALGO_MAP"]
    attrs += ["NAME_ALGO_MAP", "USE_FNMATCH", "TARGET_EXCLUDE_NAME"]
    saved = {a: getattr(LycorisNetwork, a) for a in attrs}
    path = tmp_path / f"{name}.toml"
    path.write_text(text)
    logging.getLogger("LyCORIS").setLevel(logging.ERROR)
    try:
        yield str(path)
    finally:
        for attr, value in saved.items():
            setattr(LycorisNetwork, attr, value)


@pytest.mark.parametrize("case", list(CASES))
def test_lycoris_loads_our_files_and_gives_our_outputs(tmp_path, case):
    from lycoris import create_lycoris_from_weights
    from lycoris.utils.preset import read_preset
    from lycoris.wrapper import LycorisNetwork

    spec, _ = CASES[case]
    unet, te = tiny_models(0)
    torch.manual_seed(0)
    net = inject(unet, te, spec)
    perturb(net, scale=0.1)
    ours = run_models(unet, te)
    path = tmp_path / "ours.safetensors"
    net.save(path)
    net.remove()

    fresh_unet, fresh_te = tiny_models(0)
    networks = []
    for module, prefix in ((fresh_unet, "lora_unet"), (TextModelHolder(fresh_te), "lora_te")):
        with lycoris_preset(tmp_path, f'lora_prefix = "{prefix}"\n', prefix) as preset_path:
            LycorisNetwork.apply_preset(read_preset(preset_path))
            network, _ = create_lycoris_from_weights(1.0, str(path), module)
            network.apply_to()
            networks.append(network)
    assert sum(len(n.loras) for n in networks) == len(load_adapter(path).modules)
    theirs = run_models(fresh_unet, fresh_te)
    for got, want in zip(theirs, ours, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("case", list(CASES))
def test_we_load_lycoris_files_and_give_their_outputs(tmp_path, case):
    from lycoris import create_lycoris

    spec, lyco_args = CASES[case]
    unet, te = tiny_models(0)
    torch.manual_seed(0)
    networks = []
    for module, preset, name in ((unet, UNET_PRESET, "unet"), (TextModelHolder(te), TE_PRESET, "te")):
        with lycoris_preset(tmp_path, preset, name) as preset_path:
            network = create_lycoris(module, 1.0, preset=preset_path, **lyco_args)
            network.apply_to()
            perturb(network, scale=0.1, seed=3 if name == "unet" else 4)
            networks.append(network)
    theirs = run_models(unet, te)
    state: dict[str, torch.Tensor] = {}
    for i, network in enumerate(networks):
        path = tmp_path / f"lycoris-{i}.safetensors"
        network.save_weights(str(path), torch.float32, {"ss_network_module": "lycoris.kohya"})
        state.update(load_adapter(path).tensors)
    from lyco_bench.adapters.fileformat import adapter_file_from_tensors

    file = adapter_file_from_tensors(state)
    assert set(file.modules) == {t.key for t in _targets(spec)}  # LyCORIS's "full" preset = ours
    fresh_unet, fresh_te = tiny_models(0)
    base = run_models(fresh_unet, fresh_te)
    assert all((a - b).abs().max() > 1e-3 for a, b in zip(base, theirs, strict=True))  # ΔW ≠ 0
    merge_adapters(fresh_unet, fresh_te, [(file, 1.0)])
    for got, want in zip(run_models(fresh_unet, fresh_te), theirs, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def _targets(spec: AdapterSpec):
    from lyco_bench.adapters import find_targets

    return find_targets(*tiny_models(0), spec)
