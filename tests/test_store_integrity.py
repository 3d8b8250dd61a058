"""Verified artifacts: damage each kind of file a store reuses — truncated, one bit flipped, or
replaced by a pickle — and check that `verify` names it, `plan` calls the job damaged, `run`
rebuilds it, and the store ends up as an undamaged run left it (results and every output file).

Also: damage found where a file is read (a job about to read a checkpoint or images, the results
table's score files, a cache shard), and a standalone `lyco-bench train` resuming past a damaged
checkpoint."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import pandas as pd
import pytest

from lyco_bench.cli import main
from lyco_bench.sweep.store import DONE_SUFFIX
from lyco_bench.utils import sha256_file
from tests.helpers import micro_study

# Artifact kind → a glob (relative to the study store) that picks one file of that kind.
ARTIFACTS = {
    "checkpoint": "runs/lora2/1/ckpt-e001.safetensors",
    "run record": "runs/lora2/1/ckpt-e001.json",
    "resume state": "runs/lora2/1/ckpt-e001.state.safetensors",
    "image": "images/lora2/1/e001/trigger/patterns/checker/000-1000.png",
    "base image": "images/base/style/shapes/circle/000-1000.png",
    "manifest": "images/lora2/1/e001/manifest.parquet",
    "feature shard": "cache/features/dinov2-*/resize/*.safetensors",
    "own feature shard": "features/lora2/1/e001/clip-*/resize/*.safetensors",
    "text feature shard": "cache/features/clip-*/text/*.safetensors",
    "latent shard": "cache/latents/*/64x64/*.safetensors",
    "score table": "scores/lora2/1/e001.parquet",
}


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def flip_bit(path: Path) -> None:
    """One bit in the last quarter (past every header: the same size, other content)."""
    data = bytearray(path.read_bytes())
    data[len(data) * 3 // 4] ^= 0x10
    path.write_bytes(bytes(data))


def replace_by_pickle(path: Path) -> None:
    path.write_bytes(pickle.dumps({"state_dict": list(range(50))}))


# Shards no job lists as its output: only in a cache, read (and checked) by whatever needs them.
CACHE_ONLY = ("text feature shard", "latent shard")

DAMAGES = {"truncated": truncate, "bit flip": flip_bit, "pickle": replace_by_pickle}


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_model_dir, demo_dataset_dir):
    from lyco_bench.metrics.tiny import make_tiny_encoders

    folder = tmp_path_factory.mktemp("integrity")
    encoders = make_tiny_encoders(folder / "encoders", seed=0)
    study = micro_study(folder, model=str(tiny_model_dir), dataset=str(demo_dataset_dir), encoders=encoders)
    store = folder / "store-ref"
    assert main(["run", str(study), "--store", str(store), "--no-analysis"]) == 0
    return {"folder": folder, "study": study, "store": store, "files": _content(store / "micro")}


def _content(root: Path) -> dict[str, str]:
    """sha256 of every file a run leaves, but the bookkeeping that records when and how long."""
    skip = ("jobs/", "cache/file-hashes.json", "study.json")
    return {
        str(p.relative_to(root)): sha256_file(p)
        for p in sorted(root.rglob("*"))
        if p.is_file() and not str(p.relative_to(root)).startswith(skip) and not p.name.startswith(".")
        and not (p.name.startswith("ckpt-") and p.suffix == ".json") and p.name != "job.json"
    }  # fmt: skip


def _records_equal(a: Path, b: Path) -> None:
    """Run records: equal but for what a retraining measures anew (time, memory, latents found in
    the cache) and the store's own path."""
    drop = ("wall_time_total_s", "peak_memory_bytes", "latents_cached", "latents_encoded")

    def kept(path: Path) -> dict:
        record = json.loads(path.read_text())
        record["config"].pop("cache_dir")
        return {k: v for k, v in record.items() if k not in drop}

    assert kept(a) == kept(b)


def _copy(reference: dict, name: str) -> Path:
    store = reference["folder"] / name
    shutil.copytree(reference["store"], store)
    return store


