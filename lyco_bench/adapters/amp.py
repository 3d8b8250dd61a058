"""Autocast for the adapters' custom autograd Functions (docs/internals.md, adapters).

``torch.amp.custom_fwd``/``custom_bwd`` fix the device type when the class is defined; these
helpers do the same for whatever device the forward ran on: the forward records its autocast
state on ``ctx``, backward replays it, so the products of backward run in the forward's dtype
(not re-promoted to fp32), and gradients are cast back to each input's own dtype at the end.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch

EMULATED_AUTOCAST: dict[str, torch.dtype] = {}
"""Device type → autocast dtype for devices autocast does not run on (``meta``: the GPU-memory
trace of lyco_bench.sweep.gpu_memory emulates autocast there and sets it)."""


def record_autocast(ctx: Any, x: torch.Tensor) -> torch.dtype | None:
    """Store the forward's autocast state on ``ctx`` (for :func:`replay_autocast`) and return
    the autocast dtype, or None when autocast is off for ``x``'s device."""
    device_type = x.device.type
    if torch.amp.is_autocast_available(device_type):
        on = torch.is_autocast_enabled(device_type) and x.is_floating_point()
        dtype = torch.get_autocast_dtype(device_type) if on else None
    else:
        dtype = EMULATED_AUTOCAST.get(device_type) if x.is_floating_point() else None
    ctx.autocast = (device_type, dtype)
    ctx.input_dtype = x.dtype
    return ctx.autocast[1]


def autocast_off(device_type: str) -> AbstractContextManager:
    """Autocast turned off for ``device_type`` (nothing to turn off where it does not run)."""
    if not torch.amp.is_autocast_available(device_type):
        return nullcontext()
    return torch.autocast(device_type, enabled=False)


def replay_autocast(ctx: Any) -> AbstractContextManager:
    """The forward's autocast state, for a custom Function's backward (``torch.amp.custom_bwd``
    for the device type the forward ran on)."""
    device_type, dtype = ctx.autocast
    return torch.autocast(device_type, dtype=dtype or torch.float32, enabled=dtype is not None)


def as_dtype(t: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    return None if t is None else t.to(dtype)


def cast_grads(grads: Any, dtypes: list[torch.dtype]) -> list[torch.Tensor | None]:
    """Gradients computed in the autocast dtype, cast to their parameters' own dtypes."""
    return [None if g is None else g.to(d) for g, d in zip(grads, dtypes, strict=True)]
