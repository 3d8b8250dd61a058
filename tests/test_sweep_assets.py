"""Asset prefixes (``tiny:``, ``world:``, an outside one) are a registry: a prefix is its own file
declaring how its model and encoders are built or shipped; the planner, the jobs and the sizing
read only the declarations, and the built-ins' job ids are those the identity function gives."""

from __future__ import annotations

from pathlib import Path

import pytest

from lyco_bench.errors import BadInput
from lyco_bench.sweep.assets import (
    ASSET_PREFIXES,
    AssetPrefix,
    BuiltEncoders,
    BuiltModel,
    ShippedEncoders,
    ShippedModel,
    built_encoders,
    built_model,
    prefix_of,
    register_asset_prefix,
    resolve_shipped,
    tiny_weights,
)
from lyco_bench.sweep.planner import ASSET_VERSIONS, build_plan, make_job, rough_costs
from lyco_bench.sweep.store import StudyStore
from lyco_bench.sweep.study import load_study
from lyco_bench.utils import atomic_folder

ROOT = Path(__file__).resolve().parents[1]
TOUR = ROOT / "experiments" / "tour.yaml"
DEMO = ROOT / "experiments" / "demo.yaml"


def _plan(path: Path, tmp_path: Path, overrides=()):
    study = load_study(path, list(overrides))
    return study, build_plan(study, StudyStore.open(tmp_path, study.name))


def _prepare(role: str, folder: str, value) -> str:
    """The id of the prepare job building ``folder`` from ``value``, by the identity function."""
    return make_job(
        "prepare", folder, spec={"asset": role, "value": value, "version": ASSET_VERSIONS[role]}
    ).id


def test_built_ins_are_registered_by_their_own_files():
    assert {"tiny:", "world:"} <= set(ASSET_PREFIXES)
    tiny, world = ASSET_PREFIXES["tiny:"], ASSET_PREFIXES["world:"]
    assert isinstance(tiny.model, BuiltModel) and isinstance(tiny.encoders, BuiltEncoders)
    assert isinstance(world.model, ShippedModel) and isinstance(world.encoders, ShippedEncoders)
    assert prefix_of("tiny:3") is tiny and prefix_of("org/sd15") is None and prefix_of(None) is None
    assert tiny_weights("tiny:") and not tiny_weights("world:") and not tiny_weights("/weights/dino")


def test_tour_job_ids_are_the_identity_functions(tmp_path):
    """tour.yaml (``tiny:`` model and encoders, ``demo:`` dataset): the prepare jobs, the model's
    identity and the encoders' ids are what the identity functions give for the same values."""
    from lyco_bench.metrics.features import EncoderPool, EncoderSettings

    study, plan = _plan(TOUR, tmp_path)
    s = study.study
    prepare = {j.name: j.id for j in plan.of_kind("prepare")}
    assert prepare == {
        "tiny-model": _prepare("model", "tiny-model", s.model),
        "tiny-encoders": _prepare("encoders", "tiny-encoders", s.encoders),
        "demo-dataset": _prepare("dataset", "demo-dataset", s.dataset),
    }
    assert plan.inputs.model == f"prepare:{prepare['tiny-model']}"
    tiny = [k for k, v in s.encoders.items() if v == "tiny:"]
    named = {k: f"tiny@{prepare['tiny-encoders']}/{k}" for k in tiny}
    pool = EncoderPool(EncoderSettings(**{**s.encoders, **named}))
    assert plan.inputs.encoders == {kind: pool.id(kind) for kind in plan.inputs.encoders}
    assert rough_costs(s.model) is ASSET_PREFIXES["tiny:"].model.rough_costs


def test_demo_job_ids_are_the_identity_functions(tmp_path):
    """demo.yaml (``world:`` model and encoders, shipped; VGG ``tiny:``): the shipped folders are
    hashed like any folder, only the tiny encoders and the drawn dataset are prepared."""
    study, plan = _plan(DEMO, tmp_path)
    s = study.study
    assert s.model == str(ASSET_PREFIXES["world:"].model.folder())
    prepare = {j.name: j.id for j in plan.of_kind("prepare")}
    assert prepare == {
        "tiny-encoders": _prepare("encoders", "tiny-encoders", s.encoders),
        "world-dataset": _prepare("dataset", "world-dataset", s.dataset),
    }
    assert rough_costs(s.model) is ASSET_PREFIXES["world:"].model.rough_costs


@pytest.fixture
def toy_prefix(tmp_path):
    """An outside prefix: a model built by copying the tiny one's declaration, seeded; encoders
    built as the tiny ones; registered and removed again."""
    tiny = ASSET_PREFIXES["tiny:"]
    built: list[tuple[str, int]] = []

    def build(out: Path, rest: str) -> None:  # the text after the prefix: the seed here
        (out / "seed.txt").write_text(rest)
        built.append((out.name, int(rest)))

    kind = AssetPrefix(
        "toy:",
        model=BuiltModel("toy-model", build, tiny.model.configs, {"train": 1.0}),
        encoders=BuiltEncoders("toy-encoders", tiny.encoders.build),
    )
    register_asset_prefix(kind)
    yield kind, built
    ASSET_PREFIXES.unregister("toy:")


