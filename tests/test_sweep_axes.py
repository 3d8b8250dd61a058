"""Evaluation axes (lyco_bench.sweep.axes): eval_multipliers, eval_models, eval_compress and
DyLoRA's eval_ranks as evaluation variants of each checkpoint — their names, job identities,
shared jobs, costs per axis and bad input; the default variant keeps the ids it had before."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import yaml

from lyco_bench.errors import BadInput
from lyco_bench.sweep.axes import Variant, evaluations, model_label
from lyco_bench.sweep.planner import build_plan
from lyco_bench.sweep.store import StudyStore
from lyco_bench.sweep.study import load_study
from lyco_bench.utils import stable_hash
from tests.helpers import one_thread, perturb, tiny_models  # noqa: F401 - autouse fixture

ROOT = Path(__file__).resolve().parents[1]
PAPER, TOUR = ROOT / "experiments" / "paper.yaml", ROOT / "experiments" / "tour.yaml"
# The sampler's precision resolves on the planning machine (float16 on CUDA): fixed, so the ids
# below are the same on every machine.
F32 = ["sampler.dtype=float32"]
LOCAL = [
    "model=tiny:",
    "dataset=demo:",
    "encoders.dino=tiny:",
    "encoders.clip=tiny:",
    "encoders.vgg=tiny:",
    *F32,
]
# Job ids of the paper study (SD1.5 swapped for the tiny stand-ins) and the tour (DyLoRA's
# eval_ranks included) as the planner of commit 6e54ffb — before evaluation axes — made them:
# (number of jobs, stable_hash of the sorted ids, some ids). A study without axes keeps every id,
# so its finished stores stay valid.
BEFORE_AXES = {
    "paper": (552, "d40973faaa", ["generate-base-74c878cb51", "generate-1001-lora8a4-s23-e010-6548aa621a",
                                  "score-1001-lora8a4-s23-e030-c421cfdbda"]),
    "tour": (178, "dae0391fac", ["generate-base-3dd87891cf", "generate-lora4a2-s1-e001-ceba20dd52",
                                 "score-lora4a2-s1-e002-c38ce82859"]),
}  # fmt: skip

STUDY = {
    "name": "axes",
    "model": "tiny:",
    "dataset": "demo:",
    "prompts": {"set": "demo", "classes": ["train", "alter", "style"], "base_classes": ["style", "alter"],
                "images_per_prompt": 1},
    "sampler": {"sampler": "ddim", "steps": 2, "width": 64, "height": 64, "dtype": "float32"},
    "encoders": {"dino": "tiny:", "clip": "tiny:", "vgg": "tiny:", "modes": ["resize"]},
    "metrics": ["image_similarity", "text_similarity", "style_loss_base"],
    "seeds": [1, 2],
    "checkpoint_epochs": [1],
    "training": {"resolution": 64, "buckets": {"min": 32, "max": 96, "step": 16}, "batch_size": 8},
    "algorithms": {
        "lora": {"adapter": {"dim": 4, "alpha": 2}, "training": {"lr": 1e-3}, "default": "lora4"},
        "dylora": {"adapter": {"dim": 4, "alpha": 4, "block_size": 2}, "default": "dyl", "eval_ranks": [2, 4]},
    },
}  # fmt: skip
AXES = {"eval_multipliers": [0.5, 1.0], "eval_models": ["tiny:1"], "eval_compress": [2]}


def _write(folder: Path, **changes) -> Path:
    path = folder / f"study-{stable_hash(changes)}.yaml"
    path.write_text(yaml.safe_dump({**STUDY, **changes}, sort_keys=False))
    return path


def _plan(path: Path, store: Path, overrides=()):
    study = load_study(path, list(overrides))
    return build_plan(study, StudyStore.open(store, study.name))


@pytest.fixture(scope="module")
def plans(tmp_path_factory):
    """The study without axes, with every axis, and with another multiplier."""
    folder = tmp_path_factory.mktemp("axes")
    plain = _plan(_write(folder), folder / "store")
    axes = _plan(_write(folder, **AXES), folder / "store")
    other = _plan(_write(folder, **{**AXES, "eval_multipliers": [0.25]}), folder / "store")
    return plain, axes, other


@pytest.mark.parametrize("name", list(BEFORE_AXES))
def test_studies_without_axes_keep_their_job_ids(tmp_path, name):
    path, overrides = (PAPER, LOCAL) if name == "paper" else (TOUR, F32)
    ids = [job.id for job in _plan(path, tmp_path, overrides).jobs]
    count, digest, some = BEFORE_AXES[name]
    assert (len(ids), stable_hash(sorted(ids))) == (count, digest)
    assert set(some) <= set(ids)


def test_each_axis_varies_one_thing_from_each_as_trained_evaluation(plans):
    study = plans[1].study
    names = {c.name: [n for n, _ in evaluations(study.study, c)] for c in study.configs}
    assert names == {
        "lora4": ["lora4", "lora4-x0.5", "lora4@tiny1", "lora4-c2"],
        "dyl": ["dyl-r2", "dyl-r2-x0.5", "dyl-r2@tiny1", "dyl-r4", "dyl-r4-x0.5", "dyl-r4@tiny1", "dyl-c2"],
    }
    assert Variant(rank=2, multiplier=0.5).axis == "eval_multipliers" and Variant(rank=2).axis == "eval_ranks"
    assert not Variant(rank=2).varies and Variant(compress=2).varies


def test_each_varied_evaluation_is_compared_with_its_as_trained_one(plans):
    from lyco_bench.sweep.axes import variant_pairs

    study = plans[1].study
    assert variant_pairs(study.study, study.configs) == [
        ("lora4-x0.5", "lora4"),
        ("lora4@tiny1", "lora4"),
        ("lora4-c2", "lora4"),
        ("dyl-r2-x0.5", "dyl-r2"),
        ("dyl-r2@tiny1", "dyl-r2"),
        ("dyl-r4-x0.5", "dyl-r4"),
        ("dyl-r4@tiny1", "dyl-r4"),
    ]  # fmt: skip  (DyLoRA's compressed file has no as-trained row: it has ranks)


def test_the_default_variants_keep_their_ids_and_params(plans):
    plain, axes, _ = plans
    by_id = axes.by_id()
    assert all(job.id in by_id and by_id[job.id].params == job.params for job in plain.jobs)
    # 2 configurations × 2 seeds: the lora's 3 varied evaluations, DyLoRA's 2 × 2 and its compressed file
    added = [j for j in axes.of_kind("score") if j.id not in {p.id for p in plain.jobs}]
    assert len(added) == 2 * (3 + 5)
    assert len(axes.of_kind("extract")) == 2 * 2  # one per (configuration, seed, epoch) and rank


def test_what_a_variant_varies_is_its_identity(plans):
    plain, axes, other = plans
    gens = {j.name: j for j in axes.of_kind("generate")}
    scores = {j.name: j for j in axes.of_kind("score")}
    default = gens["lora4-s1-e001"]
    assert gens["lora4-x0.5-s1-e001"].spec == {**default.spec, "multiplier": 0.5}
    # another base model: its identity (the prepare job that builds tiny:1), its own base images
    tiny1 = next(j for j in axes.of_kind("prepare") if j.params.get("folder") == "tiny-model@tiny1")
    assert gens["lora4@tiny1-s1-e001"].spec == {**default.spec, "eval_model": f"prepare:{tiny1.id}"}
    bases = [j for j in axes.of_kind("generate") if j.params["target"] == "base"]
    assert sorted(j.name for j in bases) == ["base", "base@tiny1"]  # once per model, for every checkpoint
    base1 = next(j for j in bases if j.name == "base@tiny1")
    assert base1.spec["checkpoint"] == {"model": f"prepare:{tiny1.id}"}
    for name, score in scores.items():
        assert score.spec["base"] == (
            base1.id if "@tiny1" in name else next(b.id for b in bases if b.name == "base")
        )
    # the compressed file: an extract job of the checkpoint, and a generate job reading its file
    extract = next(j for j in axes.of_kind("extract") if j.name == "lora4-s1-e001-c2")
    assert extract.spec["checkpoint"] == default.spec["checkpoint"] and extract.spec["rank"] == 2
    assert gens["lora4-c2-s1-e001"].spec["checkpoint"] == {"extracted": extract.id}
    assert extract.id in gens["lora4-c2-s1-e001"].deps
    # another multiplier: only that variant's jobs change
    changed = {j.id for j in axes.jobs} ^ {j.id for j in other.jobs}
    names = {j.name for j in axes.jobs + other.jobs if j.id in changed}
    assert names and all("-x0.5-" in n or "-x0.25-" in n for n in names)


def test_the_results_columns_name_each_axis_value(plans):
    from lyco_bench.sweep.axes import variant_columns

    study = plans[1].study.study
    assert variant_columns(study, Variant(), own_label="tiny") == {
        "multiplier": 1.0, "eval_model": "tiny", "compress_rank": None,
    }  # fmt: skip
    assert (
        variant_columns(study, Variant(model="tiny1", multiplier=1.0), own_label="tiny")["eval_model"]
        == "tiny1"
    )
    assert variant_columns(plans[0].study.study, Variant(), own_label="tiny") == {}  # no axis: no column


def test_the_plan_sizes_each_axis(plans):
    from lyco_bench.sweep.axes_cost import axis_rows

    plan = plans[1]
    per_ckpt = sum(plan.inputs.images_per_class.values())
    base = sum(plan.inputs.base_images_per_class.values())
    rows = {r["axis"]: r for r in axis_rows(plan, None)}
    assert list(rows) == ["default", "eval_ranks", "eval_multipliers", "eval_models", "eval_compress"]
    # evaluations: lora4 (1 as trained) and dyl's 2 ranks; each axis over both seeds
    assert {a: r["evaluations"] for a, r in rows.items()} == {
        "default": 2, "eval_ranks": 4, "eval_multipliers": 6, "eval_models": 6, "eval_compress": 4,
    }  # fmt: skip
    assert rows["eval_multipliers"]["images"] == 6 * per_ckpt
    assert rows["eval_models"]["images"] == 6 * per_ckpt + base  # tiny1's base images, once
    assert rows["default"]["images"] == 2 * per_ckpt + base
    assert rows["eval_compress"]["values"] == "2" and rows["eval_multipliers"]["values"] == "0.5"
    # with the cost model: the same images; GPU-seconds are its generate/score/encode jobs' (an
    # extract job runs on the CPU)
    from lyco_bench.sweep.axes_cost import axis_of
    from lyco_bench.sweep.costs import job_costs, load_hardware

    costs = job_costs(plan, load_hardware("h100"))
    gpu = {r["axis"]: r for r in axis_rows(plan, costs)}
    assert {a: r["images"] for a, r in gpu.items()} == {a: r["images"] for a, r in rows.items()}
    compress = [j.id for j in plan.jobs if axis_of(j) == "eval_compress" and j.kind != "extract"]
    assert gpu["eval_compress"]["seconds"] == pytest.approx(sum(costs[i][4] for i in compress))


@pytest.mark.parametrize(
    ("changes", "said"),
    [
        ({"eval_models": ["tiny:"]}, "eval_models.0: tiny: is the study's model"),
        ({"eval_models": {"tiny": "tiny:2"}}, "eval_models.tiny: the label 'tiny' names two models"),
        ({"eval_multipliers": [0.5, 0.5]}, "eval_multipliers: multipliers must be unique"),
        ({"eval_multipliers": [float("nan")]}, "eval_multipliers.0: Input should be a finite number"),
        ({"eval_compress": [0]}, "eval_compress: ranks must be unique and ≥ 1"),
        ({"eval_models": {"a/b": "tiny:2"}}, "eval_models label 'a/b' must be letters"),
        (
            {"eval_models": [{"world": None}]},
            "eval_models: a list of models, or {label: model}; each a string",
        ),
    ],
)
def test_bad_axes_are_one_line_naming_the_field(tmp_path, changes, said):
    path = _write(tmp_path, **changes)
    with pytest.raises(BadInput) as err:
        load_study(path)
    assert str(err.value).startswith(f"{path}: ") and said in str(err.value)


def test_a_variant_named_like_a_configuration_is_refused(tmp_path):
    algorithms = {
        "lora": {**STUDY["algorithms"]["lora"], "variations": {"lora4-x0.5": {"training": {"lr": 2e-3}}}}
    }
    path = _write(tmp_path, algorithms=algorithms, eval_multipliers=[0.5])
    with pytest.raises(BadInput, match="the evaluation 'lora4-x0.5' is also 'lora4'"):
        load_study(path)


def test_an_eval_model_of_another_family_is_refused(tmp_path):
    path = _write(tmp_path, eval_models=["world:"])  # the CPU world's model: not the tiny one's shapes
    with pytest.raises(BadInput, match=r"eval_models.world: .* is not of the study model's family"):
        _plan(path, tmp_path / "store")


def test_model_labels():
    assert [model_label(v) for v in ("tiny:", "tiny:3", "world:", "org/sd-x@abc123", "/m/dream.safetensors")] == [
        "tiny", "tiny3", "world", "sd-x", "dream",
    ]  # fmt: skip


def _adapter_file(path: Path, spec, seed: int = 0) -> Path:
    from lyco_bench.adapters import inject

    unet, te = tiny_models(0)
    torch.manual_seed(seed)
    net = inject(unet, te, spec)
    perturb(net, scale=0.1, seed=seed + 1)
    net.save(path, metadata={"base_model": "tiny"})
    return path


def test_extracting_an_adapter_equals_extracting_its_merged_model(tmp_path, rank=2):
    """Oracle: ``adapter extract``'s path — merge the file into the model, SVD of tuned − base."""
    from lyco_bench.adapters import AdapterSpec, extract_lora, merge_adapters
    from lyco_bench.adapters.ops import extract_adapter

    path = _adapter_file(
        tmp_path / "loha.safetensors", AdapterSpec(algo="loha", dim=2, alpha=1, preset="full")
    )
    unet, te = tiny_models(0)
    got, rows = extract_adapter(path, unet, te, rank=rank)
    tuned = tiny_models(0)
    merge_adapters(*tuned, [(path, 1.0)])
    want, want_rows = extract_lora(unet, te, *tuned, rank=rank)
    assert got.keys() == want.keys() and len(rows) == len(want_rows)
    for key in (k.removesuffix(".lora_up.weight") for k in got if k.endswith(".lora_up.weight")):
        up, down = got[f"{key}.lora_up.weight"], got[f"{key}.lora_down.weight"]
        w_up, w_down = want[f"{key}.lora_up.weight"], want[f"{key}.lora_down.weight"]
        torch.testing.assert_close(up.flatten(1) @ down.flatten(1), w_up.flatten(1) @ w_down.flatten(1),
                                   rtol=1e-4, atol=1e-5)  # fmt: skip
    errors = {r.key: r.relative_error for r in want_rows}
    assert all(math.isclose(r.relative_error, errors[r.key], rel_tol=1e-3, abs_tol=1e-6) for r in rows)


