"""The unmerged inference overhead (sweep.overhead): the extra FLOPs of one UNet forward with an
adapter applied unmerged, against LoRA's count by hand (2·T·r·(in + out) per adapted layer, T the
positions it sees) on the tiny UNet, counted without weights."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from lyco_bench.adapters import AdapterSpec, find_targets
from lyco_bench.analysis.units import human_percent
from lyco_bench.models import TINY_UNET
from lyco_bench.sweep.overhead import unmerged_overhead

pytestmark = pytest.mark.e2e  # ten weightless UNet forwards under a FLOP counter: seconds, not a unit test
SIZE = 64  # pixels: an 8×8 latent


def _lora_by_hand(spec: AdapterSpec) -> tuple[float, float]:
    """(extra FLOPs of LoRA's bypass by hand, the base forward's FLOPs) on the meta device."""
    from diffusers import UNet2DConditionModel
    from torch.utils.flop_counter import FlopCounterMode

    rank = spec.options["dim"]
    extra = []
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(TINY_UNET)
        targets = find_targets(unet, None, spec)
        assert targets and all(
            isinstance(t.layer, nn.Linear) or max(t.layer.kernel_size) == 1 for t in targets
        )  # Linear and 1×1 convs only: one formula

        def hook(layer, args, out):
            positions = out.numel() / (
                layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels
            )
            fan_in = layer.in_features if isinstance(layer, nn.Linear) else layer.in_channels
            fan_out = layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels
            extra.append(2 * positions * rank * (fan_in + fan_out))  # x·Aᵀ then ·Bᵀ

        handles = [t.layer.register_forward_hook(hook) for t in targets]
        x = torch.empty(1, 4, SIZE // 8, SIZE // 8)
        text = torch.empty(1, 77, TINY_UNET["cross_attention_dim"])
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            unet(x, torch.tensor([1]), encoder_hidden_states=text)
        for h in handles:
            h.remove()
    return float(sum(extra)), float(counter.get_total_flops())


def test_lora_overhead_by_hand():
    adapter = {"algo": "lora", "dim": 4, "alpha": 2, "preset": "attn-only"}
    extra, base = _lora_by_hand(AdapterSpec(**adapter))
    got = unmerged_overhead(TINY_UNET, adapter, SIZE, SIZE)
    assert got == pytest.approx(extra / base, rel=1e-12) and got > 0
    # linear in the rank; IA³ only scales (element-wise work is not counted); a model-level
    # method attaches to no layer: no value
    doubled = unmerged_overhead(TINY_UNET, {**adapter, "dim": 8}, SIZE, SIZE)
    assert doubled == pytest.approx(2 * got, rel=1e-12)
    assert unmerged_overhead(TINY_UNET, {"algo": "ia3", "preset": "attn-only"}, SIZE, SIZE) == 0.0
    assert math.isnan(unmerged_overhead(TINY_UNET, {"algo": "textual_inversion"}, SIZE, SIZE))
    assert human_percent(0.0565) == "+5.7 %" and human_percent(0.5) == "+50 %" and human_percent(0) == "0 %"
