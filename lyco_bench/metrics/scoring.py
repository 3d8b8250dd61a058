"""Scoring one checkpoint's images: every metric of the registry on every group, as result rows.

Groups ("units") per prompt class: each concept (``/category/concept``) and each of its subclasses
(``/category/concept/subclass``), then category rows = the mean over that category's concept-level
values that are defined (``n_images`` their sum). Images that do not show one concept are compared
with several: a ``<combine>`` image ("a+b") with each of its two concepts and an ``<agnostic>``
image with every concept of its category (all concepts for global prompts, concept leakage); their
fidelity rows carry the reference concept's key in ``subclass``. Undefined values are NaN rows with
a ``reason``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from lyco_bench.errors import BadInput
from lyco_bench.metrics import controllability, diversity, fidelity, preservation, quality
from lyco_bench.metrics.cache import FeatureCache
from lyco_bench.metrics.features import (
    EncoderPool,
    EncoderSettings,
    encode_batches,
    image_features,
    image_keys,
    image_size,
    text_features,
)
from lyco_bench.metrics.manifest import member_keys, prompt_groups, read_manifest
from lyco_bench.utils import progress_bar

ROW_COLUMNS = [
    "checkpoint", "category", "concept", "subclass", "prompt_class", "metric", "encoder", "mode", "value",
    "n_images", "prompt_set_version", "reason",
]  # fmt: skip
STYLE_DATASET_CLASSES = ("train", "trigger", "alter")
BASE_PAIRED_CLASSES = ("style", "agnostic")
PER_PROMPT_VENDI_CLASSES = ("alter",)
FIDELITY_METRICS = ("image_similarity", "squared_centroid_distance", "frechet_distance")
MODES_ORDER = ("resize", "crop", "padding")
OUTPUT_VERSION = 1
"""Bumped when a change here changes the rows written for the same images (sweep job ids)."""


@dataclass
class Unit:
    """One group of generated images and the reference image sets it is compared with."""

    prompt_class: str
    category: str
    concept: str
    subclass: str
    rows: pd.DataFrame
    references: list[tuple[str, list[Path]]] = field(default_factory=list)
    """(key written to ``subclass`` for fidelity rows, or "" for the unit's own; image paths)."""


class Scorer:
    """Encodes what the requested metrics read — nothing else — and turns it into result rows.

    Features of the checkpoint's own images go to ``own`` (one shard per encoder and mode); the
    dataset's, the base model's and texts to ``shared``. VGG Gram vectors of generated images are
    never stored (nothing reads them twice): one streaming pass computes the paired style loss and
    the per-group Gram statistics from them.
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
    ):
        from lyco_bench.metrics import METRICS

        self.settings, self.shared, self.own, self.base = settings, shared, own, base
        self.metrics = {name: METRICS[name] for name in metrics}
        self.style_categories = set(style_categories)
        self.pool = EncoderPool(settings)
        self._memo: dict[tuple[str, str, str], torch.Tensor] = {}
        self._pair_loss: dict[str, float] = {}
        self._unit_grams: dict[int, preservation.GramStats] = {}
        self._ref_stats: dict[str, preservation.GramStats] = {}
        self.rows: list[dict] = []

    # --- which units each metric reads -------------------------------------------------------
    def wants(self, *names: str) -> bool:
        return any(n in self.metrics for n in names)

    def reads(self, name: str, unit: Unit) -> bool:
        """Whether metric ``name`` is requested and reads ``unit``'s images."""
        metric = self.metrics.get(name)
        if metric is None or unit.prompt_class not in metric.prompt_classes:
            return False
        if name == "style_loss_dataset":
            return unit.category in self.style_categories
        return True

    # --- features -----------------------------------------------------------------------------
    def feats(self, kind: str, paths: list[Path], mode: str = "resize", *, own: bool = True) -> torch.Tensor:
        """(N, D) features, kept in memory for DINOv2/CLIP (a few KB per image)."""
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
        """Encode every image the requested metrics read, in full batches, one encoder at a time."""
        modes = tuple(self.settings.modes)
        fidelity = [u for u in units if any(self.reads(m, u) for m in FIDELITY_METRICS)]
        for kind in self.settings.image_encoders:
            gen_modes: dict[str, set[str]] = {}
            for u in fidelity:
                for p in u.rows["path"]:
                    gen_modes.setdefault(p, set()).update(modes)
            for u in units:
                if self.reads("vendi", u):
                    for p in u.rows["path"]:
                        gen_modes.setdefault(p, set()).add("resize")
            for mode in (m for m in MODES_ORDER if any(m in ms for ms in gen_modes.values())):
                paths = [Path(p) for p, ms in gen_modes.items() if mode in ms]
                self.feats(kind, paths, mode)
            references = list(
                dict.fromkeys(str(p) for u in fidelity for _, refs in u.references for p in refs)
            )
            for mode in modes if references else ():
                self.feats(kind, [Path(p) for p in references], mode, own=False)
        clip_paths = list(
            dict.fromkeys(p for u in units if self.reads("text_similarity", u) or self.reads("clip_iqa", u)
                          for p in u.rows["path"])
        )  # fmt: skip
        if clip_paths:
            self.feats("clip", [Path(p) for p in clip_paths])
        texts = [t for u in units if self.reads("text_similarity", u) for t in u.rows["clip_text"]]
        if any(self.reads("clip_iqa", u) for u in units):
            texts += [t for pair in quality.IQA_PROMPT_PAIRS for t in pair]
        if texts:  # every text in one call: one shard
            text_features(self.pool, sorted(set(texts)), cache=self.shared)
        self._vgg_pass(units)
        self.own.flush()
        self.shared.flush()

    def _vgg_pass(self, units: list[Unit]) -> None:
        """One VGG forward per generated image content some style loss reads; Grams reduced, never stored."""
        pairs: dict[str, str] = {}
        for unit in units:
            if self.base is not None and self.reads("style_loss_base", unit):
                pair = self._pairs(unit)
                pairs.update(zip(pair["path"], pair["path_base"], strict=True))
        members: dict[str, list[int]] = {}
        for i, unit in enumerate(units):
            if self.reads("style_loss_dataset", unit):
                for p in unit.rows["path"]:
                    members.setdefault(p, []).append(i)
        paths = sorted(set(pairs) | set(members))
        if not paths:
            return
        same: dict[str, list[str]] = {}  # content hash → the paths holding that content
        for p, key in zip(paths, image_keys("vgg19", [Path(p) for p in paths], "native")[0], strict=True):
            same.setdefault(key, []).append(p)
        uniq = [group[0] for group in same.values()]
        groups = list(same.values())
        for chunk, grams in encode_batches(
            self.pool, "vgg19", [Path(p) for p in uniq], ["native"] * len(uniq)
        ):
            batch = [(p, g) for j, g in zip(chunk, grams, strict=True) for p in groups[j]]
            self._reduce_grams([p for p, _ in batch], [g for _, g in batch], pairs=pairs, members=members)

    def _reduce_grams(self, paths: list[str], grams: list[torch.Tensor], *, pairs, members) -> None:
        paired = [i for i, p in enumerate(paths) if p in pairs]
        if paired:
            base = image_features(self.pool, "vgg19", [Path(pairs[paths[i]]) for i in paired],
                                  cache=self.shared, flush=False)  # fmt: skip
            tuned = torch.stack([grams[i] for i in paired])
            losses = ((tuned.double() - base.double()) ** 2).sum(1)  # per pair ‖Δgram‖²
            for i, loss in zip(paired, losses.tolist(), strict=True):
                self._pair_loss[paths[i]] = loss
        for i, p in enumerate(paths):
            for u in members.get(p, ()):
                part = preservation.GramStats.of(grams[i][None])
                self._unit_grams[u] = part if u not in self._unit_grams else self._unit_grams[u] + part

    def gram_stats(self, paths: list[Path]) -> preservation.GramStats:
        """Streamed Gram statistics of reference images (cached: they are shared by every job)."""
        stats = None
        bs = self.settings.batch_size
        for start in range(0, len(paths), bs):
            part = preservation.GramStats.of(
                image_features(self.pool, "vgg19", paths[start : start + bs], cache=self.shared, flush=False)
            )
            stats = part if stats is None else stats + part
        return stats

    # --- rows -------------------------------------------------------------------------------
    def add(
        self,
        unit: Unit,
        metric: str,
        kind: str,
        mode: str,
        value: float,
        n: int,
        *,
        reason: str = "",
        subclass=None,
    ):
        if metric not in self.metrics:
            return
        label = self.pool.label(kind) if kind else ""
        if isinstance(value, float) and math.isnan(value) and not reason:
            reason = "undefined"
        self.rows.append({
            "category": unit.category, "concept": unit.concept,
            "subclass": unit.subclass if subclass is None else subclass, "prompt_class": unit.prompt_class,
            "metric": metric, "encoder": label, "mode": mode, "value": float(value), "n_images": int(n),
            "prompt_set_version": _version(unit.rows), "reason": reason if math.isnan(value) else "",
        })  # fmt: skip

    # --- metrics per unit -------------------------------------------------------------------
    def score_unit(self, index: int, unit: Unit) -> None:
        paths = [Path(p) for p in unit.rows["path"]]
        for kind in self.settings.image_encoders:
            if any(self.reads(m, unit) for m in FIDELITY_METRICS):
                self._fidelity(unit, kind, paths)
            if self.reads("vendi", unit):
                self._vendi(unit, kind, paths)
        if self.reads("text_similarity", unit) or self.reads("clip_iqa", unit):
            self._clip_metrics(unit, paths)
        if self.reads("style_loss_base", unit):
            self._style_base(unit)
        if self.reads("style_loss_dataset", unit):
            for key, ref_paths in unit.references:
                stats = self._ref_gram_stats(key or unit.concept, ref_paths)
                value = preservation.style_loss_from_stats(self._unit_grams[index], stats)
                self.add(unit, "style_loss_dataset", "vgg19", "", value, len(paths), subclass=key or None)

    def _vendi(self, unit: Unit, kind: str, paths: list[Path]) -> None:
        gen, n = self.feats(kind, paths), len(paths)
        if unit.prompt_class in PER_PROMPT_VENDI_CLASSES:
            value, used = diversity.vendi_per_group(gen, prompt_groups(unit.rows))
            reason = "" if used else "no prompt with 2 images"
        elif n >= 2:
            value, reason = diversity.vendi_score(gen), ""
        else:
            value, reason = math.nan, "fewer than 2 images"
        self.add(unit, "vendi", kind, "", value, n, reason=reason)

    def _clip_metrics(self, unit: Unit, paths: list[Path]) -> None:
        clip_img, n = self.feats("clip", paths), len(paths)
        if self.reads("text_similarity", unit):
            texts = text_features(self.pool, unit.rows["clip_text"].tolist(), cache=self.shared)
            self.add(unit, "text_similarity", "clip", "", controllability.text_similarity(clip_img, texts), n)
        if self.reads("clip_iqa", unit):
            good = text_features(self.pool, [g for g, _ in quality.IQA_PROMPT_PAIRS], cache=self.shared)
            bad = text_features(self.pool, [b for _, b in quality.IQA_PROMPT_PAIRS], cache=self.shared)
            value = quality.clip_iqa(clip_img, good, bad, logit_scale=self._logit_scale())
            self.add(unit, "clip_iqa", "clip", "", value, n)

    def _fidelity(self, unit: Unit, kind: str, paths: list[Path]) -> None:
        n = len(paths)
        for key, ref_paths in unit.references:
            sub = key or None
            for mode in self.settings.modes:
                if not ref_paths:
                    for metric in FIDELITY_METRICS:
                        self.add(
                            unit, metric, kind, mode, math.nan, n, reason="no reference images", subclass=sub
                        )
                    continue
                ref, gen = self.feats(kind, ref_paths, mode, own=False), self.feats(kind, paths, mode)
                if self.reads("image_similarity", unit):
                    value = fidelity.image_similarity(ref, gen)
                    self.add(unit, "image_similarity", kind, mode, value, n, subclass=sub)
                if self.reads("squared_centroid_distance", unit):
                    dist = fidelity.squared_centroid_distance(ref, gen)
                    self.add(unit, "squared_centroid_distance", kind, mode, dist, n, subclass=sub)
                if not self.reads("frechet_distance", unit):
                    continue
                if n >= 2 and len(ref) >= 2:
                    value = fidelity.frechet_distance(ref, gen)
                    self.add(unit, "frechet_distance", kind, mode, value, n, subclass=sub)
                else:
                    reason = "fewer than 2 generated or reference images"
                    self.add(unit, "frechet_distance", kind, mode, math.nan, n, reason=reason, subclass=sub)

    def _pairs(self, unit: Unit) -> pd.DataFrame:
        base = self.base[self.base["prompt_class"] == unit.prompt_class]
        return unit.rows.merge(
            base[["prompt", "seed", "path"]], on=["prompt", "seed"], suffixes=("", "_base")
        )

    def _style_base(self, unit: Unit) -> None:
        if self.base is None:
            reason = "no base-model images (--base-images)"
            self.add(unit, "style_loss_base", "vgg19", "", math.nan, 0, reason=reason)
            return
        pairs = self._pairs(unit)
        if pairs.empty:
            reason = "no base-model image with the same prompt and seed"
            self.add(unit, "style_loss_base", "vgg19", "", math.nan, 0, reason=reason)
            return
        losses = torch.tensor([self._pair_loss[p] for p in pairs["path"]], dtype=torch.float64)
        self.add(unit, "style_loss_base", "vgg19", "", float(losses.mean()), len(pairs))

    def _ref_gram_stats(self, key: str, paths: list[Path]) -> preservation.GramStats:
        cache_key = key + "|" + "|".join(map(str, paths))
        if cache_key not in self._ref_stats:
            self._ref_stats[cache_key] = self.gram_stats(paths)
        return self._ref_stats[cache_key]

    def _logit_scale(self) -> float:
        return self.pool.get("clip").logit_scale()


def _version(rows: pd.DataFrame) -> str:
    return ",".join(sorted(set(rows["prompt_set_version"])))


def _reference_paths(dataset, key: str, *, source: str) -> list[Path]:
    parts = key.split("/")
    leaves = dataset.find(
        parts[0], parts[1] if len(parts) > 1 else None, parts[2] if len(parts) > 2 else None
    )
    if not leaves:
        raise BadInput(f"{source}: concept {key!r} is not in dataset {dataset.root}")
    return [Path(item.path) for leaf in leaves for item in leaf.images]


def make_units(df: pd.DataFrame, dataset, *, source: str) -> list[Unit]:
    """The groups to score, in a fixed order (prompt class, category, concept, subclass)."""
    units = []
    for (pc, cat, concept), rows in df.groupby(["prompt_class", "category", "concept"], sort=True):
        if pc == "agnostic" or not concept:
            keys = [c.key.rsplit("/", 1)[0] if c.subclass else c.key for c in dataset.concepts]
            keys = sorted({k for k in keys if not cat or k.split("/")[0] == cat})
            refs = [(k, _reference_paths(dataset, k, source=source)) for k in keys]
            units.append(Unit(pc, cat, concept, "", rows, refs))
            continue
        members = sorted({k for _, r in rows.iterrows() for k in member_keys(r)})
        if pc == "combine" or "+" in concept:
            refs = [(k, _reference_paths(dataset, k, source=source)) for k in members]
            units.append(Unit(pc, cat, concept, "", rows, refs))
            continue
        own = f"{cat}/{concept}"
        units.append(Unit(pc, cat, concept, "", rows, [("", _reference_paths(dataset, own, source=source))]))
        for sub, sub_rows in rows[rows["subclass"] != ""].groupby("subclass", sort=True):
            refs = [("", _reference_paths(dataset, f"{own}/{sub}", source=source))]
            units.append(Unit(pc, cat, concept, sub, sub_rows, refs))
    return units


def infer_style_categories(df: pd.DataFrame) -> list[str]:
    """Categories with concept images but no ``<style>`` prompts, when the manifest has some."""
    concept_rows = df[(df["concept"] != "") & (df["prompt_class"] != "combine")]
    with_style = set(concept_rows.loc[concept_rows["prompt_class"] == "style", "category"])
    if not with_style:
        return ["style", "styles"]
    return sorted(set(concept_rows["category"]) - with_style)


def category_rows(rows: pd.DataFrame) -> pd.DataFrame:
    """Per (category, class, metric, encoder, mode): the mean of the concept-level values."""
    concept_level = rows[
        (rows["concept"] != "") & ((rows["subclass"] == "") | (rows["prompt_class"] == "combine"))
    ]
    out = []
    keys = ["category", "prompt_class", "metric", "encoder", "mode"]
    for key, grp in concept_level.groupby(keys, sort=True):
        values = grp["value"].to_numpy(dtype=float)
        defined = ~np.isnan(values)
        row = dict(zip(keys, key, strict=True))
        row.update(concept="", subclass="", n_images=int(grp.loc[defined, "n_images"].sum()))
        row["value"] = float(values[defined].mean()) if defined.any() else math.nan
        row["reason"] = "" if defined.any() else "no concept with a defined value"
        row["prompt_set_version"] = ",".join(sorted(set(",".join(grp["prompt_set_version"]).split(","))))
        out.append(row)
    return pd.DataFrame(out, columns=[c for c in ROW_COLUMNS if c != "checkpoint"])


def _metric_names(metrics: Sequence[str] | None, *, experimental: bool) -> list[str]:
    from lyco_bench.metrics import METRICS

    if metrics is None:
        return [name for name, m in METRICS.items() if experimental or not m.experimental]
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
    base model's images of the same prompt set (``style_loss_base``). ``checkpoint``: the name in
    the rows (default: the manifest's ``checkpoint`` column, else the folder name). ``metrics``:
    names from ``METRICS`` to compute (default: all, the experimental ones when
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
        metrics=_metric_names(metrics, experimental=settings.experimental),
    )  # fmt: skip
    scorer.prefetch(units)
    with progress_bar() as bar:
        task = bar.add_task("score", total=len(units), info="")
        for index, unit in enumerate(units):
            scorer.score_unit(index, unit)
            bar.update(task, advance=1, info=f"{unit.prompt_class} {unit.concept or unit.category}")
    shared.flush()  # reference Gram vectors read while scoring
    rows = pd.DataFrame(scorer.rows, columns=[c for c in ROW_COLUMNS if c != "checkpoint"])
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
