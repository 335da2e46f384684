"""Replay scenarios on Debian's 6.1 and 6.12 kernels, booted under qemu (TCG) -- issue 9.

API (stdlib only; used by ``app.kernel.cli`` for ``replay --kernel`` and ``fuzz --kernel``):

``replay_in_guest(scenario_path, version, trace_out=None) -> int``
    Boots kernel ``version`` (``"6.1"`` or ``"6.12"``), replays the scenario inside the guest
    with ``python3 -m app.kernel.replayer`` as root, and writes the trace (JSON) to
    ``trace_out`` (stdout when None), with ``meta.guest`` added (kernel package and version,
    uname, qemu command and host package versions, timings). Returns the exit status:

    * 0: trace written;
    * 1: the guest failed (did not boot, timed out, replayer crashed or wrote no trace);
    * 2: bad input or a missing piece (qemu, busybox, python3.11, the kernel package);
    * 4: the scenario is unsupported on this kernel (the replayer's own status, e.g. prctl
      on 6.1), no trace written;
    * any other non-zero status of the replayer, passed through (no trace written).

    Errors are one line on stderr (prefix ``ksmlab replay --kernel V:``); the replayer's
    stderr is relayed as is.

``replay_many_in_guest(scenarios, version, *, on_result=None, timeout=...) -> list[GuestResult]``
    Replays many scenarios (dicts, or paths) in ONE boot -- what ``fuzz --kernel`` needs --,
    in order, each in a fresh replayer process. Returns one :class:`GuestResult` per scenario
    (``status``, ``trace`` or None, ``stderr``, ``seconds``), in order; ``on_result(index,
    result)`` is called as each arrives (progress bars). If the guest dies or hangs during a
    scenario, that scenario is tried once more in a new boot, then gets status 1, and the
    rest continue in a new boot; a boot that dies before the guest's runner starts (a rare
    kernel panic under TCG) is tried again, twice. Raises
    :class:`QemuError` (``.status`` 2 missing piece or bad input, 1 the guest cannot boot).
    Scenario dicts are not validated here: validate them before (``sim.scenario``).

``ensure_ready(version) -> Kernel`` checks everything and fetches what is missing;
``probe_guest(version) -> dict`` boots once and returns ``uname`` and ``/sys/kernel/mm/ksm``.

Command line (for ``.ci/qemu-setup.sh``): ``python3 -m app.kernel.qemu fetch [6.1 6.12]``
caches the kernels and the base initramfs (``--offline``: only check the cache);
``python3 -m app.kernel.qemu probe 6.1`` boots once and prints uname and the KSM knobs.

The pieces: :mod:`.qemu_packages` (Debian packages, cache), :mod:`.qemu_initramfs` (the
image), :mod:`.qemu_boot` (one qemu run, serial frames), :mod:`.guest_runner` (inside).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import qemu_initramfs as initramfs
from .qemu_boot import Boot, Frame, boot
from .qemu_packages import (
    Kernel,
    MissingPiece,
    cache_dir,
    check_version,
    ensure_kernel,
    find_qemu,
    host_package_versions,
)

ROOT = Path(__file__).resolve().parents[2]
BOOT_TIMEOUT = 120.0  # seconds until the guest's first frame (TCG boot takes ~4 s)
SCENARIO_TIMEOUT = 300.0  # seconds one replay may take inside the guest
REPLAYER = "app.kernel.replayer"
BOOT_RETRIES = 2  # boots that die before the guest runner starts, tried again
SCENARIO_RETRIES = 1  # a scenario during which the guest died is tried once more


class QemuError(Exception):
    """The guest could not run; ``status`` is the exit status to report (1 or 2)."""

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class GuestResult:
    status: int  # the replayer's exit status in the guest (1 if the guest failed)
    trace: dict[str, Any] | None
    stderr: str
    seconds: float  # the replay inside the guest


def _qemu_version(qemu: str) -> str | None:
    try:
        out = subprocess.run(
            [qemu, "--version"], capture_output=True, text=True, timeout=20, check=False
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.splitlines()[0].strip() if out else None


def base_image() -> bytes:
    """The base initramfs, from the cache or built (and cached) now."""
    try:
        key = initramfs.base_key()
    except initramfs.InitramfsError as exc:
        raise MissingPiece(str(exc)) from None
    path = cache_dir() / "initramfs" / f"base-{key}.cpio"
    if path.exists():
        return path.read_bytes()
    data = initramfs.build_base()
    path.parent.mkdir(parents=True, exist_ok=True)
    for old in path.parent.glob("base-*.cpio"):
        old.unlink(missing_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.part")
    tmp.write_bytes(data)
    tmp.replace(path)
    return data


def ensure_ready(version: str, fetch: bool = True) -> Kernel:
    """Check qemu and the guest's pieces; fetch the kernel into the cache if needed."""
    check_version(version)
    find_qemu()
    kernel = ensure_kernel(version, fetch=fetch)
    base_image()
    return kernel


