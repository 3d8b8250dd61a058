"""Hub encoders load at the commit their feature-cache ids recorded (``org/repo@commit``), not at
whatever the hub's main branch points to when a worker starts — as hub models do
(tests/test_sweep_revisions.py).

A local Hugging Face cache is laid out by hand (``models--org--name/snapshots/<commit>/``,
``refs/main``), offline: two commits of a tiny DINOv2 built with different seeds, and two HPS
checkpoints, so that loaded weights tell which commit they came from.
"""

from __future__ import annotations

import shutil

import pytest
import torch

from lyco_bench.errors import BadInput
from lyco_bench.metrics.encoders import ENCODERS
from lyco_bench.metrics.encoders.base import split_hub_file
from lyco_bench.metrics.encoders.dinov2 import DinoV2Encoder, make_tiny_dinov2
from lyco_bench.metrics.encoders.hps import _hub_file
from lyco_bench.metrics.features import EncoderSettings

OLD, NEW = "1" * 40, "2" * 40


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """(cache folder, tiny DINOv2 folders by commit): ``lb/dino`` and ``lb/hps`` at OLD and NEW,
    main at OLD."""
    from huggingface_hub import constants

    cache = tmp_path / "hf-cache"
    built = {}
    for seed, commit in enumerate((OLD, NEW)):
        built[commit] = make_tiny_dinov2(tmp_path / f"dino-{seed}", seed=seed)
        shutil.copytree(built[commit], cache / "models--lb--dino" / "snapshots" / commit)
        hps = cache / "models--lb--hps" / "snapshots" / commit / "hps.pt"
        hps.parent.mkdir(parents=True)
        torch.save({"w": torch.full((2,), float(seed))}, hps)
    for repo in ("models--lb--dino", "models--lb--hps"):
        (cache / repo / "refs").mkdir()
        (cache / repo / "refs" / "main").write_text(OLD)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache, built


def _first_weight(encoder: DinoV2Encoder) -> torch.Tensor:
    return next(encoder.model.parameters()).detach()


def test_split_hub_file():
    assert split_hub_file("xswu/HPSv2/HPS_v2.1_compressed.pt") == (
        "xswu/HPSv2",
        None,
        "HPS_v2.1_compressed.pt",
    )
    assert split_hub_file("o/r@abc/sub/f.pt") == ("o/r", "abc", "sub/f.pt")
    assert split_hub_file("o/f.pt") is None


def test_dinov2_pins_and_loads_the_recorded_commit(hub_cache):
    cache, built = hub_cache
    kind = ENCODERS["dinov2"]
    settings = EncoderSettings(dino="lb/dino", dino_image_size=56)
    assert kind.pin(settings) == {"dino": f"lb/dino@{OLD}"}
    pinned = settings.model_copy(update=kind.pin(settings))
    assert kind.identity(pinned) == kind.identity(settings).replace("lb/dino", f"lb/dino@{OLD}")
    # The hub moves on; the pinned id still loads what it names, the unpinned one follows main.
    (cache / "models--lb--dino" / "refs" / "main").write_text(NEW)
    old = DinoV2Encoder(f"lb/dino@{OLD}", device="cpu", image_size=56)
    new = DinoV2Encoder("lb/dino", device="cpu", image_size=56)
    assert torch.equal(_first_weight(old), _first_weight(DinoV2Encoder(str(built[OLD]), device="cpu")))
    assert not torch.equal(_first_weight(old), _first_weight(new))
    assert kind.pin(pinned) == {"dino": f"lb/dino@{OLD}"}  # written pinned: kept
    with pytest.raises(BadInput, match="at revision " + "3" * 40):
        kind.pin(EncoderSettings(dino="lb/dino@" + "3" * 40))


def test_local_encoders_are_not_pinned(tmp_path):
    folder = make_tiny_dinov2(tmp_path / "dino", seed=0)
    settings = EncoderSettings(dino=str(folder), hps_checkpoint=None)
    assert ENCODERS["dinov2"].pin(settings) == {}
    assert ENCODERS["hps"].pin(settings) == {}


def test_hps_checkpoint_pins_and_loads_the_recorded_commit(hub_cache):
    cache, _ = hub_cache
    settings = EncoderSettings(hps_checkpoint="lb/hps/hps.pt")
    assert ENCODERS["hps"].pin(settings) == {"hps_checkpoint": f"lb/hps@{OLD}/hps.pt"}
    (cache / "models--lb--hps" / "refs" / "main").write_text(NEW)
    assert _hub_file(f"lb/hps@{OLD}/hps.pt").parent.name == OLD
    assert _hub_file("lb/hps/hps.pt").parent.name == NEW
    with pytest.raises(BadInput, match="encoders.hps_checkpoint"):
        ENCODERS["hps"].pin(EncoderSettings(hps_checkpoint="lb/none/hps.pt"))


