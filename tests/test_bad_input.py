"""Bad input as a new user would try it: one line naming the file, field or module, exit 2, and
nothing written."""

from __future__ import annotations

import math
import re
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from lyco_bench.adapters import AdapterSpec, inject, load_adapter
from lyco_bench.adapters.cli import parse_adapter_arg
from lyco_bench.adapters.fileformat import nonfinite_modules, save_tensors
from lyco_bench.cli import main
from lyco_bench.errors import BadInput
from lyco_bench.generation import parse_adapter
from tests.helpers import one_thread, perturb  # noqa: F401 - autouse fixture

BAD_KEY = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"


def one_error_line(capsys) -> str:
    """The CLI's stderr, which must be exactly one ``error: …`` line."""
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0].removeprefix("error: ")


@pytest.fixture(scope="module")
def adapter_files(tiny_model_dir, tmp_path_factory) -> dict[str, Path]:
    """A good LoRA for the tiny pipeline, and copies with one NaN / one inf in one module."""
    from lyco_bench.models import load_pipeline

    pipe = load_pipeline(tiny_model_dir)
    torch.manual_seed(0)
    net = inject(pipe.unet, pipe.text_encoder, AdapterSpec(algo="lora", dim=2, preset="attn-only"))
    perturb(net, scale=0.1)
    folder = tmp_path_factory.mktemp("adapters")
    files = {"good": folder / "good.safetensors"}
    net.save(files["good"])
    tensors = load_file(files["good"])
    for name, value in (("nan", math.nan), ("inf", -math.inf)):
        bad = dict(tensors)
        bad[f"{BAD_KEY}.lora_up.weight"] = bad[f"{BAD_KEY}.lora_up.weight"].clone()
        bad[f"{BAD_KEY}.lora_up.weight"][3, 1] = value
        files[name] = folder / f"{name}.safetensors"
        save_tensors(files[name], bad, {})
    return files


# --- 1. non-finite adapter tensors ------------------------------------------------------------
@pytest.mark.parametrize("kind", ["nan", "inf"])
def test_load_adapter_refuses_nonfinite_tensors(adapter_files, kind):
    path = adapter_files[kind]
    with pytest.raises(BadInput) as info:
        load_adapter(path)
    assert str(info.value) == f"{path}: {BAD_KEY}: holds NaN or inf values"
    assert nonfinite_modules(load_adapter(path, allow_nonfinite=True)) == [BAD_KEY]
    assert nonfinite_modules(load_adapter(adapter_files["good"])) == []


def test_resume_refuses_a_nonfinite_checkpoint(tiny_model_dir, adapter_files):
    from lyco_bench.models import load_pipeline

    pipe = load_pipeline(tiny_model_dir)
    net = inject(pipe.unet, pipe.text_encoder, AdapterSpec(algo="lora", dim=2, preset="attn-only"))
    with pytest.raises(BadInput, match=re.escape(f"{adapter_files['nan']}: {BAD_KEY}: holds NaN")):
        net.load_weights(adapter_files["nan"])


def test_merge_refuses_nonfinite_adapter(tiny_model_dir, adapter_files, tmp_path, capsys):
    out = tmp_path / "merged"
    args = ["adapter", "merge", "--base", str(tiny_model_dir), "--out", str(out)]
    assert (
        main([*args, "--adapter", f"{adapter_files['good']}:0.5", "--adapter", str(adapter_files["inf"])])
        == 2
    )
    assert one_error_line(capsys) == f"{adapter_files['inf']}: {BAD_KEY}: holds NaN or inf values"
    assert list(tmp_path.iterdir()) == []


def test_generate_refuses_nonfinite_adapter(
    tiny_model_dir, demo_dataset_dir, adapter_files, tmp_path, capsys
):
    out = tmp_path / "images"
    args = ["generate", "--model", str(tiny_model_dir), "--dataset", str(demo_dataset_dir)]
    assert (
        main([*args, "--prompts", "demo", "--adapter", f"{adapter_files['nan']}:0.8", "--out", str(out)]) == 2
    )
    assert one_error_line(capsys) == f"{adapter_files['nan']}: {BAD_KEY}: holds NaN or inf values"
    assert list(tmp_path.iterdir()) == []


