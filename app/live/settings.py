"""Settings of the live view (environment prefix ``KSMLAB_``).

``KSMLAB_SYS_ROOT`` (default ``/sys``) and ``KSMLAB_PROC_ROOT`` (default ``/proc``) are the
directories read as ``/sys`` and ``/proc``; tests point them at fixture trees.
``KSMLAB_LIVE_INTERVAL`` is the websocket's sampling period in seconds (default 1) and
``KSMLAB_LIVE_MAX_PAGES`` the most pages one page-map request may read (default 65536).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class LiveSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="KSMLAB_", extra="ignore")

    sys_root: Path = Path("/sys")
    proc_root: Path = Path("/proc")
    live_interval: float = Field(default=1.0, ge=0.05, le=3600)
    live_max_pages: int = Field(default=65536, ge=1, le=1 << 20)


@lru_cache
def get_live_settings() -> LiveSettings:
    """The settings dependency (tests override it with ``app.dependency_overrides``)."""
    return LiveSettings()
