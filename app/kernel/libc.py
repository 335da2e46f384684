"""ctypes wrappers for the system calls the replayer needs (mmap, madvise, prctl).

Errors raise ``OSError`` with the real errno. Linux x86_64/arm64 constants.
"""

from __future__ import annotations

import ctypes
import os
from functools import cache

from .host.procfs import PAGE_SIZE as PAGE_SIZE  # the host's, defined once

PROT_NONE = 0
PROT_READ = 1
PROT_WRITE = 2
MAP_PRIVATE = 0x02
MAP_ANONYMOUS = 0x20
MAP_FIXED_NOREPLACE = 0x100000

MADV_MERGEABLE = 12
MADV_UNMERGEABLE = 13
MADV_NOHUGEPAGE = 15

ADVICE = {"MADV_MERGEABLE": MADV_MERGEABLE, "MADV_UNMERGEABLE": MADV_UNMERGEABLE}

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
PR_SET_MEMORY_MERGE = 67
PR_GET_MEMORY_MERGE = 68

_MAP_FAILED = ctypes.c_void_p(-1).value


@cache
def _libc() -> ctypes.CDLL:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [
        ctypes.c_void_p,
        ctypes.c_size_t,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_long,
    ]
    libc.munmap.restype = ctypes.c_int
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    libc.madvise.restype = ctypes.c_int
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    libc.prctl.restype = ctypes.c_int
    libc.prctl.argtypes = [
        ctypes.c_int,
        ctypes.c_ulong,
        ctypes.c_ulong,
        ctypes.c_ulong,
        ctypes.c_ulong,
    ]
    return libc


def _fail(what: str) -> OSError:
    err = ctypes.get_errno()
    return OSError(err, f"{what}: {os.strerror(err)}")


def mmap_anon(length: int, addr: int = 0, fixed: bool = False) -> int:
    """A private anonymous read/write mapping; ``fixed`` places it exactly at ``addr``."""
    flags = MAP_PRIVATE | MAP_ANONYMOUS | (MAP_FIXED_NOREPLACE if fixed else 0)
    got = _libc().mmap(addr or None, length, PROT_READ | PROT_WRITE, flags, -1, 0)
    if got is None or got == _MAP_FAILED:
        raise _fail(f"mmap({addr:#x}, {length})")
    if fixed and got != addr:  # a kernel without MAP_FIXED_NOREPLACE treats it as a hint
        _libc().munmap(got, length)
        raise OSError(17, f"mmap: {addr:#x} is not free")
    return int(got)


def munmap(addr: int, length: int) -> None:
    if _libc().munmap(addr, length) != 0:
        raise _fail(f"munmap({addr:#x}, {length})")


def madvise(addr: int, length: int, advice: int) -> None:
    if _libc().madvise(addr, length, advice) != 0:
        raise _fail(f"madvise({addr:#x}, {length}, {advice})")


def prctl(option: int, arg2: int = 0, arg3: int = 0, arg4: int = 0, arg5: int = 0) -> int:
    res = int(_libc().prctl(option, arg2, arg3, arg4, arg5))
    if res < 0:
        raise _fail(f"prctl({option})")
    return res


def memory_merge_supported() -> bool:
    """Does this kernel have ``PR_SET_MEMORY_MERGE`` (6.4+)? Asks PR_GET_MEMORY_MERGE."""
    try:
        prctl(PR_GET_MEMORY_MERGE)
    except OSError:
        return False
    return True


def write_bytes(addr: int, data: bytes) -> None:
    ctypes.memmove(addr, data, len(data))


def touch_read(addr: int) -> int:
    """Read one byte at ``addr`` (a read fault if the page is not present)."""
    return ctypes.c_ubyte.from_address(addr).value
