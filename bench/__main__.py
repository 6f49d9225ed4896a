"""Gateway benchmarks: ``python -m bench <subcommand> [options]``.

Each subcommand is a module of this package with ``add_arguments(parser)`` and ``run(args) -> int``;
its docstring's first line is the help text. Adding one is one line in ``SUBCOMMANDS``.
"""
from __future__ import annotations

import argparse
import importlib
import sys

SUBCOMMANDS = {
    "fastpath": "bench.fastpath",
    "load": "bench.load",
    "sweep": "bench.sweep",
    "fuzz": "bench.fuzz",
    "medians": "bench.medians",
    "soak": "bench.soak",
    "control": "bench.control",
    "reconnect": "bench.reconnect",
    "stalls": "bench.stalls",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="subcommand", required=True, metavar="subcommand")
    for name, module_name in SUBCOMMANDS.items():
        module = importlib.import_module(module_name)
        summary = (module.__doc__ or "").strip().splitlines()[0]
        command = sub.add_parser(name, help=summary, description=module.__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(command)
        command.set_defaults(run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
