"""app/live/routes.py with FastAPI's TestClient against the fixture trees."""

from __future__ import annotations

import json

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from app.live.routes import create_live_app, router
from app.live.settings import LiveSettings, get_live_settings

from .conftest import WORKER_PID, Tree


def client_for(tree: Tree, **extra: object) -> TestClient:
    settings = LiveSettings(sys_root=tree.sys_root, proc_root=tree.proc_root, **extra)
    return TestClient(create_live_app(settings))


@pytest.fixture
def client(host_tree: Tree) -> TestClient:
    return client_for(host_tree, live_interval=0.05, live_max_pages=100)


def test_ksm_sample(client: TestClient) -> None:
    doc = client.get("/api/live/ksm").json()
    assert doc["available"] and doc["missing"] == []
    assert doc["values"]["pages_sharing"] == 62 and doc["values"]["advisor_mode"] == "none"
    assert {d["name"] for d in doc["derived"]} == {
        "sharing_ratio",
        "profit_per_rmap_item",
        "zero_pages_share",
    }


def test_old_kernel_sample_shows_missing_as_null(old_tree: Tree) -> None:
    doc = client_for(old_tree).get("/api/live/ksm").json()
    assert doc["values"]["ksm_zero_pages"] is None and doc["values"]["general_profit"] is None
    assert "ksm_zero_pages" in doc["missing"]
    procs = client_for(old_tree).get("/api/live/procs").json()["procs"]
    assert procs[0]["ksm_zero_pages"] is None and procs[0]["mergeable"] is None


def test_procs(client: TestClient) -> None:
    doc = client.get("/api/live/procs").json()
    assert [p["pid"] for p in doc["procs"]] == [WORKER_PID]
    assert doc["procs"][0]["merge_any"] is False
    every = client.get("/api/live/procs", params={"all": "true"}).json()
    assert [p["pid"] for p in every["procs"]] == [1, WORKER_PID]


def test_page_map_window(client: TestClient) -> None:
    doc = client.get(
        f"/api/live/procs/{WORKER_PID}/pages", params={"offset": 60, "limit": 10}
    ).json()
    assert doc["cells"] == "KKKKZZZZZZ" and doc["total_pages"] == 128
    assert doc["vmas"][0]["start"] == "0x200000000"
    default = client.get(f"/api/live/procs/{WORKER_PID}/pages").json()
    assert default["limit"] == 100  # the default window is capped by live_max_pages


def test_page_map_limits(client: TestClient) -> None:
    too_many = client.get(f"/api/live/procs/{WORKER_PID}/pages", params={"limit": 101})
    assert too_many.status_code == 422 and "page through" in too_many.json()["detail"]
    assert (
        client.get(f"/api/live/procs/{WORKER_PID}/pages", params={"offset": -1}).status_code == 422
    )
    gone = client.get("/api/live/procs/999999/pages")
    assert gone.status_code == 404 and "999999" in gone.json()["detail"]


def test_page_map_unavailable_is_not_an_http_error(host_tree: Tree) -> None:
    (host_tree.proc_root / "kpageflags").unlink()
    res = client_for(host_tree).get(f"/api/live/procs/{WORKER_PID}/pages")
    assert res.status_code == 200
    assert res.json()["available"] is False and "kpageflags" in res.json()["reason"]


def test_page_and_assets(client: TestClient) -> None:
    page = client.get("/live")
    assert page.status_code == 200
    for needle in (
        'id="counters-chart"',
        'id="procs-table"',
        'id="page-map"',
        "/live/plotly.min.js",
        "/live/assets/live.js",
    ):
        assert needle in page.text
    plotly = client.get("/live/plotly.min.js")
    assert plotly.status_code == 200 and "javascript" in plotly.headers["content-type"]
    assert len(plotly.content) > 1_000_000
    assert client.get("/live/assets/live.js").status_code == 200
    assert client.get("/live/assets/live.css").status_code == 200
    assert client.get("/live/assets/..%2Fpyproject.toml").status_code == 404
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/", follow_redirects=False).headers["location"] == "/live"


def test_websocket_streams_samples(client: TestClient) -> None:
    with client.websocket_connect("/ws/live") as ws:
        first = ws.receive_json()
        assert first["type"] == "sample"
        assert first["ksm"]["values"]["pages_shared"] == 2
        assert first["procs"]["procs"][0]["pid"] == WORKER_PID
        second = ws.receive_json()  # 0.05 s later
        assert second["type"] == "sample" and second["ksm"]["time"] >= first["ksm"]["time"]


def test_websocket_bad_messages_get_errors_and_the_stream_goes_on(client: TestClient) -> None:
    with client.websocket_connect("/ws/live") as ws:
        ws.send_json({"type": "interval", "seconds": 3600})
        ws.send_text("not json")
        ws.send_json({"type": "dance"})
        ws.send_json({"type": "interval", "seconds": "soon"})
        ws.send_bytes(b"\x00")
        ws.send_json({"type": "sample"})
        kinds: list[str] = []
        while kinds.count("error") < 4 or kinds[-1] != "sample":
            kinds.append(ws.receive_json()["type"])
            assert len(kinds) < 50
        errors = 4
        assert kinds.count("error") == errors


def test_websocket_interval_setting(host_tree: Tree) -> None:
    client = client_for(host_tree, live_interval=3600)
    with client.websocket_connect("/ws/live") as ws:
        assert ws.receive_json()["type"] == "sample"
        ws.send_json({"type": "interval", "seconds": 0.05})
        assert ws.receive_json()["type"] == "sample"
        assert ws.receive_json()["type"] == "sample"


def test_router_in_another_app(host_tree: Tree) -> None:
    """How the dashboard's app factory includes the live view."""
    app = FastAPI()
    app.include_router(router)
    app.dependency_overrides[get_live_settings] = lambda: LiveSettings(
        sys_root=host_tree.sys_root, proc_root=host_tree.proc_root
    )
    client = TestClient(app)
    assert client.get("/api/live/ksm").json()["values"]["ksm_zero_pages"] == 32
    assert "/api/live/procs/{pid}/pages" in json.dumps(client.get("/openapi.json").json())


def test_settings_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KSMLAB_SYS_ROOT", "/x/sys")
    monkeypatch.setenv("KSMLAB_PROC_ROOT", "/x/proc")
    monkeypatch.setenv("KSMLAB_LIVE_INTERVAL", "2.5")
    s = LiveSettings()
    assert (str(s.sys_root), str(s.proc_root), s.live_interval) == ("/x/sys", "/x/proc", 2.5)


def test_the_dashboard_includes_the_live_view(host_tree: Tree) -> None:
    """``app.server.app.create_app`` includes ``app.live.routes.router`` when present."""
    server_app = pytest.importorskip("app.server.app")
    app = server_app.create_app()
    app.dependency_overrides[get_live_settings] = lambda: LiveSettings(
        sys_root=host_tree.sys_root, proc_root=host_tree.proc_root
    )
    with TestClient(app) as client:
        assert client.get("/live").status_code == 200
        assert client.get("/api/live/ksm").json()["values"]["pages_shared"] == 2
        with client.websocket_connect("/ws/live") as ws:
            assert ws.receive_json()["procs"]["procs"][0]["pid"] == WORKER_PID
