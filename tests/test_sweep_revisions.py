"""Hub models load at the commit their job ids hashed (``repo@commit`` in the jobs' params), not at
whatever the hub's main branch points to when a worker starts.

A local Hugging Face cache is laid out by hand (``models--org--name/snapshots/<commit>/``,
``refs/main``) around the tiny model, offline: two commits whose schedulers differ in
``num_train_timesteps``, so a loaded pipeline tells which commit it came from.
"""

from __future__ import annotations

import json
import shutil

import pytest

from lyco_bench.errors import BadInput
from lyco_bench.models import load_pipeline, split_revision
from lyco_bench.sweep.hashing import FileHasher
from lyco_bench.sweep.planner import build_plan
from lyco_bench.sweep.sources import resolve_model
from lyco_bench.sweep.store import StudyStore
from lyco_bench.sweep.study import load_study
from tests.helpers import micro_study

pytestmark = pytest.mark.e2e  # whole studies / subprocess runs: `make test-fast` skips them

OLD, NEW = "1" * 40, "2" * 40


@pytest.fixture
def hub_cache(tmp_path, tiny_model_dir, monkeypatch):
    from huggingface_hub import constants

    cache = tmp_path / "hf-cache"
    repo = cache / "models--lb--tiny"
    for commit, steps in ((OLD, None), (NEW, 999)):
        snapshot = repo / "snapshots" / commit
        shutil.copytree(tiny_model_dir, snapshot)
        if steps is not None:
            config = snapshot / "scheduler" / "scheduler_config.json"
            config.write_text(json.dumps({**json.loads(config.read_text()), "num_train_timesteps": steps}))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(OLD)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return repo


def test_split_revision(tmp_path):
    assert split_revision("org/name@abc") == ("org/name", "abc")
    assert split_revision("org/name") == ("org/name", None)
    folder = tmp_path / "weights@v2"
    folder.mkdir()
    assert split_revision(str(folder)) == (str(folder), None)  # a local path is never split
    assert split_revision("./x@y") == ("./x@y", None)  # path-like: not a hub id


def test_jobs_load_the_commit_their_ids_hashed(hub_cache, tmp_path, tiny_model_dir):
    from lyco_bench.data import make_demo_dataset
    from lyco_bench.metrics.tiny import make_tiny_encoders

    assert resolve_model("lb/tiny", hasher=FileHasher()).identity == f"lb/tiny@{OLD}"
    encoders = make_tiny_encoders(tmp_path / "encoders", seed=0)
    dataset = make_demo_dataset(tmp_path / "dataset", seed=0)
    study = micro_study(tmp_path, model="lb/tiny", dataset=str(dataset), encoders=encoders)
    plan = build_plan(load_study(study), StudyStore.open(tmp_path / "store", "micro"))
    pinned = {job.params["model"] for job in plan.jobs if "model" in job.params}
    assert pinned == {f"lb/tiny@{OLD}"}
    # The hub moves on; a worker still loads what the ids name.
    (hub_cache / "refs" / "main").write_text(NEW)
    default_steps = json.loads((tiny_model_dir / "scheduler" / "scheduler_config.json").read_text())[
        "num_train_timesteps"
    ]
    assert default_steps != 999
    assert load_pipeline(f"lb/tiny@{OLD}").scheduler.config.num_train_timesteps == default_steps
    assert load_pipeline("lb/tiny").scheduler.config.num_train_timesteps == 999
    # Written pinned in the study: the same identity (the same job ids as unpinned while main was OLD).
    assert resolve_model(f"lb/tiny@{OLD}", hasher=FileHasher()).identity == f"lb/tiny@{OLD}"
    with pytest.raises(BadInput, match="at revision " + "3" * 40):
        load_pipeline("lb/tiny@" + "3" * 40)
