"""Runs inside the qemu guest (stdlib only): replays the job's scenarios, reports on ttyS1.

``/init`` runs ``python3.11 -S -m app.kernel.guest_runner /ksmlab/job``. ``job.json`` there
lists the scenario files of the job (``{"scenarios": ["0000.json", ...], "timeout": s,
"replayer": module, "fork": true}``, or ``{"probe": true}`` for a boot check). Each scenario
is replayed by the project's kernel replayer as if by ``python3.11 -m app.kernel.replayer
SCENARIO --trace OUT``, in a child process of its own (a replay cannot leave state behind
for the next one): the runner imports the replayer once and forks a child that calls its
``main(argv)`` (a fresh interpreter would re-import it, ~3 s per replay under TCG); a
module without ``main`` (or ``"fork": false``) is run with ``python3.11 -m``. A replay that
exceeds ``timeout`` gets SIGTERM (its process group), then SIGKILL, and status 124.
Its result is written at once to the second serial port as one frame::

    KSMLAB-FRAME <kind> <index> <length> <sha256 of the payload>
    <payload: zlib-compressed JSON, base64, 76 columns>
    KSMLAB-END <index>

``kind`` is ``hello`` (index -1: uname, uptime), ``result`` (``{"status", "trace",
"stderr", "seconds"}``), ``done`` (index = number of results) or ``error`` (index -1: the
runner itself failed; ``{"traceback"}``). The host
(:mod:`app.kernel.qemu_serial`) checks length and digest of every frame; a frame that fails
the check is ignored as if missing. Console messages of the kernel go to ttyS0 and cannot
interleave with frames.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import importlib
import json
import os
import signal
import subprocess
import sys
import time
import traceback
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

PORT = "/dev/ttyS1"
REPLAYER = "app.kernel.replayer"


class _Port:
    def __init__(self, path: str) -> None:
        self.fd = os.open(path, os.O_WRONLY | os.O_NOCTTY)
        try:
            import tty

            tty.setraw(self.fd)  # no \n -> \r\n translation, no echo games
        except (ImportError, OSError):
            pass

    def frame(self, kind: str, index: int, payload: Any) -> None:
        raw = zlib.compress(json.dumps(payload, sort_keys=True).encode(), 9)
        text = base64.encodebytes(raw).decode()
        head = f"KSMLAB-FRAME {kind} {index} {len(raw)} {hashlib.sha256(raw).hexdigest()}\n"
        self._write(f"{head}{text}KSMLAB-END {index}\n".encode())

    def _write(self, data: bytes) -> None:
        while data:
            n = os.write(self.fd, data)
            data = data[n:]

    def drain(self) -> None:
        try:
            import termios

            termios.tcdrain(self.fd)
        except (ImportError, OSError):
            pass


def _hello() -> dict[str, Any]:
    u = os.uname()
    info: dict[str, Any] = {"release": u.release, "version": u.version, "machine": u.machine}
    info["uptime"] = float(Path("/proc/uptime").read_text().split()[0])
    info["python"] = sys.version.split()[0]
    info["cmdline"] = Path("/proc/cmdline").read_text().strip()
    info["nproc"] = os.cpu_count()
    mem = Path("/proc/meminfo").read_text().splitlines()
    info["memtotal"] = mem[0].split(":")[1].strip() if mem else None
    thp = Path("/sys/kernel/mm/transparent_hugepage/enabled")
    info["thp"] = thp.read_text().strip() if thp.exists() else None
    return info


def _probe() -> dict[str, Any]:
    knobs: dict[str, str | None] = {}
    base = Path("/sys/kernel/mm/ksm")
    if base.is_dir():
        for p in sorted(base.iterdir()):
            try:
                knobs[p.name] = p.read_text().strip()
            except OSError as exc:
                knobs[p.name] = f"error: {exc.strerror}"
    return {"status": 0, "trace": None, "stderr": "", "ksm": knobs, "seconds": 0.0}


ReplayMain = Callable[[list[str]], Any]


def _load_main(module: str) -> ReplayMain | None:
    """The replayer's ``main(argv)``, imported once here so that every forked replay starts
    with it loaded (importing it costs ~2.5 s under TCG); None: replay by ``python3 -m``."""
    try:
        main = getattr(importlib.import_module(module), "main", None)
    except Exception:  # noqa: BLE001 - the ``-m`` run then reports the error itself
        return None
    return main if callable(main) else None


def _child(main: ReplayMain, argv: list[str], stderr: Path) -> NoReturn:
    status = 3
    try:
        os.setpgid(0, 0)
        fd = os.open(stderr, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        sys.argv = [REPLAYER, *argv]
        code = main(argv)
        status = code if isinstance(code, int) else (0 if code is None else 1)
    except SystemExit as exc:
        status = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:  # noqa: BLE001 - reported as the replay's stderr
        traceback.print_exc()
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(status & 0xFF)


def _wait(pid: int, timeout: float) -> int | None:
    """The child's exit status, or None after ``timeout`` (then it is stopped: SIGTERM to its
    process group, so the replayer restores the knobs, SIGKILL 5 s later)."""
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        if time.monotonic() > deadline:
            break
        time.sleep(0.01)
    for sig, grace in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 30.0)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, sig)
        end = time.monotonic() + grace
        while time.monotonic() < end:
            if os.waitpid(pid, os.WNOHANG)[0]:
                return None
            time.sleep(0.05)
    return None


def _run_forked(main: ReplayMain, argv: list[str], timeout: float) -> tuple[int, str]:
    stderr = Path("/tmp/replay-stderr")
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        _child(main, argv, stderr)
    status = _wait(pid, timeout)
    text = stderr.read_text(errors="replace") if stderr.exists() else ""
    if status is None:
        return 124, text + f"\nguest: replay timed out after {timeout:.0f} s"
    return status, text


def _run_exec(module: str, argv: list[str], job: Path, timeout: float) -> tuple[int, str]:
    cmd = [sys.executable, "-S", "-m", module, *argv]
    env = dict(os.environ, PYTHONPATH=f"/ksmlab:{job}")
    try:
        proc = subprocess.run(
            cmd,
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd="/ksmlab",
            env=env,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        err = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else ""
        return 124, err + f"\nguest: replay timed out after {timeout:.0f} s"
    return proc.returncode, proc.stderr


def _replay(
    job: Path, name: str, timeout: float, module: str, main: ReplayMain | None
) -> dict[str, Any]:
    out = Path("/tmp") / f"trace-{name}"
    out.unlink(missing_ok=True)
    argv = [str(job / name), "--trace", str(out)]
    t0 = time.monotonic()
    if main is not None:
        status, stderr = _run_forked(main, argv, timeout)
    else:
        status, stderr = _run_exec(module, argv, job, timeout)
    trace = None
    if out.exists():
        try:
            trace = json.loads(out.read_text())
        except ValueError as exc:
            stderr += f"\nguest: trace is not JSON: {exc}"
    return {
        "status": status,
        "trace": trace,
        "stderr": stderr[-20000:],
        "seconds": round(time.monotonic() - t0, 3),
        "forked": main is not None,
    }


def main(argv: list[str]) -> int:
    port = _Port(PORT)
    try:
        return _main(argv, port)
    except BaseException:
        port.frame("error", -1, {"traceback": traceback.format_exc()[-5000:]})
        port.drain()
        raise


def _main(argv: list[str], port: _Port) -> int:
    job = Path(argv[1] if len(argv) > 1 else "/ksmlab/job")
    port.frame("hello", -1, _hello())
    spec = json.loads((job / "job.json").read_text())
    results = 0
    if spec.get("probe"):
        port.frame("result", 0, _probe())
        results = 1
    else:
        timeout = float(spec.get("timeout", 300))
        module = str(spec.get("replayer", REPLAYER))
        sys.path[:0] = ["/ksmlab", str(job)]
        os.chdir("/ksmlab")
        replay_main = _load_main(module) if spec.get("fork", True) else None
        for index, name in enumerate(spec["scenarios"]):
            port.frame("result", index, _replay(job, name, timeout, module, replay_main))
            results += 1
    port.frame("done", results, {"uptime": float(Path("/proc/uptime").read_text().split()[0])})
    port.drain()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
