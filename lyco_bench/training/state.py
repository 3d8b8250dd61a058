"""Resume state as safetensors: exact parameters, optimizer, lr schedule and RNG states (no pickle).

Layout of ``ckpt-eNNN.state.safetensors``:
  tensors   ``param.00000`` …          trainable parameters in optimizer order (exact float32; the
                                       adapter file alone may not round-trip, e.g. native W − W0)
            ``optim.<index>.<name>``    optimizer state tensors (AdamW: step, exp_avg, exp_avg_sq;
                                       a nested mapping's as ``<name>.<key>``: bitsandbytes'
                                       8-bit state1/state2/qmap/absmax sit in one)
            ``rng.<generator>``         the session's generator states as uint8 tensors (only
                                       those: training draws nothing from the global RNGs, so
                                       their state, which depends on what else ran in the process,
                                       is neither saved nor restored; files that still hold
                                       ``rng.torch``/``rng.cuda`` load, those keys ignored)
  metadata  ``optimizer_groups``, ``optimizer_scalars``, ``lr_scheduler``, ``grad_scaler``: JSON
            ``epoch``, ``steps``, ``format``
"""

from __future__ import annotations

import json
import os
import resource
import sys
from pathlib import Path
from typing import Any

import torch

from lyco_bench.errors import BadInput

STATE_FORMAT = "lyco-bench-train-state/1"


def save_state(session: Any, path: str | os.PathLike, *, epoch: int) -> None:
    """Write the session's resume state to ``path`` atomically."""
    from lyco_bench.adapters import save_tensors

    tensors: dict[str, torch.Tensor] = {}
    for i, param in enumerate(session.params):
        tensors[f"param.{i:05d}"] = param.detach()
    opt_state = session.optimizer.state_dict()
    scalars: dict[str, Any] = {}
    for index, entry in opt_state["state"].items():
        for name, value in _flatten(entry):
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{index}.{name}"] = value
            else:
                scalars[f"{index}.{name}"] = value
    for name, generator in session.generators.items():
        tensors[f"rng.{name}"] = generator.get_state()
    schedule = {k: v for k, v in session.lr_scheduler.state_dict().items() if k != "lr_lambdas"}
    metadata = {
        "format": STATE_FORMAT,
        "epoch": str(epoch),
        "steps": str(session.steps),
        "optimizer_groups": json.dumps(opt_state["param_groups"], sort_keys=True),
        "optimizer_scalars": json.dumps(scalars, sort_keys=True),
        "lr_scheduler": json.dumps(schedule, sort_keys=True),
        "grad_scaler": json.dumps(session.scaler.state_dict(), sort_keys=True),
    }
    # Sorted header (safetensors' own writer orders metadata by hash), atomic write.
    save_tensors(path, tensors, metadata)


def _flatten(entry: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """(``name`` or ``name.key``…, value) of an optimizer's per-parameter state, nested mappings
    unrolled (names of torch's and bitsandbytes' states hold no dots)."""
    items: list[tuple[str, Any]] = []
    for name, value in entry.items():
        if isinstance(value, dict):
            items += _flatten(value, f"{prefix}{name}.")
        else:
            items.append((f"{prefix}{name}", value))
    return items


def _nest(state: dict[str, Any], name: str, value: Any) -> None:
    *parents, leaf = name.split(".")
    for parent in parents:
        state = state.setdefault(parent, {})
    state[leaf] = value


def _read(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            metadata = dict(fh.metadata() or {})
            tensors = {key: fh.get_tensor(key) for key in fh.keys()}  # noqa: SIM118 (not a dict)
    except Exception as exc:  # safetensors raises its own error types for damaged files
        raise BadInput(f"{path}: unreadable resume state ({exc}); remove it to retrain that epoch") from None
    if metadata.get("format") != STATE_FORMAT:
        raise BadInput(f"{path}: not a lyco-bench resume state (format {metadata.get('format')!r})")
    return tensors, metadata


def load_state(session: Any, path: str | os.PathLike, *, name: str) -> None:
    """Restore parameters, optimizer, lr schedule, RNG states and the step count from ``path``."""
    path = Path(path)
    tensors, metadata = _read(path)
    params = session.params
    stored = sorted(k for k in tensors if k.startswith("param."))
    if len(stored) != len(params):
        raise BadInput(f"{path}: {len(stored)} parameters stored, the network in {name} has {len(params)}")
    with torch.no_grad():
        for i, param in enumerate(params):
            value = tensors[f"param.{i:05d}"]
            if value.shape != param.shape:
                raise BadInput(
                    f"{path}: param.{i:05d} has shape {tuple(value.shape)}, need {tuple(param.shape)}"
                )
            param.copy_(value)
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, index, field = key.split(".", 2)
            _nest(state.setdefault(int(index), {}), field, value)
    for key, value in json.loads(metadata["optimizer_scalars"]).items():
        index, field = key.split(".", 1)
        _nest(state.setdefault(int(index), {}), field, value)
    groups = json.loads(metadata["optimizer_groups"])
    for group in groups:
        if "betas" in group:
            group["betas"] = tuple(group["betas"])
    session.optimizer.load_state_dict({"state": state, "param_groups": groups})
    schedule = json.loads(metadata["lr_scheduler"])
    schedule["lr_lambdas"] = [None] * len(groups)
    session.lr_scheduler.load_state_dict(schedule)
    session.scaler.load_state_dict(json.loads(metadata["grad_scaler"]))
    for gen_name, generator in session.generators.items():
        generator.set_state(tensors[f"rng.{gen_name}"])
    session.steps = session.steps_at_start = int(metadata["steps"])


def peak_memory(device: torch.device) -> tuple[int, str]:
    """(bytes, what was measured): CUDA peak allocation on a GPU, else the process's peak RSS."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device)), "cuda_max_memory_allocated"
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports kibibytes, macOS bytes.
    return int(rss if sys.platform == "darwin" else rss * 1024), "process_max_rss"
