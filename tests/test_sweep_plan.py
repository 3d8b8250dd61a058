"""Study loading and planning: strict errors, paper.yaml expansion counts, deterministic job ids."""

from __future__ import annotations

from pathlib import Path

import pytest

from lyco_bench.errors import BadInput
from lyco_bench.sweep.planner import build_plan
from lyco_bench.sweep.store import StudyStore
from lyco_bench.sweep.study import load_study

ROOT = Path(__file__).resolve().parents[1]
PAPER = ROOT / "experiments" / "paper.yaml"
TOUR = ROOT / "experiments" / "tour.yaml"
# What cannot exist here (SD1.5, the paper's dataset, the real encoders), swapped for the tiny
# stand-ins built into the store; everything else is the real study.
LOCAL = ["model=tiny:", "dataset=demo:", "encoders.dino=tiny:", "encoders.clip=tiny:", "encoders.vgg=tiny:"]


def _plan(path, tmp_path, overrides=()):
    study = load_study(path, [*(LOCAL if path == PAPER else []), *overrides])
    return build_plan(study, StudyStore.open(tmp_path, study.name))


def test_paper_plan_counts(tmp_path):
    plan = _plan(PAPER, tmp_path)
    names = [c.name for c in plan.study.configs]
    assert len(names) == 26
    numbers = sorted(int(n.split("-")[0]) for n in names)
    assert numbers == [*range(1001, 1008), *range(1011, 1018), *range(1021, 1028), *range(1031, 1036)]
    counts = {kind: len(plan.of_kind(kind)) for kind in ("prepare", "train", "generate", "encode", "score")}
    # 26 configs × 3 seeds = 78 runs; × 3 epochs = 234 checkpoints, each generated and scored once
    # (a score job encodes its own images). Shared work counted once: base-model images (1
    # generate), dataset features (DINOv2 only: the metrics that read reference images), base
    # features (VGG19 only: the style loss vs the base model); 3 prepare jobs for the stand-ins.
    assert counts == {"prepare": 3, "train": 78, "generate": 235, "encode": 2, "score": 234}
    assert len({job.id for job in plan.jobs}) == len(plan.jobs)


def test_paper_settings_transcribed(tmp_path):
    configs = {c.name: c for c in load_study(PAPER).configs}
    assert load_study(PAPER).study.prompts.set == "lyco-v1"
    assert configs["1001-lora8a4"].adapter == {"algo": "lora", "dim": 8, "alpha": 4, "preset": "attn-mlp"}
    assert configs["1001-lora8a4"].training["lr"] == 5e-4
    assert configs["1003-lora32a1"].adapter["alpha"] == 1
    assert configs["1017-loha4a2-lr5e-3"].training["lr"] == 5e-3
    assert configs["1023-lokrf12"].adapter == {
        "algo": "lokr", "dim": 10000, "alpha": 1, "factor": 12, "preset": "attn-mlp",
    }  # fmt: skip
    assert configs["1033-nt-attnonly"].adapter == {"algo": "native", "preset": "attn-only"}
    assert configs["1035-nt-lr5e-7"].training["lr"] == 5e-7
    # The study-wide training block reaches every configuration.
    assert all(c.training["batch_size"] == 8 for c in configs.values())


def test_dependencies_come_first(tmp_path):
    plan = _plan(PAPER, tmp_path, ["seeds=[23]", "checkpoint_epochs=[10]"])
    seen: set[str] = set()
    for job in plan.jobs:
        assert set(job.deps) <= seen, job.id
        seen.add(job.id)


