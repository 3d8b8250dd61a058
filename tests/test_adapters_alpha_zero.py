"""An adapter file whose alpha is 0 reads as LyCORIS and kohya read it: alpha = rank (scale 1),
not a zero update. LyCORIS's own loader (``create_lycoris_from_weights`` and its forward) is the
oracle."""

from __future__ import annotations

import pytest
import torch

from lyco_bench.adapters import inject, load_adapter, merge_adapters
from lyco_bench.adapters.fileformat import save_tensors
from tests.helpers import CASES, TextModelHolder, lycoris_preset, one_thread, perturb, run_models, tiny_models  # noqa: F401 - autouse fixture

pytest.importorskip("lycoris")


@pytest.mark.parametrize("case", ["lora", "loha", "lokr-decomposed"])
def test_alpha_zero_reads_as_the_rank(tmp_path, case):
    from lycoris import create_lycoris_from_weights
    from lycoris.utils.preset import read_preset
    from lycoris.wrapper import LycorisNetwork

    spec, _ = CASES[case]
    unet, te = tiny_models(0)
    torch.manual_seed(0)
    net = inject(unet, te, spec)
    perturb(net, scale=0.1)
    path = tmp_path / "alpha0.safetensors"
    net.save(path)
    net.remove()
    file = load_adapter(path)
    zeroed = {k: torch.zeros_like(v) if k.endswith(".alpha") else v for k, v in file.tensors.items()}
    assert sum(k.endswith(".alpha") for k in zeroed) == len(file.modules)
    save_tensors(path, zeroed, file.metadata)

    theirs_unet, theirs_te = tiny_models(0)
    base = run_models(theirs_unet, theirs_te)
    for module, prefix in ((theirs_unet, "lora_unet"), (TextModelHolder(theirs_te), "lora_te")):
        with lycoris_preset(tmp_path, f'lora_prefix = "{prefix}"\n', prefix) as preset_path:
            LycorisNetwork.apply_preset(read_preset(preset_path))
            network, _ = create_lycoris_from_weights(1.0, str(path), module)
            network.apply_to()
    theirs = run_models(theirs_unet, theirs_te)
    assert all((a - b).abs().max() > 1e-3 for a, b in zip(base, theirs, strict=True))  # not a zero update

    ours_unet, ours_te = tiny_models(0)
    merge_adapters(ours_unet, ours_te, [(load_adapter(path), 1.0)])
    for got, want in zip(run_models(ours_unet, ours_te), theirs, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
