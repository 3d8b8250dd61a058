"""Model families: what differs between SD1.x/SD2, SDXL, FLUX… behind one contract
(:mod:`lyco_bench.families.base`). One file per family, each registering a :class:`ModelFamily`;
other packages declare theirs under the ``lyco_bench.families`` entry point."""

from lyco_bench.families.base import (
    DEFAULT_FAMILY,
    FAMILIES,
    ImageGeometry,
    KeyMap,
    ModelFamily,
    Objective,
    TextEncoderSlot,
    family_for_class,
    family_identity,
    family_of,
    family_of_checkpoint,
    family_of_denoiser,
    get_family,
    key_map_of,
    register_family,
)

__all__ = [
    "DEFAULT_FAMILY",
    "FAMILIES",
    "ImageGeometry",
    "KeyMap",
    "ModelFamily",
    "Objective",
    "TextEncoderSlot",
    "family_for_class",
    "family_identity",
    "family_of",
    "family_of_checkpoint",
    "family_of_denoiser",
    "get_family",
    "key_map_of",
    "register_family",
]
