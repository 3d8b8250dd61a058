"""The adapter core: algorithms (one file each), injection by preset, files, merge and extraction.

Importing this package registers the built-in algorithms (lora, loha, lokr, native). The public
API is listed in ``docs/internals.md`` ("adapters").
"""

from __future__ import annotations

import importlib
import pkgutil

from lyco_bench.adapters import algorithms as _builtin
from lyco_bench.adapters.base import (
    ALGORITHMS,
    AdapterModule,
    AlgorithmOptions,
    CapacityRule,
    get_algorithm,
    register_algorithm,
)
from lyco_bench.errors import BadInput

ENTRY_POINT_GROUP = "lyco_bench.algorithms"


def _load_algorithms() -> None:
    """Import every built-in algorithm file, then the algorithms other packages declare under the
    ``lyco_bench.algorithms`` entry point (``name = "package.module:Class"``)."""
    from importlib.metadata import entry_points

    import lyco_bench.methods as _methods

    for package in (_builtin, _methods):  # layer algorithms, then model-level methods
        for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda m: m.name):
            if not info.name.startswith("_") and info.name != "base":
                importlib.import_module(f"{package.__name__}.{info.name}")
    for point in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda p: p.name):
        try:
            cls = point.load()
        except Exception as exc:  # noqa: BLE001 - any import error of a plug-in is reported alike
            raise BadInput(
                f"algorithm plug-in {point.name} ({point.value}): cannot be imported ({exc})"
            ) from None
        from lyco_bench.methods.base import is_model_method

        if not (isinstance(cls, type) and (issubclass(cls, AdapterModule) or is_model_method(cls))):
            raise BadInput(
                f"algorithm plug-in {point.name} ({point.value}): not an AdapterModule or ModelMethod subclass"
            )
        if ALGORITHMS.get(cls.algo) is not cls:
            register_algorithm(cls)


_load_algorithms()

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
