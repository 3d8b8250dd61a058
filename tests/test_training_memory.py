"""Memory features of training (lyco_bench.training.memory): gradient checkpointing, half-precision
base weights, cached text-encoder outputs — the same step as without, the memory they save, exact
resumption, and job ids left unchanged at their defaults."""

from __future__ import annotations

import json

import pytest
import torch
from pydantic import ValidationError

from lyco_bench.adapters import ALGORITHMS
from lyco_bench.training import checkpoint_path, state_path, train
from lyco_bench.training.config import resolve_device
from lyco_bench.training.memory import TextOutputCache, frozen_bytes
from lyco_bench.training.session import Session
from tests.helpers import run_config


@pytest.fixture(scope="module")
def pipe(tiny_model_dir):
    from lyco_bench.models import load_pipeline

    return load_pipeline(tiny_model_dir)


def _step(cfg, pipe, inspect=None):
    """(loss, trained parameters) after one step of ``cfg`` on ``pipe``; ``inspect(session)`` runs
    after the step, before the session gives the pipeline back."""
    session = Session(cfg, device=resolve_device(cfg), pipeline=pipe)
    try:
        loss = session.step(session.epoch_batches()[0])
        if inspect is not None:
            inspect(session)
        return loss, [p.detach().clone() for p in session.params]
    finally:
        session.close()


def _state(pipe) -> dict[str, torch.Tensor]:
    return {
        f"{part}.{k}": v.clone()
        for part in ("unet", "text_encoder", "vae")
        for k, v in getattr(pipe, part).state_dict().items()
    }


# --- configuration -------------------------------------------------------------------------------
def test_base_dtype_auto_follows_mixed_precision_and_half_needs_its_autocast(
    tiny_model_dir, small_dataset, cache_dir
):
    args = (tiny_model_dir, small_dataset, cache_dir)
    assert run_config(*args, base_dtype="auto").base_dtype == "float32"
    assert run_config(*args, base_dtype="auto", mixed_precision="bf16").base_dtype == "bfloat16"
    with pytest.raises(ValidationError, match="base_dtype: bfloat16 needs mixed_precision: bf16"):
        run_config(*args, base_dtype="bfloat16")
    with pytest.raises(ValidationError, match="base_dtype: float16 needs mixed_precision: fp16"):
        run_config(*args, base_dtype="float16", mixed_precision="bf16")


def test_cache_text_outputs_resolves_false_when_a_text_encoder_gets_gradients(
    tiny_model_dir, small_dataset, cache_dir
):
    args = (tiny_model_dir, small_dataset, cache_dir)
    assert run_config(*args, cache_text_outputs=True, train_text_encoder=False).cache_text_outputs
    assert not run_config(*args, cache_text_outputs=True).cache_text_outputs  # TE adapters trained
    ti = {"algo": "textual_inversion"}
    assert not run_config(
        *args, cache_text_outputs=True, train_text_encoder=False, adapter=ti
    ).cache_text_outputs


def test_job_identity_unchanged_at_defaults_and_checkpointing_outside_it(
    tiny_model_dir, small_dataset, cache_dir
):
    from lyco_bench.sweep.inputs import run_identity

    plain = run_config(tiny_model_dir, small_dataset, cache_dir).model_dump(mode="json")
    ident = run_identity(plain)
    assert "base_dtype" not in ident and "cache_text_outputs" not in ident
    assert ident["gradient_checkpointing"] is False  # the key ids were made with
    recomputed = run_identity({**plain, "gradient_checkpointing": True})
    assert recomputed == ident
    half = run_identity({**plain, "base_dtype": "bfloat16", "mixed_precision": "bf16"})
    assert half["base_dtype"] == "bfloat16"
    assert run_identity({**plain, "cache_text_outputs": True})["cache_text_outputs"] is True


# --- gradient checkpointing -----------------------------------------------------------------------
@pytest.mark.parametrize("train_te", [True, False], ids=["te", "unet-only"])
def test_gradient_checkpointing_is_exact(tiny_model_dir, small_dataset, cache_dir, pipe, train_te):
    cfg = run_config(tiny_model_dir, small_dataset, cache_dir, train_text_encoder=train_te)
    seen = {}

    def flags(session):
        seen["unet"] = pipe.unet.is_gradient_checkpointing
        seen["te"] = pipe.text_encoder.is_gradient_checkpointing

    loss, params = _step(cfg, pipe)
    loss_ckpt, params_ckpt = _step(cfg.model_copy(update={"gradient_checkpointing": True}), pipe, flags)
    assert seen == {"unet": True, "te": train_te}
    assert loss_ckpt == loss
    assert all(torch.equal(a, b) for a, b in zip(params, params_ckpt, strict=True))


