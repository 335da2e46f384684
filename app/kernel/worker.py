"""Worker processes: one real process per scenario process.

The controller (the replayer) forks a worker for every ``spawn``; a scenario ``fork`` makes
the worker itself call ``fork()``, so the child shares every anonymous page copy-on-write,
exactly like the scenario says; ``exit`` makes the worker ``_exit(0)``.

Protocol: one ``AF_UNIX``/``SOCK_SEQPACKET`` socket per worker; every request is one JSON
message ``{"op": ..., ...}`` answered by one message ``{"ok": true, ...}`` or
``{"ok": false, "errno": "EINVAL", "error": "..."}``. ``fork`` carries the child's socket
as an ``SCM_RIGHTS`` descriptor; the child greets on it. ``exit`` gets no answer: the
controller sees end-of-file and waits until the process is gone. A worker whose socket
reaches end-of-file (the controller died) exits at once.

Memory layout: each ``mmap`` is a private anonymous mapping placed with
``MAP_FIXED_NOREPLACE`` above every earlier mapping of the process, 16 pages apart, from
:data:`BASE`, so address order is creation order and no two mappings ever merge into one VMA.
A forked child continues the parent's layout.

Contents: ``zero`` writes zero bytes; ``unique`` writes, for serial number ``s`` (allocated
by the controller, never reused within a replay), ``MAGIC, s`` repeated over the page; any
other label writes SHA-256(label) repeated, so equal labels are byte-identical pages.

Merge-any: ``prctl(PR_SET_MEMORY_MERGE, 1)`` makes the interpreter's own VMAs (heap, stack,
libraries) mergeable too. ``clean`` (sent before every scan and checkpoint) MADV_UNMERGEABLEs
every VMA that is not a scenario mapping, until ``/proc/self/maps`` is stable.
"""

from __future__ import annotations

import ctypes
import gc
import hashlib
import json
import os
import signal
import socket
import struct
import time
from collections.abc import Callable
from functools import cache
from typing import Any, NoReturn

from . import libc
from .procfs import ProcFs, parse_maps
from .sysfs import errno_name

PAGE = libc.PAGE_SIZE
BASE = 0x1000_0000_0000  # 16 TiB: far from the heap (low) and the mmap area (near 128 TiB)
GAP_PAGES = 16
USER_TOP = 1 << 47
MAGIC = 0x6B736D6C61622D75  # "ksmlab-u"
MAX_MESSAGE = 1 << 20
REPLY_TIMEOUT = 120.0


class WorkerError(Exception):
    """A worker failed an operation; ``errno`` is the errno name (or None)."""

    def __init__(self, message: str, errno: str | None = None) -> None:
        super().__init__(message)
        self.errno = errno


class WorkerDied(WorkerError):
    """The worker process went away unexpectedly."""


