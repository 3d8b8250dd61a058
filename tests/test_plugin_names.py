"""benchmarks/plugin_names.py finds a plug-in name written outside its own files and tells what it
does there; lyco_bench/ has no place where such a name selects behaviour (an addition would need an
edit there)."""

from __future__ import annotations

import ast
import importlib.util
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("plugin_names", ROOT / "benchmarks" / "plugin_names.py")
plugin_names = importlib.util.module_from_spec(_spec)
sys.modules.setdefault("plugin_names", plugin_names)  # its dataclasses look their module up
_spec.loader.exec_module(plugin_names)

SOURCE = '''
"""A docstring naming lora is not code."""
TINY = "tiny:"
COSTS = {"lora": 1.0}
def f(algo="lora", model=""):
    if algo == "lora": pass
    if model.startswith(TINY): pass
    x = REGISTRY["lora"]
    out = {}
    out["lora"] = 1
    print("tiny:3")
'''


def test_each_use_is_classified(tmp_path):
    names = [
        plugin_names.Name("lora", "algorithm", frozenset()),
        plugin_names.Name("tiny:", "asset prefix", frozenset(), prefix=True),
    ]
    home = tmp_path / "home.py"
    trees = {tmp_path / "m.py": ast.parse(textwrap.dedent(SOURCE)), home: ast.parse(textwrap.dedent(SOURCE))}
    owned = [plugin_names.Name(n.text, n.kind, frozenset({home}), n.prefix) for n in names]
    got = sorted((p.name.text, p.line, p.how, p.what) for p in plugin_names.scan(owned, trees))
    assert got == [
        ("lora", 4, "selects", "literal"),  # a module table keyed by the name
        ("lora", 5, "default", "literal"),
        ("lora", 6, "selects", "literal"),
        ("lora", 8, "selects", "literal"),  # looked up by a written name
        ("lora", 10, "other", "literal"),  # a result's key, written
        ("tiny:", 3, "default", "literal"),
        ("tiny:", 7, "selects", "constant"),  # through the module constant
        ("tiny:", 11, "other", "literal"),
    ]


def test_no_plugin_name_selects_behaviour_outside_its_own_files():
    places = [p for p in plugin_names.scan(plugin_names.registered_names()) if p.how == "selects"]
    assert not places, "\n".join(
        f"{p.name.text} ({p.name.kind}) at {p.path.relative_to(ROOT)}:{p.line}" for p in places
    )
