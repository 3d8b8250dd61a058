"""The feature cache: one small safetensors file per (content hash, encoder id, mode), on disk.

Content-addressed, so every job of a study shares it: a dataset image is encoded once for all
checkpoints, and a second scoring run of the same images encodes nothing. Layout::

    <root>/<encoder slug>/<mode>/<hash[:2]>/<hash>.safetensors      {"feature": (D,) float32}
    <root>/<encoder slug>/encoder.json                              the full encoder id

Each file is written to a temporary name and renamed into place (``atomic_path``), so two
processes writing the same entry at once both produce a complete file and a reader never sees
half of one; an unreadable entry counts as a miss and is rewritten.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from lyco_bench.utils import atomic_path, atomic_write_json, sha256_bytes


def text_key(text: str) -> str:
    """Cache key of a text (text features live beside image features, mode ``text``)."""
    return sha256_bytes(b"text\0" + text.encode("utf-8"))


class FeatureCache:
    """Feature vectors keyed by (sha256 of the image bytes or text, encoder id, mode)."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.hits = 0
        self.misses = 0

    def _encoder_dir(self, encoder_id: str) -> Path:
        slug = re.sub(r"[^A-Za-z0-9._-]+", "-", encoder_id).strip("-")[:60]
        return self.root / f"{slug}-{sha256_bytes(encoder_id.encode())[:10]}"

    def path(self, key: str, encoder_id: str, mode: str) -> Path:
        return self._encoder_dir(encoder_id) / mode / key[:2] / f"{key}.safetensors"

    def get(self, key: str, encoder_id: str, mode: str) -> torch.Tensor | None:
        path = self.path(key, encoder_id, mode)
        try:
            feature = load_file(str(path))["feature"]
        except (FileNotFoundError, SafetensorError, KeyError, OSError):
            self.misses += 1
            return None
        self.hits += 1
        return feature

    def put(self, key: str, encoder_id: str, mode: str, feature: torch.Tensor) -> None:
        enc_dir = self._encoder_dir(encoder_id)
        if not (enc_dir / "encoder.json").is_file():
            atomic_write_json(enc_dir / "encoder.json", {"encoder_id": encoder_id})
        with atomic_path(self.path(key, encoder_id, mode)) as tmp:
            save_file({"feature": feature.detach().to(torch.float32).contiguous().cpu()}, str(tmp))

    def count(self, encoder_id: str | None = None) -> int:
        """Number of cached entries (of one encoder, or all)."""
        base = self._encoder_dir(encoder_id) if encoder_id else self.root
        return sum(1 for _ in base.rglob("*.safetensors")) if base.exists() else 0
