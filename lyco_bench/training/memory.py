"""Memory features of a training session: half-precision frozen base weights, cached text-encoder
outputs, gradient checkpointing (docs/internals.md, memory).

Written against the pipeline's modules, not one model family: the denoiser is ``pipe.unet`` or
``pipe.transformer``, the text encoders every ``pipe.text_encoder*`` there is.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn
from torch.utils import _pytree as pytree

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
TEXT_ENCODER_NAMES = ("text_encoder", "text_encoder_2", "text_encoder_3")


def denoiser_of(pipe: Any) -> nn.Module:
    """The pipeline's denoiser: a UNet (SD1.x, SDXL) or a transformer (DiT families)."""
    module = getattr(pipe, "unet", None)
    return module if module is not None else pipe.transformer


def text_encoders_of(pipe: Any) -> list[nn.Module]:
    """The pipeline's text encoders, in their pipeline order (absent ones left out)."""
    found = (getattr(pipe, name, None) for name in TEXT_ENCODER_NAMES)
    return [m for m in found if m is not None]


def all_parameters(module: nn.Module) -> list[nn.Parameter]:
    """The module's parameters and those of the base layers its adapters hold outside the tree
    (lyco_bench.adapters.AdapterModule keeps its frozen base out of ``parameters()``)."""
    found = {id(p): p for p in module.parameters()}
    for sub in module.modules():
        base = getattr(sub, "_base", None)
        if isinstance(base, list) and base and isinstance(base[0], nn.Module):
            found.update({id(p): p for p in base[0].parameters()})
    return list(found.values())


class FrozenCast:
    """Frozen floating-point parameters of ``modules`` stored in ``dtype``, trainable ones left as
    they are (the adapters' fp32 factors, which were initialized before the cast).

    Parameters are recast in place (``param.data``), so adapters that hold their base layer keep
    seeing it. ``keep_originals``: hold the original tensors to give them back on :meth:`restore`
    (a pipeline the caller lent, whose weights must come back bit for bit); a session that loaded
    its own pipeline drops them, which is where the memory goes.
    """

    def __init__(self, modules: Iterable[nn.Module], dtype: torch.dtype, *, keep_originals: bool) -> None:
        self.cast: list[tuple[nn.Parameter, torch.Tensor | None]] = []
        seen: set[int] = set()
        for module in modules:
            for param in all_parameters(module):
                if param.requires_grad or not param.is_floating_point() or param.dtype == dtype:
                    continue
                if id(param) in seen:  # tied weights
                    continue
                seen.add(id(param))
                original = param.data
                param.data = original.to(dtype)
                self.cast.append((param, original if keep_originals else None))

    def restore(self) -> None:
        """Give back the original tensors (when kept) or upcast to float32."""
        for param, original in self.cast:
            param.data = original if original is not None else param.data.float()
        self.cast = []


def frozen_bytes(modules: Iterable[nn.Module]) -> int:
    """Bytes of the frozen parameters of ``modules`` (what :class:`FrozenCast` halves)."""
    params = {id(p): p for m in modules for p in all_parameters(m) if not p.requires_grad}
    return sum(p.numel() * p.element_size() for p in params.values())


class TextOutputCache:
    """Text-encoder outputs by caption, encoded once (one caption per call, so a caption's output
    does not depend on the batch it first came in).

    ``encode(captions)`` returns the conditioning of a batch: a tensor or a (nested) tuple/dict
    of tensors, batch first; :meth:`__call__` stacks stored rows the same way.
    """

    def __init__(self, encode: Callable[[list[str]], Any]) -> None:
        self._encode = encode
        self._rows: dict[str, Any] = {}

    def fill(self, captions: Iterable[str]) -> int:
        """Encode the captions not stored yet (no gradients); returns how many were new."""
        new = sorted(set(captions) - set(self._rows))
        with torch.no_grad():
            for caption in new:
                self._rows[caption] = pytree.tree_map(lambda t: t.detach(), self._encode([caption]))
        return len(new)

    def __len__(self) -> int:
        return len(self._rows)

    def __call__(self, captions: list[str]) -> Any:
        missing = [c for c in captions if c not in self._rows]
        if missing:  # every caption a run can draw is filled up front (Session._cache_text)
            raise RuntimeError(f"text output cache: caption {missing[0]!r} was not encoded up front")
        rows = [self._rows[c] for c in captions]
        leaves = [pytree.tree_flatten(r)[0] for r in rows]
        spec = pytree.tree_flatten(rows[0])[1]
        stacked = [torch.cat(parts) for parts in zip(*leaves, strict=True)]
        return pytree.tree_unflatten(stacked, spec)


def set_gradient_checkpointing(denoiser: nn.Module, text_encoders: list[nn.Module], on: bool) -> None:
    """Turn checkpointing on or off for the denoiser and the given (trained) text encoders."""
    if on:
        denoiser.enable_gradient_checkpointing()
        for encoder in text_encoders:
            # Reentrant checkpointing drops gradients when the block inputs need none (frozen
            # embeddings); the adapters inside still need theirs.
            encoder.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    else:
        denoiser.disable_gradient_checkpointing()
        for encoder in text_encoders:
            encoder.gradient_checkpointing_disable()
