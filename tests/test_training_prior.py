"""DreamBooth prior preservation: L = MSE(instance) + w·MSE(class), one class sample per instance
in the same batch, class images from a kohya folder or drawn by the base model in the sweep."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
import yaml

from lyco_bench.errors import BadInput
from lyco_bench.training import RunConfig
from tests.helpers import run_config


def _session(model, dataset, tmp_path, **changes):
    from lyco_bench.training.session import Session

    cfg = run_config(model, dataset, tmp_path / "cache", categories=None, **changes)
    return Session(cfg, device=torch.device("cpu"))


def test_loss_is_instance_plus_weighted_class_term(tiny_model_dir, dataset_with_class_folders, tmp_path):
    session = _session(tiny_model_dir, dataset_with_class_folders, tmp_path, prior_loss_weight=0.5)
    try:
        batch = session.epoch_batches()[0]
        states = {k: g.get_state() for k, g in session.generators.items()}
        loss = session.loss(batch)
        for key, state in states.items():  # the same draws again, by hand
            session.generators[key].set_state(state)
        captions, x_t, t, target, _geometry = session._inputs(batch)
        n = len(batch)
        assert len(captions) == 2 * n and x_t.shape[0] == 2 * n
        keys = [session.pairs[i][0].key for i in batch]
        assert captions[n:] == [session.prior.prompts[k] for k in keys]  # each instance's class
        with torch.no_grad():
            ids = session.pipe.tokenizer(captions, padding="max_length", max_length=77, truncation=True,
                                         return_tensors="pt").input_ids  # fmt: skip
            pred = session.pipe.unet(x_t, t, session.pipe.text_encoder(ids)[0]).sample
        want = F.mse_loss(pred[:n], target[:n]) + 0.5 * F.mse_loss(pred[n:], target[n:])
        torch.testing.assert_close(loss.detach(), want, rtol=1e-5, atol=1e-7)
    finally:
        session.close()


def test_a_concept_without_a_class_is_refused(tiny_model_dir, demo_dataset_dir, tmp_path):
    data = Path(shutil.copytree(demo_dataset_dir, tmp_path / "data"))
    spec = yaml.safe_load((data / "dataset.yaml").read_text())
    spec["concepts"]["shapes/circle"].pop("class_prompt")
    (data / "dataset.yaml").write_text(yaml.safe_dump(spec))
    with pytest.raises(BadInput, match="concept shapes/circle: no class_prompt"):
        _session(tiny_model_dir, data, tmp_path, prior_loss_weight=1.0)


@pytest.mark.e2e
def test_prior_preservation_resumes_to_the_same_bytes(tiny_model_dir, dataset_with_class_folders, tmp_path):
    from lyco_bench.training import checkpoint_path, train

    cfg = run_config(tiny_model_dir, dataset_with_class_folders, tmp_path / "cache", categories=None,
                     prior_loss_weight=1.0, epochs=2, checkpoint_epochs=[1])  # fmt: skip
    assert isinstance(cfg, RunConfig)
    train(cfg, tmp_path / "full")

    class Killed(Exception):
        pass

    def kill(epoch: int) -> None:
        if epoch == 1:
            raise Killed

    with pytest.raises(Killed):
        train(cfg, tmp_path / "resumed", on_epoch_end=kill)
    train(cfg, tmp_path / "resumed")
    assert (
        checkpoint_path(tmp_path / "full", 2).read_bytes()
        == checkpoint_path(tmp_path / "resumed", 2).read_bytes()
    )
    off = run_config(tiny_model_dir, dataset_with_class_folders, tmp_path / "cache", categories=None,
                     epochs=2, checkpoint_epochs=[1])  # fmt: skip
    train(off, tmp_path / "off")
    assert (
        checkpoint_path(tmp_path / "off", 2).read_bytes()
        != checkpoint_path(tmp_path / "full", 2).read_bytes()
    )


@pytest.mark.e2e
def test_the_sweep_draws_class_images_once_for_every_configuration(
    tmp_path, tiny_model_dir, demo_dataset_dir
):
    from lyco_bench.cli import main
    from lyco_bench.metrics.tiny import make_tiny_encoders
    from tests.helpers import micro_study

    encoders = make_tiny_encoders(tmp_path / "enc", seed=0)
    path = micro_study(tmp_path, model=str(tiny_model_dir), dataset=str(demo_dataset_dir), encoders=encoders)
    spec = yaml.safe_load(path.read_text())
    spec["algorithms"]["native"] = {
        "training": {"prior_loss_weight": 1.0, "num_class_images": 2, "lr": 1e-4},
        "default": "dreambooth",
        "variations": {"dreambooth-lr": {"training": {"lr": 2e-4}}},
    }
    path.write_text(yaml.safe_dump(spec))
    store = tmp_path / "store"
    assert main(["run", str(path), "--store", str(store), "--no-analysis"]) == 0
    log = (store / "micro" / "jobs" / "log.jsonl").read_text().splitlines()
    assert sum('"generate-class-2-' in line for line in log) == 2  # one start, one done: shared by both
    manifest = pd.read_parquet(store / "micro" / "images" / "class" / "n2" / "manifest.parquet")
    assert sorted(set(manifest["prompt"])) == ["a pattern", "a simple shape"] and len(manifest) == 4
    table = pd.read_parquet(store / "micro" / "results.parquet")
    algos = table.drop_duplicates("config").set_index("config")[["algo", "prior_loss_weight"]]
    assert algos.loc["dreambooth"].tolist() == ["native+prior", 1.0]
    assert algos.loc["lora2"].tolist() == ["lora", 0.0]
