"""Sweep benchmarks: the demo study on 1 vs 2 Ray workers, and planning overhead on a finished paper-sized store.

    .venv/bin/python benchmarks/sweep.py            # the whole demo study, twice (minutes)
    .venv/bin/python benchmarks/sweep.py --quick    # a cut-down demo (1 seed, one config per algorithm)

Targets (issue 5): 2 workers ≥ 1.7× faster than 1 on a 2-core CPU (one torch thread per worker);
`lyco-bench plan experiments/paper.yaml` on a fully finished store in < 5 s. Prints a table.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("LYCO_BENCH_NO_PROGRESS", "1")

from lyco_bench.sweep.planner import build_plan  # noqa: E402
from lyco_bench.sweep.store import StudyStore  # noqa: E402
from lyco_bench.sweep.study import load_study  # noqa: E402

DEMO = ROOT / "experiments" / "demo.yaml"
PAPER = ROOT / "experiments" / "paper.yaml"
QUICK = [
    "seeds=[1]",
    "algorithms.lora.variations={}",
    "algorithms.loha.variations={}",
    "algorithms.lokr.variations={}",
    "algorithms.native.variations={}",
]


def time_demo(workers: int, store: Path, overrides: list[str]) -> tuple[float, int]:
    """Wall seconds of the (fresh) demo study on ``workers`` Ray workers, one torch thread each."""
    from lyco_bench.sweep.executors import run_plan

    plan = build_plan(load_study(DEMO, overrides), StudyStore.open(store, "demo"))
    start = time.perf_counter()
    summary = run_plan(plan, backend="ray", jobs=workers, threads=1)
    elapsed = time.perf_counter() - start
    if not summary.complete:
        raise SystemExit(f"demo run with {workers} workers failed: {list(summary.failed.values())[:1]}")
    return elapsed, len(summary.ran)


def time_ray_startup() -> float:
    """Seconds to start and stop a local Ray instance (paid once per run, by 1 and 2 workers alike)."""
    import ray

    start = time.perf_counter()
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    ray.shutdown()
    return time.perf_counter() - start


def synthesize_finished(store_root: Path) -> int:
    """Outputs (1-byte files) and done markers for every job of paper.yaml, as if it had run."""
    plan = build_plan(load_study(PAPER), StudyStore.open(store_root, "paper"))
    for i, job in enumerate(plan.jobs):
        folder = plan.store.root / "synthetic" / job.kind / str(i)
        folder.mkdir(parents=True, exist_ok=True)
        outputs = []
        for name in ("a.safetensors", "b.json", "c.parquet") if job.kind == "train" else ("out.parquet",):
            (folder / name).write_bytes(b"x")
            outputs.append(folder / name)
        if job.kind == "generate":
            (folder / "images").mkdir(exist_ok=True)
            outputs.append(folder / "images")
        plan.store.write_marker(job, outputs, duration_s=1.0, attempt=1)
    return len(plan.jobs)


def time_plan(store_root: Path) -> tuple[float, float, int, int]:
    """(in-process seconds: load + expand + check every marker, CLI wall seconds, jobs, done)."""
    start = time.perf_counter()
    plan = build_plan(load_study(PAPER), StudyStore.open(store_root, "paper"))
    done = plan.done_ids()
    in_process = time.perf_counter() - start
    start = time.perf_counter()
    cmd = [sys.executable, "-m", "lyco_bench.cli", "plan", str(PAPER), "--store", str(store_root)]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    cli = time.perf_counter() - start
    if out.returncode != 0:
        raise SystemExit(out.stderr[-2000:])
    return in_process, cli, len(plan.jobs), len(done)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="cut-down demo: 1 seed, one config per algorithm"
    )
    parser.add_argument("--skip-demo", action="store_true", help="only the planning overhead")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="lyco-sweep-bench-") as tmp:
        tmp = Path(tmp)
        n = synthesize_finished(tmp / "paper-store")
        in_process, cli, jobs, done = time_plan(tmp / "paper-store")
        assert done == jobs == n, (done, jobs, n)
        rows.append(
            (
                "plan paper.yaml, all done: load + expand + check markers",
                f"{in_process:.2f} s",
                f"{jobs} jobs",
            )
        )
        rows.append(
            ("`lyco-bench plan experiments/paper.yaml` (CLI, with imports)", f"{cli:.2f} s", "target < 5 s")
        )
        if not args.skip_demo:
            overrides = QUICK if args.quick else []
            one, ran1 = time_demo(1, tmp / "demo-1", overrides)
            two, ran2 = time_demo(2, tmp / "demo-2", overrides)
            label = "demo (quick)" if args.quick else "demo"
            rows.append((f"{label} on Ray, 1 worker × 1 thread", f"{one:.1f} s", f"{ran1} jobs"))
            rows.append((f"{label} on Ray, 2 workers × 1 thread", f"{two:.1f} s", f"{ran2} jobs"))
            rows.append(("speed-up 2 vs 1 workers", f"{one / two:.2f}×", "target ≥ 1.7×"))
            startup = time_ray_startup()
            rows.append(("Ray start + stop (in both runs)", f"{startup:.1f} s", ""))
            rows.append(("speed-up without Ray start-up", f"{(one - startup) / (two - startup):.2f}×", ""))
    width = max(len(r[0]) for r in rows)
    print(f"{'measurement':<{width}}  {'value':>10}  note")
    for name, value, note in rows:
        print(f"{name:<{width}}  {value:>10}  {note}")
    print(f"cpu cores: {os.cpu_count()}, load average: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
