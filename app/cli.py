"""The ``ksmlab`` command line.

Each feature registers its own subcommands: a module listed in ``_COMMAND_MODULES`` exposes
``register(subparsers)``, which adds parsers whose ``func`` attribute takes the parsed
arguments and returns the exit status. Modules are imported lazily so that a command never
pays for (or depends on) another command's imports.

Exit statuses: 0 success, 1 the command ran and found a problem (e.g. traces disagree),
2 bad usage or bad input (one line on stderr saying why), 4 unsupported on this kernel.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

_COMMAND_MODULES = (
    "sim.cli",  # run, compare (also `python -m sim`)
    "app.kernel.cli",  # replay, fuzz
    "app.server.cli",  # serve
    "app.presets_cli",  # presets, sweep
)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="ksmlab", description="KSM Lab: Linux KSM, simulated and replayed")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name in _COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name and name.startswith(exc.name):
                continue  # feature not present in this build
            raise
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    status: int = args.func(args)
    return status


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
