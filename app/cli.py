"""The ``ksmlab`` command line.

Each feature registers its own subcommands: every module in :data:`COMMAND_MODULES` exposes
``register(subparsers)``, which adds parsers whose ``func`` attribute takes the parsed
arguments and returns the exit status. Those modules keep their heavy imports (FastAPI,
plotly, ...) inside the commands, so building the parser stays cheap.

Exit statuses: 0 success, 1 the command ran and found a problem (e.g. traces disagree),
2 bad usage or bad input (one line on stderr saying why), 4 unsupported on this kernel.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import sim.cli
from app.kernel import capture as kernel_capture
from app.kernel import cli as kernel_cli
from app.server import cli as server_cli
from app.whatif import check as check_cli
from app.whatif import cli as whatif_cli
from app.whatif import predict as whatif_predict

COMMAND_MODULES = (
    sim.cli,  # run, compare (also `python -m sim`)
    kernel_cli,  # replay, fuzz
    server_cli,  # serve
    whatif_cli,  # presets, sweep
    kernel_capture,  # capture
    whatif_predict,  # predict
    check_cli,  # calibrate, whatif-check
)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="ksmlab", description="KSM Lab: Linux KSM, simulated and replayed")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for module in COMMAND_MODULES:
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
