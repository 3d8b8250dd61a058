"""``lyco-bench pick RUN_DIR``: the command line of :mod:`lyco_bench.analysis.pick`."""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

from lyco_bench.errors import BadInput


def _pairs(values: list[str] | None, flag: str) -> dict[str, Any]:
    """``KEY=VALUE`` flags into a mapping (values parsed as YAML scalars: ``steps=2`` → 2)."""
    from lyco_bench.config import parse_override_value

    out = {}
    for value in values or []:
        key, sep, raw = value.partition("=")
        if not sep or not key:
            raise BadInput(f"{flag} {value!r}: expected KEY=VALUE")
        out[key] = parse_override_value(raw)
    return out


def _encoders(values: list[str] | None) -> dict[str, Any]:
    """--encoder fields; a shipped asset prefix as a weights value (``world:``) stands for the
    evaluators it ships (lyco_bench.sweep.assets)."""
    from lyco_bench.sweep.assets import resolve_shipped

    fields = _pairs(values, "--encoder")
    _, fields = resolve_shipped("", fields, source="--encoder")
    return fields


def _tolerance(values: list[str] | None) -> float | dict[str, float] | None:
    if not values:
        return None
    out: dict[str, float] = {}
    for value in values:
        key, _, number = value.rpartition("=")
        try:
            x = float(number)
        except ValueError:
            raise BadInput(f"--tolerance {value!r}: expected a number or CRITERION=NUMBER") from None
        if not math.isfinite(x) or x < 0:
            raise BadInput(f"--tolerance {value!r}: must be a number ≥ 0")
        if not key:
            return x
        out[key] = x
    return out


def _rule(args: argparse.Namespace):
    from pydantic import ValidationError

    from lyco_bench.analysis.trajectory import BestCheckpointRule

    data: dict[str, Any] = {}
    for criterion in ("fidelity", "controllability", "diversity", "leakage"):
        value = getattr(args, criterion)
        if value is not None:
            data[criterion] = None if value == "none" else value
    tolerance = _tolerance(args.tolerance)
    if tolerance is not None:
        data["tolerance"] = tolerance
    try:
        return BestCheckpointRule(**data)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise BadInput(f"--tolerance: {first['msg']}") from None


def _cmd_pick(args: argparse.Namespace) -> int:
    from lyco_bench.analysis.pick import PickOptions, pick_run
    from lyco_bench.analysis.uncertainty import BootstrapSettings

    if args.prompts_per_class < 1 or args.images_per_prompt < 1:
        raise BadInput("--prompts-per-class and --images-per-prompt must be at least 1")
    from lyco_bench.prompts import PROMPT_CLASSES

    classes = tuple(c for c in args.classes.split(",") if c)
    unknown = [c for c in classes if c not in PROMPT_CLASSES]
    if unknown or not classes:
        raise BadInput(
            f"--classes {args.classes!r}: expected prompt classes among {', '.join(PROMPT_CLASSES)}"
        )
    options = PickOptions(
        prompt_set=args.prompts, classes=classes, prompts_per_class=args.prompts_per_class,
        images_per_prompt=args.images_per_prompt, sampler=_pairs(args.sampler, "--sampler"),
        encoders=_encoders(args.encoder), rule=_rule(args),
        bootstrap=BootstrapSettings(n_resamples=args.resamples, seed=args.bootstrap_seed),
        model=args.model, dataset=args.dataset, device=args.device,
    )  # fmt: skip
    result = pick_run(Path(args.run_dir), Path(args.out) if args.out else None, options)
    print_pick(result)
    return 0


