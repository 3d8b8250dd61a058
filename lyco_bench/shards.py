"""The shard cache: vectors keyed by (content hash, encoder id, mode), stored in shards.

It holds the metrics' features (lyco_bench.metrics: DINOv2/CLIP embeddings, VGG Gram vectors)
and the trainer's VAE latents (lyco_bench.data.latents).

At the paper's size a cache of one file per (image, encoder, mode) would hold ~10 M small files,
so features are written as **shards**: one safetensors file per batch of work (an image set, an
encoder, a mode), holding ``keys`` (N, 32) uint8 — the raw sha256 of each image's bytes or text —
and ``features`` (N, D) float32. Layout::

    <root>/<encoder slug>/<mode>/<shard name>.safetensors     {"keys", "features"} + metadata
                                                              (format, the full encoder id, mode)

Content-addressed, so one cache serves every job that reads the same content: a dataset image is
encoded once for all checkpoints, and a second scoring of the same images encodes nothing.
A shard's name is the hash of its keys, and it is written to a temporary name and renamed into
place, so two processes writing the same entries produce one complete file and a reader never
sees half of one; an unreadable shard is ignored (its entries count as misses). Each shard's
metadata holds the sha256 of its ``keys`` and ``features`` bytes (``sha256``), hashed when it is
written and checked whenever it is read: a damaged shard (bit rot, a partial copy) is removed
and its entries count as misses, so they are computed again (and the shard rewritten).

``put`` only buffers; :meth:`ShardCache.flush` writes the buffered entries as one shard per
(encoder, mode) — callers flush once at the end of their work (and the buffer flushes itself
past ``flush_bytes``, so VGG Gram vectors never pile up in memory).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import struct
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from lyco_bench.utils import atomic_path, sha256_bytes

SHARD_FORMAT = "lyco-bench-features/1"
FLUSH_BYTES = 256 << 20


def _key_bytes(keys: Sequence[str]) -> torch.Tensor:
    data = bytearray(b"".join(bytes.fromhex(k) for k in keys))
    return torch.frombuffer(data, dtype=torch.uint8).view(len(keys), 32)  # (N, 32)


def _key_hex(rows: torch.Tensor) -> list[str]:
    return [bytes(row).hex() for row in rows.numpy()]


class ShardCache:
    """Vectors keyed by (sha256 of the image bytes or text, encoder id, mode), in shards."""

    def __init__(self, root: str | os.PathLike, *, flush_bytes: int = FLUSH_BYTES):
        self.root = Path(root)
        self.flush_bytes = flush_bytes
        self.hits = 0
        self.misses = 0
        self._index: dict[tuple[str, str], dict[str, tuple[Path, int]]] = {}
        self._pending: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
        self._pending_bytes = 0
        self._verified: set[Path] = set()  # shards read whole and found intact by this cache

    def _encoder_dir(self, encoder_id: str) -> Path:
        slug = re.sub(r"[^A-Za-z0-9._-]+", "-", encoder_id).strip("-")[:60]
        return self.root / f"{slug}-{sha256_bytes(encoder_id.encode())[:10]}"

    def shard_dir(self, encoder_id: str, mode: str) -> Path:
        return self._encoder_dir(encoder_id) / mode

    def _entries(self, encoder_id: str, mode: str) -> dict[str, tuple[Path, int]]:
        """key → (shard, row) for every readable shard of (encoder, mode); built once, then kept."""
        where = (encoder_id, mode)
        if where not in self._index:
            index: dict[str, tuple[Path, int]] = {}
            folder = self.shard_dir(encoder_id, mode)
            for shard in sorted(folder.glob("*.safetensors")) if folder.is_dir() else []:
                try:
                    with safe_open(str(shard), framework="pt") as fh:
                        keys = _key_hex(fh.get_tensor("keys"))
                except (SafetensorError, OSError, KeyError, ValueError, RuntimeError):
                    continue
                for row, key in enumerate(keys):
                    index.setdefault(key, (shard, row))
            self._index[where] = index
        return self._index[where]

    def get_many(self, keys: Sequence[str], encoder_id: str, mode: str) -> list[torch.Tensor | None]:
        """The cached feature of each key (None where absent), reading each shard once."""
        entries = self._entries(encoder_id, mode)
        pending = self._pending.get((encoder_id, mode), {})
        out: list[torch.Tensor | None] = [None] * len(keys)
        by_shard: dict[Path, list[tuple[int, int]]] = {}
        for i, key in enumerate(keys):
            if key in pending:
                out[i] = pending[key]
            elif key in entries:
                shard, row = entries[key]
                by_shard.setdefault(shard, []).append((i, row))
        for shard, wanted in by_shard.items():
            rows = self._rows(shard, [row for _, row in wanted])
            if rows is None:
                continue  # a shard removed or damaged since indexing: its entries are misses
            for (i, _), feature in zip(wanted, rows, strict=True):
                out[i] = feature
        found = sum(f is not None for f in out)
        self.hits += found
        self.misses += len(keys) - found
        return out

    def _rows(self, shard: Path, rows: list[int]) -> list[torch.Tensor] | None:
        """Rows of a shard's features. Its first read is whole and checked against its sha256;
        later reads (of a shard this cache verified) take only the rows asked for."""
        if shard not in self._verified:
            whole = _read_verified(shard)
            if whole is None:
                return None
            self._verified.add(shard)
            return [whole[row] for row in rows]
        try:
            with safe_open(str(shard), framework="pt") as fh:
                feats = fh.get_slice("features")
                if 2 * len(rows) > feats.get_shape()[0]:  # most of the shard: one read
                    whole = fh.get_tensor("features")
                    return [whole[row] for row in rows]
                return [feats[row : row + 1][0] for row in rows]
        except (SafetensorError, OSError, RuntimeError):
            return None

    def get(self, key: str, encoder_id: str, mode: str) -> torch.Tensor | None:
        return self.get_many([key], encoder_id, mode)[0]

    def put(self, key: str, encoder_id: str, mode: str, feature: torch.Tensor) -> None:
        """Buffer one entry; it is written with the next :meth:`flush`."""
        feature = feature.detach().to(torch.float32).contiguous().cpu()
        if not bool(torch.isfinite(feature).all()):  # never cached: every later read would reuse it
            from lyco_bench.errors import BadInput

            raise BadInput(f"{encoder_id} ({mode}): non-finite values computed for {key[:12]}…; not cached")
        bucket = self._pending.setdefault((encoder_id, mode), {})
        if key not in bucket:
            bucket[key] = feature
            self._pending_bytes += feature.numel() * 4
        if self._pending_bytes > self.flush_bytes:
            self.flush()

    def flush(self) -> list[Path]:
        """Write buffered entries: one shard per (encoder, mode), named by the hash of its keys."""
        written = []
        for (encoder_id, mode), bucket in sorted(self._pending.items()):
            if not bucket:
                continue
            keys = sorted(bucket)
            name = sha256_bytes("".join(keys).encode())[:20]
            path = self.shard_dir(encoder_id, mode) / f"{name}.safetensors"
            tensors = {"keys": _key_bytes(keys), "features": torch.stack([bucket[k] for k in keys])}
            meta = {"format": SHARD_FORMAT, "encoder_id": encoder_id, "mode": mode}
            meta["sha256"] = _content_hash(tensors["keys"], tensors["features"])
            with atomic_path(path) as tmp:  # sorted header: the same entries give the same bytes
                tmp.write_bytes(safetensors_bytes(tensors, meta))
            index = self._index.get((encoder_id, mode))
            if index is not None:
                for row, key in enumerate(keys):
                    index.setdefault(key, (path, row))
            written.append(path)
        self._pending.clear()
        self._pending_bytes = 0
        return written

    def count(self, encoder_id: str | None = None) -> int:
        """Number of distinct cached entries (of one encoder, or all)."""
        base = self._encoder_dir(encoder_id) if encoder_id else self.root
        where = {_shard_place(p) for p in base.rglob("*.safetensors")} if base.exists() else set()
        return sum(len(self._entries(enc_id, mode)) for enc_id, mode in sorted(where - {None}))

    def shards(self) -> list[Path]:
        return sorted(self.root.rglob("*.safetensors")) if self.root.exists() else []


def _content_hash(keys: torch.Tensor, features: torch.Tensor) -> str:
    digest = hashlib.sha256(keys.contiguous().numpy().tobytes())
    digest.update(features.contiguous().numpy().tobytes())
    return digest.hexdigest()


def _read_verified(shard: Path) -> torch.Tensor | None:
    """A shard's features, read whole and checked against the sha256 in its metadata (shards
    written before it was recorded pass); None when unreadable, or damaged (then removed)."""
    try:
        with safe_open(str(shard), framework="pt") as fh:
            recorded = (fh.metadata() or {}).get("sha256")
            features = fh.get_tensor("features")
            keys = fh.get_tensor("keys") if recorded else None
    except (SafetensorError, OSError, RuntimeError):
        return None
    if recorded and _content_hash(keys, features) != recorded:
        from lyco_bench.utils import console

        console.print(f"damaged: {shard} (content differs from its sha256): removed; computing its entries again",
                      highlight=False)  # fmt: skip
        shard.unlink(missing_ok=True)
        return None
    return features


def shard_damage(shard: Path) -> str | None:
    """What is wrong with a shard file (None: intact, or written before shards had a sha256)."""
    try:
        with safe_open(str(shard), framework="pt") as fh:
            recorded = (fh.metadata() or {}).get("sha256")
            if recorded and _content_hash(fh.get_tensor("keys"), fh.get_tensor("features")) != recorded:
                return "content differs from its sha256"
    except (SafetensorError, OSError, RuntimeError, KeyError) as exc:
        return f"unreadable ({str(exc).splitlines()[0][:80] if str(exc) else type(exc).__name__})"
    return None


def _shard_place(shard: Path) -> tuple[str, str] | None:
    """(encoder id, mode) a shard's metadata names, or None for an unreadable file."""
    try:
        with safe_open(str(shard), framework="pt") as fh:
            meta = fh.metadata() or {}
        return meta["encoder_id"], meta["mode"]
    except (SafetensorError, OSError, KeyError, ValueError, RuntimeError):
        return None


SAFETENSORS_DTYPES = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}


def safetensors_bytes(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> bytes:
    """The safetensors serialization with keys sorted everywhere, so equal inputs give equal bytes.

    (``safetensors.torch.save`` writes the metadata in hash-map order, which changes between runs.)
    Layout: u64 little-endian header length, the JSON header padded with spaces to a multiple of 8,
    then the raw little-endian tensor data in header order.
    """
    header: dict[str, object] = {"__metadata__": dict(sorted(metadata.items()))} if metadata else {}
    chunks: list[bytes] = []
    offset = 0
    for key in sorted(tensors):
        tensor = tensors[key].detach().to("cpu").contiguous()
        if tensor.dtype not in SAFETENSORS_DTYPES:
            raise TypeError(f"{key}: dtype {tensor.dtype} cannot be stored")
        data = tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b""
        header[key] = {
            "dtype": SAFETENSORS_DTYPES[tensor.dtype],
            "shape": list(tensor.shape),
            "data_offsets": [offset, offset + len(data)],
        }
        chunks.append(data)
        offset += len(data)
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + b"".join(chunks)