def test_inspect_shows_the_table_then_names_nonfinite_modules(adapter_files, capsys):
    path = adapter_files["nan"]
    assert main(["adapter", "inspect", str(path), "--width", "250"]) == 2
    captured = capsys.readouterr()
    assert f"{BAD_KEY}  lora NaN/inf" in re.sub(r"\s*│\s*", "  ", captured.out)
    assert captured.err.strip() == f"error: {path}: NaN or inf values in 1 module: {BAD_KEY}"
    assert main(["adapter", "inspect", str(path), "--json"]) == 2
    import json

    rows = json.loads(capsys.readouterr().out)["modules"]
    assert [r["module"] for r in rows if not r["finite"]] == [BAD_KEY]
    assert main(["adapter", "inspect", str(adapter_files["good"])]) == 0


# --- 2. the multiplier λ ------------------------------------------------------------------------
@pytest.mark.parametrize("parse", [parse_adapter_arg, parse_adapter])
def test_adapter_multiplier_must_be_a_finite_number(parse, tmp_path):
    for tail in ("nan", "inf", "-inf", "NaN", "Infinity"):
        with pytest.raises(BadInput) as info:
            parse(f"f.safetensors:{tail}")
        assert str(info.value) == f"--adapter f.safetensors:{tail}: λ must be a finite number, not {tail!r}"
    with pytest.raises(BadInput) as info:
        parse("F:abc")
    assert str(info.value) == "--adapter F:abc: λ 'abc' is not a number"
    assert parse("F:-0.5") == ("F", -0.5, None)
    assert parse("runs:a/b.safetensors") == ("runs:a/b.safetensors", 1.0, None)  # a ':' in a folder name
    odd = tmp_path / "odd:name"
    odd.write_bytes(b"")
    assert parse(str(odd)) == (str(odd), 1.0, None)  # an existing file wins over the λ reading
    for tail, said in (("dyn=x", "dyn='x' is not a whole number"), ("dyn=0", "dyn must be ≥ 1")):
        with pytest.raises(BadInput, match=said):
            parse(f"f.safetensors:{tail}")


def test_cli_says_the_bad_multiplier(tiny_model_dir, demo_dataset_dir, adapter_files, tmp_path, capsys):
    good = adapter_files["good"]
    out = tmp_path / "out"
    gen = [
        "generate",
        "--model",
        str(tiny_model_dir),
        "--dataset",
        str(demo_dataset_dir),
        "--prompts",
        "demo",
    ]
    assert main([*gen, "--adapter", f"{good}:abc", "--out", str(out)]) == 2
    assert one_error_line(capsys) == f"--adapter {good}:abc: λ 'abc' is not a number"
    merge = ["adapter", "merge", "--base", str(tiny_model_dir), "--out", str(out)]
    assert main([*merge, "--adapter", f"{good}:nan"]) == 2
    assert one_error_line(capsys) == f"--adapter {good}:nan: λ must be a finite number, not 'nan'"
    assert list(tmp_path.iterdir()) == []


# --- 3. extraction from a model holding NaN/inf ----------------------------------------------
def test_extract_names_the_model_and_module_with_nonfinite_weights(tiny_model_dir, tmp_path, capsys):
    tuned = tmp_path / "tuned"
    shutil.copytree(tiny_model_dir, tuned)
    weights = tuned / "unet" / "diffusion_pytorch_model.safetensors"
    state = load_file(weights)
    state["down_blocks.0.resnets.0.conv1.weight"][0, 0, 0, 0] = math.inf
    save_file(state, weights)
    out = tmp_path / "x.safetensors"
    cmd = ["adapter", "extract", "--base", str(tiny_model_dir), "--rank", "2", "--out", str(out)]
    assert main([*cmd, "--tuned", str(tuned)]) == 2
    assert (
        one_error_line(capsys)
        == f"--tuned {tuned}: unet.down_blocks.0.resnets.0.conv1.weight holds NaN or inf values"
    )
    assert main(["adapter", "extract", "--base", str(tuned), "--tuned", str(tiny_model_dir), *cmd[4:]]) == 2
    assert one_error_line(capsys).startswith(f"--base {tuned}: unet.down_blocks.0")
    assert not out.exists()