def print_pick(result) -> None:
    """The curves as a table (mean [95% interval] per criterion and epoch) and the verdict."""
    from rich.table import Table

    from lyco_bench.analysis.trajectory import CURVE_CRITERIA
    from lyco_bench.utils import console

    table, pick = result.table, result.pick
    criteria = [c for c in CURVE_CRITERIA if c in set(table["criterion"])]
    grid = Table(title=f"pick: {pick['run']} (mean [95% interval])", title_justify="left")
    grid.add_column("epoch", justify="right")
    labels = []
    for criterion in criteria:
        rows = table[table["criterion"] == criterion]
        arrow = "↑" if bool(rows["higher_is_better"].iloc[0]) else "↓"
        grid.add_column(f"{criterion} {arrow}\n{rows['metric'].iloc[0]}")
        labels.append(f"{criterion}: {rows['label'].iloc[0]}")
    grid.add_column("")
    ties = set(pick["tied_epochs"])
    for epoch in pick["epochs"]:
        cells = []
        for criterion in criteria:
            row = table[(table["criterion"] == criterion) & (table["epoch"] == epoch)]
            cells.append(_cell(row.iloc[0]) if len(row) else "")
        mark = "★ keep" if epoch == pick["best_epoch"] else "tied" if epoch in ties else ""
        grid.add_row(str(epoch), *cells, mark)
    console.print(grid)
    console.print("; ".join(labels), highlight=False)
    if pick["checkpoint"] is None:
        console.print("pick: no fidelity scores: nothing to compare", highlight=False)
        return
    tie = f" (tied: {', '.join(f'e{e}' for e in pick['tied_epochs'])})" if pick["tied_epochs"] else ""
    console.print(f"pick: keep {pick['checkpoint']}{tie} — {pick['evidence']}", highlight=False)
    over = {True: "yes", False: "no", None: "n/a"}[pick["overfitting"]]
    console.print(f"pick: overfitting: {over} — {pick['overfitting_evidence']}", highlight=False)
    console.print(
        f"pick: wrote {result.out_dir / 'pick.json'}, {result.out_dir / 'pick.csv'}", highlight=False
    )


def _cell(row) -> str:
    def f(x: float) -> str:
        return "n/a" if not math.isfinite(x) else f"{x + 0.0:.4g}"

    interval = f" [{f(row['ci_low'])}, {f(row['ci_high'])}]" if math.isfinite(row["ci_low"]) else ""
    return f"{f(row['mean'])}{interval}"


def register_cli(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "pick",
        help="score a training run's checkpoints and name the one to keep",
        description=(
            "Score every checkpoint of one training run (a folder written by `lyco-bench train`) on a "
            "small fixed subset of the prompts, with the run's base model and dataset, and apply the "
            "best-checkpoint rule (docs/protocol.md §7.6): the earliest epoch whose fidelity lies within "
            "the interval of the best epoch's while controllability and leakage stay within a tolerance "
            "of the first checkpoint's; flags overfitting. Writes pick.json and pick.csv to --out; "
            "rerunning reuses what is already generated and scored."
        ),
    )
    parser.add_argument(
        "run_dir", metavar="RUN_DIR", help="training run folder (ckpt-eNNN.safetensors + .json)"
    )
    parser.add_argument("--out", help="output folder (default: RUN_DIR/pick)")
    parser.add_argument("--model", help="base model (default: the run record's)")
    parser.add_argument("--dataset", help="dataset folder (default: the run record's)")
    parser.add_argument("--prompts", default="default", help="prompt set (default: %(default)s)")
    parser.add_argument(
        "--classes", default="trigger,alter,agnostic", help="prompt classes (default: %(default)s)"
    )
    parser.add_argument(
        "--prompts-per-class", type=int, default=2, help="prompts per class and concept (default: 2)"
    )
    parser.add_argument(
        "--images-per-prompt", type=int, default=2, help="images (seeds) per prompt (default: 2)"
    )
    parser.add_argument(
        "--sampler",
        action="append",
        metavar="KEY=VALUE",
        help="sampler setting, e.g. steps=25 (width/height default to the run's resolution)",
    )
    parser.add_argument(
        "--encoder",
        action="append",
        metavar="KEY=VALUE",
        help="encoder setting, e.g. dino=facebook/dinov2-large; dino=world: for the CPU world's",
    )
    for criterion, metric in (("fidelity", "image_similarity"), ("controllability", "text_similarity"),
                              ("diversity", "vendi"), ("leakage", "intrusion")):  # fmt: skip
        parser.add_argument(
            f"--{criterion}", metavar="METRIC", help=f"{criterion} metric (default {metric}; none: off)"
        )
    parser.add_argument("--tolerance", action="append", metavar="[CRITERION=]X",
                        help="allowed worsening vs the first checkpoint (defaults: controllability 0.01, "
                             "diversity 0.1, leakage 0.01)")  # fmt: skip
    parser.add_argument("--resamples", type=int, default=2000, help="bootstrap resamples (default: 2000)")
    parser.add_argument("--bootstrap-seed", type=int, default=0)
    parser.add_argument("--device", help="cpu, cuda, cuda:N (default: CUDA when available)")
    parser.set_defaults(func=_cmd_pick)
