"""The paper's 8-bit AdamW: refused up front where bitsandbytes is missing (or cannot run it), and
its state saved and resumed byte for byte (wherever bitsandbytes runs it: here, on the CPU)."""

from __future__ import annotations

import sys

import pytest
import torch

from lyco_bench.errors import BadInput
from lyco_bench.training import optim
from lyco_bench.training.config import RunConfig, resolve_device
from tests.helpers import run_config

EIGHT_BIT_ON_CPU = optim.eight_bit_error(torch.device("cpu")) is None


@pytest.fixture
def no_bitsandbytes(monkeypatch):
    """As on a machine without bitsandbytes: importing it fails."""
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)
    optim.bitsandbytes_missing.cache_clear()
    yield
    optim.bitsandbytes_missing.cache_clear()


def test_adamw8bit_refused_without_bitsandbytes(no_bitsandbytes):
    with pytest.raises(ValueError, match=r"optimizer\n.*adamw8bit needs bitsandbytes.*lyco-bench\[gpu\]"):
        RunConfig(model="m", dataset="d", optimizer="adamw8bit")
    RunConfig(model="m", dataset="d", optimizer="adamw")  # the other optimizer is unaffected


def test_plan_refuses_adamw8bit_without_bitsandbytes(no_bitsandbytes, tmp_path, tiny_model_dir, capsys):
    from lyco_bench.cli import main
    from lyco_bench.metrics.tiny import make_tiny_encoders
    from tests.helpers import micro_study

    encoders = make_tiny_encoders(tmp_path / "encoders", seed=0)
    study = micro_study(tmp_path, model=str(tiny_model_dir), dataset="demo:", encoders=encoders)
    capsys.readouterr()
    code = main(["plan", str(study), "training.optimizer=adamw8bit", "--store", str(tmp_path / "store")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert str(study) in err and "optimizer" in err and "bitsandbytes" in err
    assert not (tmp_path / "store").exists()


def test_device_check_follows_what_bitsandbytes_runs(monkeypatch, tmp_path):
    cfg = RunConfig(model="m", dataset="d", device="cpu", optimizer="adamw")
    monkeypatch.setattr(optim, "bitsandbytes_missing", lambda: None)
    monkeypatch.setattr(optim, "_eight_bit_step_fails", lambda device_type: "NotImplementedError: no kernel")
    with pytest.raises(BadInput, match="optimizer: adamw8bit: bitsandbytes cannot run it on cpu"):
        resolve_device(cfg.model_copy(update={"optimizer": "adamw8bit"}))
    monkeypatch.setattr(optim, "_eight_bit_step_fails", lambda device_type: None)
    assert resolve_device(cfg.model_copy(update={"optimizer": "adamw8bit"})) == torch.device("cpu")


@pytest.mark.e2e
@pytest.mark.skipif(
    not EIGHT_BIT_ON_CPU, reason="bitsandbytes is missing or cannot run 8-bit AdamW on this CPU"
)
def test_adamw8bit_state_saves_and_resumes(tmp_path, tiny_model_dir, small_dataset, cache_dir):  # noqa: F811
    """Killed after epoch 2 and resumed: epoch 3's adapter and state are the uninterrupted run's bytes,
    and the state holds real 8-bit moments (uint8 with their quantization maps and scales)."""
    from safetensors import safe_open

    from lyco_bench.training import checkpoint_path, state_path, train

    # dim 64: some LoRA factors reach bitsandbytes' 4096-element floor for 8-bit state.
    cfg = run_config(tiny_model_dir, small_dataset, cache_dir, epochs=3, checkpoint_epochs=[2],
                     optimizer="adamw8bit", device="cpu", adapter={"algo": "lora", "dim": 64, "alpha": 2})  # fmt: skip
    full_dir, resumed_dir = tmp_path / "full", tmp_path / "resumed"
    train(cfg, full_dir)

    class Killed(Exception):
        pass

    def kill_after_epoch_2(epoch: int) -> None:
        if epoch == 2:
            raise Killed

    with pytest.raises(Killed):
        train(cfg, resumed_dir, on_epoch_end=kill_after_epoch_2)
    assert state_path(resumed_dir, 2).is_file() and not checkpoint_path(resumed_dir, 3).exists()
    train(cfg, resumed_dir)
    for path in (checkpoint_path, state_path):
        assert path(resumed_dir, 3).read_bytes() == path(full_dir, 3).read_bytes()
    dtypes: dict[str, set[str]] = {}
    with safe_open(str(state_path(full_dir, 3)), framework="pt") as fh:
        for key in fh.keys():  # noqa: SIM118 (not a dict)
            if "quant_state" in key:
                dtypes.setdefault(key.rsplit(".", 1)[1], set()).add(fh.get_slice(key).get_dtype())
    assert "U8" in dtypes["state1"] and "U8" in dtypes["state2"]  # 8-bit moments (large tensors)
    assert dtypes["qmap1"] == {"F32"} and dtypes["absmax2"] == {"F32"}