def test_job_ids_are_deterministic_and_local(tmp_path):
    a = _plan(PAPER, tmp_path / "a")
    b = _plan(PAPER, tmp_path / "b")  # another store: same ids
    assert [j.id for j in a.jobs] == [j.id for j in b.jobs]
    train = a.of_kind("train")[0]
    assert train.id.startswith("train-1001-lora8a4-s23-")
    # Changing one configuration's lr changes its jobs (and everything downstream) only.
    c = _plan(PAPER, tmp_path / "c", ["algorithms.lora.variations.1006-lora8a4-lr1e-4.training.lr=2e-4"])
    changed = {j.id for j in a.jobs} ^ {j.id for j in c.jobs}
    changed_names = {j.name for j in a.jobs + c.jobs if j.id in changed}
    assert changed_names and all(n.startswith("1006-lora8a4-lr1e-4") for n in changed_names)
    # 3 seeds × (1 train + 3 × (generate + score)) = 21 jobs, in both plans.
    assert len(changed) == 2 * 21
    # Saving one more epoch adds its jobs; the other checkpoints keep their generate/score ids.
    d = _plan(PAPER, tmp_path / "d", ["checkpoint_epochs=[10,30,50,70]"])
    kept = {j.id for j in a.jobs if j.kind in ("generate", "score")} - {j.id for j in d.jobs}
    assert kept == set()
    assert {j.id for j in a.of_kind("train")}.isdisjoint(j.id for j in d.of_kind("train"))  # more to train


def test_unknown_key_names_path_and_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        PAPER.read_text().replace("      1002-lora32a16: {adapter:", "      1002-lora32a16: {adaptor:")
    )
    with pytest.raises(BadInput) as err:
        load_study(bad)
    assert str(err.value) == f"{bad}: algorithms.lora.variations.1002-lora32a16.adaptor: unknown key"


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("seeds=[1,1]", "seeds: values must be unique"),
        ("colour=red", "colour: unknown key"),
        (
            "prompts.images_per_prompt=0",
            "prompts.images_per_prompt: Input should be greater than or equal to 1",
        ),
        (
            "algorithms.loha.default=1001-lora8a4",
            "configuration '1001-lora8a4' defined in both 'lora' and 'loha'",
        ),
        ("algorithms.lora.default=a/b", "configuration name 'a/b' must be letters"),
    ],
)
def test_bad_values_are_bad_input(override, expected):
    with pytest.raises(BadInput) as err:
        load_study(PAPER, [override])
    assert str(err.value).startswith(f"{PAPER}: ")
    assert expected in str(err.value)


def test_unknown_metric_is_bad_input(tmp_path):
    with pytest.raises(BadInput, match=f"{PAPER}: metrics: unknown metric 'sharpness'"):
        _plan(PAPER, tmp_path, ["metrics=[sharpness]"])


def test_tour_plan_has_every_built_in_method(tmp_path):
    from lyco_bench.adapters import ALGORITHMS

    plan = _plan(TOUR, tmp_path)
    algos = {c.adapter["algo"] for c in plan.study.configs}
    built_in = {name for name, cls in ALGORITHMS.items() if cls.__module__.startswith("lyco_bench.")}
    assert algos == built_in
    assert {"lora", "loha", "lokr", "native", "dylora", "glora", "ia3", "textual_inversion"} <= algos
    assert {j.name for j in plan.of_kind("prepare")} == {"tiny-model", "demo-dataset", "tiny-encoders"}


def test_stage_settings_are_validated_by_their_stages(tmp_path):
    _plan(PAPER, tmp_path)  # paper.yaml is valid for the trainer, the sampler and the scorer
    _plan(TOUR, tmp_path)
    with pytest.raises(BadInput) as err:
        _plan(PAPER, tmp_path, ["algorithms.loha.variations.1016-loha4a2-lr1e-3.training.lr=-1"])
    assert str(err.value).startswith(f"{PAPER}: algorithms.loha.variations.1016-loha4a2-lr1e-3: ")
    assert "lr: Input should be greater than 0" in str(err.value)
    with pytest.raises(BadInput, match=r"algorithms\.lora: .*adapter\.algo: .*unknown algorithm 'lorax'"):
        _plan(PAPER, tmp_path, ["algorithms.lora.adapter.algo=lorax"])
    with pytest.raises(BadInput, match=r"sampler: steps: Input should be greater than or equal to 1"):
        _plan(PAPER, tmp_path, ["sampler.steps=0"])
    with pytest.raises(BadInput, match=r"encoders: modes\.0: "):
        _plan(PAPER, tmp_path, ["encoders.modes=[squash]"])


