"""Runs inside the qemu guest (stdlib only): replays the job's scenarios, reports on ttyS1.

``/init`` runs ``python3.11 -S -m app.kernel.guest_runner /ksmlab/job``. ``job.json`` there
lists the scenario files of the job (``{"scenarios": ["0000.json", ...], "timeout": s,
"replayer": module}``, or
``{"probe": true}`` for a boot check). Each scenario is replayed by the project's kernel
replayer, ``python3.11 -m app.kernel.replayer SCENARIO --trace OUT``, as a child process
(a replay cannot leave state behind for the next one), and its result is written at once to
the second serial port as one frame::

    KSMLAB-FRAME <kind> <index> <length> <sha256 of the payload>
    <payload: zlib-compressed JSON, base64, 76 columns>
    KSMLAB-END <index>

``kind`` is ``hello`` (index -1: uname, uptime), ``result`` (``{"status", "trace",
"stderr", "seconds"}``) or ``done`` (index = number of results). The host
(:mod:`app.kernel.qemu_serial`) checks length and digest of every frame; a frame that fails
the check is ignored as if missing. Console messages of the kernel go to ttyS0 and cannot
interleave with frames.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
import time
import zlib
from pathlib import Path
from typing import Any

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


def _replay(job: Path, name: str, timeout: float, module: str) -> dict[str, Any]:
    out = Path("/tmp") / f"trace-{name}"
    out.unlink(missing_ok=True)
    cmd = [sys.executable, "-S", "-m", module, str(job / name), "--trace", str(out)]
    t0 = time.monotonic()
    try:
        env = dict(os.environ, PYTHONPATH=f"/ksmlab:{job}")
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                              cwd="/ksmlab", env=env, check=False)
        status, stderr = proc.returncode, proc.stderr
    except subprocess.TimeoutExpired as exc:
        err = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else ""
        status, stderr = 124, err + f"\nguest: replay timed out after {timeout:.0f} s"
    trace = None
    if out.exists():
        try:
            trace = json.loads(out.read_text())
        except ValueError as exc:
            stderr += f"\nguest: trace is not JSON: {exc}"
    return {"status": status, "trace": trace, "stderr": stderr[-20000:],
            "seconds": round(time.monotonic() - t0, 3)}


def main(argv: list[str]) -> int:
    job = Path(argv[1] if len(argv) > 1 else "/ksmlab/job")
    port = _Port(PORT)
    port.frame("hello", -1, _hello())
    spec = json.loads((job / "job.json").read_text())
    results = 0
    if spec.get("probe"):
        port.frame("result", 0, _probe())
        results = 1
    else:
        timeout = float(spec.get("timeout", 300))
        module = str(spec.get("replayer", REPLAYER))
        for index, name in enumerate(spec["scenarios"]):
            port.frame("result", index, _replay(job, name, timeout, module))
            results += 1
    port.frame("done", results, {"uptime": float(Path("/proc/uptime").read_text().split()[0])})
    port.drain()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
