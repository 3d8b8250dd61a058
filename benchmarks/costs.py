"""The paper sweep's GPU-hours from `lyco-bench plan`'s cost model (lyco_bench/sweep/costs.py).

    python benchmarks/costs.py                 # H100, experiments/paper.yaml as configured
    python benchmarks/costs.py --gpu a100 --gpu-costs my_measured.yaml

The paper's dataset is not shipped, so the study is planned on stand-ins of its shape (the
1,706-image dataset, SD1.5's configs, the encoders' configs: benchmarks/sweep.py), which the
planner reads without weights. Printed: the cost table as configured, and the same sweep with the
sampler in float16 (``sampler.dtype=float16``) beside it.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("LYCO_BENCH_NO_PROGRESS", "1")

PAPER = ROOT / "experiments" / "paper.yaml"


def paper_costs(folder: Path, hardware, overrides: list[str] = ()):
    """(plan, costs) of experiments/paper.yaml on the paper-shaped stand-ins made in ``folder``."""
    from sweep import paper_stand_ins

    from lyco_bench.sweep.cli import load_plan
    from lyco_bench.sweep.costs import estimate_costs

    stand_ins = folder / "stand-ins"
    if not stand_ins.is_dir():
        stand_ins.mkdir(parents=True)
        (folder / "overrides.txt").write_text("\n".join(paper_stand_ins(stand_ins)))
    args = (folder / "overrides.txt").read_text().splitlines() + list(overrides)
    plan = load_plan(str(PAPER), args, str(folder / "store"))
    return plan, estimate_costs(plan, hardware)


def main(argv: list[str] | None = None) -> int:
    from lyco_bench.sweep.costs import cost_table, load_hardware

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gpu", default="h100", help="a row of the costs table (default h100)")
    ap.add_argument("--gpu-costs", default=None, help="the table (default benchmarks/gpu_costs.yaml)")
    args = ap.parse_args(argv)
    hardware = load_hardware(args.gpu, args.gpu_costs)
    with tempfile.TemporaryDirectory() as tmp:
        for label, overrides in (("as configured", []), ("sampler.dtype=float16", ["sampler.dtype=float16"])):
            plan, costs = paper_costs(Path(tmp), hardware, overrides)
            n_ckpt = len(plan.of_kind("score"))
            per_ckpt = sum(plan.inputs.images_per_class.values())
            print(f"\nexperiments/paper.yaml, {label}: {len(plan.jobs)} jobs, {n_ckpt} checkpoints × "
                  f"{per_ckpt:,} images, sampler {plan.inputs.sampler['dtype']}")  # fmt: skip
            print(cost_table(costs, hardware))
    return 0


if __name__ == "__main__":
    sys.exit(main())
