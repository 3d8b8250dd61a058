"""Compressed variants (a study's ``eval_compress``): a checkpoint's adapter SVD-extracted to a
rank, as its own cached job (kind ``extract``).

Its identity is the source checkpoint's (what its training run depends on, and the epoch), the
rank, the extraction settings and :data:`EXTRACT_VERSION`: the file is made once and read by the
generate job of the compressed variant. The extraction is :func:`lyco_bench.adapters.ops.
extract_adapter` — the factorization of ``lyco-bench adapter extract`` applied to the adapter's
dense ΔW on the study's model — and writes beside the file a record of its size, parameter count
and relative errors, which become the variant's ``file_bytes``, ``trainable_params`` and
``compress_error`` columns.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lyco_bench.errors import BadInput
from lyco_bench.sweep.assets import model_path
from lyco_bench.sweep.axes import extracted_path
from lyco_bench.sweep.store import StudyStore
from lyco_bench.utils import atomic_write_json

EXTRACT_VERSION = 1
"""Bumped when what an extract job writes changes: every compressed variant becomes stale."""
EXTRACT_SETTINGS = {"conv_rank": None}
"""How a study extracts (None: k×k convolutions to the same rank as the rest); in the job's identity."""


def extract_spec(checkpoint: dict[str, Any], rank: int) -> dict[str, Any]:
    """What an extract job's output depends on (its job id hashes it)."""
    return {"checkpoint": checkpoint, "rank": rank, "settings": EXTRACT_SETTINGS, "version": EXTRACT_VERSION}


def run_extract(job: Any, store: StudyStore) -> list[Path]:
    """Extract one checkpoint's adapter to the job's rank; the file and its record."""
    from lyco_bench.adapters.fileformat import save_tensors
    from lyco_bench.adapters.ops import extract_adapter, extraction_metadata
    from lyco_bench.models import load_pipeline
    from lyco_bench.training import checkpoint_path

    p, rank = job.params, int(job.spec["rank"])
    conv_rank = job.spec["settings"]["conv_rank"]
    source = checkpoint_path(store.run_dir(p["config"], p["seed"]), p["epoch"])
    if not source.is_file():
        raise BadInput(f"job {job.id}: {source}: the checkpoint to extract is missing")
    pipe = load_pipeline(model_path(p["model"], store))
    tensors, rows = extract_adapter(source, pipe.unet, pipe.text_encoder, rank=rank, conv_rank=conv_rank)
    out = extracted_path(store, p["config"], p["seed"], p["epoch"], rank)
    out.parent.mkdir(parents=True, exist_ok=True)
    settings = {"source": source.name, "rank": rank, "conv_rank": conv_rank}
    save_tensors(
        out, tensors, extraction_metadata(settings, rank=rank, conv_rank=conv_rank, base=str(p["model"]))
    )
    errors = [r.relative_error for r in rows]
    record = {
        "rank": rank,
        "file_bytes": out.stat().st_size,
        "source_bytes": source.stat().st_size,
        "params": sum(t.numel() for k, t in tensors.items() if not k.endswith(".alpha")),
        "layers": len(rows),
        "mean_error": sum(errors) / len(errors),
        "worst_error": max(errors),
        "bias_changed": sum(r.bias_changed for r in rows),
    }
    atomic_write_json(out.with_suffix(".json"), record)
    return [out, out.with_suffix(".json")]


def read_extraction(store: StudyStore, config: str, seed: int, epoch: int, rank: int) -> dict[str, Any]:
    """The record an extract job wrote; BadInput when it is missing or unreadable."""
    path = extracted_path(store, config, seed, epoch, rank).with_suffix(".json")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise BadInput(f"{path}: missing or unreadable extraction record") from None
