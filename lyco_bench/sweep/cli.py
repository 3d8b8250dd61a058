"""``lyco-bench plan STUDY`` and ``lyco-bench run STUDY``: the sweep's command line."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from lyco_bench.errors import BadInput
from lyco_bench.sweep.planner import KINDS, Plan, build_plan, estimate_left
from lyco_bench.sweep.store import StudyStore
from lyco_bench.sweep.study import load_study
from lyco_bench.utils import atomic_write_json, console

STORE_NEED_BYTES = 64 * 2**20  # free before a run starts: job records, locks, a first checkpoint


def _human(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def load_plan(study_path: str, overrides: list[str], store_dir: str, *, verify_images: bool = False) -> Plan:
    """Study file + overrides → validated plan against the store; writes nothing.

    Everything a later stage would reject is checked here (lyco_bench.sweep.inputs): BadInput
    names the study file and the key. ``verify_images`` decodes every dataset image (``run``).
    """
    from lyco_bench.sweep.hashing import FileHasher

    study = load_study(study_path, overrides)
    store = StudyStore.open(store_dir, study.name)
    hasher = FileHasher(store.cache_dir / "file-hashes.json")
    return build_plan(study, store, verify_images=verify_images, hasher=hasher)


def print_plan(
    plan: Plan,
    done: set[str],
    *,
    list_jobs: bool = False,
    hardware=None,
    stale_shown: int = 10,
    memory: bool = False,
) -> str:
    """The plan's tables (jobs per kind, stale jobs, the finished store's size, and with
    ``hardware`` — a :class:`lyco_bench.sweep.costs.Hardware` — the GPU-hours per stage and, with
    ``memory``, each configuration's training GPU memory); returns the one-line summary."""
    from rich.table import Table

    from lyco_bench.sweep.costs import job_costs
    from lyco_bench.sweep.planner import ROUGH_COST_S, rough_costs
    from lyco_bench.sweep.stale import stale_reasons

    stale = stale_reasons(plan, done)
    table = Table(title=f"plan {plan.study.name} ({plan.store.root})")
    for col in ("kind", "jobs", "done", "stale", "left", "work left"):
        table.add_column(col, justify="left" if col == "kind" else "right")
    jobs_cost = job_costs(plan, hardware) if hardware is not None else None
    # The work left is the cost model's GPU time for a real model; the CPU demos keep their own
    # measured per-kind figures (their jobs run on a CPU).
    gpu_model = rough_costs(plan.study.study.model) is ROUGH_COST_S
    job_seconds = {k: v[4] for k, v in jobs_cost.items()} if jobs_cost and gpu_model else None
    left_s, measured = estimate_left(plan, done, job_seconds)
    for kind in KINDS:
        jobs = plan.of_kind(kind)
        if not jobs:
            continue
        n_done = sum(job.id in done for job in jobs)
        n_stale = sum(job.id in stale for job in jobs)
        row = [
            str(len(jobs)),
            str(n_done),
            str(n_stale),
            str(len(jobs) - n_done),
            _human(left_s.get(kind, 0.0)),
        ]
        table.add_row(kind, *row)
    console.print(table)
    by_id = plan.by_id()
    for job_id, reason in list(stale.items())[: None if list_jobs else stale_shown]:
        console.print(f"stale  {by_id[job_id].kind} {by_id[job_id].name}: {reason}", highlight=False)
    if len(stale) > stale_shown and not list_jobs:
        console.print(f"… and {len(stale) - stale_shown} more stale jobs (--list shows all)", highlight=False)
    if list_jobs:
        for job in plan.jobs:
            state = "done" if job.id in done else "stale" if job.id in stale else "left"
            console.print(f"{state:5s}  {job.id}", highlight=False)
    print_store_estimate(plan)
    if hardware is not None and hardware.memory_gb and memory:
        from lyco_bench.sweep.memory_plan import memory_table, plan_memory

        console.print(memory_table(plan_memory(plan), hardware), highlight=False, soft_wrap=True)
    if hardware is not None:
        from lyco_bench.sweep.costs import cost_table, estimate_costs

        table = cost_table(estimate_costs(plan, hardware, jobs_cost), hardware)
        console.print(table, highlight=False, soft_wrap=True)
    from lyco_bench.sweep.axes_cost import axis_table

    unit = f"GPU-s on {hardware.name}" if hardware is not None else "s (rough)"
    axes = axis_table(plan, jobs_cost, unit=unit)
    if axes is not None:
        console.print(axes, highlight=False)
    n_left = len(plan.jobs) - len(done)
    source = "recorded durations" if measured else "rough per-kind costs"
    if hardware is not None:
        source = (
            f"recorded durations, else the {hardware.name} cost model"
            if measured
            else f"{hardware.name} cost model"
        )
    return (
        f"plan {plan.study.name}: {len(plan.jobs)} jobs, {len(done)} done ({len(stale)} stale), {n_left} left, "
        f"~{_human(sum(left_s.values()))} of work left ({source})"
    )


