"""The adapter core: algorithms (one file each), injection by preset, files, merge and extraction.

Importing this package registers the built-in algorithms (lora, loha, lokr, native). The public
API is listed in ``docs/internals.md`` ("adapters").
"""

from __future__ import annotations

import importlib

from lyco_bench.adapters.base import ALGORITHMS, AdapterModule, get_algorithm, register_algorithm

# Built-in algorithms register themselves on import (@register_algorithm); a new algorithm file
# is added here by name (docs/adding-an-algorithm.md).
for _name in ("lora", "loha", "lokr", "native"):
    importlib.import_module(f"lyco_bench.adapters.{_name}")

from lyco_bench.adapters.fileformat import AdapterFile, load_adapter, save_tensors  # noqa: E402
from lyco_bench.adapters.inject import AdapterSpec, find_targets, inject  # noqa: E402
from lyco_bench.adapters.network import AdapterNetwork, NormAdapter  # noqa: E402
from lyco_bench.adapters.ops import (  # noqa: E402
    MergeHandle,
    combined_delta,
    delta_weights,
    extract_lora,
    merge_adapters,
    unmerge_adapters,
)

__all__ = [
    "ALGORITHMS",
    "AdapterFile",
    "AdapterModule",
    "AdapterNetwork",
    "AdapterSpec",
    "MergeHandle",
    "NormAdapter",
    "combined_delta",
    "delta_weights",
    "extract_lora",
    "find_targets",
    "get_algorithm",
    "inject",
    "load_adapter",
    "merge_adapters",
    "register_algorithm",
    "save_tensors",
    "unmerge_adapters",
]
