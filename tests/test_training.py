"""The trainer on the tiny model and a 4-image slice of the demo dataset (2 steps per epoch)."""

from __future__ import annotations

import json
import math

import pytest
import torch
import yaml

from lyco_bench.config import load_config
from lyco_bench.errors import BadInput
from lyco_bench.training import RunConfig, checkpoint_path, record_path, state_path, train
from tests.helpers import run_config


@pytest.fixture(scope="module")
def pipe(tiny_model_dir):
    from lyco_bench.models import load_pipeline

    return load_pipeline(tiny_model_dir)


# --- configuration -----------------------------------------------------------------------------
def test_defaults_are_the_papers():
    cfg = RunConfig(model="m", dataset="d")
    adapter = cfg.adapter
    assert (adapter.algo, adapter.options["dim"], adapter.options["alpha"], adapter.preset) == (
        "lora",
        8,
        4.0,
        "attn-mlp",
    )
    assert (cfg.lr, cfg.lr_scheduler, cfg.warmup_steps) == (5e-4, "constant_with_warmup", 3500)
    assert (cfg.weight_decay, cfg.betas, cfg.max_grad_norm) == (0.1, (0.9, 0.99), 1.0)
    assert (cfg.batch_size, cfg.resolution, cfg.epochs, cfg.checkpoint_epochs) == (8, 512, 50, [10, 30, 50])
    assert (cfg.buckets.min, cfg.buckets.max, cfg.buckets.step) == (320, 960, 64)
    assert (cfg.captions.strategy, cfg.captions.dropout, cfg.train_text_encoder) == ("tags", 0.05, True)
    loha = RunConfig(model="m", dataset="d", adapter={"algo": "loha"})
    assert (loha.adapter.options["dim"], loha.adapter.options["alpha"]) == (4, 2.0)
    lokr = RunConfig(model="m", dataset="d", adapter={"algo": "lokr"})
    assert (lokr.adapter.options["factor"], lokr.adapter.options["dim"]) == (8, 10000)
    assert RunConfig(model="m", dataset="d", adapter={"algo": "native"}).lr == 1e-6
    # A given dim keeps α = dim (scale 1) unless α is given too.
    assert RunConfig(model="m", dataset="d", adapter={"dim": 32}).adapter.options["alpha"] == 32.0
    off = RunConfig(model="m", dataset="d", train_text_encoder=False)
    assert off.adapter.train_text_encoder is False
    assert RunConfig(model="m", dataset="d", epochs=3, checkpoint_epochs=[2, 1, 2]).save_epochs() == [1, 2, 3]


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ("lrr=1e-4", "lrr: unknown key"),
        ("lr=-1", "lr:"),
        ("adapter.algo=bogus", "adapter.algo"),
        (
            "adapter.rank=4",
            "adapter.rank: not a setting of lora (its settings: dim, alpha, use_tucker, dora)",
        ),
        ("captions.strategy=words", "captions.strategy"),
        ("betas=[0.9, 1.5]", "betas"),
        ("checkpoint_epochs=[60]", "checkpoint_epochs: 60 is after the last epoch"),
        ("device=gpu", "device"),
        ("adapter.train_text_encoder=false", "train_text_encoder differs"),
    ],
)
def test_bad_config_names_file_and_key(tmp_path, override, named):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({"model": "m", "dataset": "d", "train_text_encoder": True}))
    with pytest.raises(BadInput) as err:
        load_config(RunConfig, path, [override])
    assert str(path) in str(err.value) and named in str(err.value)


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ({"mixed_precision": "fp16"}, "mixed_precision: fp16 needs a CUDA GPU"),
        ({"device": "cuda"}, "device: 'cuda' requested"),
    ],
)
def test_gpu_only_settings_refused_on_cpu(tmp_path, changes, named):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    cfg = run_config("m", "d", tmp_path, **{"device": "cpu", **changes})
    with pytest.raises(BadInput, match=named):
        train(cfg, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_bucket_step_must_fit_the_unet(tmp_path, tiny_model_dir, small_dataset, cache_dir, pipe):
    cfg = run_config(tiny_model_dir, small_dataset, cache_dir, buckets={"min": 32, "max": 128, "step": 8})
    with pytest.raises(BadInput, match=r"buckets.step: 8 .* multiple of 16 px"):
        train(cfg, tmp_path / "out", pipeline=pipe)
    assert not (tmp_path / "out").exists()
    assert all(p.requires_grad for p in pipe.unet.parameters())  # the pipeline is given back as it came


def test_cli_bad_key_exits_2(tmp_path, capsys):
    from lyco_bench.cli import main

    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({"model": "m", "dataset": "d"}))
    assert main(["train", str(path), "bogus=1", "--out", str(tmp_path / "out")]) == 2
    assert "bogus: unknown key" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


