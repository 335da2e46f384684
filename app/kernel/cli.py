"""``ksmlab replay`` and ``ksmlab fuzz`` (registered by :mod:`app.cli`).

``ksmlab replay SCENARIO.json [--trace OUT.json] [--force] [--expect TRACE.json]``
    replays a scenario on this machine's kernel (root); ``--restore`` puts the knobs saved
    by a killed replay back; ``--kernel 6.1|6.12`` replays in a qemu guest instead
    (:mod:`app.kernel.qemu`).
``ksmlab fuzz [--count N] [--seed S] [--out DIR] [--kernel VERSION]``
    differential fuzzing, simulator against kernel; ends with ``N agree, M disagree``.

Exit statuses: 0 ok, 1 disagreement, 2 bad input or refusal (one line), 3 the replay
failed, 4 unsupported on this kernel.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from . import qemu, replayer
from .guard import Refusal, check_privileges
from .qemu_packages import MissingPiece
from .session import Interrupted, KernelSession, ReplayConfig
from .sysfs import KsmSysfs


def register(subparsers: Any) -> None:
    rp = subparsers.add_parser(
        "replay",
        help="replay a scenario on the real kernel (root), write its trace",
        description="Replay a ksm-scenario/1 file on this machine's kernel and record a "
        "ksm-trace/1 trace. Every KSM knob is saved first and restored after.",
    )
    replayer.add_arguments(rp)
    rp.add_argument(
        "--kernel",
        metavar="VERSION",
        help="replay in a qemu guest booted on Debian's kernel VERSION (6.1, 6.12)",
    )
    rp.set_defaults(func=cmd_replay)

    fz = subparsers.add_parser(
        "fuzz",
        help="differential fuzz: random scenarios, simulator against kernel",
        description="Generate random scenarios, run each in the simulator and on the kernel, "
        "compare; save every disagreement (with a shrunk scenario) to --out.",
    )
    fz.add_argument("--count", type=int, default=100, help="number of scenarios (100)")
    fz.add_argument("--seed", type=int, default=0, help="random seed (0)")
    fz.add_argument(
        "--out", type=Path, default=Path("fuzz-out"), help="directory for disagreements (fuzz-out)"
    )
    fz.add_argument(
        "--kernel",
        metavar="VERSION",
        help="replay in a qemu guest on Debian's kernel VERSION (6.1, 6.12)",
    )
    fz.add_argument("--force", action="store_true", help="run even if another process uses KSM")
    fz.add_argument(
        "--shrink-budget",
        type=int,
        default=None,
        help="most replays spent shrinking one disagreement (400 on the host, "
        "120 in a qemu guest; 0: do not shrink)",
    )
    fz.add_argument("--lock-timeout", type=float, default=None, help=argparse.SUPPRESS)
    fz.set_defaults(func=cmd_fuzz)


def _err(prog: str, line: str) -> None:
    sys.stderr.write(f"ksmlab {prog}: {line}\n")


def cmd_replay(args: argparse.Namespace) -> int:
    if args.kernel:
        if args.restore:
            _err("replay", "--restore is for the host kernel; it takes no --kernel")
            return replayer.EXIT_REFUSED
        if not args.scenario:
            _err("replay", "a scenario file is required")
            return replayer.EXIT_REFUSED
        return qemu.replay_in_guest(args.scenario, args.kernel, args.trace)
    return replayer.run(args)


def cmd_fuzz(args: argparse.Namespace) -> int:
    try:
        import sim  # noqa: F401 - the simulator is needed to compare
        from sim import run_scenario  # noqa: F401
    except ImportError as exc:
        _err("fuzz", f"the simulator is not available: {exc}")
        return replayer.EXIT_REFUSED
    from . import fuzz

    if args.count < 1:
        _err("fuzz", "--count must be at least 1")
        return replayer.EXIT_REFUSED
    progress = fuzz.Progress(args.count)
    budget = args.shrink_budget

    def on_found(index: int, outcome: fuzz.Outcome) -> None:
        if progress.tty:
            progress.stream.write("\n")
        first = outcome.diffs[0] if outcome.diffs else outcome.kind
        sys.stderr.write(f"  #{index} disagrees ({outcome.kind}): {first}; shrinking\n")

    def on_failure(index: int, outcome: fuzz.Outcome, where: Path | None) -> None:
        if progress.tty:
            progress.stream.write("\n")
        first = outcome.diffs[0] if outcome.diffs else outcome.kind
        sys.stderr.write(f"  #{index} shrunk: {first}" + (f"  -> {where}" if where else "") + "\n")

    if args.kernel:
        try:
            result = fuzz.fuzz(
                fuzz.guest_runner(args.kernel),
                count=args.count,
                seed=args.seed,
                out=args.out,
                kernel=args.kernel,
                batch=True,
                shrink_budget=120 if budget is None else budget,
                on_found=on_found,
                on_failure=on_failure,
                progress=progress,
            )
        except (qemu.QemuError, MissingPiece) as exc:
            progress.end()
            _err("fuzz", f"--kernel {args.kernel}: {exc}")
            return int(getattr(exc, "status", 2))
    else:
        cfg = ReplayConfig(
            force=args.force, lock_timeout=args.lock_timeout, log=lambda line: _err("fuzz", line)
        )
        try:
            check_privileges(KsmSysfs(cfg.sysfs_root))
            with KernelSession(cfg) as session:
                kernel = _host_profile()
                result = fuzz.fuzz(
                    fuzz.host_runner(session),
                    count=args.count,
                    seed=args.seed,
                    out=args.out,
                    kernel=kernel,
                    shrink_budget=400 if budget is None else budget,
                    on_found=on_found,
                    on_failure=on_failure,
                    progress=progress,
                )
            if session.restore_problems:
                _err("fuzz", f"knobs not restored: {session.restore_problems}")
        except Refusal as exc:
            progress.end()
            _err("fuzz", str(exc))
            return replayer.EXIT_REFUSED
        except Interrupted as exc:
            progress.end()
            _err("fuzz", f"{exc}; knobs restored")
            return 128 + exc.signum
    progress.end()
    kinds = ", ".join(sorted(result.kinds))
    sys.stdout.write(f"op kinds exercised: {len(result.kinds)} ({kinds})\n")
    sys.stdout.write(result.family_line + "\n")
    sys.stdout.write(f"duration: {result.seconds:.0f} s\n")
    sys.stdout.write(result.summary + "\n")
    return 0 if result.disagree == 0 else 1


def _host_profile() -> str:
    """The simulator profile for this machine's kernel ("6.18" unless it is a known older one)."""
    release = os.uname().release
    for version in ("6.12", "6.5", "6.1"):
        if release.startswith(version + ".") or release.startswith(version + "-"):
            return version
    return "6.18"
