"""Scoring one checkpoint's images: every requested metric of the registry on every group, as rows.

Groups ("units") per prompt class: each concept (``/category/concept``) and each of its subclasses
(``/category/concept/subclass``), then category rows = the mean over that category's concept-level
values that are defined (``n_images`` their sum). Images that do not show one concept are compared
with several: a ``<combine>`` image ("a+b") with each of its two concepts and an ``<agnostic>``
image with every concept of its category (all concepts for global prompts, concept leakage); such
rows carry the reference concept's key in ``subclass``. ``<agnostic>`` units are split by tier
(the manifest's ``subclass``: "" for prompts without one); a tiered unit's per-concept rows carry
``<tier>:<key>``. Undefined values are NaN rows with a ``reason``.

Nothing here names a metric: the scorer asks the registry (:data:`lyco_bench.metrics.METRICS`)
which units, encoders, images and texts each requested metric reads, encodes them, and calls each
metric's compute function with a :class:`UnitView`.

The groups themselves (:class:`Unit`, which rows and reference images each holds, and the
category rows) are :mod:`lyco_bench.metrics.units`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import torch

from lyco_bench.errors import BadInput
from lyco_bench.metrics import preservation
from lyco_bench.metrics.cache import FeatureCache
from lyco_bench.metrics.encoders import ENCODERS
from lyco_bench.metrics.features import (
    EncoderPool,
    EncoderSettings,
    encode_batches,
    image_features,
    image_keys,
    image_size,
    text_features,
)
from lyco_bench.metrics.manifest import member_keys, read_manifest
from lyco_bench.metrics.units import (
    ROW_COLUMNS,
    Unit,
    category_rows,
    infer_style_categories,
    make_units,
    subclassed,
)
from lyco_bench.metrics.values import MetricValue
from lyco_bench.utils import progress_bar

__all__ = [
    "MODES_ORDER", "OUTPUT_VERSION", "ROW_COLUMNS", "Scorer", "Unit", "UnitView", "category_rows",
    "infer_style_categories", "make_units", "score", "subclassed",
]  # fmt: skip

MODES_ORDER = ("resize", "crop", "padding")
OUTPUT_VERSION = 2
"""Bumped when a change here changes the rows written for the same images (sweep job ids).
2: the ``std`` column; <agnostic> fidelity rows replaced by intrusion; tiers."""


class UnitView:
    """What a metric's compute function sees of one unit, for one encoder kind."""

    def __init__(self, scorer: Scorer, index: int, unit: Unit, kind: str):
        self._scorer, self._index, self.unit, self.kind = scorer, index, unit, kind
        self.paths = [Path(p) for p in unit.rows["path"]]
        self.n = len(self.paths)
        self.modes = tuple(scorer.settings.modes)
        self.base_classes = scorer.base_classes
        self.profile = scorer.settings.profile

    def generated(self, mode: str = "resize") -> torch.Tensor:
        """(N, D) features of the unit's images."""
        return self._scorer.feats(self.kind, self.paths, mode)

    def reference(self, paths: list[Path], mode: str) -> torch.Tensor:
        """(R, D) features of dataset images (shared cache)."""
        return self._scorer.feats(self.kind, paths, mode, own=False)

    def features(self, paths: Sequence, mode: str = "resize", *, base: bool = False) -> torch.Tensor:
        """(N, D) features of any generated images of this checkpoint, or of the base model's."""
        return self._scorer.feats(self.kind, [Path(p) for p in paths], mode, own=not base)

    def pairs(self) -> pd.DataFrame | None:
        """The unit's rows joined with the base model's image of the same class, prompt and seed
        (``path_base``); None without a base folder."""
        return self._scorer.pairs(self.unit)

    def texts(self, texts: list[str]) -> torch.Tensor:
        """(N, D) text features with this kind's text tower."""
        return text_features(self._scorer.pool, texts, cache=self._scorer.shared, kind=self.kind)

    def encoder(self):
        return self._scorer.pool.get(self.kind)

    def images_of(self, prompt_class: str, key: str) -> list[Path]:
        """This checkpoint's images of ``prompt_class`` showing concept ``key`` (or its subclasses)."""
        return self._scorer.images_of(prompt_class, key)

    def pair_sq_distances(self, pairs: pd.DataFrame) -> torch.Tensor:
        """(P,) ‖f(generated) − f(base)‖² per pair, from the streaming pass (streamed kinds)."""
        return torch.tensor(
            [self._scorer.pair_sq[(self.kind, p)] for p in pairs["path"]], dtype=torch.float64
        )

    def streamed_stats(self) -> preservation.GramStats:
        """Sufficient statistics of the unit's streamed features (streamed kinds)."""
        return self._scorer.unit_stats[(self.kind, self._index)]

    def reference_stats(self, key: str, paths: list[Path]) -> preservation.GramStats:
        """Streamed statistics of a reference set (cached features: shared by every job)."""
        return self._scorer.reference_stats(self.kind, key, paths)


