"""Interoperability with lycoris-lora, both ways, compared on whole-model outputs.

Our files → ``lycoris.create_lycoris_from_weights`` (its forward, not its merge, which applies α/r
twice for LoHa/LoKr) give the UNet and text-encoder outputs our bypass forward gave; files
written by ``lycoris.create_lycoris`` + ``save_weights`` give, merged by us, the outputs of
LyCORIS's own forward. LyCORIS names modules ``<prefix>_<module path>``; the text encoder is
wrapped under ``text_model`` as in the transformers-4 layout every SD tool writes.
"""

from __future__ import annotations

import pytest
import torch

from lyco_bench.adapters import AdapterSpec, inject, load_adapter, merge_adapters
from tests.helpers import (  # noqa: F401 - autouse fixture
    CASES,
    TE_PRESET,
    UNET_PRESET,
    TextModelHolder,
    lycoris_preset,
    one_thread,
    perturb,
    run_models,
    tiny_models,
)

lycoris = pytest.importorskip("lycoris")


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
