"""Settings shared by algorithms and model-level methods: the options model, its parsing, and the
fields several algorithms have in common.

An algorithm's ``Options`` is one strict pydantic model; the pieces here let it declare only what
is its own. A low-rank algorithm subclasses :class:`RankOptions` and redeclares ``dim`` and
``alpha`` with its default pair (the α rule is shared: :func:`paired_alpha`); the flags
``use_tucker`` and ``dora`` come from :class:`TuckerOption` and :class:`DoRAOption`. Field order
(and so ``model_dump``, file metadata and job identities) follows the class bases: the rank pair
first, then the mixins' fields from the last base to the first, then the class's own.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from pydantic import ConfigDict, Field, ValidationError, model_validator

from lyco_bench.config import StrictModel, format_validation_error
from lyco_bench.errors import BadInput


class AlgorithmOptions(StrictModel):
    """An algorithm's own settings (dim, α, factor, …): one strict model per algorithm, a docstring
    under each field. A study's ``adapter:`` block is validated against the chosen algorithm's
    model, so a new option touches only its algorithm's file."""

    model_config = ConfigDict(**StrictModel.model_config, use_attribute_docstrings=True)


def paired_alpha(data: Any, *, dim: int, alpha: float) -> Any:
    """Default α for a (dim, α) pair: the algorithm's default pair when neither is given, α = dim
    (scale 1, as kohya and LyCORIS read a file without alpha) when only dim is."""
    if isinstance(data, dict) and data.get("alpha") is None:
        data = {**data, "alpha": float(data["dim"]) if "dim" in data else alpha}
        data.setdefault("dim", dim)
    return data


class RankOptions(AlgorithmOptions):
    """A rank ``dim`` and the α of a scale α/dim. A subclass redeclares both fields with its
    default pair (and a docstring saying what the rank is the rank of); :func:`paired_alpha` reads
    that pair from the subclass's fields."""

    dim: int = Field(8, ge=1)
    """Rank r."""
    alpha: float = 4.0
    """α of the scale α/r; left out: the default α with the default rank, else dim (scale 1)."""

    @model_validator(mode="before")
    @classmethod
    def _alpha(cls, data: Any) -> Any:
        fields = cls.model_fields
        return paired_alpha(data, dim=fields["dim"].default, alpha=fields["alpha"].default)


class TuckerOption(AlgorithmOptions):
    """The ``use_tucker`` flag of algorithms with a Tucker form for k×k convolutions."""

    use_tucker: bool = False
    """Tucker core(s) for k×k convolutions (LyCORIS ``lora_mid``, ``hada_t1``/``hada_t2``)."""


class DoRAOption(AlgorithmOptions):
    """The ``dora`` flag of algorithms that take DoRA's weight decomposition
    (:class:`lyco_bench.adapters.dora.DoRAMixin`)."""

    dora: bool = False
    """DoRA: a trained magnitude per output row over the normalized W0 + ΔW (``dora_scale``)."""


class Configurable:
    """The registry's view of a plug-in class's settings, shared by layer algorithms and
    model-level methods: ``algo`` names it, ``Options`` is its settings model."""

    algo: ClassVar[str]
    Options: ClassVar[type[AlgorithmOptions]] = AlgorithmOptions

    @classmethod
    def parse_options(
        cls,
        options: AlgorithmOptions | Mapping[str, Any] | None = None,
        settings: Mapping[str, Any] | None = None,
    ) -> AlgorithmOptions:
        """The plug-in's Options from an instance, a mapping or keyword settings (BadInput)."""
        if isinstance(options, cls.Options) and not settings:
            return options
        data = {**dict(options or {}), **dict(settings or {})}
        try:
            return cls.Options.model_validate(data)
        except ValidationError as exc:
            raise BadInput(format_validation_error(exc, source=cls.algo)) from None

    @classmethod
    def label(cls, options: AlgorithmOptions) -> str:
        """The name results and analysis show for this plug-in with these settings."""
        return cls.algo