# --- 6. pickled model weights ------------------------------------------------------------------
def test_model_folder_with_pickled_weights_is_refused(tiny_model_dir, tmp_path, capsys):
    from lyco_bench.models import load_pipeline

    folder = tmp_path / "pickled"
    shutil.copytree(tiny_model_dir, folder)
    pickled_names = {
        "diffusion_pytorch_model.safetensors": "diffusion_pytorch_model.bin",
        "model.safetensors": "pytorch_model.bin",
    }
    for weights in list(folder.rglob("*.safetensors")):
        torch.save(load_file(weights), weights.with_name(pickled_names[weights.name]))
        weights.unlink()
    message = (
        f"{folder}: the weights are pickled (.bin), not .safetensors; they are not loaded "
        "(convert the folder to safetensors)"
    )
    with pytest.raises(BadInput) as info:
        load_pipeline(folder)
    assert str(info.value) == message
    out = tmp_path / "x.safetensors"
    assert (
        main(
            [
                "adapter",
                "extract",
                "--base",
                str(folder),
                "--tuned",
                str(folder),
                "--rank",
                "2",
                "--out",
                str(out),
            ]
        )
        == 2
    )
    assert one_error_line(capsys) == message
    assert not out.exists()


# --- 7. model paths that do not exist -----------------------------------------------------------
@pytest.mark.parametrize(
    "model", ["./no/such/model", "no/such/model", "~/no-such-model", "sd15.safetensors", "sd15"]
)
def test_missing_model_path_is_one_line(model):
    from lyco_bench.models import load_pipeline

    with pytest.raises(BadInput) as info:
        load_pipeline(model)
    assert str(info.value) == f"{model}: no such file or folder"


