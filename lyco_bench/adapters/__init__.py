"""The adapter core: algorithms (one file each), injection by preset, files, merge and extraction.

The registry ``ALGORITHMS`` finds the built-in algorithms (``algorithms/``), the model-level
methods (``lyco_bench.methods``) and the ``lyco_bench.algorithms`` entry points on first use. The public
API is listed in ``docs/internals.md`` ("adapters").
"""

from __future__ import annotations

from lyco_bench.adapters.base import (
    ALGORITHMS,
    AdapterModule,
    AlgorithmOptions,
    CapacityRule,
    get_algorithm,
    register_algorithm,
)
from lyco_bench.adapters.fileformat import AdapterFile, load_adapter, save_tensors
from lyco_bench.adapters.inject import AdapterSpec, find_targets, inject
from lyco_bench.adapters.network import AdapterNetwork
from lyco_bench.adapters.norm import NormAdapter
from lyco_bench.adapters.ops import (
    MergeHandle,
    combined_delta,
    delta_weights,
    extract_lora,
    merge_adapters,
    unmerge_adapters,
)

ENTRY_POINT_GROUP = ALGORITHMS.entry_point

__all__ = [
    "ALGORITHMS",
    "ENTRY_POINT_GROUP",
    "AdapterFile",
    "AdapterModule",
    "AlgorithmOptions",
    "CapacityRule",
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
