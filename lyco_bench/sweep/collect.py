"""After the jobs: collect every score into the results table, then analysis, leaderboard, report.

The results table is rebuilt from the score files each time (sorted, written atomically), so it
never holds duplicate rows and does not depend on the order in which jobs ran.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lyco_bench.sweep.axes import evaluations
from lyco_bench.sweep.planner import Plan
from lyco_bench.sweep.stages import checkpoint_name


def _adapter_columns(adapter: dict[str, Any]) -> dict[str, Any]:
    """algo (the algorithm's label for its settings), every setting the algorithm declares (its
    Options: dim, alpha, factor, …) as the trainer resolved them, and the preset for a layer
    algorithm only: a model-level method (Textual Inversion, hypernetworks) selects no layers, so
    its row leaves preset empty rather than showing a default it never read."""
    from lyco_bench.adapters import ALGORITHMS, AdapterSpec
    from lyco_bench.methods import is_model_method

    spec = AdapterSpec(**adapter)
    preset = None if is_model_method(ALGORITHMS[spec.algo]) else spec.preset
    return {"algo": spec.label(), "preset": preset, **spec.options}


def _run_columns(config: dict[str, Any]) -> dict[str, Any]:
    """algo, preset and the algorithm's settings, plus prior preservation's weight (0 when off);
    with prior preservation the algo is ``<algo>+prior`` (native + prior = DreamBooth), so the
    analysis tells the two methods apart."""
    columns = _adapter_columns(config["adapter"])
    weight = float(config.get("prior_loss_weight", 0.0))
    if weight > 0:
        columns["algo"] += "+prior"
    return {**columns, "prior_loss_weight": weight}


def read_run_record(path: Path) -> dict[str, Any]:
    """A checkpoint's run record (what the trainer actually used); BadInput if unreadable."""
    import json

    from lyco_bench.errors import BadInput

    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        record["config"]["adapter"]  # noqa: B018 - the part the results table reads
    except (OSError, ValueError, KeyError, TypeError):
        raise BadInput(f"{path}: missing or unreadable run record") from None
    return record


def score_jobs(plan: Plan, *, trajectory: bool = False) -> list[Any]:
    """The score jobs of the full evaluation, or (``trajectory``) of the trajectory points."""
    return [j for j in plan.of_kind("score") if bool(j.params.get("trajectory")) == trajectory]


def runs_table(plan: Plan, *, trajectory: bool = False) -> Any:
    """One row per scored checkpoint: the settings its trainer recorded, seed, epoch, size.

    Read from each checkpoint's run record, not re-derived from the study file: a setting left to
    a per-algorithm default is recorded as the value the trainer used.
    """
    import pandas as pd

    from lyco_bench.training import checkpoint_path, record_path

    rows = []
    for job in score_jobs(plan, trajectory=trajectory):
        p = job.params
        run_dir = plan.store.run_dir(p["config"], p["seed"])
        record = read_run_record(record_path(run_dir, p["epoch"]))
        config = record["config"]
        row = {
            "checkpoint": checkpoint_name(p["evaluated"], p["seed"], p["epoch"]),
            "config": p["evaluated"],
            **_run_columns(config),
            **({"eval_rank": p["rank"]} if p["rank"] is not None else {}),
            **_variant_columns(plan, p),
            "lr": float(config["lr"]),
            "seed": int(record["seed"]),
            "epoch": int(record["epoch"]),
            "trainable_params": int(record["trainable_params"]),
            # As written (the store checked the file against it): not a later, damaged size.
            "file_bytes": int(
                record.get("file_bytes") or checkpoint_path(run_dir, p["epoch"]).stat().st_size
            ),
        }
        if p.get("compress") is not None:  # the extracted file is what this row evaluates
            from lyco_bench.sweep.compress import read_extraction

            extraction = read_extraction(plan.store, p["config"], p["seed"], p["epoch"], p["compress"])
            row |= {"trainable_params": int(extraction["params"]), "file_bytes": int(extraction["file_bytes"]),
                    "compress_error": float(extraction["mean_error"])}  # fmt: skip
        rows.append(row)
    return pd.DataFrame(rows)


def run_costs(plan: Plan) -> Any:
    """What each scored checkpoint cost: ``checkpoint, config, seed, epoch`` and
    ``results.COST_COLUMNS`` — from its run record the wall seconds of training up to it and the
    peak memory (NaN in records written before them), and its configuration's unmerged inference
    overhead (sweep.overhead). The times are measured, so they differ between runs: they stay out
    of the results table (whose values a rerun reproduces) and go to the report's costs.csv."""
    import pandas as pd

    from lyco_bench.sweep.overhead import config_overheads
    from lyco_bench.training import record_path

    overheads = config_overheads(plan)
    rows = []
    for job in plan.of_kind("score"):
        p = job.params
        record = read_run_record(record_path(plan.store.run_dir(p["config"], p["seed"]), p["epoch"]))
        rows.append(
            {"checkpoint": checkpoint_name(p["evaluated"], p["seed"], p["epoch"]), "config": p["evaluated"],
             "seed": int(record["seed"]), "epoch": int(record["epoch"]),
             "train_seconds": float(record.get("wall_time_total_s", "nan")),
             "peak_memory_bytes": float(record.get("peak_memory_bytes", "nan")),
             "unmerged_overhead": overheads.get(p["evaluated"], float("nan"))}
        )  # fmt: skip
    return pd.DataFrame(rows)


