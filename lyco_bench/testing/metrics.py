"""The conformance check of a metric (:class:`~lyco_bench.metrics.registry.Metric`).

:func:`check_metric` checks what a metric declares and runs its compute function on toy units: a
:class:`ToyView` with the scorer's view API (lyco_bench.metrics.values) over hand-built feature
vectors instead of encoded images. In the toy, a concept's reference features cluster around one
direction, the base model's ``<agnostic>`` images around another, and each prompt's text feature is
the feature of the image it asks for. Two toy models are scored:

* *faithful*: its images are the references (the base model's images on ``<agnostic>`` prompts);
* *unfaithful*: its images cluster around an unrelated direction (on ``<agnostic>`` prompts it draws
  the concept: leakage).

Properties:

* declarations: direction a bool, a criterion, known inputs and prompt classes, rows ⊆ reads,
  a compute function;
* rows well formed: every unit of a class the metric reports gets rows; each a MetricValue with a
  finite value (every input exists in the toy, so nothing is undefined), n ≥ 0, std NaN or ≥ 0, a
  known mode, a str or None subclass; the same input gives the same values;
* known answer, where computable: a metric comparing the images with something (it needs
  ``reference``, ``base`` or ``text``) scores the faithful model no worse than the unfaithful one in
  its declared direction; a diversity metric reading only the images scores a collapsed set (every
  image the same) no better than the faithful, varied one. A metric reading only the images for
  another criterion has no known answer here.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch

from lyco_bench.metrics.registry import PROMPT_CLASSES, Metric
from lyco_bench.metrics.values import MetricValue
from lyco_bench.testing.common import Failure

INPUTS = frozenset({"reference", "generated", "base", "text"})
DIM, N, SPREAD = 16, 4, 0.3
MODES = ("resize",)
SLACK = 1e-9


def _cluster(seed: int, center: torch.Tensor | None = None) -> torch.Tensor:
    """N feature vectors around ``center`` (a random direction when None)."""
    gen = torch.Generator().manual_seed(seed)
    center = torch.randn(DIM, generator=gen, dtype=torch.float64) if center is None else center
    return center + SPREAD * torch.randn(N, DIM, generator=gen, dtype=torch.float64)


@dataclass
class ToyWorld:
    """Feature vectors by path and text (module docstring); ``images``: what the model draws."""

    images: str  # faithful | unfaithful | collapsed
    reference: torch.Tensor = field(default_factory=lambda: _cluster(1))
    base_agnostic: torch.Tensor = field(default_factory=lambda: _cluster(2))
    unrelated: torch.Tensor = field(default_factory=lambda: _cluster(3))

    def generated(self, prompt_class: str) -> torch.Tensor:
        if prompt_class == "agnostic":
            return self.base_agnostic if self.images == "faithful" else self.reference
        if self.images == "collapsed":
            return self.reference[:1].expand(N, DIM).clone()
        return self.reference if self.images == "faithful" else self.unrelated

    def base(self, prompt_class: str) -> torch.Tensor:
        return self.base_agnostic if prompt_class == "agnostic" else self.reference


class _Encoder:
    def logit_scale(self) -> float:
        return 100.0  # CLIP's trained logit scale


class ToyView:
    """The scorer's UnitView API (lyco_bench.metrics.scoring) over a :class:`ToyWorld`."""

    def __init__(self, world: ToyWorld, prompt_class: str, kind: str) -> None:
        self.kind, self.modes, self.profile, self.n = kind, MODES, "lyco", N
        self.base_classes = set(PROMPT_CLASSES)
        self._features: dict[str, torch.Tensor] = {}
        self._texts: dict[str, torch.Tensor] = {}
        gen, base = world.generated(prompt_class), world.base(prompt_class)
        paths = self._add("gen", gen)
        base_paths = self._add("base", base)
        refs = self._add("ref", world.reference)
        self._add("single", world.reference)  # the concept's own <trigger> images
        wanted = base if prompt_class == "agnostic" else world.reference
        clip_text = [f"{prompt_class} words {i}" for i in range(N)]
        self._texts.update(zip(clip_text, wanted, strict=True))
        rows = pd.DataFrame(
            {
                "path": paths,
                "file": paths,
                "prompt": [f"{prompt_class} prompt" for _ in paths],
                "clip_text": clip_text,
                "prompt_class": prompt_class,
                "subclass": "",
                "prompt_index": 0,
                "seed": range(1000, 1000 + N),
                "group": f"{prompt_class}/0",
            }
        )
        self.paths = [Path(p) for p in paths]
        references = [("a", refs), ("b", refs)] if prompt_class == "combine" else [("", refs)]
        concept = "a+b" if prompt_class == "combine" else "toys/plush"
        self.unit = _ToyUnit(prompt_class, "toys", concept, "", rows, references)
        self._pairs = pd.DataFrame({"path": paths, "path_base": base_paths, "clip_text": clip_text})

    def _add(self, prefix: str, feats: torch.Tensor) -> list[str]:
        paths = [f"{prefix}/{i:03d}.png" for i in range(len(feats))]
        self._features.update(zip(paths, feats, strict=True))
        return paths

    def features(self, paths: Iterable, mode: str = "resize", *, base: bool = False) -> torch.Tensor:
        return torch.stack([self._features[str(p)] for p in paths]).float()

    def generated(self, mode: str = "resize") -> torch.Tensor:
        return self.features(self.paths, mode)

    def reference(self, paths: list, mode: str) -> torch.Tensor:
        return self.features(paths, mode)

    def pairs(self) -> pd.DataFrame:
        return self._pairs

    def texts(self, texts: list[str]) -> torch.Tensor:
        """A prompt's text feature is the image it asks for; any other text a seeded vector."""
        out = []
        for text in texts:
            if text not in self._texts:
                gen = torch.Generator().manual_seed(zlib.crc32(text.encode()))
                self._texts[text] = torch.randn(DIM, generator=gen, dtype=torch.float64)
            out.append(self._texts[text])
        return torch.stack(out).float()

    def encoder(self) -> _Encoder:
        return _Encoder()

    def images_of(self, prompt_class: str, key: str) -> list[Path]:
        return [Path(f"single/{i:03d}.png") for i in range(N)]

    def pair_sq_distances(self, pairs: pd.DataFrame) -> torch.Tensor:
        a, b = self.features(pairs["path"]).double(), self.features(pairs["path_base"]).double()
        return ((a - b) ** 2).sum(1)

    def streamed_stats(self):
        from lyco_bench.metrics.preservation import GramStats

        return GramStats.of(self.generated())

    def reference_stats(self, key: str, paths: list):
        from lyco_bench.metrics.preservation import GramStats

        return GramStats.of(self.features(paths))


