"""Issue 15, "Hardening, round two": each hole reproduced against a real uvicorn server.

Items 1, 3, 5, 8, 9 and 10 of the issue (the others: ``test_slowloris.py``,
``test_live_limits.py``, ``test_viewer_memory.py``, ``test_recipes.py``).
"""

from __future__ import annotations

import base64
import json
import logging
import socket
import time
import zlib
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from websockets.exceptions import InvalidStatus

from .conftest import TOKEN, Server, client, create, recv, run, ws_open

BEARER = {"Authorization": f"Bearer {TOKEN}"}
PRESET = "zero-pages-unmerge"


def do_param(items: Any) -> str:
    raw = json.dumps(items, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(zlib.compress(raw, 9)).rstrip(b"=").decode()


def sessions(server: Server) -> int:
    with client(server) as http:
        n: int = http.get("/healthz").json()["sessions"]
    return n


# ----------------------------------------------------------------- 1: a 31-character link
def test_huge_step_count_in_a_link_is_refused_before_any_work(open_server: Server) -> None:
    before = sessions(open_server)
    do = do_param([[1_000_000_000_000, "batch"]])
    assert len(do) < 40
    with client(open_server) as http:
        t0 = time.monotonic()
        r = http.get(f"/session?preset={PRESET}&do={do}&step=5")
        elapsed = time.monotonic() - t0
    assert r.status_code == 422, r.text[:300]
    assert "do" in r.text and "at most" in r.text
    assert elapsed < 2.0  # 10^12 steps: refused by arithmetic, not by trying
    assert sessions(open_server) == before  # and no orphan session


# ----------------------------------------------------------------- 3: cross-site control
def test_foreign_origin_cannot_change_state(open_server: Server) -> None:
    before = sessions(open_server)
    evil = {"Origin": "http://evil.example"}
    with client(open_server) as http:
        r = http.post("/api/sessions", json={"preset": PRESET}, headers=evil)
        assert r.status_code == 403 and r.json()["detail"]["field"] == "origin"
        r = http.post("/session", files={"scenario": ("s.json", b"{}")}, headers=evil)
        assert r.status_code == 403
        r = http.post(
            "/api/sessions", data={"preset": PRESET}, headers={"Sec-Fetch-Site": "cross-site"}
        )
        assert r.status_code == 403
        r = http.post("/api/sessions", json={"preset": PRESET}, headers={"Origin": "null"})
        assert r.status_code == 403
        # a form post from the page itself still works
        own = {"Origin": open_server.url}
        r = http.post("/api/sessions", data={"preset": PRESET}, headers=own)
        assert r.status_code == 201, r.text
        sid = r.json()["id"]
        # JSON only as JSON (text/plain is what a cross-site form may send unasked)
        r = http.post(
            f"/api/sessions/{sid}/step",
            content=b'{"n": 1}',
            headers={"Content-Type": "text/plain"},
        )
        assert r.status_code == 415 and r.json()["detail"]["field"] == "body"
        r = http.post(
            "/api/sessions", content=json.dumps({"preset": PRESET}), headers={"Content-Type": ""}
        )
        assert r.status_code == 415
    assert sessions(open_server) == before + 1


def test_foreign_host_is_refused_dns_rebinding(open_server: Server) -> None:
    sid = create(open_server)["id"]
    rebound = {"Host": f"evil.example:{open_server.port}"}
    with client(open_server) as http:
        assert http.get("/", headers=rebound).status_code == 421
        assert http.get(f"/api/sessions/{sid}", headers=rebound).status_code == 421
        r = http.post(f"/api/sessions/{sid}/step", json={"n": 1}, headers=rebound)
        assert r.status_code == 421
        for ok in ("127.0.0.1", "localhost", "[::1]"):
            assert http.get("/healthz", headers={"Host": f"{ok}:{open_server.port}"}).is_success

    # a websocket whose Origin matches its (rebound) Host: refused for the Host
    with socket.create_connection(("127.0.0.1", open_server.port), timeout=10) as sock:
        sock.sendall(
            (
                f"GET /ws/sessions/{sid} HTTP/1.1\r\n"
                f"Host: evil.example:{open_server.port}\r\n"
                f"Origin: http://evil.example:{open_server.port}\r\n"
                "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        assert sock.recv(1024).startswith(b"HTTP/1.1 403")


# ----------------------------------------------------------------- 5: YAML billion laughs
LAUGHS = (
    'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n'
    + "".join(
        f"{c}: &{c} [*{p},*{p},*{p},*{p},*{p},*{p},*{p},*{p},*{p},*{p}]\n"
        for p, c in zip("abcdefgh", "bcdefghi", strict=True)
    )
    + "steps: *i\n"
)


def test_yaml_billion_laughs_is_refused_quickly(open_server: Server) -> None:
    assert len(LAUGHS) < 600
    with client(open_server) as http:
        t0 = time.monotonic()
        r = http.post("/api/sessions", content=LAUGHS, headers={"Content-Type": "application/yaml"})
        assert time.monotonic() - t0 < 2.0
        assert r.status_code == 422
        assert len(r.content) < 1000
        assert "aliases" in r.json()["detail"]["message"]
        deep = "a: " + "[" * 20_000 + "]" * 20_000
        r = http.post("/api/sessions", content=deep, headers={"Content-Type": "text/yaml"})
        assert r.status_code == 422 and len(r.content) < 1000


# ----------------------------------------------------------------- 8: no 500s
BIG = "1" * 5000


def test_malformed_inputs_get_4xx_never_500(open_server: Server) -> None:
    sid = create(open_server)["id"]
    deep = "[" * 25_000 + "]" * 25_000
    with client(open_server) as http:
        cases: list[httpx.Response] = [
            http.post(
                f"/api/sessions/{sid}/knob",
                content=f'{{"knob": "pages_to_scan", "value": {BIG}}}',
                headers={"Content-Type": "application/json"},
            ),
            http.post(f"/api/sessions/{sid}/knob", data={"knob": "pages_to_scan", "value": BIG}),
            http.post(
                f"/api/sessions/{sid}/step",
                content='{"n": ' + deep + "}",
                headers={"Content-Type": "application/json"},
            ),
            http.post(f"/api/sessions/{sid}/inject", json={"op": ["spawn"]}),
            http.post(f"/api/sessions/{sid}/inject", json={"op": {"op": {"x": 1}}}),
            http.post("/api/sessions", data={"preset": PRESET, "knob.pages_to_scan": BIG}),
            http.post("/api/sessions", json={"preset": PRESET, "knobs": {"run": int(BIG[:4000])}}),
            http.post(f"/ui/sessions/{sid}/knobs", data={"knob.pages_to_scan": BIG}),
            http.get(f"/session?preset={PRESET}&knob.pages_to_scan={BIG}"),
            http.get(f"/session?preset={PRESET}&do={do_param([{'op': 'x', 'v': 1}])}"),
        ]
        nested = '{"op": ' * 20_000 + "1" + "}" * 20_000
        raw = zlib.compress(nested.encode(), 9)
        deep_do = base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
        cases.append(http.get(f"/session?preset={PRESET}&do={deep_do}"))
        big_do = do_param([["knob", "pages_to_scan", int(BIG[:4000])], [1, "page"]])
        cases.append(http.get(f"/session?preset={PRESET}&do={big_do}"))
        assert http.get(f"/session?preset={PRESET}&step={BIG}").status_code < 500
    for r in cases:
        assert 400 <= r.status_code < 500, (r.request.url, r.status_code, r.text[:300])
        assert "Traceback" not in r.text and len(r.content) < 64 * 1024


def test_failed_link_leaves_no_orphan_session(open_server: Server) -> None:
    before = sessions(open_server)
    bad = do_param([[3, "batch"], {"op": "mmap", "proc": "nobody", "vma": "v", "count": 1}])
    with client(open_server) as http:
        for _ in range(4):
            r = http.get(f"/session?preset={PRESET}&do={bad}&step=4")
            assert r.status_code == 422, r.text[:300]
    assert sessions(open_server) == before


def test_websocket_gets_a_clear_error_not_internal(open_server: Server) -> None:
    sid = create(open_server)["id"]

    async def go() -> list[dict[str, Any]]:
        ws = await ws_open(open_server, sid)
        await recv(ws, "snapshot")
        got = []
        frames = [
            f'{{"type": "knob", "knob": "pages_to_scan", "value": "{BIG}"}}',
            f'{{"type": "knob", "knob": "pages_to_scan", "value": {BIG}}}',
            '{"type": "inject", "op": ' + "[" * 10_000 + "]" * 10_000 + "}",
            '{"type": "inject", "op": ["spawn"]}',
            "[" * 30_000,
        ]
        for frame in frames:
            await ws.send(frame)
            got.append(await recv(ws, "error"))
        await ws.send('{"type": "step", "n": 1}')  # still open, still working
        await recv(ws, "delta", "snapshot")
        await ws.close()
        return got

    for err in run(go()):
        assert "internal" not in err["message"], err
        assert len(err["message"]) < 1000


# ----------------------------------------------------------------- 9: tokens in logs
class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@pytest.fixture()
def captured() -> Iterator[_Capture]:
    handler = _Capture()
    names = ("uvicorn", "uvicorn.error", "uvicorn.access", "ksmlab", "ksmlab.server", "")
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.addHandler(handler)
        lg.setLevel(logging.DEBUG)
    yield handler
    for lg, level in zip(loggers, levels, strict=True):
        lg.removeHandler(handler)
        lg.setLevel(level)


def test_no_log_line_holds_the_token(token_server: Server, captured: _Capture) -> None:
    sid = create(token_server, TOKEN)["id"]
    with client(token_server) as http:
        http.get(f"/?token={TOKEN}")
        http.get(f"/?%74oken={TOKEN}")
        http.get(f"/?%54OKEN={quote(TOKEN)}&x=1")
        http.get(f"/api/sessions/{sid}?token=wrong-{TOKEN}")
        http.post(f"/api/sessions/{sid}/step?token={TOKEN}", json={"n": 1})
        http.get("/healthz", headers=BEARER)

    async def go() -> None:
        ws = await ws_open(token_server, sid, f"?token={TOKEN}")
        await recv(ws, "snapshot")
        await ws.close()
        ws = await ws_open(token_server, sid, f"?%74oken={TOKEN}")
        await ws.close()
        with pytest.raises(InvalidStatus):
            await ws_open(
                token_server,
                sid,
                f"?token={TOKEN}",
                additional_headers={"Origin": "http://evil.example"},
            )

    run(go())
    time.sleep(0.3)
    assert any("WebSocket" in line for line in captured.lines), captured.lines[-5:]
    assert any("GET /" in line for line in captured.lines), captured.lines[-5:]
    leaked = [line for line in captured.lines if TOKEN in line or "74oken" in line.lower()]
    assert not leaked


# ----------------------------------------------------------------- 10: headers, no CDN
def test_security_headers_and_no_cdn_docs(open_server: Server) -> None:
    sid = create(open_server)["id"]
    with client(open_server) as http:
        page = http.get("/")
        csp = page.headers["content-security-policy"]
        assert "frame-ancestors 'none'" in csp and "script-src 'self'" in csp
        assert page.headers["x-frame-options"] == "DENY"
        assert page.headers["x-content-type-options"] == "nosniff"
        assert page.headers["cache-control"] == "no-store"
        session_page = http.get(f"/session?sid={sid}")
        assert "content-security-policy" in session_page.headers
        api = http.get(f"/api/sessions/{sid}")
        assert api.headers["x-content-type-options"] == "nosniff"
        assert api.headers["cache-control"] == "no-store"
        js = http.get("/static/js/main.js")
        assert js.headers["cache-control"] == "no-cache"
        assert http.get("/docs").status_code == 404
        assert http.get("/redoc").status_code == 404
        assert http.get("/openapi.json").status_code == 200
        for path in ("/", f"/session?sid={sid}"):
            html = http.get(path).text
            assert "cdn." not in html and "unpkg" not in html and "jsdelivr" not in html
