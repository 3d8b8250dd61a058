"""The conformance check of a preset (:class:`~lyco_bench.adapters.presets.Preset`).

:func:`check_preset` runs the preset through the injector's own target search
(:func:`lyco_bench.adapters.inject.find_targets`) on the tiny UNet and CLIP text encoder built from
config (lyco_bench.models' TINY_UNET / TINY_TEXT), with the text encoder and, where the preset
allows it, the norm layers trained. It checks:

* answers: the preset's ``unet`` and ``text_encoder`` callables return a bool for every layer;
* selects: at least one layer of the UNet or the text encoder is trained;
* layer kinds: only Linear/Conv2d (and GroupNorm/LayerNorm where ``norm``) are selected;
* deterministic: the same layers on a second call and on a second build of the models.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch import nn

from lyco_bench.adapters.inject import AdapterSpec, find_targets
from lyco_bench.adapters.presets.base import PRESETS, LayerInfo, Preset
from lyco_bench.testing.common import Failure

NORMS = (nn.GroupNorm, nn.LayerNorm)


def tiny_models(seed: int = 0) -> tuple[nn.Module, nn.Module]:
    """The tiny UNet and CLIP text encoder of ``make-tiny-model``, built in memory."""
    import torch
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from lyco_bench.models import TINY_TEXT, TINY_UNET

    with torch.random.fork_rng(devices=[]):  # the caller's RNG state is left as it was
        torch.manual_seed(seed)
        return UNet2DConditionModel(**TINY_UNET), CLIPTextModel(CLIPTextConfig(**TINY_TEXT))


def _keys(unet: nn.Module, text_encoder: nn.Module, spec: AdapterSpec) -> list[tuple[str, str]]:
    return [(t.key, type(t.layer).__name__) for t in find_targets(unet, text_encoder, spec)]


def check_preset(preset: Preset, models: tuple[nn.Module, nn.Module] | None = None) -> None:
    """Check the properties of the module docstring; AssertionError naming the preset and the
    failed property. ``models``: (unet, text_encoder) to check on (default: the tiny ones)."""
    if not isinstance(preset, Preset):
        raise AssertionError(f"{preset!r}: not a Preset")
    fail = Failure(f"preset {preset.name}")
    unet, text_encoder = models or tiny_models()
    _check_answers(preset, unet, text_encoder, fail.prop("answers"))
    with _registered(preset, fail.prop("registered")):
        spec = AdapterSpec(preset=preset.name, train_text_encoder=True, train_norm=preset.norm)
        _check_targets(preset, spec, (unet, text_encoder), rebuild=models is None, fail=fail)


@contextlib.contextmanager
def _registered(preset: Preset, fail: Failure) -> Iterator[None]:
    """The injector finds presets by name: one not yet registered is, for the check only."""
    known = PRESETS.get(preset.name)
    if known is not None and known is not preset and known != preset:
        fail("another preset is registered under this name")
    if known is None:
        PRESETS.register(preset.name, preset)
    try:
        yield
    finally:
        if known is None:
            PRESETS.unregister(preset.name)


def _check_targets(
    preset: Preset, spec: AdapterSpec, models: tuple[nn.Module, nn.Module], *, rebuild: bool, fail: Failure
) -> None:
    unet, text_encoder = models
    targets = find_targets(unet, text_encoder, spec)
    if not targets:
        fail.prop("selects")("selects no layer of the tiny UNet nor of the text encoder")
    allowed = (nn.Linear, nn.Conv2d, *(NORMS if preset.norm else ()))
    for target in targets:
        if not isinstance(target.layer, allowed):
            fail.prop("layer kinds")(f"{target.key} is a {type(target.layer).__name__}")
    first = [(t.key, type(t.layer).__name__) for t in targets]
    again = _keys(unet, text_encoder, spec)
    rebuilt = _keys(*(tiny_models(seed=1) if rebuild else models), spec)
    if first != again or first != rebuilt:
        fail.prop("deterministic")("selects other layers on a second call or a second build of the models")


def _check_answers(preset: Preset, unet: nn.Module, text_encoder: nn.Module, fail: Failure) -> None:
    blocks = [p + "." for p, m in unet.named_modules() if type(m).__name__ == "Transformer2DModel"]
    for path, layer in unet.named_modules():
        if isinstance(layer, (nn.Linear, nn.Conv2d)):
            answer = preset.unet(LayerInfo(path, layer, any(path.startswith(b) for b in blocks)))
            if not isinstance(answer, bool):
                fail(f"unet({path!r}) returned {answer!r}, not a bool")
    for path, layer in text_encoder.named_modules():
        if isinstance(layer, nn.Linear):
            answer = preset.text_encoder(path)
            if not isinstance(answer, bool):
                fail(f"text_encoder({path!r}) returned {answer!r}, not a bool")