def test_an_outside_prefix_is_planned_and_built_from_its_declaration(toy_prefix, tmp_path):
    from lyco_bench.sweep.stages import run_prepare

    kind, built = toy_prefix
    assert register_asset_prefix(kind) is kind  # the same entry again: a no-op
    with pytest.raises(ValueError, match="must end with ':'"):
        register_asset_prefix(AssetPrefix("toy"))
    study, plan = _plan(TOUR, tmp_path, ["model=toy:3"])
    jobs = {j.name: j for j in plan.of_kind("prepare")}
    assert jobs["toy-model"].id == _prepare("model", "toy-model", "toy:3")
    assert plan.inputs.model == f"prepare:{jobs['toy-model'].id}"
    assert rough_costs("toy:3") is kind.model.rough_costs
    killed = plan.store.assets_dir / ".toy-model.k1ll3d"  # what a killed build of the job left
    killed.mkdir(parents=True)
    (killed / "half.bin").write_bytes(b"x")
    out = run_prepare(jobs["toy-model"], plan.store)
    assert out == [plan.store.assets_dir / "toy-model"] and (out[0] / "seed.txt").read_text() == "3"
    assert len(built) == 1 and built[0][1] == 3
    run_prepare(jobs["toy-model"], plan.store)  # a rerun replaces the stale build whole
    assert sorted(p.name for p in plan.store.assets_dir.iterdir()) == ["toy-model"]


def test_one_study_builds_one_set_of_encoders(toy_prefix):
    assert built_encoders({"dino": "tiny:", "clip": "/weights/clip"})[2] == ["dino"]
    assert built_model("toy:") is not None and built_model("world:") is None
    with pytest.raises(BadInput, match=r"^encoders: tiny: and toy: both build encoders"):
        built_encoders({"dino": "tiny:", "clip": "toy:"})


def test_a_shipped_prefix_is_resolved_at_load(tmp_path):
    """A shipped model/encoder prefix → its folders; an encoder it does not ship, or weights not
    there, → one line naming the study file."""
    from lyco_bench.metrics.encoders import ENCODERS

    dino = next(e for e in ENCODERS.values() if e.weights_field == "dino")
    extra = next(f for f in dino.settings.model_fields if f not in ("dino", "modes", "batch_size"))
    state = {"missing": None}
    kind = AssetPrefix(
        "ship:",
        model=ShippedModel(lambda: tmp_path / "model"),
        encoders=ShippedEncoders(lambda: {"dino": str(tmp_path / "dino"), extra: 7, "clip_pretrained": None}),
        missing=lambda: state["missing"],
    )
    register_asset_prefix(kind)
    try:
        model, fields = resolve_shipped("ship:", {"dino": "ship:", "vgg": "tiny:"}, source="s.yaml")
        assert model == str(tmp_path / "model")
        # The dino kind's companions come along; another kind's (clip_pretrained) do not.
        assert fields == {"dino": str(tmp_path / "dino"), "vgg": "tiny:", extra: 7}
        assert resolve_shipped("org/sd15", {"dino": "x"}, source="s.yaml") == ("org/sd15", {"dino": "x"})
        with pytest.raises(BadInput, match=r"^s.yaml: encoders.vgg: ship: ships .*\(dino\) only$"):
            resolve_shipped("org/sd15", {"vgg": "ship:"}, source="s.yaml")
        state["missing"] = "its weights are not built"
        with pytest.raises(BadInput, match=r"^s.yaml: ship: its weights are not built$"):
            resolve_shipped("ship:", {}, source="s.yaml")
    finally:
        ASSET_PREFIXES.unregister("ship:")


def test_atomic_folder_replaces_a_stale_build_or_keeps_it(tmp_path):
    out = tmp_path / "asset"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with pytest.raises(RuntimeError), atomic_folder(out, replace=True) as tmp:
        (tmp / "new.txt").write_text("new")
        raise RuntimeError("build failed")
    assert [p.name for p in tmp_path.iterdir()] == ["asset"] and (out / "old.txt").is_file()
    with atomic_folder(out, replace=True) as tmp:
        (tmp / "new.txt").write_text("new")
    assert [p.name for p in tmp_path.iterdir()] == ["asset"] and [p.name for p in out.iterdir()] == [
        "new.txt"
    ]
    with pytest.raises(OSError), atomic_folder(out) as tmp:  # without replace: never over a full folder
        (tmp / "x").write_text("x")
    assert [p.name for p in out.iterdir()] == ["new.txt"]
