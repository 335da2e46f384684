"""Fixture trees for the live view: copies of ``fixtures/`` with binary pagemap files."""

from __future__ import annotations

import json
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path

import pytest

from app.kernel.host.procfs import PAGE_SIZE

FIXTURES = Path(__file__).resolve().parent / "fixtures"
WORKER_PID = 21700


@dataclass
class Tree:
    root: Path
    pid: int
    address: int
    pagemap: list[int]
    kpageflags: dict[int, int]

    @property
    def sys_root(self) -> Path:
        return self.root / "sys"

    @property
    def proc_root(self) -> Path:
        return self.root / "proc"

    def write_binaries(self) -> None:
        """Sparse ``proc/PID/pagemap`` and ``proc/kpageflags`` holding the entries."""
        with open(self.proc_root / str(self.pid) / "pagemap", "wb") as f:
            f.seek(self.address // PAGE_SIZE * 8)
            f.write(struct.pack(f"<{len(self.pagemap)}Q", *self.pagemap))
        with open(self.proc_root / "kpageflags", "wb") as f:
            for pfn, flags in sorted(self.kpageflags.items()):
                f.seek(pfn * 8)
                f.write(struct.pack("<Q", flags))


def make_tree(tmp_path: Path, name: str) -> Tree:
    root = tmp_path / name
    shutil.copytree(FIXTURES / name, root)
    doc = json.loads((FIXTURES / "host-6.18" / "pages.json").read_text())
    tree = Tree(
        root,
        doc["pid"],
        doc["address"],
        doc["pagemap"],
        {int(k): v for k, v in doc["kpageflags"].items()},
    )
    tree.write_binaries()
    return tree


@pytest.fixture
def host_tree(tmp_path: Path) -> Tree:
    """The tree recorded on this machine (6.18)."""
    return make_tree(tmp_path, "host-6.18")


@pytest.fixture
def old_tree(tmp_path: Path) -> Tree:
    """The tree shaped like a 6.1 kernel."""
    return make_tree(tmp_path, "kernel-6.1")
