"""No code path of the package unpickles what a user hands in (read from the syntax tree).

Every ``torch.load`` passes ``weights_only=True`` (a literal, not a variable); nothing calls
``pickle.load``/``loads``/``Unpickler``, ``numpy.load(allow_pickle=True)``, ``pandas.read_pickle``;
nothing imports dill, joblib or cloudpickle. Aliases (``import pickle as p``, ``from torch import
load``) are followed.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "lyco_bench"
FORBIDDEN_MODULES = {"dill", "joblib", "cloudpickle", "_pickle"}
FORBIDDEN_CALLS = {
    "pickle.load",
    "pickle.loads",
    "pickle.Unpickler",
    "pandas.read_pickle",
    "torch.serialization.load",
}


def _aliases(tree: ast.AST) -> dict[str, str]:
    """Local name → dotted origin for every import in the file."""
    names: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                names[alias.asname or alias.name.split(".")[0]] = (
                    alias.name if alias.asname else alias.name.split(".")[0]
                )
        elif isinstance(node, ast.ImportFrom) and node.module:
            for alias in node.names:
                names[alias.asname or alias.name] = f"{node.module}.{alias.name}"
    return names


def _dotted(node: ast.AST, aliases: dict[str, str]) -> str | None:
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    head = aliases.get(node.id, node.id)
    return ".".join([head, *reversed(parts)])


def _keyword(call: ast.Call, name: str) -> ast.AST | None:
    return next((k.value for k in call.keywords if k.arg == name), None)


def unpickling_calls(source: str) -> list[str]:
    """The offending lines of ``source`` (``line: reason``), empty when it never unpickles."""
    tree = ast.parse(source)
    aliases = _aliases(tree)
    found: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            modules = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            for module in modules:
                if module.split(".")[0] in FORBIDDEN_MODULES:
                    found.append(f"{node.lineno}: imports {module}")
        if not isinstance(node, ast.Call):
            continue
        name = _dotted(node.func, aliases)
        if name is None:
            continue
        if name in FORBIDDEN_CALLS:
            found.append(f"{node.lineno}: calls {name}")
        elif name == "torch.load":
            flag = _keyword(node, "weights_only")
            if not (isinstance(flag, ast.Constant) and flag.value is True):
                found.append(f"{node.lineno}: torch.load without weights_only=True")
        elif name in {"numpy.load", "np.load"}:
            flag = _keyword(node, "allow_pickle")
            if flag is not None and not (isinstance(flag, ast.Constant) and flag.value is False):
                found.append(f"{node.lineno}: numpy.load with allow_pickle")
    return found


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("import torch\ntorch.load(p, weights_only=True)", []),
        ("import torch\ntorch.load(p)", ["2: torch.load without weights_only=True"]),
        ("import torch as t\nt.load(p, weights_only=flag)", ["2: torch.load without weights_only=True"]),
        ("from torch import load\nload(p, weights_only=False)", ["2: torch.load without weights_only=True"]),
        ("import pickle as p\np.loads(b)", ["2: calls pickle.loads"]),
        ("from pickle import Unpickler\nUnpickler(f).load()", ["2: calls pickle.Unpickler"]),
        ("import numpy as np\nnp.load(f, allow_pickle=True)", ["2: numpy.load with allow_pickle"]),
        ("import pandas as pd\npd.read_pickle(f)", ["2: calls pandas.read_pickle"]),
        ("import joblib", ["1: imports joblib"]),
        ("import pickle\npickle.UnpicklingError", []),  # naming the error class is fine
    ],
)
def test_the_check_finds_what_it_should(source, expected):
    assert unpickling_calls(source) == expected


def test_no_code_path_unpickles():
    offending = {
        str(path.relative_to(PACKAGE.parent)): found
        for path in sorted(PACKAGE.rglob("*.py"))
        if (found := unpickling_calls(path.read_text(encoding="utf-8")))
    }
    assert offending == {}