def _pick(study_root: Path, kind: str) -> Path:
    (path,) = sorted(study_root.glob(ARTIFACTS[kind]))
    return path


@pytest.mark.e2e
@pytest.mark.parametrize("damage", list(DAMAGES))
@pytest.mark.parametrize("kind", list(ARTIFACTS))
def test_damaged_artifact_is_found_and_rebuilt(reference, kind, damage, capsys):
    store = _copy(reference, f"store-{kind.replace(' ', '-')}-{damage.replace(' ', '-')}")
    root = store / "micro"
    path = _pick(root, kind)
    rel = str(path.relative_to(root))
    DAMAGES[damage](path)
    capsys.readouterr()

    assert main(["verify", str(store)]) == 1
    out = capsys.readouterr().out
    assert f"damaged  micro/{rel}: " in out
    reasons = _plan_reasons(reference["study"], store)
    if kind not in ("resume state",) and "shard" not in kind:  # a job's output: its job is damaged
        assert any(reason.startswith(f"damaged: {rel} (") for reason in reasons.values()), reasons

    assert main(["run", str(reference["study"]), "--store", str(store), "--no-analysis"]) == 0
    expected = dict(reference["files"])
    if kind in CACHE_ONLY:  # removed by verify; recomputed when a job needs it (none here)
        del expected[rel]
    assert _content(root) == expected
    pd.testing.assert_frame_equal(
        pd.read_parquet(root / "results.parquet"),
        pd.read_parquet(reference["store"] / "micro" / "results.parquet"),
    )
    _records_equal(root / ARTIFACTS["run record"], reference["store"] / "micro" / ARTIFACTS["run record"])
    capsys.readouterr()
    assert main(["verify", str(store)]) == 0, capsys.readouterr().out


def _plan_reasons(study: Path, store: Path) -> dict[str, str]:
    """What `plan` prints after its table: job → why it must run again."""
    from lyco_bench.sweep.cli import load_plan
    from lyco_bench.sweep.stale import stale_reasons

    plan = load_plan(str(study), [], str(store))
    return stale_reasons(plan, plan.done_ids())


def _events(store: Path) -> list[str]:
    log = (store / "micro" / "jobs" / "log.jsonl").read_text().splitlines()
    return [f"{e['event']} {e['kind']}" for e in map(json.loads, log)]


def _forget(store: Path, kind_name: str) -> None:
    """Remove one job's done marker, so that `run` does it again (and reads what it needs)."""
    (marker,) = (store / "micro" / "jobs").glob(f"{kind_name}-*{DONE_SUFFIX}")
    marker.unlink()


@pytest.mark.e2e
def test_a_job_hashes_the_checkpoint_it_reads(reference, capsys):
    """A bit flip keeps the size (plan cannot see it). The generate job (rerun for a lost image)
    hashes the checkpoint it reads: the train job reruns first, and the images are as an
    undamaged run made them."""
    store = _copy(reference, "store-read-ckpt")
    flip_bit(_pick(store / "micro", "checkpoint"))
    _pick(store / "micro", "image").unlink()
    before = len(_events(store))
    assert main(["run", str(reference["study"]), "--store", str(store), "--no-analysis"]) == 0
    events = _events(store)[before:]
    assert events.index("damaged train") < events.index("done train") < events.index("done generate")
    assert "runs/lora2/1/ckpt-e001.safetensors (content differs from the recorded sha256)" in (
        capsys.readouterr().err.replace("\n", "")
    )
    assert _content(store / "micro") == reference["files"]


@pytest.mark.e2e
def test_a_score_job_hashes_the_images_it_reads(reference):
    store = _copy(reference, "store-read-image")
    flip_bit(_pick(store / "micro", "image"))
    _forget(store, "score-lora2-s1-e001")
    before = len(_events(store))
    assert main(["run", str(reference["study"]), "--store", str(store), "--no-analysis"]) == 0
    events = _events(store)[before:]
    assert events.index("damaged generate") < events.index("done generate") < events.index("done score")
    assert _content(store / "micro") == reference["files"]


