"""Page bytes of a write's ``content``, for the trees' memcmp order (scenario-format.md).

The kernel orders its stable and unstable trees by ``memcmp`` of page contents, so which
nodes a walk meets depends on the bytes. The format fixes them: ``zero`` is 4096 zero
bytes; a label L is ``shake_256("ksm-scenario/1 label:" + L).digest(4096)``. A ``unique``
page is random bytes: its order is not determined, and the simulator gives it a fixed,
cheap stand-in, the 8 big-endian bytes of a 64-bit mix of its content id (compared as a
page starting with those bytes that sorts before any other page with the same 8 first
bytes). The simulator keeps the first :data:`ORDER_BYTES` bytes of zero and of each label
(:func:`order_bytes`); two contents whose kept bytes are equal are compared on their full
pages (:func:`page_bytes`). A unique page's stand-in costs a few integer operations.
"""

from __future__ import annotations

import hashlib

PAGE_SIZE = 4096
#: the bytes of the zero page
ZERO_BYTES = bytes(PAGE_SIZE)
LABEL_PREFIX = "ksm-scenario/1 label:"
_MASK64 = (1 << 64) - 1
#: how many leading bytes of a page the simulator keeps for ordering
ORDER_BYTES = 32


def label_bytes(label: str) -> bytes:
    """The 4096 bytes a replayer writes for a labelled page."""
    return hashlib.shake_256((LABEL_PREFIX + label).encode()).digest(PAGE_SIZE)


def order_bytes(label: str) -> bytes:
    """The leading bytes of a labelled page (``zero``: of the zero page) kept for ordering.

    SHAKE-256 is an extendable-output function: a shorter digest is a prefix of a longer one,
    so the leading bytes are computed without the rest of the page."""
    if label == "zero":
        return ZERO_BYTES[:ORDER_BYTES]
    return hashlib.shake_256((LABEL_PREFIX + label).encode()).digest(ORDER_BYTES)


def page_bytes(label: str) -> bytes:
    """The whole page of ``zero`` or of a label."""
    return ZERO_BYTES if label == "zero" else label_bytes(label)


def unique_bytes(content: int) -> bytes:
    """The stand-in order key of a ``unique`` page: splitmix64 of its content id."""
    z = (content * 0x9E3779B97F4A7C15 + 0x9E3779B97F4A7C15) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return (z ^ (z >> 31)).to_bytes(8, "big")
