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
other label writes the format's bytes of the label (SHAKE-256 of ``ksm-scenario/1 label:`` +
label, one page long), so equal labels are byte-identical pages ordered as in the format.

Merge-any: ``prctl(PR_SET_MEMORY_MERGE, 1)`` makes the interpreter's own VMAs (heap, stack,
libraries) mergeable too. ``clean`` (sent before every scan and checkpoint) MADV_UNMERGEABLEs
every VMA that is not a scenario mapping, until ``/proc/self/maps`` is stable. A merge-any
process also marks every VMA it creates later, and (6.12+) a VMA created after ksmd dropped
the process registers it again, so a worker must not create VMAs of its own once it runs:
it receives into a preallocated buffer, reads ``/proc/self/maps`` into another, writes page
by page from small cached patterns, and glibc's malloc is told never to use ``mmap`` for a
chunk nor to trim (and later regrow) the heap, after growing the heap once at start.
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
from .host.procfs import ProcFs
from .sysfs import errno_name

PAGE = libc.PAGE_SIZE
BASE = 0x1000_0000_0000  # 16 TiB: far from the heap (low) and the mmap area (near 128 TiB)
GAP_PAGES = 16
USER_TOP = 1 << 47
MAGIC = 0x6B736D6C61622D75  # "ksmlab-u"
MAX_MESSAGE = 1 << 16
MAPS_BUFFER = 4 << 20
REPLY_TIMEOUT = 120.0
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3
HEAP_RESERVE = 16 << 20


class WorkerError(Exception):
    """A worker failed an operation; ``errno`` is the errno name (or None)."""

    def __init__(self, message: str, errno: str | None = None) -> None:
        super().__init__(message)
        self.errno = errno


class WorkerDied(WorkerError):
    """The worker process went away unexpectedly."""


@cache
def label_page(label: str) -> bytes:
    """The format's bytes of a label's page (``scenario-format.md``, "label bytes"): the
    kernel orders its trees by memcmp of them, so every replayer writes exactly these."""
    return hashlib.shake_256(("ksm-scenario/1 label:" + label).encode("utf-8")).digest(PAGE)


def unique_page(serial: int) -> bytes:
    return struct.pack("<QQ", MAGIC, serial) * (PAGE // 16)


def page_bytes(content: str, serial: int) -> bytes:
    """The bytes of one page written with ``content`` (``serial`` for ``unique``)."""
    if content == "zero":
        return bytes(PAGE)
    if content == "unique":
        return unique_page(serial)
    return label_page(content)


def _quiet_malloc() -> None:
    """No mmap'd malloc chunks, no heap trimming; grow the heap once now (see module doc)."""
    try:
        c = ctypes.CDLL(None)
        c.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        c.malloc.restype = ctypes.c_void_p
        c.malloc.argtypes = [ctypes.c_size_t]
        c.free.argtypes = [ctypes.c_void_p]
        c.mallopt(M_MMAP_THRESHOLD, 32 << 20)
        c.mallopt(M_TRIM_THRESHOLD, 1 << 30)
        c.mallopt(M_TOP_PAD, 1 << 20)
        c.free(c.malloc(HEAP_RESERVE))  # brk grows now, and stays (no trimming)
    except (OSError, AttributeError):
        pass  # not glibc: best effort


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
        self.inbox = bytearray(MAX_MESSAGE)
        self.maps_buf = bytearray(MAPS_BUFFER)
        self.unique = ctypes.create_string_buffer(PAGE)

    def send(self, msg: dict[str, Any]) -> None:
        self.sock.send(json.dumps(msg).encode())

    def loop(self) -> None:
        handlers: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
            "ping": self.op_ping,
            "mmap": self.op_mmap,
            "munmap": self.op_munmap,
            "write": self.op_write,
            "read": self.op_read,
            "madvise": self.op_madvise,
            "prctl": self.op_prctl,
            "clean": self.op_clean,
        }
        anc_size = socket.CMSG_SPACE(2 * 4)
        view = memoryview(self.inbox)
        while True:
            try:
                n, anc, _, _ = self.sock.recvmsg_into([view], anc_size)
            except OSError:
                return
            if not n:
                return  # the controller is gone
            fds = _fds(anc)
            req = json.loads(self.inbox[:n])
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
            for page in range(lo, hi):
                where = addr + page * PAGE
                if content == "zero":
                    ctypes.memset(where, 0, PAGE)
                elif content == "unique":
                    _fill_unique(self.unique, serial)
                    ctypes.memmove(where, self.unique, PAGE)
                else:
                    libc.write_bytes(where, label_page(content))
                serial += 1
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
        """Non-scenario VMAs from /proc/self/maps, read into the preallocated buffer."""
        buf = self.maps_buf
        fd = os.open("/proc/self/maps", os.O_RDONLY)
        try:
            size = 0
            view = memoryview(buf)
            while size < len(buf):
                got = os.readv(fd, [view[size:]])
                if not got:
                    break
                size += got
        finally:
            os.close(fd)
        spans = [(a, a + n * PAGE) for a, n in self.maps.values()]
        out = []
        pos = 0
        while pos < size:
            end = buf.find(b"\n", pos, size)
            end = size if end < 0 else end
            dash = buf.find(b"-", pos, end)
            space = buf.find(b" ", pos, end)
            if dash > 0 and space > dash:
                start, stop = int(buf[pos:dash], 16), int(buf[dash + 1 : space], 16)
                if start < USER_TOP and not any(lo <= start < hi for lo, hi in spans):
                    out.append((start, stop))
            pos = end + 1
        return out

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


def _fill_unique(buf: Any, serial: int) -> None:
    struct.pack_into("<QQ", buf, 0, MAGIC, serial)
    filled = 16
    while filled < PAGE:  # double the filled prefix: no allocation
        n = min(filled, PAGE - filled)
        ctypes.memmove(ctypes.addressof(buf) + filled, buf, n)
        filled += n


def _fds(ancillary: list[tuple[int, int, bytes]]) -> list[int]:
    fds: list[int] = []
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.extend(struct.unpack(f"{len(data) // 4}i", data[: len(data) // 4 * 4]))
    return fds


def _become_worker(keep_fd: int, controller: int) -> None:
    """In a freshly forked worker: own signals, no inherited descriptors, die with parent."""
    stop = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
    for sig in stop:
        signal.signal(sig, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, stop)  # the controller blocks them around fork
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
    _quiet_malloc()


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
            if state is None or (
                self.start_time is not None and self.proc.start_time(self.pid) != self.start_time
            ):
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
