"""The metrics' feature cache: :class:`lyco_bench.shards.ShardCache` under ``cache/features``.

Image features are keyed by the sha256 of the image file, text features by :func:`text_key`
(mode ``text``); the encoder id covers the weights and the preprocessing version.
"""

from __future__ import annotations

from lyco_bench.shards import ShardCache as FeatureCache
from lyco_bench.utils import sha256_bytes


def text_key(text: str) -> str:
    """Cache key of a text (text features live beside image features, mode ``text``)."""
    return sha256_bytes(b"text\0" + text.encode("utf-8"))


__all__ = ["FeatureCache", "text_key"]
