"""Model-level methods: customizations that act on the pipeline as a whole, not a ΔW of one layer
(Textual Inversion, Hypernetworks). The contract is :class:`lyco_bench.methods.base.ModelMethod`;
each method is one file in this package, registered like a layer algorithm (its ``algo`` name in
``lyco_bench.adapters.ALGORITHMS``; outside packages use the ``lyco_bench.algorithms`` entry
point), and imported with ``lyco_bench.adapters``."""

from lyco_bench.methods.base import ModelMethod, is_model_method, method_of_file

__all__ = ["ModelMethod", "is_model_method", "method_of_file"]
