"""`lyco-bench analyze | leaderboard | report`: the analysis stage from the command line."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from lyco_bench.errors import BadInput

if TYPE_CHECKING:
    import pandas as pd

# Free space asked of an --out folder before any work: tables, figures and grid PNGs of a study
# take a few MB; the floor catches a full disk, not a precise size.
OUT_NEED_BYTES = 16 * 2**20


def _check_out(out: Path) -> None:
    from lyco_bench.utils import check_output_dir

    check_output_dir(out, what=f"--out {out}", need_bytes=OUT_NEED_BYTES)


def _split(values: list[str] | None) -> list[str]:
    return [part for value in values or [] for part in value.split(",") if part]


def _check_configs(table, flag: str, tokens: list[str]) -> None:
    """BadInput for a configuration name or number that matches no configuration of ``table``
    (an exclusion that excludes nothing is a typo, not a choice)."""
    from lyco_bench.analysis.ranks import config_matches

    configs = sorted(table["config"].astype(str).unique())
    for token in tokens:
        if not any(config_matches(c, [token]) for c in configs):
            shown = ", ".join(configs[:8]) + (", …" if len(configs) > 8 else "")
            raise BadInput(f"{flag} {token}: matches no configuration of the results ({shown})")


def _bootstrap(args: argparse.Namespace):
    from lyco_bench.analysis.uncertainty import BootstrapSettings

    return BootstrapSettings(n_resamples=args.resamples, seed=args.bootstrap_seed)


def parse_targets(values: list[str] | None) -> float | dict[str, float]:
    """--target-half-width: `0.01` (every metric) and/or `METRIC=0.5` / `LABEL=0.5` entries."""
    from lyco_bench.analysis.sample_size import TARGET_HALF_WIDTH

    targets: dict[str, float] = {}
    for value in values or []:
        key, sep, number = value.rpartition("=") if "=" in value else ("default", "=", value)
        try:
            targets[key or "default"] = float(number)
        except ValueError:
            raise BadInput(f"--target-half-width {value!r}: expected a number or METRIC=NUMBER") from None
        if not targets[key or "default"] > 0:
            raise BadInput(f"--target-half-width {value!r}: must be > 0")
    if not targets:
        return TARGET_HALF_WIDTH
    return targets["default"] if list(targets) == ["default"] else targets


def images_per_prompt_of(results: Path | None) -> int | None:
    """prompts.images_per_prompt of the study.json beside a store's results.parquet, if any."""
    import json

    if results is None:
        return None
    study = results.parent / "study.json"
    try:
        value = json.loads(study.read_text(encoding="utf-8"))["prompts"]["images_per_prompt"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return int(value) if isinstance(value, int) and value > 0 else None


def format_sample_size(table) -> str:
    """The printed sample-size table: one line per metric column."""
    from lyco_bench.analysis.leaderboard import fmt3

    def num(value: float) -> str:
        return "–" if value != value else "∞" if value == float("inf") else f"{value:.0f}"

    lines = [f"{'metric column':58} {'seeds':>5} {'img/unit':>8} {'half-width':>10} {'floor':>9} "
             f"{'target':>8} {'img/prompt':>10} {'needed':>7}"]  # fmt: skip
    for _, r in table.iterrows():
        note = (
            " (no per-image std)" if "std" in str(r["note"]) else " (floor: more seeds)" if r["note"] else ""
        )
        lines.append(
            f"{str(r['label'])[:58]:58} {r['n_seeds']:>5} {num(r['images_per_unit']):>8} "
            f"{fmt3(r['half_width']):>10} {fmt3(r['floor_half_width']):>9} {fmt3(r['target_half_width']):>8} "
            f"{num(r['images_per_prompt']):>10} {num(r['images_per_prompt_needed']):>7}{note}"
        )
    return "\n".join(lines)


def _cmd_analyze(args: argparse.Namespace) -> int:
    from lyco_bench.analysis.pipeline import PAPER_EXCLUDE, PAPER_SHAP_EXCLUDE, run_analysis, select_metrics
    from lyco_bench.analysis.results import read_paper_csv, read_results, write_results

    out = Path(args.out)
    if args.paper_csv and args.results:
        raise BadInput("analyze: give either RESULTS.parquet or --paper-csv, not both")
    _check_out(out)
    if args.paper_csv:
        paper_csv = Path(args.paper_csv)
        mapping = (
            Path(args.config_mapping) if args.config_mapping else paper_csv.parent / "config_mapping.csv"
        )
        table = read_paper_csv(
            paper_csv, mapping, style_losses_csv=args.style_losses, final_epoch=args.final_epoch
        )
        exclude = PAPER_EXCLUDE if args.exclude is None else _split(args.exclude)
        shap_exclude = PAPER_SHAP_EXCLUDE if args.shap_exclude is None else _split(args.shap_exclude)
    elif args.results:
        table = read_results(args.results)
        exclude, shap_exclude = _split(args.exclude), _split(args.shap_exclude)
    else:
        raise BadInput("analyze: give RESULTS.parquet or --paper-csv FILE")
    _check_configs(table, "--exclude", _split(args.exclude))
    _check_configs(table, "--shap-exclude", _split(args.shap_exclude))
    if args.images_per_prompt is not None and args.images_per_prompt < 1:
        raise BadInput(f"--images-per-prompt {args.images_per_prompt}: must be ≥ 1")
    metrics = select_metrics(table, _split(args.metrics) or None)  # bad names fail before any write
    targets, bootstrap = parse_targets(args.target_half_width), _bootstrap(args)
    if args.shap_refits < 0:
        raise BadInput(f"--shap-refits {args.shap_refits}: 0 or more")
    per_prompt = args.images_per_prompt or images_per_prompt_of(Path(args.results) if args.results else None)
    if args.paper_csv:
        write_results(table, out / "results.parquet")
    outputs = run_analysis(
        table, out, metrics=metrics, exclude_configs=exclude, shap_exclude_configs=shap_exclude,
        plots=not args.no_plots, bootstrap=bootstrap, shap_refits=args.shap_refits,
        target_half_width=targets, images_per_prompt=per_prompt,
    )  # fmt: skip
    print(f"sample size ({bootstrap.level:.0%} CI half-width; images per prompt for the target):")
    print(format_sample_size(outputs.sample_size_table))
    print(
        f"analyze: {outputs.n_fitted} metrics fitted over {table['checkpoint'].nunique()} checkpoints, "
        f"{len(outputs.figures)} figures → {outputs.shap_levels or out}, {outputs.sample_size}"
    )
    return 0


def _cmd_leaderboard(args: argparse.Namespace) -> int:
    from lyco_bench.analysis.leaderboard import write_leaderboard
    from lyco_bench.analysis.results import read_results

    _check_out(Path(args.out))
    table = read_results(args.results)
    paths = write_leaderboard(table, args.out, bootstrap=_bootstrap(args), reference=args.reference)
    print(f"leaderboard: {table['config'].nunique()} configurations → {paths['md']}")
    return 0


def _parse_manifests(items: list[str] | None) -> dict[str, Path]:
    manifests = {}
    for item in items or []:
        key, sep, path = item.partition("=")
        if not sep or not key or not path:
            raise BadInput(f"--manifest {item!r}: expected KEY=PATH/manifest.parquet")
        manifests[key] = Path(path)
    return manifests


def _read_costs(path: str) -> pd.DataFrame:
    """--costs: a readable CSV (its columns are checked by the report: views.cost_table)."""
    import pandas as pd

    try:
        return pd.read_csv(path)
    except (OSError, ValueError, UnicodeDecodeError) as e:  # missing, not text, not CSV
        reason = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise BadInput(f"--costs {path}: not a readable costs.csv ({reason})") from None


def _cmd_report(args: argparse.Namespace) -> int:
    from lyco_bench.analysis.render_check import check_render
    from lyco_bench.analysis.report import write_report
    from lyco_bench.analysis.results import read_results

    out = Path(args.out)
    index = out / "index.html"
    if args.results or args.screenshot:
        _check_out(out)
    if args.images_per_grid < 1:
        raise BadInput(f"--images-per-grid {args.images_per_grid}: must be ≥ 1")
    if args.figures and not Path(args.figures).is_dir():
        raise BadInput(f"--figures {args.figures}: folder not found")
    if args.results:
        figures = sorted(Path(args.figures).glob("*.png")) if args.figures else []
        study = args.study or out.name
        if args.sample_size and not Path(args.sample_size).is_file():
            raise BadInput(f"--sample-size {args.sample_size}: file not found")
        index = write_report(
            study_name=study, results=read_results(args.results), out_dir=out, figures=figures,
            image_manifests=_parse_manifests(args.manifest), images_per_grid=args.images_per_grid,
            bootstrap=_bootstrap(args), reference=args.reference, sample_size=args.sample_size,
            costs=_read_costs(args.costs) if args.costs else None,
        )  # fmt: skip
        print(f"report: {study} → {index}")
    elif not args.check_render:
        raise BadInput("report: give RESULTS.parquet (to write a report) and/or --check-render")
    if args.check_render:
        result = check_render(index, screenshot=out / "screenshot.png" if args.screenshot else None)
        status = "ok" if result.ok else "FAILED: " + "; ".join(result.problems)
        print(f"render check ({Path(result.chromium).name}): {result.images_in_dom} images, {status}")
        return 0 if result.ok else 1
    return 0


def _bootstrap_options(p: argparse.ArgumentParser) -> None:
    from lyco_bench.analysis.uncertainty import BOOTSTRAP_SEED, N_RESAMPLES

    p.add_argument(
        "--resamples", type=int, default=N_RESAMPLES,
        help=f"bootstrap resamples for the 95%% intervals ({N_RESAMPLES}; raised where rank intervals need more)",
    )  # fmt: skip
    p.add_argument(
        "--bootstrap-seed", type=int, default=BOOTSTRAP_SEED,
        help=f"seed of the bootstrap ({BOOTSTRAP_SEED}): same seed, same intervals",
    )  # fmt: skip


def _reference_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--reference",
        help="configuration every other is compared with in comparison.csv (default: the first)",
    )


