"""Plug-in names written outside their own files: how open lyco-bench is to an addition, as a table.

    python benchmarks/plugin_names.py            # every place, then the counts
    python benchmarks/plugin_names.py --blocking # only the places that select behaviour by a name

Reads every registry (algorithms and model-level methods with their aliases, metrics, encoders,
presets, generated datasets, asset prefixes), finds each entry's own file (where its class or its
declaration's functions are defined), and walks the AST of every module of ``lyco_bench/`` for
string literals (an asset or dataset prefix: a literal starting with it) and identifiers (names,
attributes, keyword arguments) equal to a name, outside the entry's own files. Docstrings and
comments are not code and are not read.

Each place is classified by what the name does there:

* ``selects`` — it chooses behaviour: compared (``==``, ``in``, ``startswith``), a key of a table
  of per-plug-in behaviour, a registry looked up by a written name. A new plug-in of the kind
  cannot join without an edit here: these block an addition.
* ``declares`` — a key of a module table in another plug-in's own file: that plug-in says how it
  treats the named one (a model family's layer map for a preset); a new plug-in of the kind joins
  without it (the family falls back to the preset's own selection), so it blocks nothing.
* ``default`` — a default value (a function argument's, a settings field's, a module constant):
  the user's choice when they write none; another plug-in is chosen by configuration.
* ``other`` — anything else (messages, help texts, identifiers that only share the name).
"""

from __future__ import annotations

import argparse
import ast
import inspect
import os
import sys
import types
from collections import Counter
from dataclasses import dataclass, fields, is_dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "lyco_bench"
# Before asset prefixes were a registry (lyco_bench.sweep.assets) they had no file of their own.
UNREGISTERED_PREFIXES = ("tiny:", "world:")


@dataclass(frozen=True)
class Name:
    text: str
    kind: str
    own: frozenset[Path]
    prefix: bool = False  # a value prefix (``tiny:``): literals starting with it count


@dataclass(frozen=True)
class Place:
    name: Name
    path: Path
    line: int
    how: str  # selects | declares | default | other
    what: str  # literal | identifier | constant (a module constant holding the name, e.g. TINY_PREFIX)


# --- which names, and their own files -------------------------------------------------------------
def _files_of(obj: object, seen: set[int] | None = None) -> set[Path]:
    """Files defining ``obj``: a class's, a function's, or those of a declaration's callables."""
    seen = seen if seen is not None else set()
    if id(obj) in seen:
        return set()
    seen.add(id(obj))
    if isinstance(obj, type | types.FunctionType | types.MethodType):
        try:
            return {Path(inspect.getsourcefile(obj)).resolve()}
        except (TypeError, OSError):
            return set()
    if isinstance(obj, functools_partial_type()):
        return _files_of(obj.func, seen)
    out: set[Path] = set()
    if is_dataclass(obj):
        for f in fields(obj):
            out |= _files_of(getattr(obj, f.name), seen)
    return {p for p in out if p.is_relative_to(PACKAGE)}


def functools_partial_type() -> type:
    import functools

    return functools.partial