def test_uncached_hub_id_offline_is_one_line(tiny_model_dir, adapter_files, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "merged"
    args = ["adapter", "merge", "--adapter", str(adapter_files["good"]), "--out", str(out)]
    assert main([*args, "--base", "models/sd15"]) == 2
    expected = "models/sd15: no such folder, and not in the local Hugging Face cache (HF_HUB_OFFLINE=1)"
    assert one_error_line(capsys) == expected
    assert main([*args, "--base", "./models/sd15"]) == 2
    assert one_error_line(capsys) == "./models/sd15: no such file or folder"
    assert list(tmp_path.iterdir()) == []


# --- 4. decompression bombs ---------------------------------------------------------------------
def png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose IHDR claims width×height RGB pixels (its one IDAT row is all there is)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" + b"\x00" * 3 * min(width, 64))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def bomb_sizes() -> dict[str, tuple[int, int]]:
    """Over 2× Pillow's limit (Pillow raises) and between 1× and 2× (Pillow only warns)."""
    from PIL import Image

    limit = Image.MAX_IMAGE_PIXELS
    return {"error": (100_000, 100_000), "warning": (20_000, math.ceil(1.5 * limit / 20_000))}


@pytest.fixture
def dataset_copy(demo_dataset_dir, tmp_path) -> Path:
    return Path(shutil.copytree(demo_dataset_dir, tmp_path / "ds"))


@pytest.mark.parametrize("case", ["error", "warning"])
@pytest.mark.parametrize("verify", [True, False])
def test_decompression_bomb_in_a_dataset_names_the_file(dataset_copy, case, verify, recwarn):
    from PIL import Image

    from lyco_bench.data import load_dataset

    width, height = bomb_sizes()[case]
    bomb = dataset_copy / "shapes/circle/003.png"
    bomb.write_bytes(png_claiming(width, height))
    assert bomb.stat().st_size < 500
    with pytest.raises(BadInput) as info:
        load_dataset(dataset_copy, verify_images=verify)
    assert str(info.value) == (
        f"{bomb}: image too large ({width * height:,} pixels; Pillow's decompression-bomb limit "
        f"Image.MAX_IMAGE_PIXELS is {Image.MAX_IMAGE_PIXELS:,})"
    )
    ds = load_dataset(dataset_copy, skip_bad_images=True, verify_images=verify)
    assert ds.skipped == [bomb]
    assert len(ds.find("shapes", "circle")[0].images) == 4
    assert not [w for w in recwarn if issubclass(w.category, Image.DecompressionBombWarning)]


def test_open_image_checked(tmp_path):
    from PIL import Image

    from lyco_bench.data.images import image_size_checked, open_image_checked

    good = tmp_path / "good.png"
    Image.new("RGB", (7, 5), "red").save(good)
    assert image_size_checked(good) == (7, 5)
    with open_image_checked(good) as img:
        assert img.convert("RGB").getpixel((0, 0)) == (255, 0, 0)
    truncated = tmp_path / "truncated.png"
    Image.effect_noise((64, 64), 50).save(truncated)
    truncated.write_bytes(truncated.read_bytes()[:200])  # the header survives, the pixels do not
    assert image_size_checked(truncated) == (64, 64)
    with (
        pytest.raises(BadInput, match=re.escape(f"{truncated}: unreadable image (")),
        open_image_checked(truncated) as img,
    ):
        img.load()
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(BadInput, match=re.escape(f"{empty}: unreadable image (cannot identify image file")):
        image_size_checked(empty)
    with pytest.raises(BadInput, match=re.escape(f"{tmp_path / 'gone.png'}: no such image file")):
        image_size_checked(tmp_path / "gone.png")


# --- 5. results tables ------------------------------------------------------------------------
@pytest.fixture
def results_file(tmp_path) -> Path:
    from lyco_bench.analysis.results import write_results
    from tests.helpers import hand_results

    return write_results(hand_results(tmp_path / "scores"), tmp_path / "in" / "results.parquet")


def bad_tables(good: Path) -> dict[str, tuple[Path, str]]:
    """Broken variants of a results table beside it → the start of the error naming each."""
    import pandas as pd

    folder = good.parent
    cases = {}
    for name, data in (
        ("garbage", b"this is not parquet\n" * 20),
        ("truncated", good.read_bytes()[:300]),
        ("empty", b""),
    ):
        path = folder / f"{name}.parquet"
        path.write_bytes(data)
        cases[name] = (path, f"{path}: not a readable parquet file (")
    table = pd.read_parquet(good)
    path = folder / "no-algo.parquet"
    table.drop(columns=["algo"]).to_parquet(path)
    cases["missing column"] = (path, f"{path}: not a results table (no column 'algo')")
    path = folder / "no-rows.parquet"
    table.iloc[:0].to_parquet(path)
    cases["no rows"] = (path, f"{path}: the results table has no rows")
    return cases


@pytest.mark.parametrize("command", ["analyze", "leaderboard", "report"])
def test_broken_results_tables_are_one_line(results_file, tmp_path, command, capsys):
    out = tmp_path / "out"
    for name, (path, message) in bad_tables(results_file).items():
        assert main([command, str(path), "--out", str(out)]) == 2, name
        assert one_error_line(capsys).startswith(message), name
        assert not out.exists(), name


def test_empty_results_table_refused_by_the_api(results_file, tmp_path):
    import pandas as pd

    from lyco_bench.analysis import write_leaderboard, write_report

    empty = pd.read_parquet(results_file).iloc[:0]
    with pytest.raises(BadInput, match="^results: the results table has no rows$"):
        write_leaderboard(empty, tmp_path / "board")
    with pytest.raises(BadInput, match="^results: the results table has no rows$"):
        write_report(study_name="x", results=empty, out_dir=tmp_path / "report")
    assert not (tmp_path / "board").exists() and not (tmp_path / "report").exists()


# --- 8. encoders.yaml paths are relative to the file ------------------------------------------
def test_encoder_paths_resolve_beside_the_yaml(tmp_path, monkeypatch):
    import argparse

    import yaml

    from lyco_bench.metrics.cli import _settings
    from lyco_bench.metrics.tiny import make_tiny_vgg19

    folder = tmp_path / "config"
    make_tiny_vgg19(folder / "weights" / "vgg19.safetensors")
    (folder / "dinov2").mkdir()
    settings_yaml = folder / "encoders.yaml"
    fields = {
        "vgg": "weights/vgg19.safetensors",
        "dino": "dinov2",
        "clip": "ViT-B-32",
        "clip_pretrained": "openai",
    }
    settings_yaml.write_text(yaml.safe_dump(fields))
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "dinov2").mkdir(parents=True)
    monkeypatch.chdir(elsewhere)
    args = argparse.Namespace(
        encoders=str(Path("..") / "config" / "encoders.yaml"), overrides=[], device=None
    )
    settings = _settings(args)
    assert settings.vgg == str(Path("../config/weights/vgg19.safetensors").absolute())
    assert Path(settings.vgg).is_file()
    assert settings.dino == str(Path("../config/dinov2").absolute())  # not ./dinov2 of the cwd
    assert (settings.clip, settings.clip_pretrained) == ("ViT-B-32", "openai")  # names stay names
    args.overrides = ["dino=dinov2", "vgg=IMAGENET1K_V1"]  # --set values are the command line's: cwd
    settings = _settings(args)
    assert (settings.dino, settings.vgg) == ("dinov2", "IMAGENET1K_V1")
    hub = folder / "hub.yaml"
    hub.write_text(yaml.safe_dump({"dino": "facebook/dinov2-large"}))
    assert (
        _settings(argparse.Namespace(encoders=str(hub), overrides=[], device=None)).dino
        == "facebook/dinov2-large"
    )