def register_cli(subparsers: argparse._SubParsersAction) -> None:
    from lyco_bench.analysis.pipeline import SHAP_REFITS
    from lyco_bench.analysis.sample_size import TARGET_HALF_WIDTH

    p = subparsers.add_parser(
        "analyze",
        help="scaled ranks, CatBoost+SHAP, trade-off and epoch figures (a study's results or the paper CSV)",
        description=(
            "Rank every metric within (category, concept, subclass) groups, fit CatBoost on the scaled "
            "ranks with features Algo, Preset, Epoch, Capacity, Lr level and explain it with SHAP "
            "(docs/protocol.md §6), refitted on bootstrap resamples for intervals. Writes DIR/shap_levels.csv, "
            "DIR/scaled_ranks.csv, DIR/sample_size.csv (CI half-width achieved, images per prompt a target "
            "half-width needs; also printed) and DIR/figures/*.png."
        ),
    )
    p.add_argument("results", nargs="?", help="a study's results.parquet (from `lyco-bench run`)")
    p.add_argument("--paper-csv", help="the published ddim_sd15_metrics_mean.csv instead of a results table")
    p.add_argument("--config-mapping", help="config_mapping.csv (default: beside --paper-csv)")
    p.add_argument("--style-losses", help="style_classes_style_losses.csv (optional, paper format)")
    p.add_argument("--final-epoch", type=int, default=50, help="epoch of a paper Folder without suffix (50)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument(
        "--metrics", action="append",
        help="metric columns or metric names to fit, comma-separated; 'all' for every column "
        "(default: the headline metrics the metric registry declares, each in its declared variant)",
    )  # fmt: skip
    p.add_argument(
        "--exclude", action="append", help="configs left out (numbers or names; paper default 1007,1017,1027)"
    )
    p.add_argument(
        "--shap-exclude", action="append", help="configs also left out of SHAP (paper default 1003,1013,1023)"
    )
    p.add_argument("--no-plots", action="store_true", help="write the tables only")
    p.add_argument(
        "--shap-refits", type=int, default=SHAP_REFITS,
        help=f"CatBoost refits on bootstrap resamples per metric, for the intervals of shap_levels.csv "
        f"({SHAP_REFITS}; 0: none; about 0.3 s each on the demo)",
    )  # fmt: skip
    p.add_argument(
        "--target-half-width", action="append", metavar="[METRIC=]WIDTH",
        help=f"the CI half-width sample_size.csv sizes images for: a number for every metric and/or "
        f"METRIC=NUMBER or 'METRIC LABEL=NUMBER' (default {TARGET_HALF_WIDTH})",
    )  # fmt: skip
    p.add_argument(
        "--images-per-prompt", type=int,
        help="the study's images per prompt (default: prompts.images_per_prompt of study.json beside RESULTS)",
    )  # fmt: skip
    _bootstrap_options(p)
    p.set_defaults(func=_cmd_analyze)

    p = subparsers.add_parser(
        "leaderboard",
        help="mean [95%% CI] per configuration, epoch and metric, rank intervals, Pareto marks, and the "
        "paired comparison with a reference configuration (CSV, Markdown, HTML)",
    )
    p.add_argument("results", help="results.parquet")
    p.add_argument("--out", required=True, help="output directory")
    _reference_option(p)
    _bootstrap_options(p)
    p.set_defaults(func=_cmd_leaderboard)

    p = subparsers.add_parser(
        "report",
        help="write reports/<study>/index.html (leaderboard, figures, image grids); check it renders",
    )
    p.add_argument("results", nargs="?", help="results.parquet")
    p.add_argument("--out", required=True, help="report directory, e.g. reports/<study>")
    p.add_argument("--study", help="study name shown in the title (default: the --out folder name)")
    p.add_argument("--figures", help="folder of PNG figures to include (e.g. the analyze output's figures/)")
    p.add_argument(
        "--manifest",
        action="append",
        help="KEY=PATH of a generation manifest.parquet; KEY 'base' is the base model",
    )
    p.add_argument("--images-per-grid", type=int, default=8, help="images per grid row (8)")
    p.add_argument("--sample-size", help="an analysis' sample_size.csv to show in the report")
    p.add_argument(
        "--costs",
        help="a costs.csv (config, epoch, train_seconds / peak_memory_bytes / unmerged_overhead; "
        "a study report's own) whose costs the first view shows",
    )
    _reference_option(p)
    _bootstrap_options(p)
    p.add_argument(
        "--check-render", action="store_true", help="load the report in headless Chromium and check it"
    )
    p.add_argument(
        "--screenshot", action="store_true", help="with --check-render: also save DIR/screenshot.png"
    )
    p.set_defaults(func=_cmd_report)
