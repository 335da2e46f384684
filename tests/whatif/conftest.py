from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

CHILD = Path(__file__).with_name("memchild.py")


class Child:
    def __init__(self, pages: int, change: int = 0, merge: bool = False) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(CHILD), str(pages), str(change)] + (["merge"] if merge else []),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        self.addr = int(self.proc.stdout.readline())
        self.pid = self.proc.pid
        self.pages = pages

    def stop(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def child() -> Iterator[Callable[..., Child]]:
    started: list[Child] = []

    def start(pages: int, change: int = 0, merge: bool = False) -> Child:
        c = Child(pages, change, merge)
        started.append(c)
        return c

    yield start
    for c in started:
        c.stop()
