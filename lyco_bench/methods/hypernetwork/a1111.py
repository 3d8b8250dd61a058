"""Reading AUTOMATIC1111's ``.pt`` hypernetworks (the layout: :mod:`lyco_bench.methods.hypernetwork`),
only through ``torch.load(weights_only=True)``: tensors, containers and plain values, never a
general unpickle."""

from __future__ import annotations

import pickle
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from lyco_bench.errors import BadInput
from lyco_bench.methods.hypernetwork.mlp import WEIGHT_INITS

OLD_LAYER_NAMES = {"linear1": "linear.0", "linear2": "linear.1"}  # A1111's oldest files


def read_a1111(path: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(settings, tensors in lyco-bench's key layout) of an A1111 ``.pt`` hypernetwork."""
    data = torch_load(path, mmap=False)
    if not is_a1111(data):
        raise BadInput(f"{path}: not a hypernetwork file (no width → (k, v) state dicts)")
    widths = sorted(k for k in data if isinstance(k, int) and not isinstance(k, bool))
    activation = data.get("activation_func") or "linear"
    dropout = data.get("dropout_structure")
    init = data.get("weight_initialization")
    settings = {
        "layer_structure": data.get("layer_structure") or [1.0, 2.0, 1.0],
        "activation_func": activation.lower() if isinstance(activation, str) else activation,
        "add_layer_norm": data.get("is_layer_norm", False) or False,
        "activate_output": data.get("activate_output", True),
        "use_dropout": data.get("use_dropout", False) or False,
        "last_layer_dropout": data.get("last_layer_dropout", False) or False,
        "dropout_structure": list(dropout) if isinstance(dropout, list | tuple) else None,
        "weight_init": init if init in WEIGHT_INITS else "Normal",
        "sizes": widths,
    }
    if isinstance(settings["layer_structure"], tuple):
        settings["layer_structure"] = list(settings["layer_structure"])
    tensors = {}
    for width in widths:
        for kv, state in zip(("k", "v"), data[width], strict=True):
            for key, value in state.items():
                layer, _, param = key.rpartition(".")
                layer = OLD_LAYER_NAMES.get(layer, layer)
                if not re.fullmatch(r"linear\.\d+", layer):
                    raise BadInput(f"{path}: {width} {kv}: unexpected key {key!r}: unknown layer structure")
                tensors[f"hypernet.{width}.{kv}.{layer.removeprefix('linear.')}.{param}"] = value
    return settings, tensors


def torch_load(path: Path, *, mmap: bool) -> Any:
    """``torch.load(weights_only=True)``: tensors, containers and plain values only."""
    try:
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
        except RuntimeError:
            if not mmap:
                raise
            return torch.load(path, map_location="cpu", weights_only=True)  # legacy (non-zip) format
    except pickle.UnpicklingError as exc:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
        if found is None:
            reason = re.search(r"WeightsUnpickler error: ([^\n]+)", str(exc))
            raise BadInput(
                f"{path}: unreadable .pt file ({reason[1] if reason else 'not a torch file'})"
            ) from None
        raise BadInput(
            f"{path}: refused: it pickles {found[1]}, which torch.load(weights_only=True) does not allow "
            "(only tensors, containers and plain values are read)"
        ) from None
    except (RuntimeError, OSError, EOFError, ValueError, ImportError, AttributeError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise BadInput(f"{path}: unreadable .pt file ({first})") from None


def is_a1111(data: Any) -> bool:
    """Whether ``data`` is an A1111 hypernetwork dict: int widths → (k, v) state dicts."""
    if not isinstance(data, dict):
        return False
    widths = [k for k in data if isinstance(k, int) and not isinstance(k, bool)]
    return bool(widths) and all(
        isinstance(data[w], list | tuple)
        and len(data[w]) == 2
        and all(isinstance(sd, Mapping) and all(isinstance(k, str) for k in sd) for sd in data[w])
        for w in widths
    )
