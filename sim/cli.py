"""``python -m sim`` and the ``run`` / ``compare`` subcommands of ``ksmlab``.

``run SCENARIO [--kernel V] [--trace OUT]`` writes a ``ksm-trace/1`` trace (stdout without
``--trace``); ``compare A B`` exits 0 iff the traces agree and prints each difference (pages
a kernel trace lists as tied, which userspace could not classify, are compared by their
number of KSM pages: :func:`sim.trace.without_ties`).
Exit status 2 with one line on stderr for bad input; 4 for an op the kernel lacks.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from .errors import ScenarioError, UnsupportedError
from .presets import PRESETS_DIR
from .runner import run_scenario
from .scenario import KERNELS, Scenario, load_scenario
from .trace import compare_traces, load_trace, tied_pages, without_ties


def resolve_scenario(name: str) -> Scenario:
    """A scenario from a path, or from a preset name (:mod:`sim.presets`, ``NAME.json``)."""
    path = Path(name)
    if not path.exists() and not name.endswith((".json", ".yaml", ".yml")):
        preset = PRESETS_DIR / f"{name}.json"
        if preset.exists():
            path = preset
        else:
            raise ScenarioError(f"no scenario file or preset named {name!r}")
    return load_scenario(path)


def _write_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent or ".", prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def cmd_run(args: argparse.Namespace) -> int:
    try:
        scenario = resolve_scenario(args.scenario)
        if args.kernel:
            scenario = scenario.with_kernel(args.kernel)
        trace = run_scenario(scenario, check=args.check)
    except UnsupportedError as exc:
        print(f"ksmlab run: unsupported on this kernel: {exc}", file=sys.stderr)
        return 4
    except ScenarioError as exc:
        print(f"ksmlab run: {args.scenario}: {exc}", file=sys.stderr)
        return 2
    text = json.dumps(trace, indent=1) + "\n"
    if args.trace:
        try:
            _write_atomic(Path(args.trace), text)
        except OSError as exc:
            print(f"ksmlab run: cannot write {args.trace}: {exc.strerror}", file=sys.stderr)
            return 2
    else:
        sys.stdout.write(text)
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    try:
        a: dict[str, Any] = load_trace(args.a)
        b: dict[str, Any] = load_trace(args.b)
    except ScenarioError as exc:
        print(f"ksmlab compare: {exc}", file=sys.stderr)
        return 2
    diffs = compare_traces(a, b)
    rest = without_ties(a, b) if diffs else None
    if rest == []:
        n = sum(len(t.get("pages") or []) for t in tied_pages(a) + tied_pages(b))
        print(
            f"traces agree, except which of {n} tied page(s) are the KSM ones: the kernel "
            "could not tell (meta.page_classification.ambiguous_pages); their KSM counts "
            "agree"
        )
        return 0
    if rest is not None:
        print("(tied pages, which the kernel could not classify, compared by KSM count only)")
        diffs = rest
    for line in diffs:
        print(line)
    if diffs:
        print(f"{len(diffs)} difference(s)")
        return 1
    print("traces agree")
    return 0


def register(sub: Any) -> None:
    run = sub.add_parser("run", help="run a scenario in the simulator, print its trace")
    run.add_argument("scenario", help="scenario file (JSON) or preset name")
    run.add_argument("--kernel", choices=KERNELS, help="kernel profile (overrides the file)")
    run.add_argument("--trace", help="write the trace here instead of stdout")
    run.add_argument("--check", action="store_true", help="check invariants after each step")
    run.set_defaults(func=cmd_run)
    cmp = sub.add_parser("compare", help="compare two traces; exit 0 iff they agree")
    cmp.add_argument("a")
    cmp.add_argument("b")
    cmp.set_defaults(func=cmd_compare)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: {message}\n")


def main(argv: list[str] | None = None) -> int:
    parser = _Parser(prog="python -m sim", description="KSM Lab simulator")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    register(sub)
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    status: int = args.func(args)
    return status