def _boot_job(
    version: str,
    job: dict[str, bytes],
    expected: int,
    on_frame: Callable[[Frame], None] | None = None,
    timeout: float = SCENARIO_TIMEOUT,
) -> tuple[Kernel, Boot]:
    try:
        qemu = find_qemu()
        kernel = ensure_kernel(version)
        base = base_image()
        job_image = initramfs.build_job(ROOT, job)
    except (MissingPiece, initramfs.InitramfsError) as exc:
        raise QemuError(str(exc), status=2) from None
    # the guest kills a replay after ``timeout``; the host allows some more for the frame
    return kernel, boot(
        qemu, kernel.vmlinuz, [base, job_image], BOOT_TIMEOUT, timeout + 60, on_frame, expected
    )


def _guest_meta(kernel: Kernel, result: Boot, hello: dict[str, Any] | None) -> dict[str, Any]:
    return {
        "kernel_profile": kernel.version,
        "kernel_package": kernel.package,
        "kernel_package_version": kernel.package_version,
        "uname": (hello or {}).get("release"),
        "uname_version": (hello or {}).get("version"),
        "qemu": _qemu_version(result.command[0]) if result.command else None,
        "qemu_command": result.command,
        "host_packages": host_package_versions(),
        "host_mergeable_kb": result.host_mergeable_kb,
        "guest_uptime_at_start": (hello or {}).get("uptime"),
        "boot_seconds": result.first_frame_seconds,
        "total_seconds": result.seconds,
    }


def _failure(result: Boot) -> str:
    if result.timed_out:
        return f"guest timed out after {result.seconds:.0f} s"
    lines = [ln for ln in result.console.replace("\r", "").splitlines() if ln.strip()]
    if result.panicked is not None:
        panic = [ln for ln in lines if "Kernel panic" in ln][:1]
        return f"guest kernel panicked after {result.panicked:.0f} s: {' | '.join(panic)}"
    return f"guest ended (qemu status {result.returncode}) early; console: " + " | ".join(
        lines[-3:]
    )


def _raise_runner_error(result: Boot, version: str) -> None:
    for frame in result.get("error"):
        lines = str(frame.payload.get("traceback", "")).strip().splitlines()
        raise QemuError(f"kernel {version}: the guest runner failed: {lines[-1] if lines else '?'}")


def _load(source: dict[str, Any] | str | Path) -> bytes:
    if isinstance(source, dict):
        return json.dumps(source).encode()
    from sim.errors import ScenarioError
    from sim.scenario import load_scenario

    try:
        return json.dumps(load_scenario(source).to_dict()).encode()
    except ScenarioError as exc:
        raise QemuError(f"{source}: {exc}", status=2) from None


def replay_many_in_guest(
    scenarios: Sequence[dict[str, Any] | str | Path],
    version: str,
    *,
    on_result: Callable[[int, GuestResult], None] | None = None,
    timeout: float = SCENARIO_TIMEOUT,
    replayer: str = REPLAYER,
    extra_files: dict[str, bytes] | None = None,
    fork: bool = True,
) -> list[GuestResult]:
    """Replay every scenario in one guest boot (more if the guest dies); see the module doc.

    For the tests of this pipeline: ``replayer`` (the module with ``main(argv)``),
    ``extra_files`` (put in the guest's job folder, which is on its ``sys.path``), ``fork``
    (False: a fresh ``python3 -m replayer`` per scenario instead of a forked child).
    """
    docs = [_load(s) for s in scenarios]
    results: dict[int, GuestResult] = {}
    deaths: dict[int, int] = {}  # scenario index -> boots that died during it
    boot_failures = 0
    start = 0
    while start < len(docs):
        job = dict(extra_files or {})
        job.update({f"{i:05d}.json": docs[i] for i in range(start, len(docs))})
        job["job.json"] = json.dumps(
            {
                "scenarios": [f"{i:05d}.json" for i in range(start, len(docs))],
                "timeout": timeout,
                "replayer": replayer,
                "fork": fork,
            }
        ).encode()
        hello, batch, result = _run_batch(
            version, job, start, len(docs) - start, timeout, on_result
        )
        results.update(batch)
        missing = [i for i in range(start, len(docs)) if i not in results]
        if not missing:
            break
        log = _keep_console(result)
        if not hello:  # the kernel did not boot (a rare panic under TCG): boot again
            boot_failures += 1
            if boot_failures > BOOT_RETRIES:
                raise QemuError(f"kernel {version}: {_failure(result)} (console: {log})")
            continue
        bad = missing[0]  # the guest died or hung during this one: once more, then give up
        deaths[bad] = deaths.get(bad, 0) + 1
        if deaths[bad] > SCENARIO_RETRIES:
            results[bad] = GuestResult(1, None, f"guest: {_failure(result)} (console: {log})", 0.0)
            if on_result:
                on_result(bad, results[bad])
            bad += 1
        start = bad
    return [results[i] for i in range(len(docs))]


