"""Shared fixtures of the qemu tests (issue 9).

Tests that boot a guest run only when ``KSMLAB_QEMU_TESTS=1`` (marker ``qemu_guest`` below);
then a missing qemu or kernel is a failure, not a skip. ``shared/`` is ``$KSMLAB_SHARED``
or ``../shared`` beside the repository.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.environ.get("KSMLAB_QEMU_TESTS") == "1":
        return
    skip = pytest.mark.skip(reason="boots a qemu guest: set KSMLAB_QEMU_TESTS=1")
    for item in items:
        if item.get_closest_marker("qemu_guest"):
            item.add_marker(skip)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "qemu_guest: boots a qemu guest (KSMLAB_QEMU_TESTS=1)")


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    env = os.environ.get("KSMLAB_SHARED")
    path = Path(env) if env else ROOT.parent / "shared"
    assert (path / "scenarios").is_dir(), f"shared/ not found at {path} (set KSMLAB_SHARED)"
    return path