# --- half-precision base weights ------------------------------------------------------------------
def test_bf16_base_halves_frozen_weights_keeps_fp32_adapters_and_gives_the_pipeline_back(
    tiny_model_dir, small_dataset, cache_dir, pipe
):
    before = _state(pipe)
    args = (tiny_model_dir, small_dataset, cache_dir)
    cfg32 = run_config(*args, mixed_precision="bf16", device="cpu")
    cfg16 = run_config(*args, mixed_precision="bf16", device="cpu", base_dtype="bfloat16")
    seen, fp32_frozen = {}, []

    def inspect(session):
        modules = [pipe.unet, pipe.text_encoder]
        seen["frozen"] = frozen_bytes(modules)
        seen["frozen_dtypes"] = {p.dtype for m in modules for p in m.parameters() if not p.requires_grad}
        seen["params"] = {p.dtype for p in session.params}
        states = session.optimizer.state.values()
        seen["optim"] = {t.dtype for s in states for t in s.values() if t.is_floating_point() and t.dim()}

    loss32, params32 = _step(
        cfg32, pipe, lambda _: fp32_frozen.append(frozen_bytes([pipe.unet, pipe.text_encoder]))
    )
    loss16, params16 = _step(cfg16, pipe, inspect)
    assert seen["frozen"] * 2 == fp32_frozen[0] > 0
    assert seen["frozen_dtypes"] == {torch.bfloat16}
    assert seen["params"] == {torch.float32} and seen["optim"] == {torch.float32}
    # Under bf16 autocast the matmuls and convolutions already run on bf16-rounded weights; what
    # changes is the ops autocast leaves alone (norms, embedding sums), each one more bf16
    # rounding of relative size ≤ 2⁻⁸ on the prediction, so ≤ 2·2⁻⁸ on its mean square:
    assert loss16 != loss32 and abs(loss16 - loss32) <= 2 * 2**-8 * abs(loss32)
    after = _state(pipe)
    assert all(torch.equal(before[k], after[k]) and before[k].dtype == after[k].dtype for k in before)


# --- cached text-encoder outputs ------------------------------------------------------------------
def test_cached_text_outputs_give_the_same_step(tiny_model_dir, small_dataset, cache_dir, pipe):
    cfg = run_config(tiny_model_dir, small_dataset, cache_dir, train_text_encoder=False, batch_size=2)
    seen = {}

    def inspect(session):
        seen["captions"] = len(session.text_cache)
        seen["all"] = session._all_captions()

    loss, params = _step(cfg, pipe)
    loss_c, params_c = _step(cfg.model_copy(update={"cache_text_outputs": True}), pipe, inspect)
    assert "" in seen["all"] and seen["captions"] == len(seen["all"])  # dropout 0.05: the empty one too
    # Each caption was encoded alone, the uncached step encodes them as one batch: a matmul over
    # more rows may sum in another order, so equality is to float32 rounding.
    assert loss_c == pytest.approx(loss, rel=1e-6)
    for a, b in zip(params, params_c, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def test_text_output_cache_stacks_nested_outputs_and_refuses_an_unseen_caption():
    calls = []

    def encode(captions):
        calls.append(list(captions))
        n = float(len(captions[0]))
        return {"seq": torch.full((1, 3, 2), n), "pooled": (torch.full((1, 4), -n),)}

    cache = TextOutputCache(encode)
    assert cache.fill(["ab", "", "ab", "abcd"]) == 3 and cache.fill(["ab"]) == 0
    assert sorted(c[0] for c in calls) == ["", "ab", "abcd"]
    out = cache(["abcd", "", "ab"])
    assert out["seq"].shape == (3, 3, 2) and out["seq"][:, 0, 0].tolist() == [4.0, 0.0, 2.0]
    assert out["pooled"][0][:, 0].tolist() == [-4.0, 0.0, -2.0]
    with pytest.raises(RuntimeError, match="'zz' was not encoded up front"):
        cache(["zz"])


# --- resuming ------------------------------------------------------------------------------------
def test_memory_features_resume_exactly(tmp_path, tiny_model_dir, small_dataset, cache_dir):
    cfg = run_config(
        tiny_model_dir, small_dataset, cache_dir, epochs=2, checkpoint_epochs=[1], mixed_precision="bf16",
        device="cpu", base_dtype="bfloat16", cache_text_outputs=True, train_text_encoder=False,
        gradient_checkpointing=True,
    )  # fmt: skip
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    train(cfg, full)

    class Killed(Exception):
        pass

    def kill(epoch: int) -> None:
        if epoch == 1:
            raise Killed

    with pytest.raises(Killed):
        train(cfg, resumed, on_epoch_end=kill)
    # Checkpointing may be switched when resuming: it changes no number.
    train(cfg.model_copy(update={"gradient_checkpointing": False}), resumed)
    for path in (checkpoint_path, state_path):
        assert path(resumed, 2).read_bytes() == path(full, 2).read_bytes()
    record = json.loads((full / "ckpt-e002.json").read_text())
    assert record["config"]["base_dtype"] == "bfloat16" and record["config"]["cache_text_outputs"] is True


@pytest.mark.parametrize("algo", sorted(ALGORITHMS))
def test_every_algorithm_steps_on_a_bf16_base(tiny_model_dir, small_dataset, cache_dir, pipe, algo):
    # Algorithms whose ΔW reads W0 (GLoRA, GLoKr) build it in their factors' dtype.
    cfg = run_config(
        tiny_model_dir, small_dataset, cache_dir, adapter={"algo": algo}, mixed_precision="bf16",
        device="cpu", base_dtype="bfloat16",
    )  # fmt: skip
    loss, params = _step(cfg, pipe)
    assert loss == loss and all(p.dtype == torch.float32 and torch.isfinite(p).all() for p in params)
