"""`plan`/`run` check everything a later stage would reject before any job runs: one line, exit 2,
nothing written (not even study.json). Every shipped study passes that check."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from lyco_bench.cli import main
from lyco_bench.errors import BadInput
from lyco_bench.sweep.cli import load_plan

ROOT = Path(__file__).resolve().parents[1]
PAPER = ROOT / "experiments" / "paper.yaml"
EXPERIMENTS = sorted((ROOT / "experiments").glob("*.yaml"))
# What cannot exist on this machine (SD1.5 from the hub, the paper's dataset, the real encoders).
LOCAL = ["model=tiny:", "dataset=demo:", "encoders.dino=tiny:", "encoders.clip=tiny:", "encoders.vgg=tiny:"]


@pytest.mark.parametrize("study", EXPERIMENTS, ids=lambda p: p.name)
def test_every_shipped_study_validates(study, tmp_path):
    # the demo runs on the world shipped with lyco-bench: nothing to swap
    overrides = [] if study.name == "demo.yaml" else LOCAL
    if study.name == "flux.yaml":  # a FLUX study needs a FLUX stand-in (its sampler is FLUX's)
        overrides = ["model=tiny:flux", *LOCAL[1:]]
    plan = load_plan(str(study), overrides, str(tmp_path / "store"), verify_images=True)
    assert plan.of_kind("score") and plan.inputs.images_per_class
    assert not (tmp_path / "store").exists()  # validating writes nothing


def test_paper_study_asks_for_sd15_which_is_not_here(tmp_path):
    """Unchanged, paper.yaml fails on what this machine lacks — the model — in one line."""
    with pytest.raises(BadInput) as err:
        load_plan(str(PAPER), ["dataset=demo:"], str(tmp_path))
    message = str(err.value)
    assert message.startswith(f"{PAPER}: model 'stable-diffusion-v1-5/stable-diffusion-v1-5': ")
    assert "not in the local Hugging Face cache" in message and "\n" not in message


def _run(capsys, tmp_path, *args: str, study: Path = PAPER) -> tuple[int, str]:
    store, reports = tmp_path / "store", tmp_path / "reports"
    code = main(["run", str(study), *LOCAL, *args, "--store", str(store), "--reports", str(reports)])
    err = capsys.readouterr().err.strip()
    assert not store.exists() and not reports.exists(), "bad input wrote something"
    return code, err


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        (
            "algorithms.loha.variations.1016-loha4a2-lr1e-3.training.lr=-1",
            "algorithms.loha.variations.1016-loha4a2-lr1e-3: configuration 1016-loha4a2-lr1e-3: lr: ",
        ),
        ("prompts.set=paper", "prompts: prompt set 'paper': not found (known: demo, lyco-v1, world)"),
        ("prompts.classes=[train,sketch]", "prompts: classes: unknown prompt class 'sketch'"),
        ("sampler.width=60", "sampler: width: Input should be a multiple of 8"),
        ("encoders.dino=./no/dinov2", "encoders.dino ./no/dinov2: no such folder"),
        (
            "encoders.dino=org/no-dinov2",
            "encoders.dino 'org/no-dinov2': not a local path, and not in the local Hugging",
        ),
        ("encoders.vgg=IMAGENET1K_V9", "encoders.vgg IMAGENET1K_V9: no such file, and not a torchvision"),
        ("metrics=[fid]", "metrics: unknown metric 'fid'"),
        ("dataset=no/such/dataset", "dataset: no/such/dataset: no such dataset folder"),
        ("model=./no/such/model", "model ./no/such/model: no such file or folder"),
    ],
)
def test_run_refuses_bad_studies_before_any_job(override, expected, tmp_path, capsys):
    code, err = _run(capsys, tmp_path, override)
    assert code == 2 and len(err.splitlines()) == 1, err
    assert err.startswith(f"error: {PAPER}: ") and expected in err, err


def test_prompt_templates_are_checked_against_the_dataset(tmp_path, capsys):
    """A prompt set without templates for a dataset category fails before training, not after."""
    from lyco_bench.prompts import find_prompt_set

    data = yaml.safe_load(find_prompt_set("lyco-v1").read_text())
    del data["default_category"]  # the demo dataset's categories (patterns, shapes) are not listed
    (tmp_path / "prompts.yaml").write_text(yaml.safe_dump(data))
    code, err = _run(capsys, tmp_path, f"prompts.set={tmp_path / 'prompts.yaml'}")
    assert code == 2 and "categories: no entry for dataset category 'patterns'" in err


def test_concepts_need_a_trigger(tmp_path, capsys, demo_dataset_dir):
    dataset = Path(shutil.copytree(demo_dataset_dir, tmp_path / "data"))
    spec = yaml.safe_load((dataset / "dataset.yaml").read_text())
    spec["concepts"]["shapes/circle"]["trigger"] = " "
    (dataset / "dataset.yaml").write_text(yaml.safe_dump(spec))
    code, err = _run(capsys, tmp_path, f"dataset={dataset}")
    assert code == 2 and "concepts.shapes/circle.trigger" in err and "trigger must not be empty" in err


def test_models_of_no_known_family_are_refused(tmp_path, capsys):
    """A pipeline folder whose class no model family loads is refused at validation, naming the
    class (an SDXL folder is a family's: tests/test_families_training.py plans one)."""
    folder = tmp_path / "other"
    (folder / "unet").mkdir(parents=True)
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "SomeOtherPipeline"}))
    (folder / "unet" / "config.json").write_text(json.dumps({"cross_attention_dim": 2048}))
    code, err = _run(capsys, tmp_path, f"model={folder}")
    assert code == 2 and "unsupported pipeline class 'SomeOtherPipeline'" in err