# --- the loss ------------------------------------------------------------------------------------
def test_loss_is_epsilon_mse_on_ddpm_noised_latents(tiny_model_dir, small_dataset, cache_dir, pipe):
    from lyco_bench.training.config import resolve_device
    from lyco_bench.training.session import Session

    cfg = run_config(
        tiny_model_dir, small_dataset, cache_dir, captions={"strategy": "all-tags", "dropout": 0.0}
    )
    session = Session(cfg, device=resolve_device(cfg), pipeline=pipe)
    try:
        batch = session.epoch_batches()[0]
        noise_state = session.generators["noise"].get_state()
        with torch.no_grad():
            got = session.loss(batch)
        # The same draws by hand: latent sample, ε, t; SD's schedule ᾱ_t from its betas.
        gen = torch.Generator().set_state(noise_state)
        x0 = torch.stack([session.latents[i].sample(gen) for i in batch]) * 0.18215
        eps = torch.randn(x0.shape, generator=gen)
        t = torch.randint(0, 1000, (len(batch),), generator=gen)
        betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float32) ** 2
        abar = torch.cumprod(1.0 - betas, dim=0)[t].view(-1, 1, 1, 1)
        x_t = abar.sqrt() * x0 + (1 - abar).sqrt() * eps
        ids = pipe.tokenizer(
            [session.pairs[i][0].trigger + ", " + ", ".join(session.pairs[i][1].tags) for i in batch],
            padding="max_length",
            max_length=77,
            truncation=True,
            return_tensors="pt",
        ).input_ids
        with torch.no_grad():
            pred = pipe.unet(x_t, t, pipe.text_encoder(ids)[0]).sample
        want = ((pred - eps) ** 2).mean()
    finally:
        session.close()
    assert session.scaling == 0.18215
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def _one_step_params(cfg, pipe) -> list[torch.Tensor]:
    from lyco_bench.training.config import resolve_device
    from lyco_bench.training.session import Session

    session = Session(cfg, device=resolve_device(cfg), pipeline=pipe)
    try:
        loss = session.step(session.epoch_batches()[0])
        assert math.isfinite(loss)
        return [p.detach().clone() for p in session.params]
    finally:
        session.close()