def test_extracting_a_lora_at_its_own_rank_keeps_it(tmp_path):
    from lyco_bench.adapters import AdapterSpec, delta_weights
    from lyco_bench.adapters.ops import extract_adapter

    path = _adapter_file(
        tmp_path / "lora.safetensors", AdapterSpec(algo="lora", dim=2, alpha=1, preset="full")
    )
    unet, te = tiny_models(0)
    tensors, rows = extract_adapter(path, unet, te, rank=2)
    assert max(r.relative_error for r in rows) < 1e-5 and {r.rank for r in rows} == {2}
    for key, (dw, _) in delta_weights(path, unet, te).items():
        up, down = tensors[f"{key}.lora_up.weight"], tensors[f"{key}.lora_down.weight"]
        torch.testing.assert_close(
            (up.flatten(1) @ down.flatten(1)).reshape(dw.shape), dw, rtol=1e-4, atol=1e-6
        )


@pytest.mark.e2e
def test_a_study_sweeps_every_axis_end_to_end(tmp_path, tiny_model_dir, demo_dataset_dir, capsys):
    """λ ∈ {0.5, 1}, a second tiny base (``tiny:1``: another seed) and a rank-2 extraction of a
    rank-4 LoRA, and a checkpoint every epoch scored on a trajectory budget: trained once,
    evaluated four ways at its last epoch and on the budget at the one before, analysed, on the
    leaderboard with its best checkpoint."""
    import pandas as pd

    from lyco_bench.cli import main
    from lyco_bench.metrics.manifest import read_manifest
    from lyco_bench.metrics.tiny import make_tiny_encoders
    from tests.helpers import micro_study

    encoders = make_tiny_encoders(tmp_path / "enc", seed=0)
    path = micro_study(tmp_path, model=str(tiny_model_dir), dataset=str(demo_dataset_dir), encoders=encoders)
    spec = yaml.safe_load(path.read_text())
    spec["algorithms"]["lora"]["adapter"] = {"dim": 4, "alpha": 2}
    spec |= {"eval_multipliers": [0.5, 1.0], "eval_models": ["tiny:1"], "eval_compress": [2],
             "checkpoint_epochs": [2], "checkpoint_every": 1,
             "trajectory": {"prompts_per_class": 1, "images_per_prompt": 1}}  # fmt: skip
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    store, reports = tmp_path / "store", tmp_path / "reports"
    assert main(["run", str(path), "--store", str(store), "--reports", str(reports)]) == 0
    root = store / "micro"
    results = pd.read_parquet(root / "results.parquet").drop_duplicates("config").set_index("config")
    assert sorted(results.index) == ["lora2", "lora2-c2", "lora2-x0.5", "lora2@tiny1"]
    assert results["multiplier"].to_dict() == {
        "lora2": 1.0,
        "lora2-c2": 1.0,
        "lora2-x0.5": 0.5,
        "lora2@tiny1": 1.0,
    }
    assert results["eval_model"].to_dict() == {"lora2": "tiny-sd", "lora2-c2": "tiny-sd", "lora2-x0.5": "tiny-sd",
                                               "lora2@tiny1": "tiny1"}  # fmt: skip
    assert results["compress_rank"].isna().sum() == 3 and results.loc["lora2-c2", "compress_rank"] == 2
    # the compressed row costs what its file does: half the rank-4 factors, a smaller file
    extracted = root / "extracted" / "lora2" / "1" / "e002-c2.safetensors"
    assert (
        results.loc["lora2-c2", "file_bytes"] == extracted.stat().st_size < results.loc["lora2", "file_bytes"]
    )
    assert results.loc["lora2-c2", "trainable_params"] * 2 == results.loc["lora2", "trainable_params"]
    assert 0 < results.loc["lora2-c2", "compress_error"] < 1
    # one training; each variant generated what it varies; the other base's own base images
    assert [p.name for p in (root / "runs").iterdir()] == ["lora2"]
    labels = {n: read_manifest(root / "images" / n / "1" / "e002")["adapters"].iloc[0] for n in results.index}
    assert labels["lora2-x0.5"].endswith(":0.5") and labels["lora2"].endswith(":1")
    assert labels["lora2-c2"].startswith("e002-c2.safetensors@")
    assert read_manifest(root / "images" / "base@tiny1")["path"].map(lambda p: Path(p).is_file()).all()
    board = pd.read_csv(reports / "micro" / "leaderboard.csv")
    assert {"multiplier", "eval_model", "compress_rank", "best_epoch", "overfitting"} <= set(board.columns)
    # the trajectory: the as-trained evaluation only, every epoch on the budget, its picks on the board
    points = pd.read_parquet(root / "trajectory.parquet")
    assert set(points["config"]) == {"lora2"} and set(points["epoch"]) == {1, 2}
    assert set(board.loc[board["config"] == "lora2", "best_epoch"].dropna()) <= {1, 2}
    assert set(board["config"]) == set(results.index)
    comparison = pd.read_csv(reports / "micro" / "comparison.csv")
    pairs = set(zip(comparison["config"], comparison["reference"], strict=True))
    assert {("lora2-x0.5", "lora2"), ("lora2@tiny1", "lora2"), ("lora2-c2", "lora2")} <= pairs
    # the multiplier sweep side by side: per prompt class one grid, a row per λ and the base model's
    grids = sorted(p.name for p in (reports / "micro" / "grids").glob("*multiplier*.png"))
    assert grids and all(g.startswith("lora2__multiplier__") for g in grids)
    html = (reports / "micro" / "index.html").read_text()
    assert all(f"grids/{g}" in html for g in grids)
    capsys.readouterr()
    assert main(["plan", str(path), "--store", str(store)]) == 0  # every job stays done, extraction too
    said = capsys.readouterr()
    # 16 jobs of the axes + a generate and a score per trajectory epoch (1 and 2)
    assert "20 jobs, 20 done (0 stale), 0 left" in said.out and "eval_compress" in said.err  # the axis table