def test_executor_and_store_options_are_checked_first(tmp_path, capsys):
    code, err = _run(capsys, tmp_path, "--jobs", "0")
    assert code == 2 and err == "error: --jobs: must be ≥ 1, got 0"
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code = main(
        ["run", str(PAPER), *LOCAL, "--store", str(blocker / "store"), "--reports", str(tmp_path / "r")]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and err == f"error: --store {blocker / 'store'}: {blocker} is a file, not a folder"


def test_override_values_work_as_typed(tmp_path):
    """`model=tiny:` is a string (YAML would read a mapping), `mixed_precision=no` stays "no"
    (YAML 1.1 would read False), `lr=1e-4` is a number (YAML 1.1 wants 1.0e-4)."""
    plan = load_plan(
        str(PAPER),
        [
            *LOCAL,
            "training.mixed_precision=no",
            "training.optimizer=adamw",
            "algorithms.lora.training.lr=1e-4",
        ],
        str(tmp_path),
    )
    run = plan.inputs.runs["1001-lora8a4"]
    assert plan.study.study.model == "tiny:"
    assert (run["mixed_precision"], run["optimizer"], run["lr"]) == ("no", "adamw", 1e-4)


def test_plan_prints_the_store_it_will_fill(tmp_path, capsys):
    assert main(["plan", str(PAPER), *LOCAL, "--store", str(tmp_path / "store")]) == 0
    out = capsys.readouterr().err
    assert "store when finished" in out and "images: keep" in out and "images: grids" in out
    assert not (tmp_path / "store").exists()


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        (
            "analysis.contrasts=[{config: nope, vs: lora8a4}]",
            "analysis.contrasts.0.config: 'nope' is not a configuration",
        ),
        (
            "analysis.contrasts=[{config: lora8a4, vs: lora8a4, epoch: 7}]",
            "analysis.contrasts.0.epoch: 7 is not a checkpoint epoch",
        ),
    ],
)
def test_contrasts_name_configurations_and_epochs_of_the_study(override, expected):
    from lyco_bench.sweep.study import load_study

    demo = ROOT / "experiments" / "demo.yaml"
    with pytest.raises(BadInput) as err:
        load_study(demo, [override])
    assert str(err.value) == f"{demo}: {expected}"
