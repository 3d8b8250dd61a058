"""`lyco-bench run` end to end on a micro study: resume after a kill, two runners on one store,
adding a configuration, the Ray backend. Each run trains one tiny LoRA for one epoch."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from lyco_bench.cli import main
from lyco_bench.sweep.planner import build_plan
from lyco_bench.sweep.store import StudyStore
from lyco_bench.sweep.study import load_study
from tests.helpers import micro_study

pytestmark = pytest.mark.e2e  # whole studies / subprocess runs: `make test-fast` skips them


@pytest.fixture(scope="module")
def micro(tmp_path_factory, tiny_model_dir, demo_dataset_dir):
    """The micro study on the shared tiny model / demo dataset / tiny encoders, run once in-process."""
    from lyco_bench.metrics.tiny import make_tiny_encoders

    folder = tmp_path_factory.mktemp("micro")
    encoders = make_tiny_encoders(folder / "encoders", seed=0)
    study = micro_study(folder, model=str(tiny_model_dir), dataset=str(demo_dataset_dir), encoders=encoders)
    store = folder / "store-ref"
    code = main(
        ["run", str(study), "--store", str(store), "--reports", str(folder / "reports"), "--no-plots"]
    )
    assert code == 0
    assert (folder / "reports" / "micro" / "index.html").is_file()
    return {"folder": folder, "study": study, "store": store, "encoders": encoders}


def results(store: Path) -> pd.DataFrame:
    return pd.read_parquet(store / "micro" / "results.parquet")


def done_events(store: Path) -> list[str]:
    return [e["job"] for e in StudyStore(store / "micro").read_log() if e["event"] == "done"]


def _run_cmd(study: Path, store: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "lyco_bench.cli",
        "run",
        str(study),
        "--store",
        str(store),
        "--no-analysis",
        *extra,
    ]


def _env() -> dict[str, str]:
    return {**os.environ, "LYCO_BENCH_NO_PROGRESS": "1", "HF_HUB_OFFLINE": "1"}


def test_reference_run_is_complete(micro):
    table = results(micro["store"])
    plan = build_plan(load_study(micro["study"]), StudyStore.open(micro["store"], "micro"))
    assert plan.done_ids() == {job.id for job in plan.jobs}
    assert sorted(done_events(micro["store"])) == sorted(job.id for job in plan.jobs)
    assert set(table["metric"]) == set(plan.study.study.metrics)  # every metric the study asks for
    assert set(table["checkpoint"]) == {"lora2-s1-e001"} and set(table["algo"]) == {"lora"}
    assert not table.duplicated(["checkpoint", "category", "concept", "subclass", "label"]).any()


def test_kill_then_two_runners_finish_with_the_same_results(micro):
    """Kill a run mid-way; two runners resume it on the same store: no job is done twice, and
    the results equal those of the uninterrupted run."""
    store = micro["folder"] / "store-killed"
    ckpt = store / "micro" / "runs" / "lora2" / "1" / "ckpt-e001.safetensors"
    proc = subprocess.Popen(_run_cmd(micro["study"], store), env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.monotonic() + 300
    while not ckpt.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (store / "micro" / "results.parquet").exists()
    killed_log = StudyStore(store / "micro").read_log()
    assert {e["pid"] for e in killed_log} == {proc.pid}

    procs = [subprocess.Popen(_run_cmd(micro["study"], store), env=_env(), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for _ in range(2)]  # fmt: skip
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    pd.testing.assert_frame_equal(results(store), results(micro["store"]))

    log = StudyStore(store / "micro").read_log()
    resumed = log[len(killed_log) :]
    done = [e["job"] for e in log if e["event"] == "done"]
    plan = build_plan(load_study(micro["study"]), StudyStore.open(store, "micro"))
    assert sorted(done) == sorted(job.id for job in plan.jobs)  # every job finished exactly once
    started = [e["job"] for e in resumed if e["event"] == "start"]
    assert len(started) == len(set(started))  # the two runners never started the same job
    # Only these two runners worked (whether both got a job depends on the machine's speed: a
    # micro study is one chain, and one runner may take all of it while the other waits).
    assert {e["pid"] for e in resumed} <= {p.pid for p in procs}
    # The job the kill interrupted was taken over (its lock was stale: the owner had died).
    interrupted = {e["job"] for e in killed_log if e["event"] == "start"} - {
        e["job"] for e in killed_log if e["event"] == "done"
    }
    assert interrupted <= set(started)


def test_adding_a_configuration_runs_only_its_jobs(micro):
    store = micro["folder"] / "store-added"
    shutil.copytree(micro["store"], store)
    before = set(done_events(store))
    extra = [
        "algorithms.lokr={adapter: {algo: lokr, dim: 10000, factor: 4}, training: {lr: 1.0e-3}, default: lokrf4}"
    ]
    assert main(["run", str(micro["study"]), *extra, "--store", str(store), "--no-analysis"]) == 0
    new = [job for job in done_events(store) if job not in before]
    plan = build_plan(load_study(micro["study"], extra), StudyStore.open(store, "micro"))
    expected = {job.id for job in plan.jobs if "lokrf4" in job.name}
    assert set(new) == expected and len(new) == len(expected) == 1 + 1 + 1  # train, generate, score
    table = results(store)
    assert set(table["config"]) == {"lora2", "lokrf4"}
    # The old configuration's rows are untouched by the addition (the table gains LoKr's settings).
    reference = results(micro["store"])
    old = table[table["config"] == "lora2"].reset_index(drop=True)
    assert {"factor", "decompose_both"} <= set(table.columns) - set(reference.columns)
    pd.testing.assert_frame_equal(old[reference.columns], reference, check_dtype=False)


def test_ray_backend_on_a_local_instance(micro, tmp_path):
    """The micro study as Ray tasks (2 at a time, 1 torch thread each): same results."""
    ray = pytest.importorskip("ray")
    from lyco_bench.sweep.collect import collect
    from lyco_bench.sweep.executors import run_plan
    from lyco_bench.sweep.ray_backend import RayBackend

    plan = build_plan(load_study(micro["study"]), StudyStore.open(tmp_path / "store", "micro"))
    # A local instance with one logical GPU: train jobs ask for all of it, encode/score a quarter.
    ray.init(num_cpus=2, num_gpus=1, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"LYCO_BENCH_NO_PROGRESS": "1", "HF_HUB_OFFLINE": "1"}})  # fmt: skip
    try:
        backend = RayBackend(plan.store, jobs=2)
        assert backend.options_for(plan.of_kind("train")[0])["num_gpus"] == 1.0
        assert backend.options_for(plan.of_kind("score")[0])["num_gpus"] == 0.25
        assert backend.options_for(plan.of_kind("generate")[0])["num_gpus"] == 0.5
        summary = run_plan(plan, backend="ray", jobs=2, threads=1)
    finally:
        ray.shutdown()
    assert summary.complete and len(summary.ran) == len(plan.jobs)
    pids = {e["pid"] for e in plan.store.read_log()}
    assert os.getpid() not in pids  # every job ran in a Ray worker
    collect(plan)
    # One torch thread per Ray worker (two in the reference run): equal up to float rounding.
    pd.testing.assert_frame_equal(
        results(plan.store.root.parent), results(micro["store"]), rtol=1e-3, atol=1e-5
    )


def test_local_worker_processes(tmp_path):
    """`--jobs 2` locally: spawned worker processes (the main process runs nothing); here on the
    demo dataset and tiny encoders jobs of a `demo:` / `tiny:` study."""
    from lyco_bench.sweep.executors import run_plan
    from lyco_bench.sweep.planner import Plan

    tiny = {"dino": "tiny:", "clip": "tiny:", "vgg": "tiny:"}
    study = micro_study(tmp_path, model="tiny:", dataset="demo:", encoders=tiny)
    full = build_plan(load_study(study), StudyStore.open(tmp_path / "store", "micro"))
    jobs = [job for job in full.of_kind("prepare") if job.name != "tiny-model"]
    plan = Plan(study=full.study, store=full.store, jobs=jobs)
    summary = run_plan(plan, backend="local", jobs=2)
    assert summary.complete and len(summary.ran) == 2
    pids = {e["pid"] for e in plan.store.read_log()}
    assert 1 <= len(pids) <= 2 and os.getpid() not in pids
    assert (plan.store.assets_dir / "demo-dataset" / "dataset.yaml").is_file()
    # `tiny:` encoder fields resolve to the encoders in the store, with their tiny input sizes.
    from lyco_bench.sweep.assets import encoder_settings

    settings = encoder_settings(tiny, plan.store)
    assert Path(settings.dino).is_dir() and Path(settings.clip).is_dir() and Path(settings.vgg).is_file()
    assert Path(settings.dino).parent == plan.store.assets_dir / "tiny-encoders"
    assert settings.dino_image_size < 224 and settings.clip_pretrained is None
