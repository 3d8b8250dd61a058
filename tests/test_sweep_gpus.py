"""Every GPU busy: workers pinned to their own GPU (local ``--gpus``, Ray's declared GPUs), light jobs
sharing a GPU, CPU-bound jobs running beside GPU-bound ones, and the worker environment.

This machine has no GPU: the local backend is handed device names (``--gpus 0,1``), Ray a local
instance with two declared GPUs. Concurrency is shown without timing: every job of a group waits
inside its worker until the whole group has arrived (a rendezvous on files), so the run finishes
only if the group ran at once; a run that cannot place them together fails on the rendezvous'
generous time-out instead of passing.
"""

from __future__ import annotations

import json
import os
import time

import pytest

from lyco_bench.errors import BadInput
from lyco_bench.sweep import executors, worker
from lyco_bench.sweep.planner import Plan, make_job
from lyco_bench.sweep.resources import GpuSlots, forwarded_env, jobs_per_gpu, parse_gpus
from lyco_bench.sweep.store import StudyStore

RENDEZVOUS_S = 120.0
SECRET = "hf_test_token_that_must_not_be_written"


def _rendezvous_stage(job, store):  # noqa: ANN001 - a stage, run inside a worker by execute_job
    """Arrive, wait for the rest of the job's group, write what this worker saw."""
    group = job.spec["group"]
    here = store.root / "rendezvous" / str(group["name"])
    here.mkdir(parents=True, exist_ok=True)
    (here / job.name).write_text("")
    deadline = time.monotonic() + RENDEZVOUS_S
    while len(list(here.iterdir())) < group["size"]:
        if time.monotonic() > deadline:
            raise RuntimeError(f"rendezvous {group['name']}: the group never ran at once")
        time.sleep(0.02)
    out = store.root / "seen" / f"{job.name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    seen = {
        "gpu": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "hf_home": os.environ.get("HF_HOME"),
        "token_forwarded": os.environ.get("HF_TOKEN") == SECRET,  # a yes/no, never the value
        "pid": os.getpid(),
    }
    out.write_text(json.dumps(seen))
    return [out]


def rendezvous_work(job_data, store_root, *, attempt, threads):  # noqa: ANN001
    """execute_job with the rendezvous as every stage (set in the worker: spawned processes and
    Ray workers import this module, not the test's monkeypatches)."""
    from lyco_bench.sweep import stages

    for kind in ("prepare", "train", "generate", "encode", "score"):
        stages.STAGES[kind] = _rendezvous_stage
    return worker.execute_job(job_data, store_root, attempt=attempt, threads=threads)


def _job(kind: str, name: str, group: str, size: int, deps=()):  # noqa: ANN001
    return make_job(kind, name, spec={"group": {"name": group, "size": size}}, deps=list(deps))


def _plan(store: StudyStore, jobs) -> Plan:  # noqa: ANN001
    return Plan(study=type("S", (), {"name": "gpus"})(), store=store, jobs=jobs)


def _seen(store: StudyStore) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in (store.root / "seen").iterdir()}


@pytest.fixture
def store(tmp_path):
    st = StudyStore.open(tmp_path / "store", "gpus")
    st.root.mkdir(parents=True)
    return st


@pytest.mark.e2e
def test_local_workers_each_see_their_own_gpu(store, monkeypatch):
    """`--gpus 0,1`: two trainings at once, one per GPU, while a CPU-bound job runs beside them in a
    worker that sees no GPU; a third training waits for a GPU; four light jobs share one GPU."""
    monkeypatch.setattr(worker, "execute_job", rendezvous_work)
    monkeypatch.setenv("HF_TOKEN", SECRET)
    trains = [_job("train", f"t{i}", "first", 3) for i in range(2)]
    prepare = _job("prepare", "p", "first", 3)
    third = _job("train", "t2", "third", 1, deps=[trains[0].id])
    light = [_job("encode", f"e{i}", "light", 4, deps=[t.id for t in trains]) for i in range(4)]
    jobs = [*trains, prepare, third, *light]
    summary = executors.run_plan(_plan(store, jobs), backend="local", gpus=["0", "1"])
    assert summary.complete and sorted(summary.ran) == sorted(j.id for j in jobs)
    seen = _seen(store)
    assert {seen["t0"]["gpu"], seen["t1"]["gpu"]} == {"0", "1"}
    assert seen["p"]["gpu"] == ""  # the CPU worker sees no GPU
    assert seen["t2"]["gpu"] in ("0", "1")
    assert len({seen[f"e{i}"]["gpu"] for i in range(4)}) <= 2  # 4 × 0.25: they fit on GPUs at once
    assert all(s["token_forwarded"] for s in seen.values())
    assert os.getpid() not in {s["pid"] for s in seen.values()}
    # The start records say which device each job had; the token is in no file of the store.
    starts = {e["job"]: e["gpu"] for e in store.read_log() if e["event"] == "start"}
    assert starts[trains[0].id] == seen["t0"]["gpu"] and starts[prepare.id] == ""
    for path in store.root.rglob("*"):
        assert not path.is_file() or SECRET.encode() not in path.read_bytes()