def test_critical_path_priority_starts_long_chains_first(tmp_path):
    from lyco_bench.sweep.assets.tiny import TINY_COST_S as c
    from lyco_bench.sweep.executors import critical_path_priority

    plan = _plan(TOUR, tmp_path)
    rank = critical_path_priority(plan)
    by_name = {(job.kind, job.name): rank[job.id] for job in plan.jobs}
    # score → 1 job; generate → score; train → generate → score; shared encodes → score.
    assert by_name[("score", "nt-s1-e002")] == c["score"]
    assert by_name[("encode", "dataset-dinov2")] == c["encode"] + c["score"]
    assert by_name[("generate", "nt-s1-e002")] == c["generate"] + c["score"]
    assert by_name[("train", "nt-s1")] == c["train"] + c["generate"] + c["score"]
    # DreamBooth's class images are drawn by the base model before its training: the longest chain.
    assert by_name[("train", "dreambooth-s1")] == by_name[("train", "nt-s1")]
    assert (
        by_name[("prepare", "tiny-model")]
        == c["prepare"] + c["generate"] + by_name[("train", "dreambooth-s1")]
    )


# --- the cost model (lyco_bench/sweep/costs.py) ----------------------------------------------------
@pytest.fixture(scope="module")
def uneven_dataset(tmp_path_factory, demo_dataset_dir) -> Path:
    """The demo dataset with some landscape images and one concept repeated 3 times."""
    import shutil

    import yaml
    from PIL import Image

    root = Path(shutil.copytree(demo_dataset_dir, tmp_path_factory.mktemp("uneven") / "data"))
    for i, image in enumerate(sorted(root.rglob("*.png"))):
        if i % 3 == 0:
            Image.new("RGB", (96, 64), (i, 40, 90)).save(image)
    spec = yaml.safe_load((root / "dataset.yaml").read_text())
    first = sorted(spec["concepts"])[0]
    spec["concepts"][first]["repeats"] = 3
    (root / "dataset.yaml").write_text(yaml.safe_dump(spec))
    return root


def _cost_plan(tmp_path, model, dataset, extra=()):
    overrides = [
        f"model={model}", f"dataset={dataset}", "encoders.dino=tiny:", "encoders.clip=tiny:",
        "encoders.vgg=tiny:", "seeds=[23]", "checkpoint_epochs=[1, 2]", "training.batch_size=3",
        "training.resolution=64", "training.buckets={min: 32, max: 128, step: 16}",
        "training.optimizer=adamw", "training.mixed_precision=no", *extra,
    ]  # fmt: skip
    study = load_study(PAPER, overrides)
    return build_plan(study, StudyStore.open(tmp_path, study.name))


def test_training_cost_counts_the_trainers_own_steps(tmp_path, tiny_model_dir, uneven_dataset):
    import torch

    from lyco_bench.sweep.costs import train_steps
    from lyco_bench.training.config import RunConfig
    from lyco_bench.training.session import Session

    plan = _cost_plan(tmp_path, tiny_model_dir, uneven_dataset)
    config = "1001-lora8a4"
    run = plan.inputs.runs[config]
    cfg = RunConfig(
        model=str(tiny_model_dir), dataset=str(uneven_dataset), categories=run["categories"],
        adapter={"algo": "lora", "dim": 4, "alpha": 2}, resolution=64, buckets=run["buckets"], batch_size=3,
        epochs=2, checkpoint_epochs=[2], cache_dir=str(tmp_path / "cache"), seed=23,
    )  # fmt: skip
    session = Session(cfg, device=torch.device("cpu"))
    steps = train_steps(plan, config)
    assert len(steps) == 2 * session.steps_per_epoch  # the last checkpoint epoch × the trainer's batches
    images = sum(c.repeats for c, _ in session.pairs)
    assert sum(n for _, _, n in steps) == 2 * images and len({(w, h) for w, h, _ in steps}) == 2


def test_encoder_flop_formulas_match_the_flop_counter():
    import torch
    from torch.utils.flop_counter import FlopCounterMode
    from transformers import Dinov2Config, Dinov2Model

    from lyco_bench.metrics.encoders import vgg19_features
    from lyco_bench.sweep.costs import vgg_flops, vit_flops

    trunk = vgg19_features((4, 8, 8, 16, 16))
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        trunk(torch.zeros(1, 3, 32, 32))
    assert vgg_flops((4, 8, 8, 16, 16), 32) == counter.get_total_flops()
    with torch.device("meta"):  # as the cost model counts: SDPA's attention matmuls included
        vit = Dinov2Model(Dinov2Config(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, mlp_ratio=4,
                                       patch_size=8, image_size=64)).eval()  # fmt: skip
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            vit(pixel_values=torch.zeros(1, 3, 64, 64))
    patch_embedding = 2 * 64 * (3 * 8 * 8) * 64  # the patch conv, which the formula leaves out
    assert vit_flops(2, 64, 8, 64) + patch_embedding == pytest.approx(counter.get_total_flops(), rel=1e-9)