def _variant_columns(plan: Plan, params: dict[str, Any]) -> dict[str, Any]:
    """The evaluation-axis columns of a score job's row (lyco_bench.sweep.axes.variant_columns)."""
    from lyco_bench.sweep.axes import Variant, model_label, variant_columns

    variant = Variant(
        rank=params["rank"], multiplier=params.get("multiplier", 1.0), model=params.get("eval_model"),
        compress=params.get("compress"),
    )  # fmt: skip
    study = plan.study.study
    return variant_columns(study, variant, own_label=model_label(study.model))


# Outputs the results table is built from, per job kind: hashed by ``run`` before it starts.
RESULT_FILES = {"score": ".parquet", "train": ".json", "extract": ".json"}  # extract: a compressed row's size


def check_result_files(plan: Plan) -> list[str]:
    """Hash the score tables and run records of the done jobs (``collect`` reads them anyway);
    a damaged one marks its job damaged, so that ``run`` reruns it. Returns those jobs' ids."""
    from lyco_bench.sweep.integrity import remove_damaged

    damaged = []
    store = plan.store
    for job in plan.jobs:
        suffix = RESULT_FILES.get(job.kind)
        marker = store.read_marker(job.id) if suffix else None
        if marker is None or marker.get("damaged"):
            continue
        outputs = {k: v for k, v in marker.get("outputs", {}).items() if k.endswith(suffix)}
        found = store.damage({"outputs": outputs}, hashes=True)
        if found:
            store.mark_damaged(job.id, found)
            remove_damaged(store.root, found)
            damaged.append(job.id)
    return damaged


def collect(plan: Plan) -> Any:
    """The study's results table (written to ``<store>/<study>/results.parquet``)."""
    from lyco_bench.analysis import collect_results, write_results

    score_files = [
        plan.store.scores_path(j.params["evaluated"], j.params["seed"], j.params["epoch"])
        for j in score_jobs(plan)
    ]
    results = collect_results(score_files, runs_table(plan))
    # which evaluation profile produced the values (figures and reports say so)
    results["profile"] = (plan.study.study.encoders or {}).get("profile", "lyco")
    write_results(results, plan.store.results_path)
    return results


def collect_trajectory(plan: Plan) -> Any:
    """The trajectory points' results table (``<store>/<study>/trajectory.parquet``), or None for
    a study without a trajectory."""
    from lyco_bench.analysis import collect_results, write_results
    from lyco_bench.sweep.trajectory import checkpoint_dirs

    jobs = score_jobs(plan, trajectory=True)
    if not jobs:
        return None
    results = collect_results(
        [checkpoint_dirs(j.params, plan.store)[2] for j in jobs], runs_table(plan, trajectory=True)
    )
    write_results(results, plan.store.root / "trajectory.parquet")
    return results


