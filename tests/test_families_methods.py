"""Model-level methods on the tiny SDXL: Textual Inversion with one embedding per text encoder
(SDXL's ``clip_l``/``clip_g`` layout, checked against diffusers' own SDXL loading) and
hypernetworks (SDXL's UNet has cross-attention), trained through the SDXL family."""

from __future__ import annotations

import pytest
import torch

from lyco_bench.adapters.fileformat import read_tensors, save_tensors
from lyco_bench.methods.textual_inversion import TextualInversion
from tests.helpers import run_config

_LOADED: dict[str, object] = {}


def _pipe(folder):
    """A fresh copy of the pipeline in ``folder`` (loaded once per module)."""
    import copy

    from lyco_bench.models import load_pipeline

    if str(folder) not in _LOADED:
        _LOADED[str(folder)] = load_pipeline(str(folder))
    return copy.deepcopy(_LOADED[str(folder)])


def test_sdxl_embedding_gives_what_diffusers_loads(tmp_path, tiny_sdxl_dir):
    """A kohya SDXL file ({clip_l, clip_g}) attached by us encodes a prompt as diffusers does
    after ``load_textual_inversion`` of each part into its encoder (diffusers' SDXL recipe)."""
    g = torch.Generator().manual_seed(0)
    ours_pipe = _pipe(tiny_sdxl_dir)
    widths = [ours_pipe.text_encoder.config.hidden_size, ours_pipe.text_encoder_2.config.hidden_size]
    tensors = {
        "clip_l": torch.randn(2, widths[0], generator=g),
        "clip_g": torch.randn(2, widths[1], generator=g),
    }
    path = tmp_path / "zkw.safetensors"
    save_tensors(path, tensors, {})
    method = TextualInversion.from_file(path)
    prompt = ["a photo of zkw on a table"]
    method.attach(ours_pipe)
    with torch.no_grad():
        ours = ours_pipe.encode_prompt(method.prompt(prompt[0]), do_classifier_free_guidance=False)
    method.detach()

    theirs_pipe = _pipe(tiny_sdxl_dir)
    theirs_pipe.load_textual_inversion(
        tensors["clip_l"], token="zkw", text_encoder=theirs_pipe.text_encoder, tokenizer=theirs_pipe.tokenizer
    )
    theirs_pipe.load_textual_inversion(
        tensors["clip_g"],
        token="zkw",
        text_encoder=theirs_pipe.text_encoder_2,
        tokenizer=theirs_pipe.tokenizer_2,
    )
    with torch.no_grad():
        theirs = theirs_pipe.encode_prompt(prompt, do_classifier_free_guidance=False)
    torch.testing.assert_close(ours[0], theirs[0])  # both encoders' states, concatenated
    torch.testing.assert_close(ours[2], theirs[2])  # the pooled clip_g embedding
    plain = _pipe(tiny_sdxl_dir).encode_prompt(prompt, do_classifier_free_guidance=False)
    assert (plain[0] - ours[0]).abs().max() > 1e-3  # the embedding took effect


@pytest.mark.e2e  # a training run on the tiny SDXL: seconds of CPU
def test_textual_inversion_trains_both_encoders(tmp_path, tiny_sdxl_dir, small_dataset, cache_dir):
    from lyco_bench.training import train

    pipe = _pipe(tiny_sdxl_dir)
    tables = [
        e.get_input_embeddings().weight.detach().clone() for e in (pipe.text_encoder, pipe.text_encoder_2)
    ]
    cfg = run_config(
        tiny_sdxl_dir,
        small_dataset,
        cache_dir,
        adapter={"algo": "textual_inversion", "num_vectors": 2},
        lr=5e-3,
    )
    [ckpt] = train(cfg, tmp_path / "run", pipeline=pipe)
    tensors, _ = read_tensors(ckpt)
    widths = {"clip_l": tables[0].shape[1], "clip_g": tables[1].shape[1]}
    for name, width in widths.items():
        assert tensors[name].shape == (2, width)  # concept 0 in SDXL's layout
    assert any(k.startswith("clip_g.") for k in tensors)  # the other concepts beside it
    method = TextualInversion.from_file(ckpt)
    assert method.slots == ("clip_l", "clip_g")
    # Both sets moved from their init, and the frozen tables did not.
    assert [e.get_input_embeddings().weight for e in (pipe.text_encoder, pipe.text_encoder_2)][0].equal(
        tables[0]
    )
    init = TextualInversion(num_vectors=2)
    concepts = list({c.key: c for c, _ in _pairs(cfg)}.values())
    init.attach(pipe, concepts=concepts)
    init.detach()
    for slot in range(2):
        assert (init.slot_vectors(slot) - method.slot_vectors(slot)).abs().max() > 0
    exported = method.export(tmp_path / "one")
    assert set(read_tensors(exported[0])[0]) == {"clip_l", "clip_g"}  # each concept a kohya SDXL file


def _pairs(cfg):
    from lyco_bench.data import load_dataset

    return load_dataset(cfg.dataset, categories=cfg.categories).items()


@pytest.mark.e2e  # a training run on the tiny SDXL: seconds of CPU
def test_hypernetwork_trains_on_sdxl(tmp_path, tiny_sdxl_dir, small_dataset, cache_dir):
    """SDXL's UNet has cross-attention: the hypernetwork's modules sit on its attn2 k/v, sized by
    SDXL's context width (both encoders' states)."""
    from lyco_bench.methods import method_of_file
    from lyco_bench.training import train

    pipe = _pipe(tiny_sdxl_dir)
    cfg = run_config(tiny_sdxl_dir, small_dataset, cache_dir, adapter={"algo": "hypernetwork"}, lr=1e-4)
    [ckpt] = train(cfg, tmp_path / "run", pipeline=pipe)
    tensors, _ = read_tensors(ckpt)
    context = pipe.unet.config.cross_attention_dim
    assert tensors and any(t.shape[-1] == context for t in tensors.values())
    assert method_of_file(ckpt).algo == "hypernetwork"