def registered_names() -> list[Name]:
    from lyco_bench.adapters.base import ALGORITHMS
    from lyco_bench.adapters.presets import PRESETS
    from lyco_bench.data.generated import GENERATED_DATASETS
    from lyco_bench.methods.base import is_model_method
    from lyco_bench.metrics import METRICS
    from lyco_bench.metrics.encoders import ENCODERS

    names: list[Name] = []
    for algo, cls in ALGORITHMS.items():
        kind = "method" if is_model_method(cls) else "algorithm"
        own = frozenset(_files_of(cls))
        names += [Name(n, kind, own) for n in (algo, *getattr(cls, "aliases", ()))]
    registries: list[tuple[object, str]] = [(METRICS, "metric"), (ENCODERS, "encoder"), (PRESETS, "preset")]
    try:
        from lyco_bench.families import FAMILIES

        registries.append((FAMILIES, "family"))
    except ImportError:  # a tree from before model families
        pass
    for registry, kind in registries:
        names += [
            Name(n, kind, frozenset(_files_of(entry if kind != "family" else type(entry))))
            for n, entry in registry.items()
        ]  # a family is an instance of its own class: the class's file
    prefixes: list[tuple[object, str]] = [(GENERATED_DATASETS, "dataset")]
    try:
        from lyco_bench.sweep.assets import ASSET_PREFIXES

        prefixes.append((ASSET_PREFIXES, "asset prefix"))
    except ImportError:  # a tree from before the registry: the prefixes are written where used
        names += [Name(n, "asset prefix", frozenset(), prefix=True) for n in UNREGISTERED_PREFIXES]
    for registry, kind in prefixes:
        names += [Name(n, kind, frozenset(_files_of(entry)), prefix=True) for n, entry in registry.items()]
    # A text several kinds share (``world:``, ``full``) is at home in each of their files.
    homes: dict[str, set[Path]] = {}
    for name in names:
        homes.setdefault(name.text, set()).update(name.own)
    return [Name(n.text, n.kind, frozenset(homes[n.text]), n.prefix) for n in names]


# --- where they are written ---------------------------------------------------------------------
def _docstrings(tree: ast.AST) -> set[int]:
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                out.add(id(body[0].value))
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            out.add(id(node.value))  # an attribute docstring (a bare string under a field)
    return out


def _parents(tree: ast.AST) -> dict[int, ast.AST]:
    return {id(child): node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}


def _how(node: ast.AST, parents: dict[int, ast.AST]) -> str:
    """What the name does where ``node`` (a literal or an identifier) is written."""
    child, parent = node, parents.get(id(node))
    while isinstance(parent, ast.Tuple | ast.List | ast.Set | ast.JoinedStr | ast.FormattedValue):
        child, parent = parent, parents.get(id(parent))
    if isinstance(parent, ast.Compare | ast.match_case | ast.MatchValue):
        return "selects"
    if isinstance(parent, ast.Call) and isinstance(parent.func, ast.Attribute):
        if parent.func.attr in ("startswith", "endswith", "removeprefix") and child in parent.args:
            return "selects"
    if isinstance(parent, ast.Subscript) and parent.slice is child and not isinstance(parent.ctx, ast.Store):
        return "selects"  # REGISTRY["name"], or a per-name table read by a written name
    if isinstance(parent, ast.Dict) and child in parent.keys:
        holder = parents.get(id(parent))  # a module constant: a table of per-plug-in behaviour
        at_module = isinstance(holder, ast.Assign | ast.AnnAssign) and isinstance(
            parents.get(id(holder)), ast.Module
        )
        return "table" if at_module else "other"  # selects, or declares in a plug-in's own file
    if isinstance(parent, ast.arguments):
        return "default"
    if isinstance(parent, ast.Assign | ast.AnnAssign) and getattr(parent, "value", None) is child:
        return "default"
    if isinstance(parent, ast.keyword) and parents.get(id(parent)) is not None:
        call = parents[id(parent)]
        if isinstance(call, ast.Call) and isinstance(call.func, ast.Name) and call.func.id == "Field":
            return "default"
    if isinstance(parent, ast.Call) and isinstance(parent.func, ast.Name) and parent.func.id == "Field":
        return "default"
    return "other"


def _matches(text: str, name: Name) -> bool:
    return text.startswith(name.text) if name.prefix else text == name.text


def _constants(trees: dict[Path, ast.Module], names: list[Name]) -> dict[str, list[Name]]:
    """Module constants holding a plug-in name (``TINY_PREFIX = "tiny:"``), outside its own files:
    every use of such a constant is a use of the name."""
    out: dict[str, list[Name]] = {}
    for path, tree in trees.items():
        for node in tree.body:
            if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant):
                value = node.value.value
                hits = [n for n in names if isinstance(value, str) and value == n.text and path not in n.own]
                for target in (t for t in node.targets if isinstance(t, ast.Name) and hits):
                    out.setdefault(target.id, []).extend(hits)
    return out