@pytest.mark.e2e
def test_run_hashes_the_score_tables_it_collects(reference):
    store = _copy(reference, "store-scores")
    flip_bit(_pick(store / "micro", "score table"))
    assert main(["run", str(reference["study"]), "--store", str(store), "--no-analysis"]) == 0
    assert "done score" in _events(store)[-2:]
    assert _content(store / "micro") == reference["files"]


def test_a_damaged_cache_shard_is_recomputed(tmp_path):
    import torch

    from lyco_bench.shards import ShardCache, shard_damage

    cache = ShardCache(tmp_path)
    for i in range(4):
        cache.put(f"{i:064x}", "enc", "m", torch.full((8,), float(i)))
    (shard,) = cache.flush()
    assert shard_damage(shard) is None
    data = bytearray(shard.read_bytes())
    data[-5] ^= 0x01  # in the features
    shard.write_bytes(bytes(data))
    assert shard_damage(shard) == "content differs from its sha256"
    fresh = ShardCache(tmp_path)
    assert fresh.get_many([f"{i:064x}" for i in range(4)], "enc", "m") == [None] * 4
    assert not shard.exists()  # removed: the entries are computed again and the shard rewritten


def test_verify_refuses_a_folder_that_is_no_store(tmp_path, capsys):
    assert main(["verify", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip() == f"error: {tmp_path}: not a store (no <study>/jobs folder in it)"
    assert main(["verify", str(tmp_path / "nope")]) == 2


@pytest.mark.e2e
@pytest.mark.parametrize("damage", list(DAMAGES))
def test_standalone_train_resumes_from_the_last_intact_checkpoint(
    tiny_model_dir, demo_dataset_dir, tmp_path, damage, capsys
):
    from lyco_bench.training import RunConfig, checkpoint_path, find_resume, train

    config = RunConfig(
        model=str(tiny_model_dir), dataset=str(demo_dataset_dir), categories=["patterns"],
        adapter={"algo": "lora", "dim": 2}, resolution=64, buckets={"min": 32, "max": 128, "step": 16},
        batch_size=4, epochs=2, checkpoint_epochs=[1, 2], cache_dir=str(tmp_path / "latents"), seed=3,
    )  # fmt: skip
    ref, out = tmp_path / "ref", tmp_path / "out"
    train(config, ref)
    train(config, out)
    DAMAGES[damage](checkpoint_path(out, 1))
    assert find_resume(config, out) is None  # epoch 2's state is intact, but epoch 1 is not
    assert f"{checkpoint_path(out, 1)} damaged (" in capsys.readouterr().err.replace("\n", "")
    train(config, out)
    for epoch in (1, 2):
        assert sha256_file(checkpoint_path(out, epoch)) == sha256_file(checkpoint_path(ref, epoch))
    state = out / "ckpt-e002.state.safetensors"
    DAMAGES[damage](state)
    assert find_resume(config, out) is None  # a damaged state is no resume point


def test_non_finite_outputs_are_never_written(tmp_path):
    """A feature with NaN/inf is not cached (every later read would reuse it); an infinite score
    row is not written (NaN is a metric without a value, which its row's reason explains)."""
    import math

    import torch

    from lyco_bench.errors import BadInput
    from lyco_bench.shards import ShardCache
    from lyco_bench.sweep.planner import make_job
    from lyco_bench.sweep.stages import _check_finite_scores

    cache = ShardCache(tmp_path / "cache")
    for bad in (math.nan, math.inf):
        with pytest.raises(
            BadInput, match=r"^enc \(m\): non-finite values computed for 000000000000…; not cached$"
        ):
            cache.put("0" * 64, "enc", "m", torch.tensor([1.0, bad]))
    assert cache.flush() == [] and not (tmp_path / "cache").exists()
    job = make_job("score", "x", spec={})
    rows = pd.DataFrame({"label": ["a", "b"], "value": [0.5, math.nan]})
    _check_finite_scores(rows, job)
    rows.loc[1, "value"] = -math.inf
    with pytest.raises(BadInput, match=f"^job {job.id}: b: an infinite score; not written$"):
        _check_finite_scores(rows, job)