@pytest.mark.e2e
def test_light_jobs_share_one_gpu(store, monkeypatch):
    """One GPU: four encode jobs (a quarter each) run on it together."""
    monkeypatch.setattr(worker, "execute_job", rendezvous_work)
    jobs = [_job("encode", f"e{i}", "shared", 4) for i in range(4)]
    summary = executors.run_plan(_plan(store, jobs), backend="local", gpus=["7"])
    assert summary.complete
    assert {s["gpu"] for s in _seen(store).values()} == {"7"}


@pytest.mark.e2e
def test_ray_trains_run_at_once_on_different_gpus(store, monkeypatch, tmp_path):
    """A local Ray instance with 2 declared GPUs, no --jobs: both trainings run at once, each with
    its own CUDA_VISIBLE_DEVICES; HF_HOME and the token reach the workers, and no file holds the token."""
    ray = pytest.importorskip("ray")
    from lyco_bench.sweep.ray_backend import RayBackend

    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setenv("HF_TOKEN", SECRET)
    ray.init(num_cpus=3, num_gpus=2, include_dashboard=False, log_to_driver=False)
    try:
        made = {}

        def make(name, st, **kwargs):  # noqa: ANN001
            made["backend"] = RayBackend(
                st, work=rendezvous_work, **{k: kwargs[k] for k in ("jobs", "threads")}
            )
            return made["backend"]

        monkeypatch.setattr(executors, "make_backend", make)
        jobs = [_job("train", f"t{i}", "pair", 2) for i in range(2)]
        summary = executors.run_plan(_plan(store, jobs), backend="ray")
    finally:
        ray.shutdown()
    assert made["backend"].capacity == 3  # the cluster's CPUs, no --jobs
    assert summary.complete
    seen = _seen(store)
    assert sorted(s["gpu"] for s in seen.values()) == ["0", "1"]
    assert {s["hf_home"] for s in seen.values()} == {str(tmp_path / "hf-home")}
    assert all(s["token_forwarded"] for s in seen.values())
    for path in store.root.rglob("*"):
        assert not path.is_file() or SECRET.encode() not in path.read_bytes()


def test_gpu_slots_place_by_share():
    slots = GpuSlots(["0", "1"])
    assert [slots.take("train"), slots.take("train"), slots.take("train")] == ["0", "1", None]
    assert slots.take("prepare") == ""  # CPU-bound: never waits for a GPU
    slots.give_back("1", "train")
    assert [slots.take("encode") for _ in range(5)] == ["1", "1", "1", "1", None]
    assert jobs_per_gpu() == 4


def test_gpus_flag_and_forwarded_env():
    assert parse_gpus(None) is None and parse_gpus("none") == [] and parse_gpus("0, 2") == ["0", "2"]
    assert parse_gpus("GPU-5f3c-aa") == ["GPU-5f3c-aa"]
    for bad in ("0,0", "0,,1", "0;1"):
        with pytest.raises(BadInput, match="--gpus"):
            parse_gpus(bad)
    with pytest.raises(BadInput, match="--gpus"):
        executors.check_backend_options("ray", gpus=["0"])
    env = {"HF_HOME": "/h", "HF_TOKEN": "t", "TORCH_HOME": "/t", "HOME": "/home/x", "AWS_SECRET": "s"}
    assert forwarded_env(env) == {"HF_HOME": "/h", "HF_TOKEN": "t", "TORCH_HOME": "/t"}


def test_cli_run_rejects_bad_gpus(tmp_path, capsys):
    from lyco_bench.cli import main

    code = main(["run", str(tmp_path / "missing.yaml"), "--gpus", "0;1", "--store", str(tmp_path / "s")])
    assert code == 2 and "--gpus" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()


def dying_work(job_data, store_root, *, attempt, threads):  # noqa: ANN001
    """A worker killed on its first attempt (as by the OOM killer); fine on the retry."""
    if attempt == 1:
        os._exit(9)
    return rendezvous_work(job_data, store_root, attempt=attempt, threads=threads)


@pytest.mark.e2e
def test_a_dead_worker_fails_its_job_and_the_retry_gets_a_fresh_worker(store, monkeypatch):
    monkeypatch.setattr(worker, "execute_job", dying_work)
    job = _job("train", "t", "alone", 1)
    summary = executors.run_plan(_plan(store, [job]), backend="local", gpus=["0"], max_retries=1)
    assert summary.complete and summary.ran == [job.id]
    assert _seen(store)["t"]["gpu"] == "0"
