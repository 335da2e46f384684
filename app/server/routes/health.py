"""``GET /healthz`` and ``GET /api/presets``."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from ..deps import ManagerDep, SettingsDep
from ..schemas import Health
from ..sources import presets

router = APIRouter()


@router.get("/healthz", tags=["health"])
async def read_health(manager: ManagerDep) -> Health:
    return Health(status="ok", sessions=len(manager.sessions))


@router.get("/api/presets", tags=["presets"])
async def list_presets(settings: SettingsDep) -> list[dict[str, Any]]:
    return presets(settings)
