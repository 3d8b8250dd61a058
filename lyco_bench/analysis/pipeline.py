"""`run_analysis`: results table → scaled ranks → CatBoost + SHAP (with bootstrap refits) →
figures, shap_levels.csv and sample_size.csv.

The same function serves lyco-bench's own studies and the paper's published CSV (converted to the
long table by `read_paper_csv`). Rows fitted: the finest (category, concept, subclass) rows of
each checkpoint at concept level or below (`fit_mask`), every metric label separately, base-model
rows never.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from lyco_bench.analysis.choices import ReportChoices, headline_labels, report_choices
from lyco_bench.analysis.plots import (
    FACTORS,
    category_values,
    epoch_curves,
    figure_caption,
    shap_beeswarm,
    slug,
    tradeoff_figure,
)
from lyco_bench.analysis.ranks import exclude_configs as drop_configs
from lyco_bench.analysis.ranks import fit_mask, scaled_ranks
from lyco_bench.analysis.results import profile_caption
from lyco_bench.analysis.sample_size import TARGET_HALF_WIDTH, sample_size_table
from lyco_bench.analysis.shap_analysis import encode_features, fit_shap, refit_levels, shap_levels
from lyco_bench.analysis.uncertainty import BootstrapSettings
from lyco_bench.errors import BadInput
from lyco_bench.utils import atomic_path, progress_bar

# docs/protocol.md §6: configs left out of everything / additionally out of the SHAP fits.
PAPER_EXCLUDE = ("1007", "1017", "1027")
PAPER_SHAP_EXCLUDE = ("1003", "1013", "1023")
# Where a panel's metric has several labels: the paper's main image features (DINOv2, resize).
DEFAULT_METRIC_WORDS = ("dinov2", "resize")
SHAP_REFITS = 5  # CatBoost refits on bootstrap resamples per metric (≈0.3 s each on the demo)


@dataclass
class AnalysisOutputs:
    figures: list[Path] = field(default_factory=list)
    shap_levels: Path | None = None
    scaled_ranks: Path | None = None
    n_fitted: int = 0
    sample_size: Path | None = None
    sample_size_table: pd.DataFrame | None = None


def default_metric_labels(table: pd.DataFrame, choices: ReportChoices | None = None) -> list[str]:
    """The headline metrics' labels (``choices``, default: what the registry's metrics declare:
    image similarity and squared centroid distance on DINOv2-resize, text similarity, Vendi on
    DINOv2 and the style loss against the base model — one family per criterion of
    docs/protocol.md §5), in every prompt class present; every label when none qualifies."""
    return headline_labels(table, choices)


def select_metrics(
    table: pd.DataFrame, metrics: Sequence[str] | str | None, choices: ReportChoices | None = None
) -> list[str]:
    """Labels to analyse: ``metrics`` (labels, metric names, or ``all``), else the headline ones."""
    if metrics is None:
        return default_metric_labels(table, choices)
    if isinstance(metrics, str):
        metrics = [metrics]
    if list(metrics) == ["all"]:
        return sorted(table["label"].unique())
    known = set(table["label"])
    chosen = []
    for name in metrics:  # a full label, or a metric name standing for all of its labels
        if name in known:
            chosen.append(name)
            continue
        matched = sorted(table.loc[table["metric"] == name, "label"].unique())
        if not matched:
            raise BadInput(f"--metrics: {name!r} is neither a metric column nor a metric name in the results")
        chosen.extend(matched)
    return sorted(dict.fromkeys(chosen))


def ranked_table(
    results: pd.DataFrame, *, exclude: Sequence[str] = (), directions: Mapping[str, bool] | None = None
) -> pd.DataFrame:
    """Fine-tuned rows minus excluded configs, with `scaled_rank` and the five features."""
    table = results[results["algo"] != "base"]
    table = drop_configs(table, exclude).copy()
    if table.empty:
        raise BadInput("analysis: no fine-tuned checkpoints left after exclusions")
    table["scaled_rank"] = scaled_ranks(table, directions=directions)
    return pd.concat([table, encode_features(table)], axis=1)


def run_analysis(
    results: pd.DataFrame,
    out_dir: str | Path,
    *,
    metrics: Sequence[str] | str | None = None,
    exclude_configs: Sequence[str] = (),
    shap_exclude_configs: Sequence[str] = (),
    directions: Mapping[str, bool] | None = None,
    plots: bool = True,
    prefer: Sequence[str] = DEFAULT_METRIC_WORDS,
    bootstrap: BootstrapSettings | None = None,
    shap_refits: int = SHAP_REFITS,
    target_half_width: float | dict[str, float] = TARGET_HALF_WIDTH,
    images_per_prompt: int | dict[str, int] | None = None,
    choices: ReportChoices | None = None,
) -> AnalysisOutputs:
    """Scaled ranks, one CatBoost+SHAP fit per selected metric label (plus `shap_refits` refits on
    hierarchical bootstrap resamples for the intervals of shap_levels.csv), figures,
    sample_size.csv (`sample_size.sample_size_table` for `target_half_width`). `metrics` None:
    the headline labels of `choices` (default: the registry's declarations), whose trade-off
    panels the figures show."""
    out_dir = Path(out_dir)
    choices = choices or report_choices()
    bootstrap = bootstrap or BootstrapSettings()
    if shap_refits < 0:
        raise BadInput(f"shap refits: {shap_refits} (0 or more)")
    labels = select_metrics(results, metrics, choices)
    # ranks only for the selected metrics (the paper CSV has 63 columns); figures read every column
    table = ranked_table(
        results[results["label"].isin(labels)], exclude=exclude_configs, directions=directions
    )
    outputs = AnalysisOutputs()
    outputs.scaled_ranks = out_dir / "scaled_ranks.csv"
    keep = [
        "label",
        "checkpoint",
        "config",
        "seed",
        "epoch",
        "category",
        "concept",
        "subclass",
        "value",
        "scaled_rank",
    ]
    with atomic_path(outputs.scaled_ranks) as tmp:
        table[keep].to_csv(tmp, index=False)

    # every figure says which evaluation profile produced the numbers it shows
    with figure_caption(profile_caption(results)):
        fit_rows = drop_configs(table[fit_mask(table)], shap_exclude_configs)
        fits, refits = [], {}
        with progress_bar() as bar:
            task = bar.add_task("catboost+shap", total=len(labels) * (1 + shap_refits), info="")
            for label in labels:
                rows = fit_rows[(fit_rows["label"] == label) & fit_rows["scaled_rank"].notna()]
                bar.update(task, advance=1, info=label)
                if rows["config"].nunique() < 2:
                    bar.update(task, advance=shap_refits)
                    continue  # nothing to explain: one configuration only
                fit = fit_shap(rows, rows["scaled_rank"], label=label)
                fits.append(fit)
                refits[label] = refit_levels(
                    rows,
                    rows["scaled_rank"],
                    label=label,
                    n_refits=shap_refits,
                    rng=bootstrap.rng(label, "shap"),
                )
                bar.update(task, advance=shap_refits)
                if plots:
                    outputs.figures.append(
                        shap_beeswarm(fit, out_dir / "figures" / f"shap_{slug(label)}.png")
                    )
        outputs.n_fitted = len(fits)
        if fits:
            outputs.shap_levels = out_dir / "shap_levels.csv"
            with atomic_path(outputs.shap_levels) as tmp:
                shap_levels(fits, refits, level=bootstrap.level).to_csv(
                    tmp, index=False, float_format="%.10g"
                )
        sizes = sample_size_table(
            drop_configs(results[results["label"].isin(labels)], exclude_configs), labels, settings=bootstrap,
            target=target_half_width, images_per_prompt=images_per_prompt,
        )  # fmt: skip
        outputs.sample_size, outputs.sample_size_table = out_dir / "sample_size.csv", sizes
        with atomic_path(outputs.sample_size) as tmp:
            sizes.to_csv(tmp, index=False, float_format="%.6g")
        if plots:
            finetuned = drop_configs(results[results["algo"] != "base"], exclude_configs)
            outputs.figures += write_figures(
                finetuned, labels=labels, out_dir=out_dir / "figures", prefer=prefer, choices=choices
            )
    return outputs


def write_figures(
    table: pd.DataFrame,
    *,
    labels: Sequence[str],
    out_dir: Path,
    prefer: Sequence[str],
    choices: ReportChoices | None = None,
) -> list[Path]:
    """Trade-off plots per (category, factor) with the panels of `choices` (none without panels)
    and metric-vs-epoch curves per selected label."""
    panels = (choices or report_choices()).panels
    values = category_values(table)
    figures = []
    categories = sorted(values["category"].unique())
    jobs = [(c, f) for c in categories for f in FACTORS] if panels else []
    with progress_bar() as bar:
        task = bar.add_task("figures", total=len(jobs) + len(labels), info="")
        for category, factor in jobs:
            path = out_dir / f"tradeoff_{slug(category)}_{factor}.png"
            figures.append(
                tradeoff_figure(
                    values, category=category, factor=factor, path=path, prefer=prefer, panels=panels
                )
            )
            bar.update(task, advance=1, info=path.name)
        for label in labels:
            if (values["label"] == label).any():
                figures.append(epoch_curves(values, label=label, path=out_dir / f"epochs_{slug(label)}.png"))
            bar.update(task, advance=1, info=label)
    return figures
