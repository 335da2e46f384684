"""Keeping the host safe: knob save/restore, the state file, the host lock, refusals.

Every writable knob is saved before the first write, in memory and in a *state file*
(JSON, written atomically), and put back by :func:`restore_knobs`. If the replayer is killed
with SIGKILL the state file stays behind; ``ksmlab replay --restore`` (or the next replay)
restores from it with :func:`restore_from_state_file`.

Restore order (``restore_knobs``):

1. ``run=2`` (unless ``cleanup=False``): unmerges every KSM page and frees every rmap_item
   and stable node left behind, which also makes ``max_page_sharing`` and
   ``merge_across_nodes`` writable again (they give EBUSY while pages are shared); with
   ``cleanup=False`` only a running ksmd is stopped (``run=0``).
2. The knobs whose value differs, ``advisor_mode`` before ``pages_to_scan`` when the saved
   mode is ``none`` (switching the mode resets ``pages_to_scan``, and ``pages_to_scan``
   cannot be written in ``scan-time`` mode) and after it otherwise; an EBUSY on
   ``max_page_sharing``/``merge_across_nodes`` is retried after ``run=2``.
3. ``run`` last.
4. Every knob is read back; what still differs is reported (``{knob: problem}``).

Everything takes the sysfs directory as a parameter; nothing here needs root except the
real ``/sys`` and ``/proc``.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .sysfs import BUSY_KNOBS, DEFAULT_ROOT, KnobValue, KsmSysfs, errno_name

DEFAULT_STATE_FILE = "/var/tmp/ksmlab-replay-state.json"
DEFAULT_LOCK_FILE = "/var/tmp/ksmlab-kernel.lock"
STATE_FORMAT = "ksmlab-replay-state/1"


class Refusal(Exception):
    """The replayer refuses to start (exit status 2); the message is one line."""


class LockTimeout(Refusal):
    """Another replay held the host lock for too long."""


def state_file_path() -> Path:
    return Path(os.environ.get("KSMLAB_REPLAY_STATE", DEFAULT_STATE_FILE))


def lock_file_path() -> Path:
    return Path(os.environ.get("KSMLAB_KERNEL_LOCK", DEFAULT_LOCK_FILE))


# --------------------------------------------------------------------------------------
# state file


def write_state(path: Path, doc: dict[str, Any]) -> None:
    """Write the state file atomically (temp file + fsync + rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, (json.dumps(doc, indent=1, sort_keys=True) + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def read_state(path: Path) -> dict[str, Any] | None:
    """The state file's document, or None if there is none (or it is unreadable)."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {"format": STATE_FORMAT, "knobs": {}, "corrupt": True}
    return doc if isinstance(doc, dict) else None


# --------------------------------------------------------------------------------------
# restore


def _order(saved: dict[str, KnobValue]) -> list[str]:
    """Knobs in restore order, without ``run`` (written last)."""
    names = [k for k in sorted(saved) if k != "run"]
    first = [k for k in names if k.startswith("advisor_") and k != "advisor_mode"]
    rest = [k for k in names if k not in first and k not in ("advisor_mode", "pages_to_scan")]
    rest = [k for k in rest if k not in BUSY_KNOBS] + [k for k in BUSY_KNOBS if k in rest]
    mode_first = saved.get("advisor_mode", "none") == "none"
    pair = [
        k
        for k in (
            ("advisor_mode", "pages_to_scan") if mode_first else ("pages_to_scan", "advisor_mode")
        )
        if k in saved
    ]
    return first + pair + rest


def restore_knobs(
    sysfs: KsmSysfs, saved: dict[str, KnobValue], *, cleanup: bool = True
) -> dict[str, str]:
    """Put every saved knob back (see the module doc); returns ``{knob: problem}``."""
    problems: dict[str, str] = {}
    unmerged = False

    def write(name: str, value: KnobValue) -> OSError | None:
        try:
            sysfs.write(name, value)
        except OSError as exc:
            return exc
        return None

    def unmerge_all() -> None:
        nonlocal unmerged
        if sysfs.read("run") == 2:
            write("run", 0)  # writing the current value does nothing: force a real run=2
        exc = write("run", 2)
        if exc is not None:
            problems["run"] = f"run=2 failed: {errno_name(exc)}"
        unmerged = True

    if not sysfs.exists("run"):
        return dict.fromkeys(saved, "sysfs has no 'run' file")
    if cleanup:
        unmerge_all()
    elif sysfs.read("run") == 1:
        write("run", 0)
    for name in _order(saved):
        if not sysfs.exists(name):
            problems[name] = "knob no longer exists"
            continue
        if sysfs.read(name) == saved[name]:
            continue
        exc = write(name, saved[name])
        if exc is not None and exc.errno == errno.EBUSY and name in BUSY_KNOBS and not unmerged:
            unmerge_all()
            exc = write(name, saved[name])
        if exc is not None:
            problems[name] = f"write {saved[name]!r}: {errno_name(exc)}"
    if "run" in saved and sysfs.read("run") != saved["run"]:
        exc = write("run", saved["run"])
        if exc is not None:
            problems["run"] = f"write {saved['run']!r}: {errno_name(exc)}"
    for name, value in saved.items():
        now = sysfs.read(name)
        if now != value and name not in problems:
            problems[name] = f"is {now!r}, was {value!r}"
    return problems


def restore_from_state_file(
    state_path: Path,
    sysfs_root: str | Path | None = None,
    kill: Callable[[list[dict[str, int]]], None] | None = None,
) -> tuple[bool, dict[str, str]]:
    """Restore the knobs saved in a state file left by an interrupted replay.

    Returns ``(found, problems)``. The state file is removed when every knob was restored.
    ``kill`` receives the workers recorded in the file (``[{"pid", "start"}]``) first.
    """
    doc = read_state(state_path)
    if doc is None:
        return False, {}
    if doc.get("corrupt"):
        return True, {"state file": f"{state_path} is unreadable; remove it by hand"}
    if kill is not None:
        kill(list(doc.get("workers", [])))
    root = sysfs_root if sysfs_root is not None else doc.get("sysfs_root", DEFAULT_ROOT)
    problems = restore_knobs(KsmSysfs(root), dict(doc.get("knobs", {})))
    if not problems:
        state_path.unlink(missing_ok=True)
    return True, problems


class KnobGuard:
    """Saves every writable knob (memory + state file) and restores them once."""

    def __init__(self, sysfs: KsmSysfs, state_path: Path) -> None:
        self.sysfs = sysfs
        self.state_path = state_path
        self.saved: dict[str, KnobValue] | None = None
        self.workers: list[dict[str, int]] = []

    def _doc(self) -> dict[str, Any]:
        return {
            "format": STATE_FORMAT,
            "pid": os.getpid(),
            "time": time.time(),
            "sysfs_root": str(self.sysfs.root),
            "knobs": self.saved or {},
            "workers": self.workers,
        }

    def save(self) -> dict[str, KnobValue]:
        """Read and record every writable knob; must run before the first write."""
        self.saved = self.sysfs.knobs()
        write_state(self.state_path, self._doc())
        return dict(self.saved)

    def set_workers(self, workers: list[dict[str, int]]) -> None:
        """Record the live workers (pid and start time) so ``--restore`` can kill them."""
        if workers != self.workers:
            self.workers = list(workers)
            if self.saved is not None:
                write_state(self.state_path, self._doc())

    def restore(self, *, cleanup: bool = True) -> dict[str, str]:
        """Restore the saved knobs; the state file is removed if nothing went wrong."""
        if self.saved is None:
            return {}
        problems = restore_knobs(self.sysfs, self.saved, cleanup=cleanup)
        if not problems:
            self.state_path.unlink(missing_ok=True)
        return problems


# --------------------------------------------------------------------------------------
# host lock


@contextmanager
def host_lock(
    path: Path, timeout: float | None = None, on_wait: Callable[[str], None] | None = None
) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (waits for another replay to finish).

    ``timeout`` None waits forever; ``on_wait`` is called once with a line to show when the
    lock is busy. The descriptor is close-on-exec; workers close it after fork.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        deadline = None if timeout is None else time.monotonic() + timeout
        told = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not told and on_wait is not None:
                    holder = _lock_holder(fd)
                    on_wait(
                        f"waiting for another kernel replay to finish (lock {path}"
                        f"{', held by pid ' + holder if holder else ''})"
                    )
                    told = True
                if deadline is not None and time.monotonic() > deadline:
                    raise LockTimeout(
                        f"another kernel replay holds {path} (waited {timeout:.0f} s)"
                    ) from None
                time.sleep(0.05)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


def _lock_holder(fd: int) -> str:
    try:
        return os.pread(fd, 32, 0).decode().strip()
    except OSError:
        return ""


# --------------------------------------------------------------------------------------
# refusals


def check_privileges(sysfs: KsmSysfs) -> None:
    """Refuse when not root, or when the KSM sysfs directory is missing or read-only."""
    if os.geteuid() != 0:
        raise Refusal("must run as root (KSM knobs, /proc/PID/pagemap and /proc/kpageflags)")
    if not sysfs.root.is_dir() or not sysfs.exists("run"):
        raise Refusal(f"{sysfs.root} does not exist: this kernel has no KSM (CONFIG_KSM)")
    if not sysfs.is_writable():
        raise Refusal(f"{sysfs.root} is read-only (a container without a writable /sys?)")