class Scorer:
    """Encodes what the requested metrics read — nothing else — and turns it into result rows.

    Features of the checkpoint's own images go to ``own`` (one shard per encoder and mode); the
    dataset's, the base model's and texts to ``shared``. Features of streamed kinds (VGG Gram
    vectors) of generated images are never stored (nothing reads them twice): one streaming pass
    reduces them to what the metrics read — the squared distance of each image to its base twin
    (metrics that need ``base``) and each unit's sufficient statistics (metrics that need
    ``reference``).
    """

    def __init__(
        self,
        *,
        settings: EncoderSettings,
        shared: FeatureCache,
        own: FeatureCache,
        base: pd.DataFrame | None,
        style_categories,
        metrics,
        manifest: pd.DataFrame | None = None,
    ):
        from lyco_bench.metrics import METRICS

        self.settings, self.shared, self.own, self.base = settings, shared, own, base
        self.metrics = {name: METRICS[name] for name in metrics}
        self.style_categories = set(style_categories)
        self.manifest = manifest
        self.base_classes = set(base["prompt_class"]) if base is not None else set()
        self.pool = EncoderPool(settings)
        self._memo: dict[tuple[str, str, str], torch.Tensor] = {}
        self._pairs: dict[int, pd.DataFrame] = {}
        self._members: dict[str, list[tuple[tuple[str, ...], Path]]] | None = None
        self.pair_sq: dict[tuple[str, str], float] = {}
        self.unit_stats: dict[tuple[str, int], preservation.GramStats] = {}
        self._ref_stats: dict[str, preservation.GramStats] = {}
        self.rows: list[dict] = []

    # --- which units, kinds and images each metric reads --------------------------------------
    def reads(self, name: str, unit: Unit) -> bool:
        """Whether metric ``name`` is requested and reads ``unit``'s images."""
        metric = self.metrics.get(name)
        if metric is None or unit.prompt_class not in metric.prompt_classes:
            return False
        return metric.categories == "all" or unit.category in self.style_categories

    def reports(self, name: str, unit: Unit) -> bool:
        """Whether metric ``name`` writes rows for ``unit``."""
        return self.reads(name, unit) and unit.prompt_class in self.metrics[name].reports

    def kinds(self, name: str) -> tuple[str, ...]:
        from lyco_bench.metrics import metric_encoders

        return metric_encoders(self.metrics[name], tuple(self.settings.image_encoders))

    def _read_paths(self, name: str, unit: Unit) -> tuple[list[str], list[str], list[str]]:
        """(generated paths, base paths, texts) metric ``name`` reads of ``unit``."""
        needs = self.metrics[name].needs
        if "base" in needs:
            pairs = self.pairs(unit)
            if pairs is None:
                return [], [], []
            gen, base, texts = list(pairs["path"]), list(pairs["path_base"]), list(pairs["clip_text"])
        else:
            gen, base, texts = list(unit.rows["path"]), [], list(unit.rows["clip_text"])
        return gen, base, texts if "text" in needs else []

    # --- features -----------------------------------------------------------------------------
    def feats(self, kind: str, paths: list[Path], mode: str = "resize", *, own: bool = True) -> torch.Tensor:
        """(N, D) features, kept in memory for stored kinds (a few KB per image)."""
        todo = [p for p in dict.fromkeys(map(str, paths)) if (kind, mode, p) not in self._memo]
        if todo:
            cache = self.own if own else self.shared
            got = image_features(
                self.pool, kind, [Path(p) for p in todo], mode=mode, cache=cache, flush=False
            )
            for p, f in zip(todo, got, strict=True):
                self._memo[(kind, mode, p)] = f
        return torch.stack([self._memo[(kind, mode, str(p))] for p in paths])

    def prefetch(self, units: list[Unit]) -> None:
        """Encode every image and text the requested metrics read, in full batches, one encoder at a time."""
        modes = tuple(self.settings.modes)
        kinds = list(self.settings.image_encoders)
        for name in self.metrics:
            kinds += [k for k in self.kinds(name) if k not in kinds]
        texts: dict[str, list[str]] = {}
        for kind in kinds:
            if ENCODERS[kind].streamed:
                continue
            reading = [n for n in self.metrics if kind in self.kinds(n)]
            gen_modes: dict[str, set[str]] = {}
            base_modes: dict[str, set[str]] = {}
            references: dict[str, None] = {}
            for name in reading:
                metric = self.metrics[name]
                wanted = set(modes) if "reference" in metric.needs else {"resize"}
                for unit in (u for u in units if self.reads(name, u)):
                    gen, base, unit_texts = self._read_paths(name, unit)
                    for p in gen:
                        gen_modes.setdefault(p, set()).update(wanted)
                    for p in base:
                        base_modes.setdefault(p, set()).update(wanted)
                    if "reference" in metric.needs:
                        references.update(dict.fromkeys(str(p) for _, refs in unit.references for p in refs))
                    texts.setdefault(kind, []).extend(unit_texts)
                texts.setdefault(kind, []).extend(metric.texts)
            for table, own in ((gen_modes, True), (base_modes, False)):
                for mode in (m for m in MODES_ORDER if any(m in ms for ms in table.values())):
                    self.feats(kind, [Path(p) for p, ms in table.items() if mode in ms], mode, own=own)
            for mode in modes if references else ():
                self.feats(kind, [Path(p) for p in references], mode, own=False)
        for kind, kind_texts in texts.items():
            if kind_texts:  # every text of a kind in one call: one shard
                text_features(self.pool, sorted(set(kind_texts)), cache=self.shared, kind=kind)
        for kind in (k for k in kinds if ENCODERS[k].streamed):
            self._stream_pass(kind, units)
        self.own.flush()
        self.shared.flush()

    def _stream_pass(self, kind: str, units: list[Unit]) -> None:
        """One forward per generated image content some metric reads with ``kind``; reduced, never stored."""
        pairs: dict[str, str] = {}
        members: dict[str, list[int]] = {}
        for name in (n for n in self.metrics if kind in self.kinds(n)):
            needs = self.metrics[name].needs
            for i, unit in enumerate(units):
                if not self.reads(name, unit):
                    continue
                if "base" in needs:
                    pair = self.pairs(unit)
                    if pair is not None:
                        pairs.update(zip(pair["path"], pair["path_base"], strict=True))
                if "reference" in needs:
                    for p in unit.rows["path"]:
                        if i not in members.setdefault(p, []):
                            members[p].append(i)
        paths = sorted(set(pairs) | set(members))
        if not paths:
            return
        same: dict[str, list[str]] = {}  # content hash → the paths holding that content
        for p, key in zip(paths, image_keys(kind, [Path(p) for p in paths], "native")[0], strict=True):
            same.setdefault(key, []).append(p)
        uniq = [group[0] for group in same.values()]
        groups = list(same.values())
        for chunk, feats in encode_batches(self.pool, kind, [Path(p) for p in uniq], ["native"] * len(uniq)):
            batch = [(p, f) for j, f in zip(chunk, feats, strict=True) for p in groups[j]]
            self._reduce(kind, [p for p, _ in batch], [f for _, f in batch], pairs=pairs, members=members)

    def _reduce(self, kind: str, paths: list[str], feats: list[torch.Tensor], *, pairs, members) -> None:
        paired = [i for i, p in enumerate(paths) if p in pairs]
        if paired:
            base = image_features(self.pool, kind, [Path(pairs[paths[i]]) for i in paired],
                                  cache=self.shared, flush=False)  # fmt: skip
            tuned = torch.stack([feats[i] for i in paired])
            losses = ((tuned.double() - base.double()) ** 2).sum(1)  # per pair ‖Δ‖²
            for i, loss in zip(paired, losses.tolist(), strict=True):
                self.pair_sq[(kind, paths[i])] = loss
        for i, p in enumerate(paths):
            for u in members.get(p, ()):
                part = preservation.GramStats.of(feats[i][None])
                key = (kind, u)
                self.unit_stats[key] = part if key not in self.unit_stats else self.unit_stats[key] + part

    def reference_stats(self, kind: str, key: str, paths: list[Path]) -> preservation.GramStats:
        """Streamed statistics of reference images (cached: they are shared by every job)."""
        cache_key = kind + "|" + key + "|" + "|".join(map(str, paths))
        if cache_key not in self._ref_stats:
            stats = None
            bs = self.settings.batch_size
            for start in range(0, len(paths), bs):
                part = preservation.GramStats.of(
                    image_features(self.pool, kind, paths[start : start + bs], cache=self.shared, flush=False)
                )
                stats = part if stats is None else stats + part
            self._ref_stats[cache_key] = stats
        return self._ref_stats[cache_key]

    def pairs(self, unit: Unit) -> pd.DataFrame | None:
        if self.base is None:
            return None
        if id(unit) not in self._pairs:
            base = self.base[self.base["prompt_class"] == unit.prompt_class]
            self._pairs[id(unit)] = unit.rows.merge(
                base[["prompt", "seed", "path"]], on=["prompt", "seed"], suffixes=("", "_base")
            )
        return self._pairs[id(unit)]

    def images_of(self, prompt_class: str, key: str) -> list[Path]:
        if self._members is None:
            self._members = {}
            if self.manifest is not None:
                for _, row in self.manifest.iterrows():
                    keys = tuple(member_keys(row))
                    self._members.setdefault(row["prompt_class"], []).append((keys, Path(row["path"])))
        return [
            path
            for keys, path in self._members.get(prompt_class, [])
            if any(k == key or k.startswith(key + "/") for k in keys)
        ]

    # --- rows -------------------------------------------------------------------------------
    def add(self, unit: Unit, metric: str, kind: str, result: MetricValue) -> None:
        if metric not in self.metrics:
            return
        label = self.pool.label(kind) if kind else ""
        value, reason = float(result.value), result.reason
        if math.isnan(value) and not reason:
            reason = "undefined"
        self.rows.append({
            "category": unit.category, "concept": unit.concept,
            "subclass": unit.subclass if result.subclass is None else result.subclass,
            "prompt_class": unit.prompt_class, "metric": metric, "encoder": label, "mode": result.mode,
            "value": value, "std": math.nan if math.isnan(value) else float(result.std),
            "n_images": int(result.n), "prompt_set_version": _version(unit.rows),
            "reason": reason if math.isnan(value) else "",
        })  # fmt: skip

    def score_unit(self, index: int, unit: Unit) -> None:
        for name, metric in self.metrics.items():
            if not self.reports(name, unit):
                continue
            for kind in self.kinds(name):
                for result in metric.compute(UnitView(self, index, unit, kind)):
                    self.add(unit, name, kind, result)


