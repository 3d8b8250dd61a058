"""What an adapter costs at inference when it is not merged into the weights: the extra FLOPs of
one UNet forward with every adapted layer computing base(x) + λ·bypass(x) (``bypass``: each
algorithm's own, cheapest way to apply its ΔW to an input), relative to the base UNet's forward.

Counted by ``torch.utils.flop_counter`` on the ``meta`` device (no weights, no time measured):
matrix products and convolutions, the work that dominates a forward; element-wise work (IA³'s
scaling, adding ΔW to W0) is not counted. At the study's generation size, one image, 77 text
tokens. Deterministic, so unlike the measured costs it is the same on every run. Model-level
methods (Textual Inversion, hypernetworks) are left out (NaN): they attach to the pipeline, not
to layers.
"""

from __future__ import annotations

import json
from typing import Any

UNMERGED_COLUMN = "unmerged_overhead"
_CACHE: dict[str, float] = {}


def _flops(denoiser: Any, width: int, height: int) -> float:
    """FLOPs of one forward of the denoiser (a UNet, SDXL's included, or a FLUX transformer: its
    inputs from its config, lyco_bench.sweep.gpu_memory.denoiser_inputs)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from lyco_bench.sweep.gpu_memory import denoiser_inputs

    args, kwargs = denoiser_inputs(denoiser, 1, width, height)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        denoiser(*args, **kwargs)
    return float(counter.get_total_flops())


def _never(x: Any) -> bool:
    return False


def unmerged_overhead(unet_config: dict, adapter: dict, width: int, height: int) -> float:
    """(FLOPs with the adapter unmerged − base FLOPs) / base FLOPs of one UNet forward; NaN for a
    model-level method. ``adapter``: an AdapterSpec's fields (a run record's ``adapter``)."""
    from lyco_bench.adapters import ALGORITHMS, AdapterSpec, inject
    from lyco_bench.methods import is_model_method

    spec = AdapterSpec(**adapter)
    if is_model_method(ALGORITHMS[spec.algo]):
        return float("nan")
    key = json.dumps([unet_config, spec.model_dump(mode="json"), width, height], sort_keys=True, default=str)
    if key not in _CACHE:
        import torch

        from lyco_bench.sweep.gpu_memory import denoiser_class

        with torch.device("meta"):
            unet = denoiser_class(unet_config).from_config(unet_config)
            base = _flops(unet, width, height)
            network = inject(unet, None, spec)
            for module in network.modules():  # unmerged: base(x) + λ·bypass(x), never W0 + λΔW
                if hasattr(module, "prefers_merged"):
                    module.prefers_merged = _never
            _CACHE[key] = (_flops(unet, width, height) - base) / base
    return _CACHE[key]


def config_overheads(plan: Any) -> dict[str, float]:
    """The unmerged overhead of every evaluated configuration of a plan (by its name), at the
    study's generation size; empty when the study's UNet config cannot be read without weights."""
    from lyco_bench.sweep.costs import _configs

    configs = _configs(plan)
    if configs is None:
        return {}
    width, height = plan.inputs.sampler["width"], plan.inputs.sampler["height"]
    out = {}
    from lyco_bench.sweep.axes import evaluations

    for config in plan.study.configs:
        for name, variant in evaluations(plan.study.study, config):
            if variant.compress is None:  # a compressed file is another adapter: left unknown (NaN)
                out[name] = unmerged_overhead(configs[0], config.adapter, width, height)
    return out