@pytest.mark.e2e
def test_on_the_cpu_world_half_strength_learns_the_concept_less(tmp_path):
    """The multiplier axis measures what it says: on the CPU world, LoRA at λ = 0.5 is further from
    its concept's images than the same checkpoints at λ = 1 (paired by seed, concept and prompt),
    on the training prompts and with the trigger alone. A λ that did nothing, or scaled the wrong
    way, fails here. Runs the real `lyco-bench run` on the shipped world weights."""
    import pandas as pd

    from lyco_bench.cli import main

    demo = ROOT / "experiments" / "demo.yaml"
    overrides = [
        "algorithms={lora: {adapter: {algo: lora, dim: 8, alpha: 4, preset: attn-mlp}, training: {lr: 5.0e-3}, "
        "default: lora8a4}}",
        "analysis.contrasts=[]", "analysis.shap_refits=0", "checkpoint_epochs=[30]", "eval_multipliers=[0.5]",
    ]  # fmt: skip
    args = ["run", str(demo), "--store", str(tmp_path / "s"), "--reports", str(tmp_path / "r"), "--no-plots"]
    assert main([*args, *overrides]) == 0
    comparison = pd.read_csv(tmp_path / "r" / "demo" / "comparison.csv")
    half = comparison[(comparison["config"] == "lora8a4-x0.5") & (comparison["reference"] == "lora8a4")]
    fidelity = half[half["metric"] == "image_similarity"].set_index("prompt_class")
    for prompt_class in ("train", "trigger"):
        assert fidelity.loc[prompt_class, "ci_high"] < 0, fidelity.loc[prompt_class].to_dict()