@dataclass
class _ToyUnit:
    prompt_class: str
    category: str
    concept: str
    subclass: str
    rows: pd.DataFrame
    references: list = field(default_factory=list)


def check_metric(metric: Metric) -> None:
    """Check the properties of the module docstring; AssertionError naming the metric and the
    failed property."""
    if not isinstance(metric, Metric):
        raise AssertionError(f"{metric!r}: not a Metric")
    fail = Failure(f"metric {metric.name}")
    _check_declarations(metric, fail.prop("declarations"))
    faithful = _run(metric, ToyWorld("faithful"), fail.prop("rows well formed"))
    if _run(metric, ToyWorld("faithful"), fail) != faithful:
        fail.prop("rows well formed")("the same toy input gives other values")
    if (INPUTS - {"generated"}) & set(metric.needs):
        other, what = ToyWorld("unfaithful"), "an unfaithful model"
    elif metric.criterion == "diversity":
        other, what = ToyWorld("collapsed"), "a collapsed image set"
    else:
        return  # reads only the images, and not for diversity: no known answer on a toy
    worse = _run(metric, other, fail.prop("known answer"))
    for key, good in faithful.items():
        bad = worse[key]
        ok = good >= bad - SLACK if metric.higher_is_better else good <= bad + SLACK
        if not ok:
            side = "higher" if metric.higher_is_better else "lower"
            fail.prop("known answer")(
                f"at {key} {what} scores {bad:.6g}, the faithful model {good:.6g}: with {side} "
                "declared better, the unfaithful one would rank first"
            )


def _check_declarations(metric: Metric, fail: Failure) -> None:
    if not isinstance(metric.name, str) or not metric.name:
        fail("no name")
    if not isinstance(metric.higher_is_better, bool):
        fail(f"higher_is_better is {metric.higher_is_better!r}, not a bool (no direction)")
    if not isinstance(metric.criterion, str) or not metric.criterion:
        fail("no criterion")
    if not metric.needs or not set(metric.needs) <= INPUTS or "generated" not in metric.needs:
        fail(f"needs {metric.needs!r}: the generated images and inputs among {sorted(INPUTS)}")
    if not metric.encoders or not all(isinstance(e, str) and e for e in metric.encoders):
        fail(f"encoders {metric.encoders!r}: at least one encoder kind")
    if not metric.prompt_classes or not set(metric.prompt_classes) <= set(PROMPT_CLASSES):
        fail(f"prompt_classes {metric.prompt_classes!r} not among {PROMPT_CLASSES}")
    if not metric.reports or not set(metric.reports) <= set(metric.prompt_classes):
        fail(f"row_classes {metric.reports!r}: a non-empty part of the classes it reads")
    if metric.categories not in ("all", "style"):
        fail(f"categories {metric.categories!r}: 'all' or 'style'")
    if not callable(metric.compute):
        fail("no compute function")
    for flag in ("per_image", "default", "experimental"):
        if not isinstance(getattr(metric, flag), bool):
            fail(f"{flag} is not a bool")


def _run(metric: Metric, world: ToyWorld, fail: Failure) -> dict[tuple, float]:
    """Values by (prompt class, encoder kind, subclass, mode) over one toy unit per reported class."""
    values: dict[tuple, float] = {}
    for prompt_class in metric.reports:
        for kind in metric.encoders:
            rows = list(metric.compute(ToyView(world, prompt_class, kind)))
            if not rows:
                fail(f"no row for a <{prompt_class}> unit ({kind})")
            for row in rows:
                _check_row(row, fail.at(f"<{prompt_class}> {kind}"))
                values[(prompt_class, kind, row.subclass, row.mode)] = float(row.value)
    return values


def _check_row(row: MetricValue, fail: Failure) -> None:
    if not isinstance(row, MetricValue):
        fail(f"yields {type(row).__name__}, not a MetricValue")
    if not isinstance(row.value, (int, float)) or not math.isfinite(row.value):
        fail(f"value {row.value!r} ({row.reason or 'no reason'}) where every input exists")
    if not isinstance(row.n, int) or isinstance(row.n, bool) or row.n < 0:
        fail(f"n = {row.n!r}, not a count")
    if not (math.isnan(row.std) or (math.isfinite(row.std) and row.std >= 0)):
        fail(f"std = {row.std!r}")
    if row.mode not in ("", *MODES):
        fail(f"mode {row.mode!r} is not one of the view's modes {MODES}")
    if row.subclass is not None and not isinstance(row.subclass, str):
        fail(f"subclass {row.subclass!r} is neither None nor a str")