def analyze_and_report(plan: Plan, results: Any, *, reports_dir: Path, plots: bool = True) -> Path:
    """Scaled ranks + CatBoost/SHAP (with bootstrap refits) + figures + sample sizes, then the
    leaderboard (with intervals and the comparison with the reference) and
    ``reports/<study>/index.html``."""
    from lyco_bench.analysis import run_analysis, write_report
    from lyco_bench.analysis.uncertainty import BootstrapSettings

    settings = plan.study.study.analysis
    study = plan.study.study
    out_dir = Path(reports_dir) / plan.study.name
    defaults = BootstrapSettings()
    bootstrap = BootstrapSettings(
        n_resamples=settings.bootstrap_resamples or defaults.n_resamples,
        seed=settings.bootstrap_seed if settings.bootstrap_seed is not None else defaults.seed,
    )
    evaluated = {c.name: evaluations(study, c) for c in plan.study.configs}
    first = evaluated[plan.study.configs[0].name][0][0]
    reference = settings.reference or first
    # A varied evaluation (another λ, model or a compressed file) has its configuration's SHAP
    # features: it is ranked on the leaderboard and left out of the fits.
    varied = [name for names in evaluated.values() for name, v in names if v.varies]
    choices = settings.choices()  # headline metrics, Pareto axes, panels: the registry's or the study's
    extra = {} if settings.shap_refits is None else {"shap_refits": settings.shap_refits}
    if settings.target_half_width is not None:
        extra["target_half_width"] = settings.target_half_width
    analysis = run_analysis(
        results,
        out_dir / "analysis",
        exclude_configs=tuple(str(c) for c in settings.exclude_configs),
        shap_exclude_configs=(*(str(c) for c in settings.shap_exclude_configs), *varied),
        plots=plots,
        bootstrap=bootstrap,
        images_per_prompt=study.prompts.images_per_prompt or _images_per_prompt(study.prompts.set),
        choices=choices,
        **extra,
    )
    # Curves from the trajectory points (else the checkpoint epochs), the best checkpoint, overfitting
    from lyco_bench.analysis.trajectory_plot import write_trajectory

    points = collect_trajectory(plan)
    trajectory = write_trajectory(
        points if points is not None else results, out_dir / "analysis", rule=settings.rule(),
        bootstrap=bootstrap, plots=plots,
    )  # fmt: skip
    # write_report writes the leaderboard files (leaderboard.csv/.md/.html, comparison.csv) too
    return write_report(
        study_name=plan.study.name,
        results=results,
        out_dir=out_dir,
        figures=analysis.figures,
        image_manifests={"base": plan.store.base_images_dir / "manifest.parquet"},
        grid_sets=[g for g in (checkpoint_grids(plan), multiplier_grids(plan)) if g is not None],
        costs=run_costs(plan),
        base_key="base",
        bootstrap=bootstrap,
        reference=reference,
        contrasts=_contrasts(plan),
        sample_size=analysis.sample_size_table,
        choices=choices,
        trajectory=trajectory,
    )


def checkpoint_grids(plan: Plan) -> Any:
    """The report's side-by-side grids: per configuration and prompt class, one row per checkpoint
    epoch × seed (only the first seed's last epoch where the study keeps just the grids' images),
    the base model's images of the same prompts and seeds underneath."""
    import pandas as pd

    from lyco_bench.analysis.grids import GridSet

    study = plan.study.study
    kept = [(e, s) for e in study.checkpoint_epochs for s in study.seeds]
    if study.images != "keep":
        kept = [(max(study.checkpoint_epochs), study.seeds[0])]
    rows = [
        {"config": name, "epoch": epoch, "seed": seed,
         "manifest": plan.store.images_dir(name, seed, epoch) / "manifest.parquet"}
        for config in plan.study.configs for name, _ in evaluations(study, config) for epoch, seed in kept
    ]  # fmt: skip
    return GridSet(pd.DataFrame(rows), columns=("epoch", "seed"), group_by=("config",))


def multiplier_grids(plan: Plan) -> Any | None:
    """The multiplier sweep side by side (a study with ``eval_multipliers``): per as-trained
    evaluation and prompt class one row per λ (1 included) at the first seed's last checkpoint, the
    base model's images of the same prompts and seeds underneath; None without the axis."""
    import pandas as pd

    from lyco_bench.analysis.grids import GridSet
    from lyco_bench.sweep.axes import Variant

    study = plan.study.study
    if not study.eval_multipliers:
        return None
    seed, epoch = study.seeds[0], max(study.checkpoint_epochs)
    rows = []
    for config in plan.study.configs:
        named = evaluations(study, config)
        for name, v in named:
            if v.model is None and v.compress is None:
                trained = config.name + Variant(rank=v.rank).suffix()
                rows.append({"config": trained, "multiplier": v.multiplier,
                             "manifest": plan.store.images_dir(name, seed, epoch) / "manifest.parquet"})  # fmt: skip
    table = pd.DataFrame(rows).sort_values(["config", "multiplier"], kind="stable")
    return GridSet(table.reset_index(drop=True), columns=("multiplier",), group_by=("config",))


def _contrasts(plan: Plan) -> list[Any]:
    """The study's contrasts, then each varied evaluation against its as-trained one at every
    epoch (what the axis value changes, paired by seed, concept and prompt), unless the study
    names that pair or leaves either out."""
    from lyco_bench.analysis.leaderboard import Contrast
    from lyco_bench.analysis.ranks import config_matches
    from lyco_bench.sweep.axes import variant_pairs

    settings = plan.study.study.analysis
    own = [Contrast(**c.model_dump()) for c in settings.contrasts]
    named = {(c.config, c.vs) for c in own}
    excluded = [str(c) for c in settings.exclude_configs]
    pairs = variant_pairs(plan.study.study, plan.study.configs)
    return own + [
        Contrast(config=a, vs=b)
        for a, b in pairs
        if (a, b) not in named and not config_matches(a, excluded) and not config_matches(b, excluded)
    ]


def _images_per_prompt(prompt_set: str) -> dict[str, int]:
    """Images per prompt of each prompt class, as the prompt set gives them (for sample_size.csv)."""
    from lyco_bench.prompts import load_prompt_set

    return load_prompt_set(prompt_set).images_per_prompt.model_dump()
