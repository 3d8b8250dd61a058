"""``python -m lyco_bench.world make-world | make-world-dataset …`` (the same as ``lyco-bench …``)."""

from __future__ import annotations

import argparse
import sys

from lyco_bench.errors import BadInput
from lyco_bench.world import register_cli


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lyco_bench.world")
    register_cli(parser.add_subparsers(dest="command", metavar="COMMAND"))
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except BadInput as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
