"""Small helpers for simulator tests: build a kernel, read tokens and counters."""

from __future__ import annotations

from typing import Any

from sim import Kernel, check_invariants
from sim.scenario import parse_pages


class Lab:
    """A Kernel with terse helpers; checks invariants after every operation."""

    def __init__(self, kernel: str = "6.18", **sysfs: Any):
        self.k = Kernel(kernel, sysfs)

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.k, name)
        if not callable(attr):
            return attr

        def call(*args: Any, **kw: Any) -> Any:
            result = attr(*args, **kw)
            check_invariants(self.k)
            return result

        return call

    def pages(self, proc: str, vma: str, spec: Any) -> Any:
        return parse_pages(spec, self.k.vma(proc, vma).npages)

    def w(self, proc: str, vma: str, spec: Any, content: str) -> None:
        self.write(proc, vma, None if spec is None else self.pages(proc, vma, spec), content)

    def area(self, proc: str, vma: str, n: int, *writes: tuple[Any, str], merge: bool = True):
        """spawn (if needed) + mmap + writes + MADV_MERGEABLE."""
        if proc not in self.k.procs:
            self.spawn(proc)
        self.mmap(proc, vma, n)
        for spec, content in writes:
            self.w(proc, vma, spec, content)
        if merge:
            self.madvise(proc, vma, None, "MADV_MERGEABLE")

    def g(self, name: str) -> Any:
        return self.k.global_counters()[name]

    def stat(self, proc: str, name: str) -> Any:
        return self.k.ksm_stat(proc)[name]

    def tokens(self, proc: str, vma: str) -> list[str]:
        return self.k.checkpoint("t")["pages"][proc][vma].split()

    def kinds(self, proc: str, vma: str) -> str:
        """Tokens with K numbers dropped: e.g. 'KKZZAA'."""
        return "".join(t[0] for t in self.tokens(proc, vma))
