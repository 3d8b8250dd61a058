"""Presets: which layers an adapter trains. One file per preset, each registering a :class:`Preset`
(``register_preset``) — the built-ins here (attn-only, attn-mlp, full), a preset that belongs to an
algorithm in that algorithm's file (``ia3``), and other packages' under the ``lyco_bench.presets``
entry point. A study names one with ``adapter: {preset: …}``."""

from lyco_bench.adapters.presets.base import PRESETS, LayerInfo, Preset, register_preset

__all__ = ["PRESETS", "LayerInfo", "Preset", "register_preset"]