def test_plan_pins_hub_encoders_in_ids_and_params(hub_cache, tmp_path, tiny_model_dir, demo_dataset_dir):
    from lyco_bench.metrics.tiny import make_tiny_encoders
    from lyco_bench.sweep.planner import build_plan
    from lyco_bench.sweep.store import StudyStore
    from lyco_bench.sweep.study import load_study
    from tests.helpers import micro_study

    encoders = make_tiny_encoders(tmp_path / "encoders", seed=0)

    def plan(dino: str):
        folder = tmp_path / f"study-{len(dino)}"
        folder.mkdir()
        study = micro_study(folder, model=str(tiny_model_dir), dataset=str(demo_dataset_dir),
                            encoders={**encoders, "dino": dino})  # fmt: skip
        return build_plan(load_study(study), StudyStore.open(tmp_path / "store", "micro"))

    unpinned = plan("lb/dino")
    assert unpinned.inputs.encoders["dinov2"].startswith(f"dinov2:lb/dino@{OLD}:")
    params = [job.params["encoders"] for job in unpinned.jobs if "encoders" in job.params]
    assert params and {p["dino"] for p in params} == {f"lb/dino@{OLD}"}
    # The local encoders keep their ids; a study written pinned plans the same jobs.
    assert unpinned.inputs.encoders["clip"] == ENCODERS["clip"].identity(EncoderSettings(**encoders))
    pinned = plan(f"lb/dino@{OLD}")
    assert [j.id for j in pinned.jobs] == [j.id for j in unpinned.jobs]


@pytest.fixture
def clip_cache(hub_cache, tmp_path):
    """``lb/clip`` (an open_clip hub repo, tiny) at OLD and NEW, and the default tag's hub repo
    holding a stand-in weights file at OLD; main at OLD."""
    from lyco_bench.metrics.encoders.clip import make_tiny_open_clip

    cache, _ = hub_cache
    for seed, commit in enumerate((OLD, NEW)):
        folder = make_tiny_open_clip(tmp_path / f"clip-{seed}", seed=seed)
        shutil.copytree(folder, cache / "models--lb--clip" / "snapshots" / commit)
    tag_repo = cache / "models--laion--CLIP-ViT-L-14-DataComp.XL-s13B-b90K"
    (tag_repo / "snapshots" / OLD).mkdir(parents=True)
    (tag_repo / "snapshots" / OLD / "open_clip_model.safetensors").write_bytes(b"stand-in")
    for repo in (cache / "models--lb--clip", tag_repo):
        (repo / "refs").mkdir()
        (repo / "refs" / "main").write_text(OLD)
    return cache


def test_clip_hub_model_pins_and_loads_the_recorded_commit(clip_cache, tmp_path):
    from lyco_bench.metrics.encoders.clip import ClipEncoder

    kind = ENCODERS["clip"]
    settings = EncoderSettings(clip="hf-hub:lb/clip", clip_pretrained=None)
    assert kind.pin(settings) == {"clip": f"hf-hub:lb/clip@{OLD}"}
    pinned = settings.model_copy(update=kind.pin(settings))
    assert f"hf-hub:lb/clip@{OLD}" in kind.identity(pinned)
    assert kind.label_of(pinned) == kind.label_of(settings) == "clip:hf-hub:lb/clip/None"
    (clip_cache / "models--lb--clip" / "refs" / "main").write_text(NEW)
    old = ClipEncoder(f"hf-hub:lb/clip@{OLD}", device="cpu")
    new = ClipEncoder("hf-hub:lb/clip", device="cpu")
    local = ClipEncoder(str(tmp_path / "clip-0"), device="cpu")
    weights = [next(e.model.parameters()).detach() for e in (old, new, local)]
    assert torch.equal(weights[0], weights[2]) and not torch.equal(weights[0], weights[1])
    assert torch.equal(old.tokenize(["a cat"]), local.tokenize(["a cat"]))


def test_clip_pretrained_tag_pins_to_its_hub_repo(clip_cache):
    import open_clip

    from lyco_bench.metrics.encoders.clip import _open_clip_source, clip_id

    kind = ENCODERS["clip"]
    settings = EncoderSettings()  # ViT-L-14 / datacomp_xl_s13b_b90k
    tag = settings.clip_pretrained
    assert kind.pin(settings) == {"clip_pretrained": f"{tag}@{OLD}"}
    assert kind.identity(settings.model_copy(update=kind.pin(settings))) == clip_id(
        "ViT-L-14", f"{tag}@{OLD}", settings.profile, settings.resolved_precision()
    )
    name, file, extra = _open_clip_source("ViT-L-14", f"{tag}@{OLD}")
    assert (name, file.split("/")[-2:]) == ("ViT-L-14", [OLD, "open_clip_model.safetensors"])
    cfg = open_clip.get_pretrained_cfg("ViT-L-14", tag)
    assert extra["force_preprocess_cfg"]["mean"] == cfg["mean"]
    assert _open_clip_source("ViT-L-14", tag) == ("ViT-L-14", tag, {})  # unpinned: open_clip's own
