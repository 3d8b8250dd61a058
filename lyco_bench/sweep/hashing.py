"""Content hashes of input files, remembered by (path, size, mtime, inode) so a plan rehashes
only what changed.

Job ids cover the bytes of what a job reads (dataset images and captions, local model weights),
so planning hashes them; at the paper's size that is a few GB. ``FileHasher`` keeps each file's
sha256 with its stat signature, in memory and — for ``lyco-bench run`` — in
``<store>/<study>/cache/file-hashes.json``, so a second plan reads only files whose size, mtime
or inode changed (the rule ``make`` and git's index use).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from lyco_bench.utils import atomic_write_json, sha256_file


class FileHasher:
    """sha256 of files by content, cached by stat signature (optionally persisted as JSON)."""

    def __init__(self, store_file: str | os.PathLike | None = None):
        self.store_file = Path(store_file) if store_file is not None else None
        self._known: dict[str, list] = {}
        self.hashed = 0
        if self.store_file is not None and self.store_file.is_file():
            try:
                self._known = json.loads(self.store_file.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                self._known = {}
        self._dirty = False

    def __call__(self, path: str | os.PathLike) -> str:
        path = Path(path).absolute()
        st = path.stat()
        signature = [st.st_size, st.st_mtime_ns, st.st_ino]
        known = self._known.get(str(path))
        if known is not None and known[:3] == signature:
            return known[3]
        digest = sha256_file(path)
        self._known[str(path)] = [*signature, digest]
        self.hashed += 1
        self._dirty = True
        return digest

    def save(self) -> None:
        """Persist the remembered hashes (no-op without a store file or when nothing is new)."""
        if self.store_file is not None and self._dirty:
            atomic_write_json(self.store_file, self._known)
            self._dirty = False