def print_store_estimate(plan: Plan) -> None:
    from lyco_bench.sweep.sizing import estimate_store

    console.print(estimate_store(plan).table(), highlight=False)


def cmd_plan(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    from lyco_bench.sweep.costs import DEFAULT_TABLE, load_hardware

    hardware = None  # checked before the plan is built: a bad --gpu prints nothing else
    if args.gpu != "none" and (args.gpu is not None or args.gpu_costs is not None or DEFAULT_TABLE.is_file()):
        hardware = load_hardware(args.gpu or "h100", args.gpu_costs)
    plan = load_plan(args.study, args.overrides, args.store)
    if args.gpu is not None and hardware is not None:  # a declared GPU: what cannot fit is refused
        from lyco_bench.sweep.memory_plan import check_fits, plan_memory

        check_fits(plan_memory(plan), hardware)
    done = plan.done_ids()
    summary = print_plan(plan, done, list_jobs=args.list, hardware=hardware, memory=args.gpu is not None)
    print(f"{summary} [{time.perf_counter() - start:.2f} s]")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from lyco_bench.sweep.executors import check_backend_options, run_plan
    from lyco_bench.utils import check_output_dir

    start = time.perf_counter()
    from lyco_bench.sweep.resources import parse_gpus

    gpus = parse_gpus(args.gpus)
    check_backend_options(args.backend, jobs=args.jobs, threads=args.threads, gpus=gpus)
    if args.max_retries is not None and args.max_retries < 0:
        raise BadInput(f"--max-retries {args.max_retries}: must be ≥ 0")
    check_output_dir(args.store, what=f"--store {args.store}", need_bytes=STORE_NEED_BYTES)
    if not args.no_analysis:
        check_output_dir(args.reports, what="--reports")
    plan = load_plan(args.study, args.overrides, args.store, verify_images=True)
    from lyco_bench.models import check_model_weights

    check_model_weights(plan.study.study.model)  # damaged weights: one line, not a failure per job
    check_output_dir(plan.store.jobs_dir, what=f"--store {args.store}")  # an existing study folder too
    atomic_write_json(plan.store.root / "study.json", plan.study.study.model_dump(mode="json"))
    plan.inputs.hasher.save()
    from lyco_bench.sweep.collect import check_result_files

    check_result_files(plan)
    retries = args.max_retries if args.max_retries is not None else plan.study.study.max_retries
    summary = run_plan(
        plan,
        backend=args.backend,
        jobs=args.jobs,
        address=args.address,
        max_retries=retries,
        threads=args.threads,
        gpus=gpus,
    )
    ran = f"{len(summary.ran)} jobs run, {summary.already_done + len(summary.skipped)} already done"
    if not summary.complete:
        for job_id, error in summary.failed.items():
            console.print(f"[red]failed[/red] {job_id}:\n{error}", highlight=False)
        print(
            f"run {plan.study.name}: {ran}, {len(summary.failed)} failed, {len(summary.blocked)} not run "
            f"(they need a failed job); store {plan.store.root}"
        )
        return 1
    report = _finish(plan, args)
    elapsed = time.perf_counter() - start
    where = f"report {report}" if report else f"results {plan.store.results_path}"
    print(f"run {plan.study.name}: {ran} in {elapsed:.1f} s; {where}")
    return 0


def _finish(plan: Plan, args: argparse.Namespace) -> Path | None:
    from lyco_bench.sweep.collect import analyze_and_report, collect

    if not plan.of_kind("score"):
        return None
    results = collect(plan)
    if args.no_analysis:
        return None
    return analyze_and_report(plan, results, reports_dir=Path(args.reports), plots=not args.no_plots)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "study",
        help="study YAML (experiments/demo.yaml, experiments/paper.yaml, …); relative paths in it "
        "(dataset, model, prompt set, encoder weights) are read against the current directory",
    )
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="override a study key, e.g. seeds=[23] model=tiny: training.mixed_precision=no training.lr=1e-4 "
        "(a training.* override applies to every configuration, over its algorithm block's value); values "
        "are read as typed (lists [..], maps {..}, numbers, true/false, null; anything else is text); "
        "overrides may also follow the options",
    )
    p.add_argument(
        "--store", default="runs", help="store folder; the study lives in STORE/<study> (default: runs)"
    )
    p.set_defaults(positional_overrides=True)  # KEY=VALUE may also follow the options