def _run_batch(
    version: str,
    job: dict[str, bytes],
    first: int,
    count: int,
    timeout: float,
    on_result: Callable[[int, GuestResult], None] | None,
) -> tuple[dict[str, Any] | None, dict[int, GuestResult], Boot]:
    """One boot replaying scenarios ``first .. first+count-1``: (hello, results, boot)."""
    hello: list[dict[str, Any]] = []
    batch: dict[int, GuestResult] = {}

    def frame_seen(frame: Frame) -> None:
        if frame.kind == "hello":
            hello.append(frame.payload)
        elif frame.kind == "result":
            p = frame.payload
            r = GuestResult(
                int(p["status"]), p.get("trace"), p.get("stderr", ""), float(p.get("seconds", 0.0))
            )
            batch[first + frame.index] = r
            if on_result:
                on_result(first + frame.index, r)

    kernel, result = _boot_job(version, job, count, frame_seen, timeout)
    _raise_runner_error(result, version)
    meta = _guest_meta(kernel, result, hello[0] if hello else None)
    for r in batch.values():
        if r.trace is not None:
            r.trace.setdefault("meta", {}).setdefault("guest", {}).update(meta)
    return (hello[0] if hello else None), batch, result


def _keep_console(result: Boot) -> Path | None:
    """Keep the console of a boot that went wrong (``CACHE/logs/last-failed-console.txt``)."""
    path = cache_dir() / "logs" / "last-failed-console.txt"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(result.console, encoding="utf-8")
    except OSError:
        return None
    return path


def replay_in_guest(
    scenario_path: str | Path, version: str, trace_out: str | Path | None = None
) -> int:
    """Replay one scenario file in a guest; write the trace; return the exit status."""
    prefix = f"ksmlab replay --kernel {version}:"
    try:
        check_version(version)
        (result,) = replay_many_in_guest([scenario_path], version)
    except (QemuError, MissingPiece) as exc:
        sys.stderr.write(f"{prefix} {exc}\n")
        return exc.status if isinstance(exc, QemuError) else 2
    if result.stderr.strip():
        sys.stderr.write(result.stderr if result.stderr.endswith("\n") else result.stderr + "\n")
    if result.status != 0:
        return result.status
    if result.trace is None:
        sys.stderr.write(f"{prefix} the replayer wrote no trace\n")
        return 1
    text = json.dumps(result.trace, indent=2) + "\n"
    if trace_out is None:
        sys.stdout.write(text)
    else:
        Path(trace_out).write_text(text, encoding="utf-8")
    return 0


def probe_guest(version: str) -> dict[str, Any]:
    """Boot once without replaying: ``{"hello": uname etc., "ksm": knobs, "boot": timings}``."""
    job = {"job.json": json.dumps({"probe": True}).encode()}
    kernel, result = _boot_job(version, job, 1)
    _raise_runner_error(result, version)
    hello = [f.payload for f in result.get("hello")]
    res = [f.payload for f in result.get("result")]
    if not hello or not res:
        raise QemuError(f"kernel {version}: {_failure(result)}")
    return {
        "hello": hello[0],
        "ksm": res[0].get("ksm", {}),
        "guest": _guest_meta(kernel, result, hello[0]),
    }


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    cmd = args.pop(0) if args else ""
    offline = "--offline" in args
    versions = [a for a in args if not a.startswith("--")] or ["6.1", "6.12"]
    try:
        if cmd == "fetch":
            for v in versions:
                k = ensure_ready(v, fetch=not offline)
                sys.stdout.write(f"{v}: {k.package} {k.package_version} -> {k.vmlinuz}\n")
            return 0
        if cmd == "probe":
            for v in versions:
                t0 = time.monotonic()
                info = probe_guest(v)
                info["wall_seconds"] = round(time.monotonic() - t0, 2)
                sys.stdout.write(json.dumps(info, indent=2) + "\n")
            return 0
    except (QemuError, MissingPiece) as exc:
        sys.stderr.write(f"qemu {cmd}: {exc}\n")
        return exc.status if isinstance(exc, QemuError) else 2
    sys.stderr.write("usage: python3 -m app.kernel.qemu fetch [--offline]|probe [6.1 6.12]\n")
    return 2


if __name__ == "__main__":
    sys.exit(main())