def scan(names: list[Name], trees: dict[Path, ast.Module] | None = None) -> list[Place]:
    """Every place a name is written outside its own files, in ``trees`` (default: the package)."""
    if trees is None:
        files = sorted(PACKAGE.rglob("*.py"))
        trees = {p.resolve(): ast.parse(p.read_text(encoding="utf-8"), str(p)) for p in files}
    constants = _constants(trees, names)
    plugin_files = frozenset().union(*(n.own for n in names))
    places = [place for path, tree in trees.items() for place in _places_in(path, tree, names, constants)]
    return [
        p
        if p.how != "table"
        else Place(p.name, p.path, p.line, "declares" if p.path in plugin_files else "selects", p.what)
        for p in places
    ]


def _places_in(
    path: Path, tree: ast.Module, names: list[Name], constants: dict[str, list[Name]]
) -> list[Place]:
    docs, parents = _docstrings(tree), _parents(tree)
    places = []
    for node in ast.walk(tree):
        ident = node.id if isinstance(node, ast.Name) else getattr(node, "attr", None)
        if ident in constants and not isinstance(parents.get(id(node)), ast.Assign):
            hits = [n for n in constants[ident] if path not in n.own]
            # a DEFAULT_* constant is the user's choice when they write none, wherever it is read
            how = "default" if ident.startswith("DEFAULT") else _how(node, parents)
            places += [Place(n, path, node.lineno, how, "constant") for n in hits]
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs:
            text, what = node.value, "literal"
        elif isinstance(node, ast.Name | ast.Attribute) or (isinstance(node, ast.keyword) and node.arg):
            text, what = ident if ident is not None else node.arg, "identifier"
        else:
            continue
        for name in names:
            if path not in name.own and _matches(text, name) and (what == "literal" or not name.prefix):
                places.append(Place(name, path, node.lineno, _how(node, parents), what))
    return places


def main() -> None:
    global ROOT, PACKAGE
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--blocking", action="store_true", help="only the places that select behaviour")
    parser.add_argument("--root", type=Path, default=ROOT, help="the source tree to read (default: this one)")
    args = parser.parse_args()
    ROOT = args.root.resolve()
    PACKAGE = ROOT / "lyco_bench"
    sys.path.insert(0, str(ROOT))
    names = registered_names()
    places = _once(scan(names))
    shown = [p for p in places if p.how == "selects"] if args.blocking else places
    print(f"{'name':<26} {'kind':<22} {'how':<8} {'what':<10} place")
    for p in sorted(shown, key=lambda p: (p.how != "selects", p.name.kind, p.name.text, str(p.path), p.line)):
        where = f"{p.path.relative_to(ROOT)}:{p.line}"
        print(f"{p.name.text:<26} {p.name.kind:<22} {p.how:<8} {p.what:<10} {where}")
    print()
    by_how = Counter(p.how for p in places)
    by_kind = Counter(p.name.kind for p in places if p.how == "selects")
    print(f"{len({n.text for n in names})} registered names; {len(places)} places outside their own files: "
          + ", ".join(f"{how} {by_how[how]}" for how in ("selects", "declares", "default", "other")))  # fmt: skip
    print("selects by kind: " + (", ".join(f"{k} {n}" for k, n in sorted(by_kind.items())) or "none"))


def _once(places: list[Place]) -> list[Place]:
    """One place per written name and position (a text several kinds share is one place)."""
    merged: dict[tuple, Place] = {}
    for p in places:
        key = (p.name.text, p.path, p.line, p.what, p.how)
        if key in merged and p.name.kind not in merged[key].name.kind:
            kind = f"{merged[key].name.kind}/{p.name.kind}"
            p = Place(Name(p.name.text, kind, p.name.own, p.name.prefix), p.path, p.line, p.how, p.what)
        merged[key] = p
    return list(merged.values())


if __name__ == "__main__":
    main()
