"""Settings of the KSM Lab server: one pydantic-settings class, environment prefix ``KSMLAB_``.

Read them through :func:`get_settings` (``lru_cache``d), a FastAPI dependency that tests
override (``app.dependency_overrides[get_settings] = ...``) or bypass by passing a
:class:`Settings` to :func:`app.server.app.create_app`.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parent.parent


class Settings(BaseSettings):
    """Every limit and path of the server (all overridable as ``KSMLAB_<NAME>``)."""

    model_config = SettingsConfigDict(env_prefix="KSMLAB_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    token: str | None = Field(
        default=None,
        description="presenter's token for control (generated when binding a non-loopback "
        "address without one; see app.server.security)",
    )

    allowed_hosts: list[str] = Field(
        default_factory=list,
        description="Host names the server answers to beyond its bound address (a loopback "
        "server always answers to localhost, 127.0.0.1 and ::1; see app.origin)",
    )
    data_dir: Path = Field(
        default_factory=lambda: _default_data_dir(),
        description="where the recipe store (SQLite) lives; $KSMLAB_DATA_DIR, default "
        "$XDG_DATA_HOME/ksmlab or ~/.local/share/ksmlab",
    )

    # limits
    max_sessions: int = Field(default=32, ge=1, description="sessions alive at once")
    max_pages: int = Field(
        default=1 << 20, ge=1, description="mapped pages per session, at any time"
    )
    max_body_bytes: int = Field(
        default=2 << 20, ge=1024, description="request body (and scenario) size"
    )
    max_scenario_steps: int = Field(
        default=10_000, ge=1, description="steps in an uploaded scenario"
    )
    max_timeline_steps: int = Field(default=100_000, ge=1, description="steps per branch")
    max_branches: int = Field(default=64, ge=1, description="timeline branches per session")
    timeline_memory_mb: int = Field(
        default=256, ge=1, description="memory for kernel checkpoints of one session's timeline"
    )
    checkpoint_interval: int = Field(
        default=32, ge=1, description="steps between kernel checkpoints"
    )
    ws_queue: int = Field(default=64, ge=1, description="queued messages per websocket viewer")
    ws_queue_bytes: int = Field(
        default=32 << 20, ge=1024, description="queued bytes (characters) per websocket viewer"
    )
    ws_max_message_bytes: int = Field(default=64 * 1024, ge=256, description="client message size")
    max_viewers: int = Field(default=2000, ge=1, description="websocket viewers per session")
    max_step_n: int = Field(default=10_000, ge=1, description="steps in one step/back control")
    max_speed: float = Field(default=1000.0, gt=0, description="batches per second")
    default_speed: float = Field(
        default=10.0, gt=0, description="batches per second of a new session"
    )
    idle_expiry_seconds: float = Field(
        default=1800.0,
        gt=0,
        description="a session with no viewer and no request for this long is dropped",
    )
    expiry_check_seconds: float = Field(default=10.0, gt=0)
    viewer_bytes_total: int = Field(
        default=256 << 20,
        ge=1 << 20,
        description="bytes being sent to all websocket viewers at once (every session)",
    )
    viewer_stall_seconds: float = Field(
        default=10.0, gt=0, description="a viewer that does not read for this long is dropped"
    )
    max_connections: int = Field(
        default=4000, ge=16, description="open HTTP/websocket connections (beyond: closed)"
    )
    header_timeout: float = Field(
        default=10.0, gt=0, description="seconds to send a request's headers (slowloris)"
    )
    keep_alive_seconds: float = Field(default=5.0, gt=0, description="idle keep-alive")
    max_live_viewers: int = Field(default=64, ge=1, description="/ws/live connections")

    # paths
    static_dir: Path = REPO_ROOT / "static"
    templates_dir: Path = REPO_ROOT / "templates"
    presets_dir: Path = REPO_ROOT / "sim" / "presets"

    @field_validator("default_speed")
    @classmethod
    def _speed_positive(cls, value: float) -> float:
        if value <= 0:
            raise ValueError("must be positive")
        return value


def _default_data_dir() -> Path:
    xdg = os.environ.get("XDG_DATA_HOME")
    return (Path(xdg) if xdg else Path.home() / ".local" / "share") / "ksmlab"


@lru_cache
def get_settings() -> Settings:
    return Settings()