def register_cli(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "plan",
        help="show a study's jobs, what is done and the work left",
        description="Expand a study into train/generate/encode/score jobs and compare with the store.",
    )
    _common(p)
    p.add_argument("--list", action="store_true", help="also list every job id with its state")
    p.add_argument(
        "--gpu", metavar="NAME",
        help="print the study's GPU-hours per stage on this GPU (a row of --gpu-costs; default h100 "
        "when the table is there; none: no estimate); named, it also prints each configuration's "
        "training GPU memory and refuses one that does not fit this GPU",
    )  # fmt: skip
    p.add_argument(
        "--gpu-costs", metavar="YAML",
        help="per-GPU peak and efficiency table (default: benchmarks/gpu_costs.yaml of the repository)",
    )  # fmt: skip
    p.set_defaults(func=cmd_plan)

    p = subparsers.add_parser(
        "run",
        help="run a whole study (skipping what is done), then analysis, leaderboard and report",
        description=(
            "Run every job of a study that is not done yet — resumable after any interruption — then "
            "collect the results, fit CatBoost + SHAP, and write the leaderboard and reports/<study>/index.html."
        ),
    )
    _common(p)
    p.add_argument("--backend", choices=("local", "ray"), default="local", help="executor (default: local)")
    p.add_argument(
        "--address", default=None, help="Ray cluster address (e.g. auto); default: a local Ray instance"
    )
    p.add_argument(
        "--jobs",
        type=int,
        default=None,
        help="most jobs at the same time (default: local with GPUs, one training per GPU and light jobs "
        "sharing GPUs beside one CPU worker; local without GPUs, 1; Ray, what the cluster's resources allow)",
    )
    p.add_argument(
        "--gpus",
        default=None,
        metavar="0,1|none",
        help="local backend: the GPUs to use, each worker pinned to one by CUDA_VISIBLE_DEVICES "
        "(default: every visible GPU; none: CPU only)",
    )
    p.add_argument(
        "--threads", type=int, default=None, help="torch threads per worker (default: cores / workers)"
    )
    p.add_argument(
        "--max-retries", type=int, default=None, help="retries of a failed job (default: the study's)"
    )
    p.add_argument("--reports", default="reports", help="where reports/<study>/ goes (default: reports)")
    p.add_argument("--no-analysis", action="store_true", help="stop after the results table")
    p.add_argument("--no-plots", action="store_true", help="analysis without figures")
    p.set_defaults(func=cmd_run)

    from lyco_bench.sweep.verify import register_cli as register_verify

    register_verify(subparsers)