@cache
def label_page(label: str) -> bytes:
    digest = hashlib.sha256(b"ksmlab-label:" + label.encode("utf-8")).digest()
    return digest * (PAGE // len(digest))


def unique_page(serial: int) -> bytes:
    return struct.pack("<QQ", MAGIC, serial) * (PAGE // 16)


def page_bytes(content: str, serial: int, npages: int) -> bytes:
    """The bytes of ``npages`` consecutive pages written with ``content``."""
    if content == "zero":
        return bytes(PAGE * npages)
    if content == "unique":
        return b"".join(unique_page(serial + i) for i in range(npages))
    return label_page(content) * npages


# --------------------------------------------------------------------------------------
# inside the worker


class _Worker:
    def __init__(self, sock: socket.socket, name: str, thp_off: bool) -> None:
        self.sock = sock
        self.name = name
        self.thp_off = thp_off
        self.maps: dict[str, tuple[int, int]] = {}  # name -> (address, pages)
        self.next_addr = BASE
        self.merge_any = False  # ever set in this process (or inherited)

    def send(self, msg: dict[str, Any]) -> None:
        self.sock.send(json.dumps(msg).encode())

    def loop(self) -> None:
        handlers: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
            "ping": self.op_ping, "mmap": self.op_mmap, "munmap": self.op_munmap,
            "write": self.op_write, "read": self.op_read, "madvise": self.op_madvise,
            "prctl": self.op_prctl, "clean": self.op_clean,
        }
        while True:
            try:
                data, fds, _, _ = socket.recv_fds(self.sock, MAX_MESSAGE, 2)
            except OSError:
                return
            if not data:
                return  # the controller is gone
            req = json.loads(data)
            op = req.get("op")
            if op == "exit":
                os._exit(0)
            if op == "fork":
                self.fork(req, fds)
                continue
            for fd in fds:
                os.close(fd)
            try:
                reply: dict[str, Any] = {"ok": True, **handlers[op](req)}
            except OSError as exc:
                reply = {"ok": False, "errno": errno_name(exc), "error": str(exc)}
            except Exception as exc:  # noqa: BLE001 - reported to the controller
                reply = {"ok": False, "errno": None, "error": f"{type(exc).__name__}: {exc}"}
            self.send(reply)

    def fork(self, req: dict[str, Any], fds: list[int]) -> None:
        if len(fds) != 1:
            for fd in fds:
                os.close(fd)
            self.send({"ok": False, "errno": None, "error": "fork needs one socket"})
            return
        pid = os.fork()
        if pid == 0:
            try:
                self.sock.close()
                self.sock = socket.socket(fileno=fds[0])
                self.name = str(req.get("child"))
                self.send({"ok": True, "pid": os.getpid(), "hello": True})
                self.loop()
            finally:
                os._exit(0)
        os.close(fds[0])
        self.send({"ok": True, "pid": pid})

    def _range(self, req: dict[str, Any]) -> tuple[int, list[tuple[int, int]]]:
        addr, count = self.maps[req["vma"]]
        ranges = req.get("ranges") or [(0, count)]
        return addr, [(int(lo), int(hi)) for lo, hi in ranges]

    def op_ping(self, req: dict[str, Any]) -> dict[str, Any]:
        return {"pid": os.getpid()}

    def op_mmap(self, req: dict[str, Any]) -> dict[str, Any]:
        count = int(req["pages"])
        addr = self.next_addr
        libc.mmap_anon(count * PAGE, addr, fixed=True)
        if self.thp_off:
            try:
                libc.madvise(addr, count * PAGE, libc.MADV_NOHUGEPAGE)
            except OSError:
                pass  # kernel without THP
        self.maps[req["vma"]] = (addr, count)
        self.next_addr = addr + (count + GAP_PAGES) * PAGE
        return {"addr": addr}

    def op_munmap(self, req: dict[str, Any]) -> dict[str, Any]:
        addr, count = self.maps.pop(req["vma"])
        libc.munmap(addr, count * PAGE)
        return {}

    def op_write(self, req: dict[str, Any]) -> dict[str, Any]:
        addr, ranges = self._range(req)
        content = str(req["content"])
        serial = int(req.get("serial", 0))
        for lo, hi in ranges:
            if content == "zero":
                ctypes.memset(addr + lo * PAGE, 0, (hi - lo) * PAGE)
            else:
                libc.write_bytes(addr + lo * PAGE, page_bytes(content, serial, hi - lo))
            serial += hi - lo
        return {}

    def op_read(self, req: dict[str, Any]) -> dict[str, Any]:
        addr, ranges = self._range(req)
        for lo, hi in ranges:
            for page in range(lo, hi):
                libc.touch_read(addr + page * PAGE)
        return {}

    def op_madvise(self, req: dict[str, Any]) -> dict[str, Any]:
        addr, ranges = self._range(req)
        advice = libc.ADVICE[req["advice"]]
        for lo, hi in ranges:
            libc.madvise(addr + lo * PAGE, (hi - lo) * PAGE, advice)
        return {}

    def op_prctl(self, req: dict[str, Any]) -> dict[str, Any]:
        value = int(req["value"])
        libc.prctl(libc.PR_SET_MEMORY_MERGE, value)
        if value:
            self.merge_any = True
        return {}

    def _own_vmas(self) -> list[tuple[int, int]]:
        with open("/proc/self/maps", encoding="ascii") as f:
            vmas = parse_maps(f.read())
        spans = [(a, a + n * PAGE) for a, n in self.maps.values()]
        return [(v.start, v.end) for v in vmas
                if v.start < USER_TOP and not any(lo <= v.start < hi for lo, hi in spans)]

    def op_clean(self, req: dict[str, Any]) -> dict[str, Any]:
        """MADV_UNMERGEABLE every non-scenario VMA (merge-any processes only)."""
        if not self.merge_any:
            return {"rounds": 0}
        prev: list[tuple[int, int]] | None = None
        rounds = 0
        while rounds < 8:
            vmas = self._own_vmas()
            if vmas == prev:
                break
            for start, end in vmas:
                try:
                    libc.madvise(start, end - start, libc.MADV_UNMERGEABLE)
                except OSError:
                    pass  # e.g. [vvar]: never mergeable anyway
            prev = vmas
            rounds += 1
        return {"rounds": rounds}


def _become_worker(keep_fd: int, controller: int) -> None:
    """In a freshly forked worker: own signals, no inherited descriptors, die with parent."""
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # forked children are reaped by the kernel
    gc.disable()  # objects inherited from the controller must never be finalized here
    os.closerange(3, keep_fd)
    os.closerange(keep_fd + 1, os.sysconf("SC_OPEN_MAX"))
    try:
        libc.prctl(libc.PR_SET_PDEATHSIG, signal.SIGKILL)
    except OSError:
        pass
    if os.getppid() != controller:
        os._exit(1)


def _worker_main(sock: socket.socket, name: str, thp_off: bool, controller: int) -> NoReturn:
    status = 0
    try:
        _become_worker(sock.fileno(), controller)
        worker = _Worker(sock, name, thp_off)
        worker.send({"ok": True, "pid": os.getpid(), "hello": True})
        worker.loop()
    except BaseException:  # noqa: BLE001 - never return into the controller's code
        status = 70
    finally:
        os._exit(status)


# --------------------------------------------------------------------------------------
# controller side


class WorkerHandle:
    """The controller's end of one worker."""

    def __init__(self, name: str, pid: int, sock: socket.socket, proc: ProcFs) -> None:
        self.name = name
        self.pid = pid
        self.sock = sock
        self.proc = proc
        self.start_time = proc.start_time(pid)
        self.alive = True
        sock.settimeout(REPLY_TIMEOUT)

    def _recv(self) -> dict[str, Any]:
        try:
            data = self.sock.recv(MAX_MESSAGE)
        except OSError as exc:
            raise WorkerDied(f"worker {self.name!r} (pid {self.pid}): {exc}") from None
        if not data:
            raise WorkerDied(f"worker {self.name!r} (pid {self.pid}) died")
        reply: dict[str, Any] = json.loads(data)
        return reply

    def _send(self, msg: dict[str, Any], fds: list[int] | None = None) -> None:
        try:
            if fds:
                socket.send_fds(self.sock, [json.dumps(msg).encode()], fds)
            else:
                self.sock.send(json.dumps(msg).encode())
        except OSError as exc:
            raise WorkerDied(f"worker {self.name!r} (pid {self.pid}): {exc}") from None

    def hello(self) -> None:
        reply = self._recv()
        if not reply.get("hello"):
            raise WorkerDied(f"worker {self.name!r}: bad greeting {reply!r}")

    def call(self, op: str, **fields: Any) -> dict[str, Any]:
        self._send({"op": op, **fields})
        reply = self._recv()
        if not reply.get("ok"):
            raise WorkerError(str(reply.get("error")), reply.get("errno"))
        return reply

    def fork(self, child: str) -> WorkerHandle:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self._send({"op": "fork", "child": child}, [theirs.fileno()])
        finally:
            theirs.close()
        reply = self._recv()
        if not reply.get("ok"):
            ours.close()
            raise WorkerError(str(reply.get("error")), reply.get("errno"))
        handle = WorkerHandle(child, int(reply["pid"]), ours, self.proc)
        handle.hello()
        return handle

    def exit(self) -> None:
        """Ask the worker to exit; returns once its memory is torn down."""
        self._send({"op": "exit"})
        try:
            self.sock.recv(MAX_MESSAGE)  # end-of-file
        except OSError:
            pass
        self.wait_gone()

    def kill(self) -> None:
        if self.alive:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.wait_gone()

    def wait_gone(self, timeout: float = 30.0) -> None:
        """Wait until the process has exited (zombie or reaped): its mm is gone then."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                if os.waitpid(self.pid, os.WNOHANG)[0] == self.pid:
                    break
            except ChildProcessError:
                pass
            state = self.proc.state(self.pid)
            if state is None or (self.start_time is not None
                                 and self.proc.start_time(self.pid) != self.start_time):
                break
            if state in ("Z", "X"):
                try:
                    os.waitpid(self.pid, 0)
                except ChildProcessError:
                    pass
                break
            if time.monotonic() > deadline:
                raise WorkerError(f"worker {self.name!r} (pid {self.pid}) does not exit")
            time.sleep(0.0005)
        self.alive = False
        self.sock.close()


def spawn_worker(name: str, thp_off: bool, proc: ProcFs | None = None) -> WorkerHandle:
    """Fork a new, empty worker process named ``name``."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    controller = os.getpid()
    pid = os.fork()
    if pid == 0:
        ours.detach()
        _worker_main(theirs, name, thp_off, controller)
    theirs.close()
    handle = WorkerHandle(name, pid, ours, proc or ProcFs())
    handle.hello()
    return handle
