"""Access: control needs the presenter's token when the server has one, viewers watch
read-only, websocket Origin checked, the live view read-only, the kernel replayer unreachable."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from typing import Any

import pytest
from fastapi.routing import APIRoute, APIWebSocketRoute
from starlette.routing import Mount
from websockets.exceptions import InvalidStatus

from app.config import Settings
from app.server.app import create_app
from app.server.security import check_control, ensure_token, is_loopback, require_control

from .conftest import TOKEN, Server, client, create, recv, run, ws_open

BEARER = {"Authorization": f"Bearer {TOKEN}"}


# ------------------------------------------------------------------ REST and htmx
def test_viewer_without_token_reads_but_cannot_control(token_server: Server) -> None:
    sid = create(token_server, TOKEN)["id"]
    with client(token_server) as http:
        for path in (
            "/",
            "/healthz",
            "/api/sessions",
            f"/api/sessions/{sid}",
            f"/api/sessions/{sid}/snapshot",
            f"/api/sessions/{sid}/counters.csv",
            f"/session?sid={sid}",
            f"/ui/sessions/{sid}/controls",
        ):
            assert http.get(path).status_code == 200, path
        refused = [
            http.post("/api/sessions", json={"preset": "zero-pages-unmerge"}),
            http.post("/api/compare", json={"preset": "zero-pages-unmerge"}),
            http.post(f"/api/sessions/{sid}/play"),
            http.post(f"/api/sessions/{sid}/step", json={"n": 1}),
            http.post(f"/api/sessions/{sid}/knob", json={"knob": "run", "value": 0}),
            http.post(f"/api/sessions/{sid}/fork"),
            http.delete(f"/api/sessions/{sid}"),
        ]
        for r in refused:
            assert r.status_code == 401, (r.request.url, r.text)
            assert r.json()["detail"]["field"] == "token"
            assert "presenter's token" in r.json()["detail"]["message"]
        partials = [  # htmx: the refusal inline in the partial, like any refused control
            http.post(f"/ui/sessions/{sid}/controls", data={"action": "step"}),
            http.post(f"/ui/sessions/{sid}/knobs", data={"knob.run": "0"}),
            http.post(f"/ui/sessions/{sid}/inject", data={"op": "run-0"}),
            http.post(
                "/session",
                files={"scenario": ("s.json", b"{}", "application/json")},
                headers={"HX-Request": "true"},
            ),
        ]
        for r in partials:
            assert r.status_code == 401, (r.request.url, r.text)
            assert "read-only viewer" in r.text and "presenter" in r.text
        page = http.get("/session?preset=zero-pages-unmerge")  # would start a session
        assert page.status_code == 401 and "presenter" in page.text
        assert http.get(f"/api/sessions/{sid}").json()["step"] == 0
        wrong = http.post(f"/api/sessions/{sid}/play", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 403 and wrong.json()["detail"]["field"] == "token"


def test_token_as_bearer_query_or_cookie(token_server: Server) -> None:
    sid = create(token_server, TOKEN)["id"]
    with client(token_server) as http:
        assert http.post(f"/api/sessions/{sid}/step", headers=BEARER).status_code == 200
        assert http.post(f"/api/sessions/{sid}/step?token={TOKEN}").status_code == 200
    with client(token_server) as browser:  # the presenter's link sets the cookie
        r = browser.get(f"/?token={TOKEN}")
        cookie = r.headers["set-cookie"]
        assert cookie.startswith("ksmlab_token=") and "HttpOnly" in cookie
        assert "SameSite=Strict" in cookie
        r = browser.post(f"/ui/sessions/{sid}/controls", data={"action": "step"})
        assert r.status_code == 303  # a plain form post (no htmx): back to the session page
        assert browser.get(f"/api/sessions/{sid}").json()["step"] == 3
    with client(token_server) as other:
        assert "set-cookie" not in other.get("/?token=wrong").headers


def test_open_server_needs_no_token(open_server: Server) -> None:
    sid = create(open_server)["id"]
    with client(open_server) as http:
        assert http.post(f"/api/sessions/{sid}/step").status_code == 200
        assert http.delete(f"/api/sessions/{sid}").status_code == 204


# ------------------------------------------------------------------ websocket
def test_ws_viewer_watches_read_only(token_server: Server) -> None:
    sid = create(token_server, TOKEN)["id"]

    async def go() -> None:
        viewer = await ws_open(token_server, sid)
        presenter = await ws_open(token_server, sid, f"?token={TOKEN}")
        assert (await recv(viewer, "snapshot"))["step"] == 0
        await recv(presenter, "snapshot")
        for msg in (
            {"type": "step"},
            {"type": "play"},
            {"type": "knob", "knob": "run", "value": 0},
        ):
            await viewer.send(json.dumps(msg))
            err = await recv(viewer, "error")
            assert err["field"] == "token" and "presenter's token" in err["message"]
        await viewer.send(json.dumps({"type": "ack", "step": 0}))  # not a control
        await presenter.send(json.dumps({"type": "step", "n": 2}))
        seen = await recv(viewer, "delta", "snapshot")  # the viewer still watches
        assert seen["step"] >= 1
        await viewer.close()
        await presenter.close()

    run(go())


def test_ws_bearer_header_controls(token_server: Server) -> None:
    sid = create(token_server, TOKEN)["id"]

    async def go() -> None:
        ws = await ws_open(token_server, sid, additional_headers=BEARER)
        await recv(ws, "snapshot")
        await ws.send(json.dumps({"type": "step"}))
        assert (await recv(ws, "delta", "snapshot", "error"))["type"] != "error"
        await ws.close()

    run(go())


@pytest.mark.parametrize("path", ["/ws/sessions/x", "/ws/live"])
def test_ws_foreign_origin_refused(open_server: Server, path: str) -> None:
    async def go() -> None:
        url = f"{open_server.ws_url}{path}"
        for origin in (
            "http://evil.example",
            f"http://localhost:{open_server.port}",
            f"https://127.0.0.1:{open_server.port}",
            "null",
        ):
            with pytest.raises(InvalidStatus) as info:
                await asyncio.wait_for(_connect(url, origin), 10)
            assert info.value.response.status_code == 403

    run(go())


def test_ws_same_origin_or_none_accepted(open_server: Server) -> None:
    sid = create(open_server)["id"]

    async def go() -> None:
        for origin in (f"http://127.0.0.1:{open_server.port}", None):
            ws = await _connect(f"{open_server.ws_url}/ws/sessions/{sid}", origin)
            assert (await recv(ws, "snapshot"))["session"] == sid
            await ws.close()

    run(go())


def test_live_only_server_checks_the_origin_too() -> None:
    from app.live.routes import create_live_app
    from app.live.settings import LiveSettings

    with Server(app=create_live_app(LiveSettings(live_interval=0.1))) as live:

        async def go() -> None:
            with pytest.raises(InvalidStatus) as info:
                await asyncio.wait_for(
                    _connect(f"{live.ws_url}/ws/live", "http://evil.example"), 10
                )
            assert info.value.response.status_code == 403
            ws = await _connect(f"{live.ws_url}/ws/live", f"http://127.0.0.1:{live.port}")
            assert json.loads(await asyncio.wait_for(ws.recv(), 20))["type"]
            await ws.close()

        run(go())


def test_token_never_reaches_the_access_log() -> None:
    """A real ``ksmlab serve`` with a token: the presenter's link works, and uvicorn's access
    log shows ``token=[redacted]``, never the token (good or wrong)."""
    import os
    import socket
    import time

    import httpx

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    secret = "Pr3senter-s3cret"
    env = {**os.environ, "KSMLAB_TOKEN": secret}
    proc = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(f"{base}/healthz", timeout=2)
                break
            except httpx.TransportError:
                assert proc.poll() is None and time.monotonic() < deadline, "no server"
                time.sleep(0.1)
        page = httpx.get(f"{base}/?token={secret}", timeout=10)
        assert page.status_code == 200 and page.cookies.get("ksmlab_token") == secret
        wrong = httpx.post(
            f"{base}/api/sessions?token=guess-{secret}&x=1",
            json={"preset": "zero-pages-unmerge"},
            timeout=10,
        )
        assert wrong.status_code == 403
    finally:
        proc.terminate()
        out, err = proc.communicate(timeout=20)
    log = out + err
    assert "GET /?token=[redacted] HTTP/1.1" in log, log
    assert "POST /api/sessions?token=[redacted]&x=1" in log, log
    assert secret not in log


async def _connect(url: str, origin: str | None) -> Any:
    from websockets.asyncio.client import connect

    kw: dict[str, Any] = {"origin": origin} if origin else {}
    return await connect(url, compression=None, max_size=None, **kw)


# ------------------------------------------------------------------ binding
def test_loopback_default_and_generated_token() -> None:
    assert Settings().host == "127.0.0.1"
    assert all(is_loopback(h) for h in ("127.0.0.1", "localhost", "::1", "127.1.2.3"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "::", "192.168.1.5", "example.org"))
    assert ensure_token(Settings()).token is None
    wide = ensure_token(Settings(host="0.0.0.0"))
    assert wide.token and len(wide.token) >= 16
    assert ensure_token(Settings(host="0.0.0.0", token="mine")).token == "mine"
    assert create_app(Settings(host="0.0.0.0")).state.settings.token  # never open by mistake


def test_serve_prints_presenter_link(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import uvicorn

    from app.cli import main

    seen: dict[str, Any] = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: seen.update(app=app, **kw))
    monkeypatch.delenv("KSMLAB_TOKEN", raising=False)
    assert main(["serve", "--host", "0.0.0.0", "--port", "8765"]) == 0
    out = capsys.readouterr().out
    token = seen["app"].state.settings.token
    assert token and f"http://HOST:8765/?token={token}" in out
    monkeypatch.setenv("KSMLAB_TOKEN", "given-token")
    from app.config import get_settings

    get_settings.cache_clear()
    try:
        assert main(["serve", "--host", "10.1.2.3", "--port", "8765"]) == 0
        assert "http://10.1.2.3:8765/?token=given-token" in capsys.readouterr().out
        assert main(["serve"]) == 0
        assert seen["host"] == "127.0.0.1" and "token" not in capsys.readouterr().out
    finally:
        get_settings.cache_clear()


# ------------------------------------------------------------------ route walks
def all_routes(routes: list[Any]) -> list[Any]:
    """Every route, through included routers (FastAPI 0.16x keeps them nested)."""
    out: list[Any] = []
    for route in routes:
        included = getattr(route, "original_router", None)
        out += all_routes(included.routes) if included is not None else [route]
    return out


def _calls(dependant: Any) -> set[Any]:
    out = {dependant.call}
    for sub in dependant.dependencies:
        out |= _calls(sub)
    return out


def test_every_state_changing_route_requires_the_token() -> None:
    app = create_app(Settings())
    guarded = []
    for route in all_routes(app.routes):
        if isinstance(route, APIRoute) and route.methods - {"GET", "HEAD"}:
            calls = _calls(route.dependant)
            assert require_control in calls or check_control in calls, route.path
            guarded.append(route.path)
    assert "/api/sessions/{session_id}/inject" in guarded
    assert "/ui/sessions/{sid}/controls" in guarded


def test_live_view_is_read_only() -> None:
    app = create_app(Settings())
    live = [r for r in all_routes(app.routes) if "live" in getattr(r, "path", "")]
    assert live, "the live view is mounted"
    for route in live:
        if isinstance(route, APIRoute):
            assert route.methods <= {"GET", "HEAD"}, route.path
        else:
            assert isinstance(route, APIWebSocketRoute), route


#: the read-only modules of app.kernel.host (none writes to /sys or /proc)
HOST_READER = ("procfs", "frames", "ksm", "pagemap")


def test_kernel_replayer_not_reachable() -> None:
    app = create_app(Settings())
    for route in all_routes(app.routes):
        path = getattr(route, "path", "")
        assert "replay" not in path and "fuzz" not in path, path
        if isinstance(route, Mount):
            continue
        endpoint = getattr(route, "endpoint", None)
        modules = {getattr(endpoint, "__module__", "")}
        dependant = getattr(route, "dependant", None)
        if dependant is not None:
            modules |= {getattr(c, "__module__", "") for c in _calls(dependant) if c}
        for mod in modules:
            assert not mod.startswith("app.kernel"), (path, mod)
    # a fresh interpreter: building the app imports nothing of app.kernel but the read-only
    # host reader the live view shares (no replayer, fuzz, worker, qemu or sysfs writer)
    code = (
        "import sys; from app.server.app import create_app; create_app();"
        "print(sorted(m for m in sys.modules if m.startswith('app.kernel')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    imported = set(json.loads(out.replace("'", '"')))
    host = {"app.kernel.host", *(f"app.kernel.host.{m}" for m in HOST_READER)}
    assert imported <= {"app.kernel", *host}, imported
