"""Shared test fixtures: where the reference material (``../shared``) lives."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def shared_dir() -> Path:
    env = os.environ.get("KSMLAB_SHARED")
    return Path(env) if env else REPO.parent / "shared"


@pytest.fixture(scope="session")
def shared() -> Path:
    path = shared_dir()
    if not (path / "scenarios").is_dir():
        pytest.skip(f"reference material not found at {path} (set KSMLAB_SHARED)")
    return path
