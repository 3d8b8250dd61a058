"""Every module of the package imports first in a fresh interpreter (no hidden import cycle).

A cycle between two packages stays hidden as long as some other module happens to import them in
the right order first; importing each module alone is what finds it. One interpreter imports the
third-party libraries once, then forks a child per module, which imports that module and nothing
of lyco-bench before it.
"""

from __future__ import annotations

import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import lyco_bench

pytestmark = pytest.mark.e2e  # whole studies / subprocess runs: `make test-fast` skips them

ROOT = Path(__file__).resolve().parents[1]

_CHILD = r"""
import os, sys, importlib, traceback
import numpy, pandas, torch, diffusers, transformers, open_clip, safetensors, pydantic  # noqa: F401
assert not [m for m in sys.modules if m.startswith("lyco_bench")]
failed = []
for name in sys.argv[1:]:
    pid = os.fork()
    if pid == 0:
        try:
            importlib.import_module(name)
        except BaseException:
            traceback.print_exc()
            os._exit(1)
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    if status:
        failed.append(name)
print("FAILED " + " ".join(failed) if failed else "OK")
"""


def _modules() -> list[str]:
    names = [lyco_bench.__name__]
    for info in pkgutil.walk_packages(lyco_bench.__path__, prefix="lyco_bench."):
        names.append(info.name)
    return sorted(names)


def test_every_module_imports_first():
    modules = _modules()
    assert "lyco_bench.methods.hypernetwork" in modules and "lyco_bench.registry" in modules
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, *modules], cwd=ROOT, capture_output=True, text=True, timeout=900
    )
    assert out.returncode == 0, out.stderr[-4000:]
    assert out.stdout.strip().splitlines()[-1] == "OK", out.stdout[-2000:] + out.stderr[-4000:]