def test_gradient_checkpointing_gives_the_same_step(tiny_model_dir, small_dataset, cache_dir, pipe):
    cfg = run_config(tiny_model_dir, small_dataset, cache_dir)
    plain = _one_step_params(cfg, pipe)
    recomputed = _one_step_params(cfg.model_copy(update={"gradient_checkpointing": True}), pipe)
    assert len(plain) == len(recomputed)
    for a, b in zip(plain, recomputed, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    assert not pipe.unet.is_gradient_checkpointing and not pipe.text_encoder.is_gradient_checkpointing


def test_bf16_autocast_step_on_cpu(tiny_model_dir, small_dataset, cache_dir, pipe):
    cfg = run_config(tiny_model_dir, small_dataset, cache_dir, mixed_precision="bf16", device="cpu")
    params = _one_step_params(cfg, pipe)
    assert all(p.dtype == torch.float32 and torch.isfinite(p).all() for p in params)


# --- training ------------------------------------------------------------------------------------
def _snapshot(pipe) -> dict[str, torch.Tensor]:
    return {
        f"{part}.{k}": v.clone()
        for part in ("unet", "text_encoder", "vae")
        for k, v in getattr(pipe, part).state_dict().items()
    }


@pytest.mark.parametrize(
    "adapter",
    [
        {"algo": "lora", "dim": 4, "alpha": 2},
        {"algo": "loha", "dim": 2, "alpha": 1},
        {"algo": "lokr", "factor": 4},
        {"algo": "native"},
    ],
    ids=lambda a: a["algo"],
)
def test_each_algorithm_trains_and_base_stays_frozen(
    tmp_path, tiny_model_dir, small_dataset, cache_dir, pipe, adapter
):
    from lyco_bench.adapters import delta_weights

    before = _snapshot(pipe)
    cfg = run_config(tiny_model_dir, small_dataset, cache_dir, adapter=adapter)
    [ckpt] = train(cfg, tmp_path, pipeline=pipe)
    record = json.loads(record_path(tmp_path, 1).read_text())
    assert math.isfinite(record["epoch_mean_loss"]) and record["steps"] == 2
    after = _snapshot(pipe)
    assert before.keys() == after.keys()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert changed == []
    assert all(p.grad is None for part in (pipe.unet, pipe.text_encoder, pipe.vae) for p in part.parameters())
    deltas = delta_weights(ckpt, pipe.unet, pipe.text_encoder)
    assert any(k.startswith("lora_te_") for k in deltas) and any(k.startswith("lora_unet_") for k in deltas)
    zero = [k for k, (dw, _) in deltas.items() if not dw.abs().max() > 0]
    assert zero == []  # every adapted layer moved
    assert record["trainable_params"] > 0 and record["file_bytes"] == ckpt.stat().st_size


def test_text_encoder_left_alone_when_not_trained(tmp_path, tiny_model_dir, small_dataset, cache_dir, pipe):
    from lyco_bench.adapters import load_adapter

    cfg = run_config(tiny_model_dir, small_dataset, cache_dir, train_text_encoder=False)
    [ckpt] = train(cfg, tmp_path, pipeline=pipe)
    keys = load_adapter(ckpt).modules
    assert keys and all(k.startswith("lora_unet_") for k in keys)


@pytest.mark.e2e
def test_checkpoints_determinism_resume_and_cache(tmp_path, tiny_model_dir, small_dataset, cache_dir):
    cfg = run_config(tiny_model_dir, small_dataset, cache_dir, epochs=3, checkpoint_epochs=[1])
    full_dir, resumed_dir = tmp_path / "full", tmp_path / "resumed"
    full = train(cfg, full_dir)
    assert full == [checkpoint_path(full_dir, 1), checkpoint_path(full_dir, 3)]
    # Only the last resume state is kept: resuming starts there, nothing reads earlier ones.
    assert sorted(p.name for p in full_dir.iterdir()) == [
        "ckpt-e001.json", "ckpt-e001.safetensors", "ckpt-e003.json", "ckpt-e003.safetensors",
        "ckpt-e003.state.safetensors",
    ]  # fmt: skip
    record = json.loads(record_path(full_dir, 3).read_text())
    assert (record["epoch"], record["steps"], record["seed"], record["steps_per_epoch"]) == (3, 6, 5, 2)
    assert record["config"]["adapter"]["algo"] == "lora" and record["images"] == 4
    for key in ("library_versions", "git_commit", "device", "wall_time_total_s", "peak_memory_bytes"):
        assert key in record
    assert record["peak_memory_bytes"] > 0 and record["trainable_params"] > 0

    class Killed(Exception):
        pass

    def kill_after_epoch_2(epoch: int) -> None:
        if epoch == 2:
            raise Killed

    with pytest.raises(Killed):
        train(cfg, resumed_dir, on_epoch_end=kill_after_epoch_2)
    assert not checkpoint_path(resumed_dir, 3).exists()
    # Same config + seed → the same bytes (epoch 1 of two separate runs).
    assert checkpoint_path(resumed_dir, 1).read_bytes() == checkpoint_path(full_dir, 1).read_bytes()
    assert state_path(resumed_dir, 1).is_file()  # the last complete checkpoint keeps its state
    resumed = train(cfg, resumed_dir)
    assert [p.name for p in resumed] == [p.name for p in full]
    for path in (checkpoint_path, state_path):
        assert path(resumed_dir, 3).read_bytes() == path(full_dir, 3).read_bytes()
    # Every latent came from the cache the first run filled.
    resumed_record = json.loads(record_path(resumed_dir, 3).read_text())
    assert (resumed_record["latents_encoded"], resumed_record["latents_cached"]) == (0, 4)
    assert resumed_record["steps"] == 6

    # A finished run is not retrained; a changed config is refused, not mixed in.
    stamp = checkpoint_path(full_dir, 3).stat().st_mtime_ns
    assert train(cfg, full_dir) == full
    assert checkpoint_path(full_dir, 3).stat().st_mtime_ns == stamp
    changed = run_config(tiny_model_dir, small_dataset, cache_dir, epochs=3, checkpoint_epochs=[1], lr=2e-3)
    with pytest.raises(BadInput, match="different lr"):
        train(changed, full_dir)


def test_checkpoint_every_saves_more_epochs_and_changes_nothing_trained(
    tmp_path, tiny_model_dir, small_dataset, cache_dir
):
    plain = run_config(tiny_model_dir, small_dataset, cache_dir, epochs=3, checkpoint_epochs=[1])
    dense = run_config(
        tiny_model_dir, small_dataset, cache_dir, epochs=3, checkpoint_epochs=[1], checkpoint_every=2
    )
    assert (plain.save_epochs(), dense.save_epochs()) == ([1, 3], [1, 2, 3])
    assert run_config(tiny_model_dir, small_dataset, cache_dir, epochs=7, checkpoint_epochs=[1],
                      checkpoint_every=3).save_epochs() == [1, 3, 6, 7]  # fmt: skip
    train(plain, tmp_path / "plain")

    class Killed(Exception):
        pass

    def kill_after_epoch_2(epoch: int) -> None:
        if epoch == 2:
            raise Killed

    with pytest.raises(Killed):
        train(dense, tmp_path / "dense", on_epoch_end=kill_after_epoch_2)
    assert state_path(tmp_path / "dense", 2).is_file()  # the dense checkpoint is a resume point
    assert [p.name for p in train(dense, tmp_path / "dense")] == [
        f"ckpt-e00{e}.safetensors" for e in (1, 2, 3)
    ]
    for epoch in (1, 3):  # saving more epochs, and resuming from one, leaves every file the same
        assert (
            checkpoint_path(tmp_path / "dense", epoch).read_bytes()
            == checkpoint_path(tmp_path / "plain", epoch).read_bytes()
        )
    # a run resumes under another checkpoint_every (it changes nothing trained)
    assert train(plain, tmp_path / "dense") == [checkpoint_path(tmp_path / "dense", e) for e in (1, 3)]


def _perturb_global_rngs() -> None:
    """Leave torch's, NumPy's and Python's global RNGs somewhere a fresh process would not be."""
    import random

    import numpy as np

    torch.manual_seed(123)
    np.random.seed(5)
    random.seed(7)
    torch.rand(17), np.random.rand(3), random.random()


def test_global_rng_state_neither_changes_nor_is_changed_by_training(
    tmp_path, tiny_model_dir, small_dataset, cache_dir
):
    cfg = run_config(tiny_model_dir, small_dataset, cache_dir, adapter={"algo": "loha", "dim": 2, "alpha": 1})
    train(cfg, tmp_path / "a")
    _perturb_global_rngs()
    before = torch.get_rng_state()
    train(cfg, tmp_path / "b")
    # Adapter init seeds a forked RNG: the caller's global stream is left exactly where it was.
    assert torch.equal(torch.get_rng_state(), before)
    for path in (checkpoint_path, state_path):
        assert path(tmp_path / "a", 1).read_bytes() == path(tmp_path / "b", 1).read_bytes()
