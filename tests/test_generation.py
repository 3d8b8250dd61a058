"""Generation: deterministic PNGs, resumable manifest, merged adapters, the generate command."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from lyco_bench import generation
from lyco_bench.cli import main
from lyco_bench.data import load_dataset
from lyco_bench.errors import BadInput
from lyco_bench.generation import (
    MANIFEST_COLUMNS,
    SamplerSettings,
    base_images_key,
    generate,
    parse_adapter,
    plan_batches,
)
from lyco_bench.prompts import expand_prompts, load_prompt_set

SAMPLER = SamplerSettings(steps=2, width=64, height=64, batch_size=4)
INTERNALS_COLUMNS = [
    "file", "prompt", "clip_text", "prompt_class", "category", "concept", "subclass", "prompt_index",
    "image_index", "seed", "checkpoint", "prompt_set", "prompt_set_version", "sampler", "steps", "cfg",
    "width", "height",
]  # fmt: skip


@pytest.fixture(scope="module")
def pipe(tiny_model_dir):
    from lyco_bench.models import load_pipeline

    return load_pipeline(str(tiny_model_dir))


@pytest.fixture(scope="module")
def items(demo_dataset_dir):
    """5 trigger images (one per demo leaf) and 2 style images of the circle."""
    ps = load_prompt_set("demo")
    ds = load_dataset(demo_dataset_dir)
    chosen = expand_prompts(ps, ds, ["trigger", "style"], images_per_prompt=1)
    return [i for i in chosen if i.prompt_class == "trigger" or i.concept == "circle"]


@pytest.fixture(scope="module")
def adapter_file(tmp_path_factory, tiny_model_dir):
    """A LoRA file with random (non-zero) factors on attention, MLP and text-encoder layers."""
    from lyco_bench.adapters import AdapterSpec, inject
    from lyco_bench.models import load_pipeline

    p = load_pipeline(str(tiny_model_dir))
    net = inject(p.unet, p.text_encoder, AdapterSpec(algo="lora", dim=4, alpha=4, preset="attn-mlp"))
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in net.trainable_parameters():
            param.copy_(torch.randn(param.shape, generator=gen) * 0.2)
    path = tmp_path_factory.mktemp("adapter") / "lora-e001.safetensors"
    net.save(path)
    return path


def _pngs(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*.png"))}


def _pixels(folder: Path) -> dict[str, np.ndarray]:
    return {k: np.asarray(Image.open(folder / k), dtype=np.int16) for k in _pngs(folder)}


def _run(pipe, items, out, sampler=SAMPLER, **kw):
    return generate(model="tiny", items=items, out_dir=out, sampler=sampler, pipeline=pipe, **kw)


def test_deterministic_files_and_manifest(pipe, items, tmp_path):
    ps = load_prompt_set("demo")
    m1 = _run(pipe, items, tmp_path / "a", prompt_set=ps)
    m2 = _run(pipe, items, tmp_path / "b", prompt_set=ps)
    first = _pngs(tmp_path / "a")
    assert sorted(first) == sorted(i.relpath for i in items) and len(first) == 7
    assert first == _pngs(tmp_path / "b")
    assert m1.read_bytes() == m2.read_bytes()
    df = pd.read_parquet(m1)
    assert list(df.columns) == MANIFEST_COLUMNS and set(INTERNALS_COLUMNS) <= set(df.columns)
    row = df[df.file == "style/shapes/circle/001-1000.png"].iloc[0].to_dict()
    assert row["prompt"] == "zqx shape in the style of pixel art"
    assert row["clip_text"] == "red circle in the style of pixel art"
    assert (row["prompt_class"], row["category"], row["concept"], row["subclass"]) == (
        "style",
        "shapes",
        "circle",
        "",
    )
    assert (row["prompt_index"], row["image_index"], row["seed"], row["checkpoint"]) == (1, 0, 1000, "base")
    assert (row["prompt_set"], row["prompt_set_version"], row["sampler"], row["steps"]) == (
        "demo",
        "1.0",
        "ddim",
        2,
    )
    assert (row["cfg"], row["width"], row["height"], row["adapters"]) == (7.0, 64, 64, "")
    image = Image.open(tmp_path / "a" / row["file"])
    assert image.size == (64, 64) and image.mode == "RGB" and not image.info.get("dpi")


def test_rerun_skips_and_resumes_exactly(pipe, items, tmp_path, monkeypatch):
    out = tmp_path / "out"
    _run(pipe, items, out)
    original = _pngs(out)
    stamps = {p: (out / p).stat().st_mtime_ns for p in original}
    calls = []
    real = generation.sample_batch
    monkeypatch.setattr(
        generation, "sample_batch", lambda p, b, s, m=(): calls.append(len(b)) or real(p, b, s, m)
    )
    _run(pipe, items, out)
    assert calls == []  # nothing sampled, nothing loaded
    victim = "trigger/shapes/circle/000-1000.png"
    (out / victim).unlink()
    _run(pipe, items, out)
    # the victim's whole batch (the first 4 trigger items) is sampled; only the victim is written
    assert calls == [4]
    assert _pngs(out) == original
    assert [p for p in original if (out / p).stat().st_mtime_ns != stamps[p]] == [victim]
    assert len(pd.read_parquet(out / "manifest.parquet")) == len(items)


def test_batching_does_not_leak_between_classes(pipe, items, tmp_path):
    batches = plan_batches(items, 4)
    assert [[i.prompt_class for i in b] for b in batches] == [["trigger"] * 4, ["trigger"], ["style"] * 2]
    _run(pipe, items, tmp_path / "all")
    _run(pipe, [i for i in items if i.prompt_class == "style"], tmp_path / "style")
    style = _pngs(tmp_path / "style")
    assert style == {k: v for k, v in _pngs(tmp_path / "all").items() if k.startswith("style/")}
    # other batch sizes agree up to float rounding (batched kernels round differently)
    few = items[:3]  # one batch of 3 vs three of 1
    _run(pipe, few, tmp_path / "bs1", sampler=SAMPLER.model_copy(update={"batch_size": 1}))
    a, b = _pixels(tmp_path / "all"), _pixels(tmp_path / "bs1")
    a = {k: a[k] for k in b}
    assert max(int(np.abs(a[k] - b[k]).max()) for k in a) <= 2


def test_merged_adapter_differs_from_base_and_matches_bypass(pipe, items, adapter_file, tmp_path):
    from lyco_bench.adapters import AdapterSpec, inject

    items = items[:2] + items[-1:]
    before = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    _run(pipe, items, tmp_path / "base")
    manifest = _run(pipe, items, tmp_path / "merged", adapters=[(adapter_file, 1.0)])
    assert all(torch.equal(v, before[k]) for k, v in pipe.unet.state_dict().items())  # unmerged
    assert pd.read_parquet(manifest).checkpoint.unique().tolist() == ["lora-e001"]
    halves = [(adapter_file, 0.5), (adapter_file, 0.5)]
    _run(pipe, items, tmp_path / "halves", adapters=halves, checkpoint_name="halves")
    # bypass: W0 untouched, forward = base(x) + λ·ΔW·x in the injected modules
    net = inject(pipe.unet, pipe.text_encoder, AdapterSpec(algo="lora", dim=4, alpha=4))
    try:
        net.load_weights(adapter_file)
        _run(pipe, items, tmp_path / "bypass")
    finally:
        net.remove()
    base, merged = _pixels(tmp_path / "base"), _pixels(tmp_path / "merged")
    bypass, summed = _pixels(tmp_path / "bypass"), _pixels(tmp_path / "halves")
    assert min(float(np.abs(merged[k] - base[k]).mean()) for k in base) > 5.0
    assert max(int(np.abs(merged[k] - bypass[k]).max()) for k in base) <= 2
    assert max(int(np.abs(merged[k] - summed[k]).max()) for k in base) <= 2


def test_other_settings_in_same_folder_is_bad_input(pipe, items, tmp_path):
    _run(pipe, items[:1], tmp_path)
    with pytest.raises(BadInput, match=r"manifest.parquet: made with steps=2, this run has 3"):
        _run(pipe, items[:1], tmp_path, sampler=SAMPLER.model_copy(update={"steps": 3}))
    with pytest.raises(BadInput, match="no such file"):
        _run(pipe, items[:1], tmp_path, adapters=[(tmp_path / "missing.safetensors", 1.0)])


def test_base_images_key_and_adapter_argument():
    ps = load_prompt_set("demo")
    key = base_images_key("runwayml/stable-diffusion-v1-5", ps, SAMPLER)
    assert key.startswith("stable-diffusion-v1-5-demo-v1.0-ddim2-")
    assert key == base_images_key(
        "runwayml/stable-diffusion-v1-5", ps, SAMPLER.model_copy(update={"batch_size": 1})
    )
    assert key == base_images_key(
        "runwayml/stable-diffusion-v1-5", ps.model_copy(update={"classes": ["train"]}), SAMPLER
    )
    assert key != base_images_key(
        "runwayml/stable-diffusion-v1-5", ps, SAMPLER.model_copy(update={"steps": 3})
    )
    assert key != base_images_key("other/model", ps, SAMPLER)
    assert key != base_images_key(
        "runwayml/stable-diffusion-v1-5", ps.model_copy(update={"version": "1.1"}), SAMPLER
    )
    assert parse_adapter("a/b.safetensors:0.5") == ("a/b.safetensors", 0.5, None)
    assert parse_adapter("a/b.safetensors") == ("a/b.safetensors", 1.0, None)


def test_cli(tiny_model_dir, demo_dataset_dir, tmp_path, capsys):
    common = ["--model", str(tiny_model_dir), "--dataset", str(demo_dataset_dir), "--prompts", "demo"]
    small = [
        "--classes",
        "trigger",
        "--images-per-prompt",
        "1",
        "--steps",
        "2",
        "--width",
        "64",
        "--height",
        "64",
    ]
    out = tmp_path / "out"
    assert main(["generate", *common, *small, "--out", str(out)]) == 0
    assert len(pd.read_parquet(out / "manifest.parquet")) == 5
    assert "generate: 5 new images, 0 already there" in capsys.readouterr().err
    bad = {
        "--adapter": ["--adapter", str(tmp_path / "nope.safetensors:0.7")],
        "no prompt set": ["--prompts", "nope"],
        "no dataset": ["--dataset", str(tmp_path / "nowhere")],
        "--steps 0": ["--steps", "0"],
    }
    for name, extra in bad.items():
        assert main(["generate", *common, *small, *extra, "--out", str(tmp_path / "bad")]) == 2, name
    assert not (tmp_path / "bad").exists()
    err = capsys.readouterr().err
    assert "error: --adapter" in err and "nope.safetensors: no such file" in err and "steps" in err


def test_global_rng_state_neither_changes_nor_is_changed_by_generation(pipe, items, adapter_file, tmp_path):
    import random

    some = items[:2]
    _run(pipe, some, tmp_path / "a", adapters=[(adapter_file, 1.0)])
    torch.manual_seed(123)
    np.random.seed(5)
    random.seed(7)
    torch.rand(17), np.random.rand(3), random.random()
    before = torch.get_rng_state()
    _run(pipe, some, tmp_path / "b", adapters=[(adapter_file, 1.0)])
    assert torch.equal(torch.get_rng_state(), before)
    assert _pngs(tmp_path / "a") == _pngs(tmp_path / "b") and len(_pngs(tmp_path / "a")) == 2


def test_killed_run_resumes_from_the_journal_with_identical_bytes(pipe, items, tmp_path, monkeypatch):
    from lyco_bench import generation_io

    _run(pipe, items, tmp_path / "whole")
    out = tmp_path / "out"
    real, calls = generation.sample_batch, []

    def dies_on_second_batch(p, b, s, m=()):
        calls.append(len(b))
        if len(calls) == 2:
            raise KeyboardInterrupt  # the process is killed while sampling batch 2
        return real(p, b, s, m)

    monkeypatch.setattr(generation, "sample_batch", dies_on_second_batch)
    with pytest.raises(KeyboardInterrupt):
        _run(pipe, items, out)
    first = [i.relpath for i in plan_batches(items, 4)[0]]
    assert not (out / "manifest.parquet").exists()  # never rewritten per batch
    assert sorted(_pngs(out)) == sorted(first)  # batch 1 was written by the writer before it closed
    assert [r["file"] for r in generation_io.read_journal(out)] == first
    with open(out / generation_io.JOURNAL, "ab") as f:
        f.write(b'{"file": "trigger/torn')  # a write torn by the kill
    calls.clear()
    monkeypatch.setattr(
        generation, "sample_batch", lambda p, b, s, m=(): calls.append(len(b)) or real(p, b, s, m)
    )
    manifest = _run(pipe, items, out)
    assert calls == [1, 2]  # batches 2 and 3 only
    assert _pngs(out) == _pngs(tmp_path / "whole")
    assert manifest.read_bytes() == (tmp_path / "whole" / "manifest.parquet").read_bytes()
    assert not (out / generation_io.JOURNAL).exists()


def test_manifest_written_once_per_call(pipe, items, tmp_path, monkeypatch):
    writes = []
    real = pd.DataFrame.to_parquet
    monkeypatch.setattr(
        pd.DataFrame, "to_parquet", lambda df, *a, **k: writes.append(len(df)) or real(df, *a, **k)
    )
    _run(pipe, items, tmp_path / "out")
    assert len(plan_batches(items, 4)) == 3 and writes == [len(items)]


def test_sampler_does_not_wait_for_png_writes(pipe, items, tmp_path, monkeypatch):
    import threading

    from lyco_bench import generation_io

    second_batch = threading.Event()
    events, real_sample, real_save = [], generation.sample_batch, generation_io.save_png

    def sample(p, b, s, m=()):
        if events:  # the first batch has been handed over: sampling goes on at once
            second_batch.set()
        events.append("sample")
        return real_sample(p, b, s, m)

    def slow_save(array, path):
        # A writer on the sampling thread would wait here forever: batch 2 is never sampled.
        assert second_batch.wait(timeout=60), "the sampler waited for the PNG writer"
        events.append("png")
        real_save(array, path)

    monkeypatch.setattr(generation, "sample_batch", sample)
    monkeypatch.setattr(generation_io, "save_png", slow_save)
    _run(pipe, items, tmp_path / "out")
    assert events[:2] == ["sample", "sample"] and events.count("png") == len(items)


def test_writer_error_reaches_the_caller_and_damaged_journal_is_bad_input(pipe, items, tmp_path, monkeypatch):
    from lyco_bench import generation_io

    def full_disk(array, path):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(generation_io, "save_png", full_disk)
    with pytest.raises(OSError, match="No space"):
        _run(pipe, items, tmp_path / "out")
    assert not (tmp_path / "out" / "manifest.parquet").exists()
    monkeypatch.undo()
    journal = tmp_path / "out" / generation_io.JOURNAL
    journal.write_bytes(b'{"file": "a.png"\n{"file": "b.png"}\n')
    with pytest.raises(BadInput, match=r"manifest.parquet.journal: line 1 is unreadable"):
        _run(pipe, items, tmp_path / "out")


def test_a_batch_with_nan_pixels_is_refused_naming_checkpoint_and_prompt(tiny_model_dir, items, tmp_path):
    """A model whose UNet outputs NaN (an overflowing merge): BadInput naming the checkpoint and
    the first prompt, and no PNG, journal or manifest for the batch."""
    from lyco_bench.models import load_pipeline

    pipe = load_pipeline(str(tiny_model_dir))
    with torch.no_grad():
        pipe.unet.conv_out.bias.fill_(float("nan"))
    out = tmp_path / "out"
    first = plan_batches(items, SAMPLER.batch_size)[0][0]
    with pytest.raises(BadInput) as caught:
        _run(pipe, items, out, checkpoint_name="lora2-s1-e001")
    assert str(caught.value) == (
        f"checkpoint lora2-s1-e001: prompt {first.prompt!r} (seed {first.seed}): the sampled image holds "
        f"NaN or inf (4 of 4 in its batch); nothing of the batch is written"
    )
    assert not out.exists() or sorted(p.name for p in out.rglob("*") if p.is_file()) == []
