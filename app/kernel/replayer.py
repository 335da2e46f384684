"""``ksmlab replay``'s command line: replay a ``ksm-scenario/1`` on the real kernel and
record a ``ksm-trace/1`` trace.

The replay itself lives in three rooms: :mod:`.session` (the host session: lock, refusals,
saved and restored knobs, signals, workers, the probe), :mod:`.ops` (the steps) and
:mod:`.observe` (what a checkpoint records). Host safety is :mod:`.guard`'s: knobs saved
before the first write and restored on every way out (including SIGTERM/SIGINT/SIGHUP),
workers killed, one replay at a time (a lock).

Run it with only the standard library: ``python3 -m app.kernel.replayer SCENARIO.json
--trace OUT.json`` (the same options as ``ksmlab replay``). Exit statuses: 0 trace
written, 1 the trace differs from ``--expect``, 2 refusal or bad input, 3 the replay failed,
4 the scenario uses an operation this kernel lacks (prctl before 6.4), no trace written.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sim.errors import ScenarioError
from sim.scenario import Scenario, load_scenario

from . import libc
from .guard import (
    Refusal,
    check_privileges,
    host_lock,
    lock_file_path,
    restore_from_state_file,
    state_file_path,
)
from .host.procfs import ProcFs
from .ops import ReplayFailed, replay
from .session import (
    Interrupted,
    KernelSession,
    ReplayConfig,
    Unsupported,
    kill_recorded_workers,
    scenario_needs_prctl,
)
from .sysfs import DEFAULT_ROOT, KsmSysfs

EXIT_OK, EXIT_DIFFER, EXIT_REFUSED, EXIT_FAILED, EXIT_UNSUPPORTED = 0, 1, 2, 3, 4


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("scenario", nargs="?", help="ksm-scenario/1 file (JSON)")
    parser.add_argument(
        "--trace", metavar="OUT.json", help="write the trace here (default: standard output)"
    )
    parser.add_argument(
        "--force", action="store_true", help="replay even if another process uses KSM"
    )
    parser.add_argument(
        "--restore",
        action="store_true",
        help="put the knobs saved by an interrupted (killed) replay back",
    )
    parser.add_argument(
        "--expect",
        metavar="TRACE.json",
        help="compare with this trace; exit status 1 if they differ",
    )
    parser.add_argument(
        "--state-file",
        type=Path,
        default=None,
        help=f"knob state file (default {state_file_path()})",
    )
    parser.add_argument(
        "--lock-file", type=Path, default=None, help=f"host lock file (default {lock_file_path()})"
    )
    parser.add_argument(
        "--lock-timeout",
        type=float,
        default=None,
        help="seconds to wait for another replay (default: forever)",
    )
    parser.add_argument("--sysfs-root", default=DEFAULT_ROOT, help=argparse.SUPPRESS)


def config_from_args(args: argparse.Namespace) -> ReplayConfig:
    cfg = ReplayConfig(
        sysfs_root=args.sysfs_root,
        force=bool(args.force),
        lock_timeout=args.lock_timeout,
        log=_stderr_line,
    )
    if args.state_file is not None:
        cfg.state_file = args.state_file
    if args.lock_file is not None:
        cfg.lock_file = args.lock_file
    return cfg


def _stderr_line(line: str) -> None:
    sys.stderr.write(f"ksmlab replay: {line}\n")


def restore_command(cfg: ReplayConfig) -> int:
    """``--restore``: knobs back from the state file of a killed replay."""
    sysfs = KsmSysfs(cfg.sysfs_root)
    try:
        check_privileges(sysfs)
        with host_lock(cfg.lock_file, cfg.lock_timeout, _stderr_line):
            found, problems = restore_from_state_file(
                cfg.state_file, None, lambda w: kill_recorded_workers(ProcFs(cfg.proc_root), w)
            )
    except Refusal as exc:
        _stderr_line(str(exc))
        return EXIT_REFUSED
    if not found:
        _stderr_line(f"nothing to restore ({cfg.state_file} does not exist)")
        return EXIT_OK
    if problems:
        _stderr_line(f"could not restore: {problems}")
        return EXIT_FAILED
    _stderr_line(f"knobs restored from {cfg.state_file}")
    return EXIT_OK


def replay_scenario(scenario: Scenario, cfg: ReplayConfig) -> dict[str, Any]:
    """Replay one scenario in its own session; the trace's meta has the restore outcome.

    Raises :class:`Refusal`, :class:`Unsupported`, :class:`ReplayFailed`,
    :class:`Interrupted`.
    """
    check_privileges(KsmSysfs(cfg.sysfs_root))
    step = scenario_needs_prctl(scenario)
    if step is not None and not libc.memory_merge_supported():
        raise Unsupported(
            f"step {step.index}: prctl PR_SET_MEMORY_MERGE does not exist on "
            f"kernel {os.uname().release} (6.4+)"
        )
    session = KernelSession(cfg)
    with session:
        trace = replay(session, scenario)
    trace["meta"]["restore_problems"] = session.restore_problems
    trace["meta"]["warnings"].extend(session.warnings)
    return trace


def run(args: argparse.Namespace) -> int:
    """Entry point shared by ``ksmlab replay`` and ``python3 -m app.kernel.replayer``."""
    cfg = config_from_args(args)
    if args.restore:
        if args.scenario:
            _stderr_line("--restore takes no scenario")
            return EXIT_REFUSED
        return restore_command(cfg)
    if not args.scenario:
        _stderr_line("a scenario file is required (or --restore)")
        return EXIT_REFUSED
    try:
        scenario = load_scenario(args.scenario)
        expect = None
        if args.expect:
            from sim.trace import load_trace

            expect = load_trace(args.expect)
    except ScenarioError as exc:
        _stderr_line(f"{args.scenario}: {exc}")
        return EXIT_REFUSED
    try:
        trace = replay_scenario(scenario, cfg)
    except Refusal as exc:
        _stderr_line(str(exc))
        return EXIT_REFUSED
    except Unsupported as exc:
        _stderr_line(f"unsupported on this kernel: {exc}")
        return EXIT_UNSUPPORTED
    except ReplayFailed as exc:
        _stderr_line(f"replay failed: {exc}")
        return EXIT_FAILED
    except Interrupted as exc:
        _stderr_line(f"{exc}; knobs restored")
        return 128 + exc.signum
    text = json.dumps(trace, indent=1) + "\n"
    if args.trace:
        Path(args.trace).write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    problems = trace["meta"]["restore_problems"]
    if problems:
        _stderr_line(f"knobs not restored: {problems}")
        return EXIT_FAILED
    if expect is not None:
        from sim.trace import compare_traces, without_ties

        diffs = compare_traces(expect, trace)
        if diffs and without_ties(expect, trace) == []:
            _stderr_line(
                f"the trace agrees with {args.expect} except which tied pages are "
                "the KSM ones (meta.page_classification.ambiguous_pages)"
            )
            return EXIT_OK
        for line in diffs[:40]:
            sys.stderr.write(f"  {line}\n")
        if diffs:
            _stderr_line(f"the trace differs from {args.expect} ({len(diffs)} differences)")
            return EXIT_DIFFER
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python3 -m app.kernel.replayer",
        description="Replay a ksm-scenario/1 file on this machine's kernel (root).",
    )
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
