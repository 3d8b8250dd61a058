"""An adapter reference as the command line writes it, ``FILE[:λ][:dyn=R]``: parsed and loaded
(``generate --adapter``, ``adapter merge --adapter``, a study's ``combine_with``)."""

from __future__ import annotations

import math
from pathlib import Path

from lyco_bench.errors import BadInput


def parse_adapter_arg(text: str, *, option: str = "--adapter") -> tuple[str, float, int | None]:
    """``FILE[:λ][:dyn=R]`` → (file, λ, rank or None); λ defaults to 1 and must be a finite
    number; ``dyn=R`` keeps the first R rank components (A1111's syntax, for DyLoRA files).

    The text after the last ':' is the multiplier unless the whole text names an existing file
    or that text looks like a file name (holds a '/' or ends in .safetensors), so ``F:abc`` is
    reported as a bad λ rather than as a missing file ``F:abc``.
    """
    rank = None
    head, sep, tail = text.rpartition(":")
    if sep and head and tail.startswith("dyn=") and not Path(text).is_file():
        try:
            rank = int(tail[len("dyn=") :])
        except ValueError:
            raise BadInput(
                f"{option} {text}: dyn={tail[4:]!r} is not a whole number of rank components"
            ) from None
        if rank < 1:
            raise BadInput(f"{option} {text}: dyn must be ≥ 1")
        text = head
    path, sep, tail = text.rpartition(":")
    if not sep or not path or Path(text).is_file() or "/" in tail or tail.endswith(".safetensors"):
        return text, 1.0, rank
    try:
        weight = float(tail)
    except ValueError:
        raise BadInput(f"{option} {text}: λ {tail!r} is not a number") from None
    if not math.isfinite(weight):
        raise BadInput(f"{option} {text}: λ must be a finite number, not {tail!r}")
    if abs(weight) > 3.4028234663852886e38:  # float32's largest: merged in float32, inf there
        raise BadInput(f"{option} {text}: λ {tail} overflows float32 (|λ| ≤ 3.4e38)")
    return path, weight, rank


def load_adapter_arg(path: str | Path, rank: int | None = None):
    """The AdapterFile one ``--adapter`` names: the file, truncated to ``rank`` when given."""
    from lyco_bench.adapters.fileformat import load_adapter
    from lyco_bench.adapters.ops import truncate_adapter

    file = load_adapter(path)
    return file if rank is None else truncate_adapter(file, rank)
