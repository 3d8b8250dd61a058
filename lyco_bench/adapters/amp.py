"""Autocast for the adapters' custom autograd Functions (docs/internals.md, adapters).

``torch.amp.custom_fwd``/``custom_bwd`` fix the device type when the class is defined; these
helpers do the same for whatever device the forward ran on: the forward records its autocast
state on ``ctx``, backward replays it, so the products of backward run in the forward's dtype
(not re-promoted to fp32), and gradients are cast back to each input's own dtype at the end.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Any

import torch


def record_autocast(ctx: Any, x: torch.Tensor) -> torch.dtype | None:
    """Store the forward's autocast state on ``ctx`` (for :func:`replay_autocast`) and return
    the autocast dtype, or None when autocast is off for ``x``'s device."""
    device_type = x.device.type
    on = _autocast_enabled(device_type) and x.is_floating_point()
    ctx.autocast = (device_type, torch.get_autocast_dtype(device_type) if on else None)
    ctx.input_dtype = x.dtype
    return ctx.autocast[1]


def _autocast_enabled(device_type: str) -> bool:
    """Whether autocast is on for ``device_type``; off for a device that has none (``meta``,
    where the cost model counts an adapter's FLOPs without weights)."""
    try:
        return torch.is_autocast_enabled(device_type)
    except RuntimeError:  # "unknown device type for autocast"
        return False


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