@pytest.mark.e2e
def test_plan_prints_gpu_hours_and_refuses_an_unknown_gpu(
    tmp_path, tiny_model_dir, uneven_dataset, capsys, monkeypatch
):
    from lyco_bench.cli import main
    from lyco_bench.sweep.costs import estimate_costs, load_hardware, unet_forward_flops, vae_decode_flops

    overrides = [
        f"model={tiny_model_dir}", f"dataset={uneven_dataset}", "encoders.dino=tiny:", "encoders.clip=tiny:",
        "encoders.vgg=tiny:", "seeds=[23]", "checkpoint_epochs=[1]",
    ]  # fmt: skip
    (tmp_path / "paper").mkdir()  # a started store (plan never creates one): it remembers FLOP counts
    import yaml

    from lyco_bench.sweep.costs import DEFAULT_TABLE

    table = yaml.safe_load(DEFAULT_TABLE.read_text())
    del table["a100"]["memory_gb"]  # no training-memory table here (tests/test_sweep_memory.py: ~20 s)
    costs_file = tmp_path / "gpu-costs.yaml"
    costs_file.write_text(yaml.safe_dump(table))
    args = [
        "plan",
        str(PAPER),
        *overrides,
        "--store",
        str(tmp_path),
        "--gpu",
        "a100",
        "--gpu-costs",
        str(costs_file),
    ]
    assert main(args) == 0
    printed = capsys.readouterr()
    out = printed.out + printed.err  # the tables go to the console (stderr), the summary to stdout
    assert "GPU-hours on one a100" in out and "\ntotal " in out and "generate efficiency: assumed" in out
    assert "of work left (a100 cost model)" in out  # not the flat per-kind guess (3 h a training)
    # generation: images × (steps × 2 guided UNet passes + one VAE decode), at the sampler's size
    plan = _cost_plan(tmp_path / "p", tiny_model_dir, uneven_dataset)
    costs = estimate_costs(plan, load_hardware("a100"))
    import json

    unet = json.loads((tiny_model_dir / "unet" / "config.json").read_text())
    vae = json.loads((tiny_model_dir / "vae" / "config.json").read_text())
    s = plan.inputs.sampler
    per_image = 25 * 2 * unet_forward_flops(unet, s["width"], s["height"]) + vae_decode_flops(vae, 512, 512)
    assert costs["generate"].flops == pytest.approx(costs["generate"].units * per_image, rel=1e-12)
    from lyco_bench.sweep.costs import job_costs
    from lyco_bench.sweep.planner import estimate_left

    per_job = {job_id: c[4] for job_id, c in job_costs(plan, load_hardware("a100")).items()}
    left, measured = estimate_left(plan, set(), per_job)
    assert not measured and left["train"] == pytest.approx(costs["train"].seconds, rel=1e-12)
    assert left["prepare"] == 30.0  # no GPU model for prepare jobs: the rough figure
    # FLOP counts are remembered in the store: a later plan counts nothing again
    from lyco_bench.sweep import costs as costs_module
    from lyco_bench.sweep.cli import load_plan

    cli_plan = load_plan(str(PAPER), overrides, str(tmp_path))  # the store `plan` printed above
    assert (cli_plan.store.root / costs_module.FLOPS_FILE).is_file()
    first = job_costs(cli_plan, load_hardware("a100"))
    costs_module._FLOPS_CACHE.clear()
    monkeypatch.setattr(costs_module, "_meta_model", lambda *a: pytest.fail("counted again"))
    assert job_costs(cli_plan, load_hardware("a100")) == first
    assert main(["plan", str(PAPER), *overrides, "--store", str(tmp_path), "--gpu", "tpu9"]) == 2
    err = capsys.readouterr().err
    assert "--gpu tpu9: not in" in err and "h100" in err
