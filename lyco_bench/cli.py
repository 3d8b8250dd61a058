"""The ``lyco-bench`` command: one subcommand per stage (data flow: docs/internals.md).

Each stage module defines ``register_cli(subparsers)``, which adds its subcommands and sets
``func`` on them: a callable taking the parsed arguments and returning an exit code.
:class:`~lyco_bench.errors.BadInput` becomes ``error: <message>`` and exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import os
import pickle
import sys
from collections.abc import Callable

from lyco_bench import __version__
from lyco_bench.errors import BadInput
from lyco_bench.registry import Registry
from lyco_bench.utils import pickle_refusal

# Modules that contribute subcommands, in the order they appear in --help.
COMMAND_MODULES = [
    "lyco_bench.sweep.cli",  # plan, run, verify
    "lyco_bench.training",  # train
    "lyco_bench.generation",  # generate
    "lyco_bench.metrics.cli",  # encode, score
    "lyco_bench.analysis.cli",  # analyze, leaderboard, report
    "lyco_bench.sweep.pick_cli",  # pick
    "lyco_bench.adapters.cli",  # adapter inspect|merge|extract
    "lyco_bench.models",  # make-tiny-model
    "lyco_bench.data",  # make-demo-dataset
    "lyco_bench.world",  # make-world, make-world-dataset
]


def _accept_command_group(obj) -> tuple[str, Callable]:
    if not callable(obj):
        raise TypeError("not a register_cli(subparsers) function")
    return f"{obj.__module__}.{obj.__name__}", obj


COMMAND_GROUPS: Registry[Callable] = Registry(
    "command group", entry_point="lyco_bench.commands", accept=_accept_command_group
)
"""Subcommands from other packages: ``[project.entry-points."lyco_bench.commands"]
mine = "my_pkg.cli:register_cli"``, a function that adds subparsers as the built-in modules do."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lyco-bench",
        description=(
            "Benchmark text-to-image customization methods (adapter algorithms, native fine-tuning, "
            "Textual Inversion, hypernetworks, ...) on Stable Diffusion: train, generate, score, analyze "
            "(docs/protocol.md). `lyco-bench run experiments/demo.yaml` "
            "runs a whole study on the CPU in minutes."
        ),
    )
    parser.add_argument("--version", action="version", version=f"lyco-bench {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:  # a built-in group that fails to import is a bug: let it raise
        importlib.import_module(name).register_cli(subparsers)
    for register_cli in COMMAND_GROUPS.values():
        register_cli(subparsers)
    return parser


def _is_override(text: str) -> bool:
    return "=" in text and not text.startswith("-")


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:  # importing the stages loads the algorithm and metric plug-ins, which may be broken
        parser = build_parser()
    except BadInput as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    args, extra = parser.parse_known_args(argv)
    if extra:  # KEY=VALUE overrides may follow options: `run S --store X seeds=[2]`
        if getattr(args, "positional_overrides", False) and all(_is_override(e) for e in extra):
            args.overrides = [*args.overrides, *extra]
        else:
            args = parser.parse_args(argv)  # argparse's own one-line error and exit code 2
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except BadInput as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except pickle.UnpicklingError as exc:  # torch.load(weights_only=True) refused a pickled object
        print(f"error: {pickle_refusal(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `lyco-bench … | head -1`: the reader left; no traceback, no retry
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # Python's recipe: the exit-time flush must not fail again
        return 1


if __name__ == "__main__":
    sys.exit(main())
