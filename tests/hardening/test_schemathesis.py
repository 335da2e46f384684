"""API robustness: schemathesis against the OpenAPI schema of a real uvicorn server.

Every operation gets ``EXAMPLES`` generated requests (positive and negative), no 5xx allowed.
Half of the generated ``session_id`` values are replaced by a live session's id, so the
handlers behind the 404 run too (the session is recreated when a DELETE removes it).
Run with ``-s`` to see the figures (operations, requests, status classes, 5xx).
"""

from __future__ import annotations

import os
import zlib
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

from .conftest import Server

EXAMPLES = int(os.environ.get("KSMLAB_SCHEMATHESIS_EXAMPLES", "40"))
FIGURES: dict[str, Any] = {"operations": set(), "requests": 0, "status": Counter(), "5xx": []}


@pytest.fixture(scope="module")
def api_server() -> Iterator[Server]:
    limits = {"max_sessions": 48, "max_pages": 20_000, "max_step_n": 64, "max_timeline_steps": 2000}
    with Server(**limits) as live:
        yield live
    ops = len(FIGURES["operations"])
    print(
        f"\nschemathesis: {ops} operations, {FIGURES['requests']} requests, "
        f"status {dict(sorted(FIGURES['status'].items()))}, 5xx: {len(FIGURES['5xx'])}"
    )


@pytest.fixture(scope="module")
def api_schema(api_server: Server) -> Any:
    return schemathesis.openapi.from_url(f"{api_server.url}/openapi.json")


class LiveSession:
    def __init__(self, server: Server):
        self.http = httpx.Client(base_url=server.url, timeout=30)
        self.sid = ""

    def id(self) -> str:
        if not self.sid or self.http.get(f"/api/sessions/{self.sid}").status_code == 404:
            r = self.http.post("/api/sessions", json={"preset": "zero-pages-unmerge"})
            if r.status_code == 429:  # the fuzzer filled the server: make room
                for s in self.http.get("/api/sessions").json():
                    self.http.delete(f"/api/sessions/{s['id']}")
                r = self.http.post("/api/sessions", json={"preset": "zero-pages-unmerge"})
            assert r.status_code == 201, r.text
            self.sid = r.json()["id"]
        return self.sid


@pytest.fixture(scope="module")
def live_session(api_server: Server) -> LiveSession:
    return LiveSession(api_server)


def test_no_server_error(api_schema: Any, api_server: Server, live_session: LiveSession) -> None:
    """Every operation, positive then negative examples (schemathesis' pytest loader needs
    pytest < 9, so the operations are driven here with Hypothesis directly)."""
    for result in api_schema.get_all_operations():
        operation = result.ok()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            def one(case: Any) -> None:
                _call(case, api_server, live_session)

            check = settings(
                max_examples=EXAMPLES,
                deadline=None,
                suppress_health_check=list(HealthCheck),
                derandomize=True,
                database=None,
            )(given(case=operation.as_strategy(generation_mode=mode))(one))
            try:
                check()
            except Unsatisfiable:  # nothing to make invalid (no parameters, no body)
                assert mode is GenerationMode.NEGATIVE, operation.label
    assert not FIGURES["5xx"], FIGURES["5xx"]


def _call(case: Any, api_server: Server, live_session: LiveSession) -> None:
    params = case.path_parameters or {}
    if "session_id" in params and zlib.crc32(str(params["session_id"]).encode()) % 2:
        params["session_id"] = live_session.id()
    response = case.call(base_url=api_server.url, timeout=60)
    FIGURES["operations"].add(case.operation.label)
    FIGURES["requests"] += 1
    FIGURES["status"][f"{response.status_code // 100}xx"] += 1
    if response.status_code >= 500:
        FIGURES["5xx"].append((case.operation.label, response.status_code, response.text[:300]))
