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
    image_features,
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
    def __init__(
        self,
        *,
        settings: EncoderSettings,
        cache: FeatureCache,
        base: pd.DataFrame | None,
        style_categories,
        metrics,
    ):
        self.settings, self.cache, self.base, self.metrics = settings, cache, base, set(metrics)
        self.style_categories = set(style_categories)
        self.pool = EncoderPool(settings)
        self._memo: dict[tuple[str, str, str], torch.Tensor] = {}
        self._ref_stats: dict[str, preservation.GramStats] = {}
        self.rows: list[dict] = []

    # --- features ---------------------------------------------------------------------------
    def feats(self, kind: str, paths: list[Path], mode: str = "resize") -> torch.Tensor:
        """(N, D) features, kept in memory for DINOv2/CLIP (a few KB per image)."""
        todo = [p for p in dict.fromkeys(map(str, paths)) if (kind, mode, p) not in self._memo]
        if todo:
            for p, f in zip(
                todo, image_features(self.pool, kind, todo, mode=mode, cache=self.cache), strict=True
            ):
                self._memo[(kind, mode, p)] = f
        return torch.stack([self._memo[(kind, mode, str(p))] for p in paths])

    def gram_stats(self, paths: list[Path]) -> preservation.GramStats:
        """Streamed Gram statistics (VGG Gram vectors are ~1 MB each: never all in memory)."""
        stats = None
        bs = self.settings.batch_size
        for start in range(0, len(paths), bs):
            part = preservation.GramStats.of(
                image_features(self.pool, "vgg19", paths[start : start + bs], cache=self.cache)
            )
            stats = part if stats is None else stats + part
        return stats

    def prefetch(self, units: list[Unit]) -> None:
        """Encode every image the units need up front, in full batches, one encoder at a time."""
        generated = list(dict.fromkeys(p for u in units for p in u.rows["path"]))
        references = list(dict.fromkeys(str(p) for u in units for _, refs in u.references for p in refs))
        for kind in self.settings.image_encoders:
            if self.wants(*FIDELITY_METRICS):
                for mode in self.settings.modes:
                    self.feats(kind, [Path(p) for p in generated + references], mode)
            elif self.wants("vendi"):
                self.feats(kind, [Path(p) for p in generated])
        if self.wants("text_similarity", "clip_iqa"):
            self.feats("clip", [Path(p) for p in generated])

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
    def wants(self, *names: str) -> bool:
        return any(n in self.metrics for n in names)

    def score_unit(self, unit: Unit) -> None:
        paths = [Path(p) for p in unit.rows["path"]]
        for kind in self.settings.image_encoders:
            if self.wants(*FIDELITY_METRICS):
                self._fidelity(unit, kind, paths)
            if self.wants("vendi"):
                self._vendi(unit, kind, paths)
        if self.wants("text_similarity", "clip_iqa"):
            self._clip_metrics(unit, paths)
        if self.wants("style_loss_base") and unit.prompt_class in BASE_PAIRED_CLASSES:
            self._style_base(unit)
        if (
            self.wants("style_loss_dataset")
            and unit.category in self.style_categories
            and unit.prompt_class in STYLE_DATASET_CLASSES
        ):
            for key, ref_paths in unit.references:
                stats = self._ref_gram_stats(key or unit.concept, ref_paths)
                value = preservation.style_loss_from_stats(self.gram_stats(paths), stats)
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
        if self.wants("text_similarity"):
            texts = text_features(self.pool, unit.rows["clip_text"].tolist(), cache=self.cache)
            self.add(unit, "text_similarity", "clip", "", controllability.text_similarity(clip_img, texts), n)
        if self.wants("clip_iqa"):
            good = text_features(self.pool, [g for g, _ in quality.IQA_PROMPT_PAIRS], cache=self.cache)
            bad = text_features(self.pool, [b for _, b in quality.IQA_PROMPT_PAIRS], cache=self.cache)
            value = quality.clip_iqa(clip_img, good, bad, logit_scale=self._logit_scale())
            self.add(unit, "clip_iqa", "clip", "", value, n)

    def _fidelity(self, unit: Unit, kind: str, paths: list[Path]) -> None:
        n = len(paths)
        for key, ref_paths in unit.references:
            sub = key or None
            for mode in self.settings.modes:
                if not ref_paths:
                    for metric in ("image_similarity", "squared_centroid_distance", "frechet_distance"):
                        self.add(
                            unit, metric, kind, mode, math.nan, n, reason="no reference images", subclass=sub
                        )
                    continue
                ref, gen = self.feats(kind, ref_paths, mode), self.feats(kind, paths, mode)
                self.add(
                    unit, "image_similarity", kind, mode, fidelity.image_similarity(ref, gen), n, subclass=sub
                )
                dist = fidelity.squared_centroid_distance(ref, gen)
                self.add(unit, "squared_centroid_distance", kind, mode, dist, n, subclass=sub)
                if n >= 2 and len(ref) >= 2:
                    self.add(
                        unit,
                        "frechet_distance",
                        kind,
                        mode,
                        fidelity.frechet_distance(ref, gen),
                        n,
                        subclass=sub,
                    )
                else:
                    reason = "fewer than 2 generated or reference images"
                    self.add(unit, "frechet_distance", kind, mode, math.nan, n, reason=reason, subclass=sub)

    def _style_base(self, unit: Unit) -> None:
        if self.base is None:
            self.add(
                unit,
                "style_loss_base",
                "vgg19",
                "",
                math.nan,
                0,
                reason="no base-model images (--base-images)",
            )
            return
        base = self.base[self.base["prompt_class"] == unit.prompt_class]
        pairs = unit.rows.merge(
            base[["prompt", "seed", "path"]], on=["prompt", "seed"], suffixes=("", "_base")
        )
        if pairs.empty:
            reason = "no base-model image with the same prompt and seed"
            self.add(unit, "style_loss_base", "vgg19", "", math.nan, 0, reason=reason)
            return
        bs, losses = self.settings.batch_size, []
        for start in range(0, len(pairs), bs):
            chunk = pairs.iloc[start : start + bs]
            tuned = image_features(self.pool, "vgg19", chunk["path"].tolist(), cache=self.cache)
            base_g = image_features(self.pool, "vgg19", chunk["path_base"].tolist(), cache=self.cache)
            losses.append(((tuned.double() - base_g.double()) ** 2).sum(1))  # per pair ‖Δgram‖²
        self.add(unit, "style_loss_base", "vgg19", "", float(torch.cat(losses).mean()), len(pairs))

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
) -> pd.DataFrame:
    """Score the images of ``images_dir`` (its manifest) against ``dataset``; rows per ROW_COLUMNS.

    ``dataset``: a folder or a loaded :class:`lyco_bench.data.Dataset`. ``base_images_dir``: the
    base model's images of the same prompt set (``style_loss_base``). ``checkpoint``: the name in
    the rows (default: the manifest's ``checkpoint`` column, else the folder name). ``metrics``:
    names from ``METRICS`` to compute (default: all, the experimental ones when
    ``encoders.experimental``); encoders no requested metric needs are never loaded.
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
    scorer = Scorer(
        settings=settings, cache=FeatureCache(cache_dir), base=base, style_categories=styles,
        metrics=_metric_names(metrics, experimental=settings.experimental),
    )  # fmt: skip
    scorer.prefetch(units)
    with progress_bar() as bar:
        task = bar.add_task("score", total=len(units), info="")
        for unit in units:
            scorer.score_unit(unit)
            bar.update(task, advance=1, info=f"{unit.prompt_class} {unit.concept or unit.category}")
    rows = pd.DataFrame(scorer.rows, columns=[c for c in ROW_COLUMNS if c != "checkpoint"])
    rows = pd.concat([category_rows(rows), rows], ignore_index=True)
    if checkpoint is None:
        names = sorted(set(df["checkpoint"].astype(str))) if "checkpoint" in df.columns else []
        checkpoint = names[0] if len(names) == 1 else Path(images_dir).name
    rows.insert(0, "checkpoint", checkpoint)
    rows = rows.sort_values(
        ["prompt_class", "category", "concept", "subclass", "metric", "encoder", "mode"], kind="stable"
    )
    return rows.reset_index(drop=True)[ROW_COLUMNS]
