"""The package as a user installs it: a wheel carries the prompt sets and report templates, and
`lyco-bench run experiments/demo.yaml` works from that wheel in a folder outside the checkout.

The wheel is built offline from a copy of the checkout (no build isolation: the virtualenv's own
setuptools), so the checkout is left as it is; it is skipped only where that setuptools is too old
to build it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from importlib import metadata
from pathlib import Path

import pytest

from lyco_bench.errors import BadInput
from lyco_bench.prompts import PROMPTS_DIR, find_prompt_set, load_prompt_set

pytestmark = pytest.mark.e2e  # whole studies / subprocess runs: `make test-fast` skips them

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "lyco_bench"
MIN_SETUPTOOLS = 77  # the build-system floor in pyproject.toml (SPDX license)
SKIP_COPY = (".git", ".venv", "build", "dist", "runs", "reports", "*.egg-info", "__pycache__", ".*_cache")


def _setuptools_major() -> int:
    try:
        return int(metadata.version("setuptools").split(".")[0])
    except (metadata.PackageNotFoundError, ValueError):
        return 0


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    if _setuptools_major() < MIN_SETUPTOOLS:
        pytest.skip(f"building offline needs setuptools>={MIN_SETUPTOOLS} in this environment")
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(*SKIP_COPY))
    out = tmp / "dist"
    cmd = [sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation",
           "--no-index", "-q", "-w", str(out)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (built,) = out.glob("lyco_bench-*.whl")
    return built


def test_wheel_ships_prompt_sets_templates_and_license(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    prompt_sets = {f"lyco_bench/prompt_sets/{p.name}" for p in PROMPTS_DIR.glob("*.yaml")}
    templates = {f"lyco_bench/analysis/templates/{p.name}" for p in (PACKAGE / "analysis" / "templates").glob("*.j2")}  # fmt: skip
    assert {"lyco_bench/prompt_sets/demo.yaml", "lyco_bench/prompt_sets/lyco-v1.yaml"} <= prompt_sets
    assert len(templates) >= 4
    assert prompt_sets | templates <= names, sorted((prompt_sets | templates) - names)
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    meta = next(n for n in names if n.endswith(".dist-info/METADATA"))
    text = zipfile.ZipFile(wheel).read(meta).decode()
    assert "License-Expression: MIT" in text
    assert not [n for n in names if n.startswith(("tests/", "experiments/", "prompts/"))]


# Runs in the subprocess: the wheel's lyco_bench (not the checkout's) runs the demo study.
RUN = """
import sys
from pathlib import Path
import lyco_bench
site = Path(sys.argv[1]).resolve()
here = Path(lyco_bench.__file__).resolve()
assert here.is_relative_to(site), f"lyco_bench imported from {here}, not from the wheel in {site}"
from lyco_bench.cli import main
sys.exit(main(sys.argv[2:]))
"""

SMALL = [
    "seeds=[1]",
    "checkpoint_epochs=[1]",
    "algorithms={lora: {adapter: {algo: lora, dim: 4, alpha: 2, preset: attn-mlp}, "
    "training: {lr: 1.0e-3}, default: lora4a2}}",
    "prompts.classes=[trigger, style]",
    "prompts.base_classes=[trigger, style]",
    "prompts.images_per_prompt=1",
    "analysis.reference=lora4a2",
    "analysis.contrasts=[]",
]


def test_wheel_runs_the_demo_study_from_another_folder(wheel, tmp_path):
    site = tmp_path / "site"
    install = [sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q", "--target", str(site), str(wheel)]  # fmt: skip
    proc = subprocess.run(install, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (site / "lyco_bench" / "prompt_sets" / "world.yaml").is_file()
    assert (site / "lyco_bench" / "world" / "weights" / "model" / "unet" / "config.json").is_file()

    work = tmp_path / "elsewhere"
    work.mkdir()
    # only the study file: its prompt set (a bare name) and the world's weights (`world:`) are found
    # inside the installed package
    shutil.copy(ROOT / "experiments" / "demo.yaml", work / "demo.yaml")
    env = {**os.environ, "PYTHONPATH": str(site), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    args = ["run", "demo.yaml", *SMALL, "--store", "store", "--reports", "reports"]
    proc = subprocess.run(
        [sys.executable, "-c", RUN, str(site), *args], cwd=work, env=env, capture_output=True, text=True,
        timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "run demo:" in proc.stdout
    assert (work / "reports" / "demo" / "index.html").is_file()
    assert (work / "store" / "demo" / "results.parquet").is_file()
    assert sorted(p.name for p in work.iterdir()) == ["demo.yaml", "reports", "store"]


def test_bare_names_look_in_the_working_folder_first(tmp_path, monkeypatch):
    assert PROMPTS_DIR.parent == PACKAGE  # inside the package, so a wheel has it
    assert find_prompt_set("demo") == PROMPTS_DIR / "demo.yaml"
    assert find_prompt_set("default") == PROMPTS_DIR / "lyco-v1.yaml"
    local = tmp_path / "prompts"
    local.mkdir()
    text = (PROMPTS_DIR / "demo.yaml").read_text().replace("name: demo", "name: my-demo", 1)
    (local / "demo.yaml").write_text(text)
    monkeypatch.chdir(tmp_path)
    assert find_prompt_set("demo").resolve() == (local / "demo.yaml").resolve()
    assert load_prompt_set("demo").name == "my-demo"
    assert load_prompt_set("lyco-v1").name == "lyco-v1"  # not copied: the package's
    with pytest.raises(BadInput, match="known: demo, lyco-v1"):
        find_prompt_set("nope")


def test_every_command_has_help():
    """`--help` of the CLI and of every subcommand prints (argparse %-formats help strings)."""
    import contextlib
    import io

    from lyco_bench.cli import build_parser

    parser = build_parser()
    commands = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction").choices
    for argv in [["--help"], *([name, "--help"] for name in commands)]:
        with pytest.raises(SystemExit) as exit_, contextlib.redirect_stdout(io.StringIO()):
            parser.parse_args(argv)
        assert exit_.value.code == 0, argv
