"""Textual Inversion's parts that are not the method itself: the token-embedding stand-in and the
readers of the ecosystem's embedding files (lyco_bench.methods.textual_inversion)."""

from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lyco_bench.errors import BadInput

SDXL_KEYS = frozenset({"clip_l", "clip_g"})


class _TokenEmbedding(nn.Module):
    """Stands in for the text encoder's token embedding while the method is attached: the method's
    ids come from its vectors (× λ), every other id from the frozen table (``inner``)."""

    def __init__(self, inner: nn.Module, method: Any, first_id: int, slot: int = 0) -> None:
        super().__init__()
        self.inner = inner
        self._method = [method]  # not a submodule: its vectors stay out of the text encoder
        self.first_id = first_id
        self.slot = slot
        self.count = method.vectors.shape[0]

    @property
    def weight(self) -> torch.Tensor:
        return self.inner.weight

    @property
    def num_embeddings(self) -> int:
        return self.inner.num_embeddings

    @property
    def embedding_dim(self) -> int:
        return self.inner.embedding_dim

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        method = self._method[0]
        local = input_ids - self.first_id
        mine = (local >= 0) & (local < self.count)
        base = self.inner(input_ids.masked_fill(mine, 0))
        vectors = method.slot_vectors(self.slot)
        if method.multiplier != 1.0:
            vectors = vectors * method.multiplier
        rows = vectors.to(base.device, base.dtype)[local.clamp(0, self.count - 1)]
        return torch.where(mine.unsqueeze(-1), rows, base)


def _token_pattern(token: str) -> str:
    before = r"(?<!\w)" if re.match(r"\w", token[0]) else ""
    after = r"(?!\w)" if re.match(r"\w", token[-1]) else r"(?!_\d)"
    return before + re.escape(token) + after


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def _parent_of(root: nn.Module, child: nn.Module) -> tuple[nn.Module, str]:
    for module in root.modules():
        for name, sub in module.named_children():
            if sub is child:
                return module, name
    raise RuntimeError("the text encoder's input embeddings are not one of its modules")


def _vectors(path: Path, key: str, tensor: Any) -> torch.Tensor:
    if not isinstance(tensor, torch.Tensor) or not tensor.is_floating_point():
        raise BadInput(f"{path}: {key} is not a floating-point tensor")
    if tensor.dim() == 1:
        tensor = tensor.unsqueeze(0)
    if tensor.dim() != 2 or tensor.shape[0] < 1 or tensor.shape[1] < 1:
        raise BadInput(f"{path}: {key} has shape {tuple(tensor.shape)}, expected [vectors, width]")
    if not bool(torch.isfinite(tensor).all()):
        raise BadInput(f"{path}: {key} holds NaN or inf values")
    return tensor.detach().float().cpu()


def _load_pickle(path: Path) -> Any:
    """A ``.pt``/``.bin`` file through torch's restricted unpickler (tensors and plain containers)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many types for a damaged file
        text = str(exc)
        if isinstance(exc, pickle.UnpicklingError) and re.search(
            r"GLOBAL|allowlist|safe_globals|unrecognized function", text
        ):
            raise BadInput(
                f"{path}: refused: it holds pickled objects other than tensors (torch.load "
                "weights_only); convert it to .safetensors"
            ) from None
        first = (text.splitlines() or [type(exc).__name__])[0]
        raise BadInput(f"{path}: unreadable embedding file ({first})") from None


def _pickle_embedding(data: Any) -> tuple[str | None, Any] | None:
    """(token or None for the file name, tensor) of an A1111 or diffusers pickle, else None."""
    if not isinstance(data, dict):
        return None
    params = data.get("string_to_param")
    if isinstance(params, dict):  # A1111 (and kohya's .pt): {"*": [n, d]}, named by the file
        tensors = [v for v in params.values() if isinstance(v, torch.Tensor)]
        return (None, tensors[0]) if len(tensors) == 1 else None
    if len(data) == 1:  # diffusers learned_embeds.bin: {token: [d]}
        ((token, tensor),) = data.items()
        if isinstance(token, str) and isinstance(tensor, torch.Tensor):
            return token, tensor
    return None


def _is_sdxl(data: Any) -> bool:
    return isinstance(data, dict) and SDXL_KEYS <= set(data)