# --- 9. output locations checked before any work ------------------------------------------------
def tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.fixture
def commands(tiny_model_dir, demo_dataset_dir, adapter_files, results_file, tmp_path):
    """command name → (argv with {T} where the output goes, the option, whether T is a file)."""
    import yaml

    run = tmp_path / "in" / "run.yaml"
    run.write_text(
        yaml.safe_dump(
            {"model": str(tiny_model_dir), "dataset": str(demo_dataset_dir), "categories": ["patterns"],
             "adapter": {"algo": "lora", "dim": 2}, "resolution": 64, "buckets": {"min": 32, "max": 128, "step": 16},
             "batch_size": 2, "epochs": 1, "checkpoint_epochs": [1], "cache_dir": str(tmp_path / "in" / "latents")}
        )
    )  # fmt: skip
    model, data, good = str(tiny_model_dir), str(demo_dataset_dir), str(adapter_files["good"])
    images = tmp_path / "in" / "images"
    images.mkdir()
    cache = ["--cache", str(tmp_path / "in" / "cache")]
    return {
        "train": (["train", str(run), "--out", "{T}"], "--out", False),
        "generate": (["generate", "--model", model, "--dataset", data, "--prompts", "demo", "--out", "{T}"], "--out", False),
        "score --out": (["score", "--images", str(images), "--dataset", data, *cache, "--out", "{T}.parquet"], "--out", True),
        "score --cache": (["score", "--images", str(images), "--dataset", data, "--out", str(images / "s.parquet"), "--cache", "{T}"], "--cache", False),
        "encode --cache": (["encode", "--dataset", data, "--encoder", "vgg19", "--cache", "{T}"], "--cache", False),
        "adapter merge": (["adapter", "merge", "--base", model, "--adapter", good, "--out", "{T}"], "--out", False),
        "adapter extract": (["adapter", "extract", "--base", model, "--tuned", model, "--rank", "2", "--out", "{T}.safetensors"], "--out", True),
        "analyze": (["analyze", str(results_file), "--no-plots", "--out", "{T}"], "--out", False),
        "leaderboard": (["leaderboard", str(results_file), "--out", "{T}"], "--out", False),
        "report": (["report", str(results_file), "--out", "{T}"], "--out", False),
        "run --store": (["run", str(run), "--store", "{T}", "--no-analysis"], "--store", False),
        "make-world-dataset": (["make-world-dataset", "{T}"], "output folder", False),
    }  # fmt: skip


def run_refused(argv: list[str], target: Path, capsys, root: Path) -> str:
    before = tree(root)
    assert main([a.replace("{T}", str(target)) for a in argv]) == 2
    assert tree(root) == before
    return one_error_line(capsys)


COMMANDS = ["train", "generate", "score --out", "score --cache", "encode --cache", "adapter merge", "adapter extract", "analyze", "leaderboard", "report", "run --store", "make-world-dataset"]  # fmt: skip


@pytest.mark.parametrize("name", COMMANDS)
def test_output_in_the_way_of_a_file(commands, name, tmp_path, capsys):
    argv, option, is_file = commands[name]
    blocker = tmp_path / "blocker"
    blocker.write_text("a file")
    target = blocker / "sub" / "x"
    shown = (
        f"{target}.parquet" if name == "score --out" else f"{target}.safetensors" if is_file else str(target)
    )
    assert (
        run_refused(argv, target, capsys, tmp_path) == f"{option} {shown}: {blocker} is a file, not a folder"
    )
    refused = run_refused(argv, blocker, capsys, tmp_path) if not is_file else None  # --out is the file
    if name == "adapter merge":  # --out must be new unless --force
        assert refused == f"{blocker}: already exists (use --force to replace it)"
    elif not is_file:
        assert refused == f"{option} {blocker}: {blocker} is a file, not a folder"