def _version(rows: pd.DataFrame) -> str:
    return ",".join(sorted(set(rows["prompt_set_version"])))


def _metric_names(metrics: Sequence[str] | None, *, experimental: bool) -> list[str]:
    from lyco_bench.metrics import METRICS, default_metrics

    if metrics is None:
        return default_metrics(experimental=experimental)
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise BadInput(f"metrics: unknown metric {unknown[0]!r} (known: {', '.join(sorted(METRICS))})")
    return list(metrics)


def score(
    *,
    images_dir: str | Path,
    dataset,
    base_images_dir: str | Path | None = None,
    encoders: EncoderSettings | None = None,
    cache_dir: str | Path,
    checkpoint: str | None = None,
    metrics: Sequence[str] | None = None,
    features_dir: str | Path | None = None,
    encoder_passes: dict[str, int] | None = None,
) -> pd.DataFrame:
    """Score the images of ``images_dir`` (its manifest) against ``dataset``; rows per ROW_COLUMNS.

    ``dataset``: a folder or a loaded :class:`lyco_bench.data.Dataset`. ``base_images_dir``: the
    base model's images of the same prompt set (the metrics that need ``base``). ``checkpoint``: the name in
    the rows (default: the manifest's ``checkpoint`` column, else the folder name). ``metrics``:
    names from ``METRICS`` to compute (default: the ``default`` ones, the experimental ones when
    ``encoders.experimental``); only the images and encoders those metrics read are encoded.
    ``cache_dir``: the shared feature cache (dataset, base images, texts); ``features_dir``: where
    the features of these images go (one shard per encoder and mode; default: ``cache_dir``).
    ``encoder_passes``: a dict that receives what each encoder processed in this call.
    """
    from lyco_bench.data import load_dataset

    settings = encoders or EncoderSettings()
    df = read_manifest(images_dir)
    base = read_manifest(base_images_dir) if base_images_dir is not None else None
    ds = load_dataset(dataset) if isinstance(dataset, str | Path) else dataset
    units = make_units(df, ds, source=str(Path(images_dir) / "manifest.parquet"))
    for table in (df, base) if base is not None else (df,):
        for path in table["path"]:
            image_size(Path(path))  # a corrupt header fails here, before any encoding
    styles = (
        settings.style_categories if settings.style_categories is not None else infer_style_categories(df)
    )
    shared = FeatureCache(cache_dir)
    own = FeatureCache(features_dir) if features_dir is not None else shared
    scorer = Scorer(
        settings=settings, shared=shared, own=own, base=base, style_categories=styles,
        metrics=_metric_names(metrics, experimental=settings.experimental), manifest=df,
    )  # fmt: skip
    scorer.prefetch(units)
    with progress_bar() as bar:
        task = bar.add_task("score", total=len(units), info="")
        for index, unit in enumerate(units):
            scorer.score_unit(index, unit)
            bar.update(task, advance=1, info=f"{unit.prompt_class} {unit.concept or unit.category}")
    shared.flush()  # reference Gram vectors read while scoring
    rows = pd.DataFrame(scorer.rows, columns=[c for c in ROW_COLUMNS if c != "checkpoint"])
    if settings.profile == "paper":  # the paper scored each subclass folder, then averaged them
        from lyco_bench.metrics.profiles import subclass_means

        rows = subclass_means(rows, {(u.prompt_class, u.category, u.concept) for u in units if subclassed(u)})
    rows = pd.concat([category_rows(rows), rows], ignore_index=True)
    if checkpoint is None:
        names = sorted(set(df["checkpoint"].astype(str))) if "checkpoint" in df.columns else []
        checkpoint = names[0] if len(names) == 1 else Path(images_dir).name
    rows.insert(0, "checkpoint", checkpoint)
    rows = rows.sort_values(
        ["prompt_class", "category", "concept", "subclass", "metric", "encoder", "mode"], kind="stable"
    )
    if encoder_passes is not None:
        encoder_passes.update(scorer.pool.passes)
    return rows.reset_index(drop=True)[ROW_COLUMNS]
