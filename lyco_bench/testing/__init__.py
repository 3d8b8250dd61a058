"""The conformance kit: one call checks that a plug-in keeps the contract the pipeline relies on.

    from lyco_bench.testing import check_algorithm
    check_algorithm(MyModule)            # a layer algorithm (AdapterModule subclass)
    check_method(MyMethod)               # a model-level method, on a tiny pipeline
    check_metric(METRICS["my_metric"])   # a metric's declarations and a toy computation
    check_preset(PRESETS["my-preset"])   # a preset, on the tiny UNet and text encoder
    check_encoder(ENCODERS["my-encoder"])  # an encoder kind, on its tiny build

Each raises AssertionError naming the plug-in and the failed property; the test suite runs it over
every registered plug-in (tests/test_conformance.py), and an outside package runs it in its own
tests. Properties an algorithm or a method cannot meet for a documented reason are declared on its
class (``conformance_exempt = {"property": "reason"}``); the kit skips those only.
"""

from __future__ import annotations

from lyco_bench.testing.algorithms import check_algorithm
from lyco_bench.testing.encoders import check_encoder
from lyco_bench.testing.methods import check_method
from lyco_bench.testing.metrics import check_metric
from lyco_bench.testing.presets import check_preset

__all__ = ["check_algorithm", "check_encoder", "check_method", "check_metric", "check_preset"]