@pytest.mark.parametrize("name", COMMANDS)
def test_output_on_a_full_disk(commands, name, tmp_path, capsys, monkeypatch):
    import lyco_bench.utils

    argv, option, is_file = commands[name]
    monkeypatch.setattr(
        lyco_bench.utils, "free_bytes", lambda path: 1000 if Path(path) == tmp_path else 10**12
    )
    target = tmp_path / "new" / "x"
    message = run_refused(argv, target, capsys, tmp_path)
    assert re.fullmatch(
        rf"{re.escape(option)} {re.escape(str(target))}\S*: 0\.0 MB free on the disk of {re.escape(str(tmp_path))}, \d+\.\d+ [MG]B needed",
        message,
    ), message


@pytest.mark.parametrize("name", COMMANDS)
def test_output_folder_not_writable(commands, name, tmp_path, capsys, monkeypatch):
    import os

    argv, option, is_file = commands[name]
    locked = tmp_path / "locked"
    locked.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: Path(p) != locked and real_access(p, mode, **kw))
    target = locked / "x"
    message = run_refused(argv, target, capsys, tmp_path)
    assert re.fullmatch(
        rf"{re.escape(option)} {re.escape(str(target))}\S*: {re.escape(str(locked))} is not writable", message
    )


@pytest.mark.e2e
def test_read_only_folder_as_an_unprivileged_user(results_file, tmp_path):
    """The real permission check, not a patched one: root ignores chmod, so run as nobody."""
    import os
    import subprocess
    import sys
    import tempfile

    if not shutil.which("setpriv") or os.geteuid() != 0:
        pytest.skip("needs root and setpriv to drop to an unprivileged user")
    shared = Path(tempfile.mkdtemp(prefix="lyco-ro-"))
    try:
        shared.chmod(0o755)
        table = shared / "results.parquet"
        shutil.copy(results_file, table)
        table.chmod(0o644)
        locked = shared / "locked"
        locked.mkdir(mode=0o555)
        cmd = [
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            sys.executable,
            "-m",
            "lyco_bench.cli",
        ]
        done = subprocess.run([*cmd, "leaderboard", str(table), "--out", str(locked / "board")], capture_output=True, text=True, timeout=300)  # fmt: skip
        assert done.returncode == 2, done.stderr
        assert done.stderr.strip() == f"error: --out {locked / 'board'}: {locked} is not writable"
        assert list(locked.iterdir()) == []
    finally:
        shutil.rmtree(shared)


# --- 10. a full disk while a checkpoint is saved -------------------------------------------------
@pytest.mark.e2e
def test_full_disk_during_a_checkpoint_leaves_no_partial_checkpoint(
    tiny_model_dir, demo_dataset_dir, tmp_path, monkeypatch
):
    import errno

    import lyco_bench.training.run as run
    from lyco_bench.training import RunConfig, checkpoint_path, find_resume, train

    config = RunConfig(
        model=str(tiny_model_dir), dataset=str(demo_dataset_dir), categories=["patterns"],
        adapter={"algo": "lora", "dim": 2}, resolution=64, buckets={"min": 32, "max": 128, "step": 16},
        batch_size=4, epochs=2, checkpoint_epochs=[1, 2], cache_dir=str(tmp_path / "latents"), seed=3,
    )  # fmt: skip
    out = tmp_path / "run"
    real_save_state = run.save_state

    def full_at_epoch_2(session, path, *, epoch):
        if epoch == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_save_state(session, path, epoch=epoch)

    monkeypatch.setattr(run, "save_state", full_at_epoch_2)
    with pytest.raises(BadInput) as info:
        train(config, out)
    assert str(info.value) == (
        f"--out {out}: disk full while saving epoch 2 (No space left on device); free some space and rerun to resume"
    )
    assert sorted(p.name for p in out.iterdir()) == [
        "ckpt-e001.json", "ckpt-e001.safetensors", "ckpt-e001.state.safetensors"
    ]  # fmt: skip
    assert find_resume(config, out)[0] == 1
    monkeypatch.setattr(run, "save_state", real_save_state)
    assert train(config, out) == [checkpoint_path(out, 1), checkpoint_path(out, 2)]

    first = tmp_path / "first"

    def over_quota(session, path, *, epoch):
        raise OSError(errno.EDQUOT, "Disk quota exceeded")

    monkeypatch.setattr(run, "save_state", over_quota)
    with pytest.raises(
        BadInput, match=re.escape(f"--out {first}: disk full while saving epoch 1 (Disk quota exceeded)")
    ):
        train(config, first)
    assert list(first.iterdir()) == [] and find_resume(config, first) is None
