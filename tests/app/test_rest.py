"""REST: sessions, limits, controls, errors, exports (real server; TestClient for settings)."""

from __future__ import annotations

import csv
import io
import json
import time

import pytest
import yaml
from fastapi.testclient import TestClient

from app.config import Settings
from app.server.app import create_app

from .conftest import new_session

SMALL = {
    "name": "small",
    "sysfs": {"pages_to_scan": 10},
    "steps": [
        {"op": "spawn", "proc": "A"},
        {"op": "mmap", "proc": "A", "vma": "heap", "pages": 20},
        {"op": "write", "proc": "A", "vma": "heap", "content": "X"},
        {"op": "madvise", "proc": "A", "vma": "heap", "advice": "MADV_MERGEABLE"},
        {"op": "checkpoint", "name": "advised"},
        {"op": "scan", "passes": 2},
        {"op": "checkpoint", "name": "merged"},
    ],
}


def test_health_docs_presets_and_vendor_js(server, http):
    assert http.get("/healthz").json()["status"] == "ok"
    assert http.get("/docs").status_code == 404  # Swagger UI would load from a CDN
    paths = http.get("/openapi.json").json()["paths"]
    assert "/api/sessions/{session_id}/step" in paths and "/api/compare" in paths
    presets = http.get("/api/presets").json()
    assert "zero-pages-unmerge" in [p["name"] for p in presets]
    js = http.get("/static/vendor/plotly.min.js")
    assert js.status_code == 200 and len(js.content) > 1_000_000
    htmx = http.get("/static/vendor/htmx.min.js")
    installed = (server.settings.static_dir / "node_modules" / "htmx.org").is_dir()
    assert htmx.status_code == (200 if installed else 404)


def test_create_from_preset_json_yaml_form_and_upload(http):
    a = new_session(http, preset="smart-scan", kernel="6.1", knobs={"pages_to_scan": 50})
    assert (a["kernel"], a["preset"]) == ("6.1", "smart-scan")
    snap = http.get(f"/api/sessions/{a['id']}/snapshot").json()
    assert snap["knobs"]["pages_to_scan"] == 50
    b = http.post("/api/sessions", json=SMALL, params={"kernel": "6.5"})
    assert b.status_code == 201 and b.json()["kernel"] == "6.5"
    c = http.post(
        "/api/sessions", content=yaml.safe_dump(SMALL), headers={"Content-Type": "application/yaml"}
    )
    assert c.status_code == 201 and c.json()["name"] == "small"
    d = http.post(
        "/api/sessions", data={"preset": "vm-host", "kernel": "6.12", "knob.pages_to_scan": "300"}
    )
    assert d.status_code == 201, d.text
    assert (
        http.get(f"/api/sessions/{d.json()['id']}/snapshot").json()["knobs"]["pages_to_scan"] == 300
    )
    e = http.post(
        "/api/sessions",
        data={"kernel": "6.18"},
        files={"scenario": ("s.yaml", yaml.safe_dump(SMALL), "application/yaml")},
    )
    assert e.status_code == 201, e.text
    ids = {s["id"] for s in http.get("/api/sessions").json()}
    assert {a["id"], b.json()["id"], c.json()["id"], d.json()["id"], e.json()["id"]} <= ids


def test_bad_sessions_give_4xx_naming_the_field(http):
    cases = [
        ({"preset": "no-such-preset"}, 404, "preset"),
        ({"preset": "vm-host", "kernel": "5.0"}, 422, "kernel"),
        ({}, 422, "preset"),
        (
            {
                "scenario": {
                    **SMALL,
                    "steps": [
                        {"op": "spawn", "proc": "A"},
                        {"op": "read", "proc": "A", "vma": "x"},
                    ],
                }
            },
            422,
            "scenario.steps[1].vma",
        ),
        (
            {
                "scenario": {
                    **SMALL,
                    "steps": [
                        {"op": "spawn", "proc": "A"},
                        {"op": "mmap", "proc": "A", "vma": "h", "pages": 300_000},
                    ],
                }
            },
            413,
            "pages",
        ),
        ({"preset": "prctl-merge-any", "kernel": "6.1"}, 422, "kernel"),
        ({"preset": "vm-host", "knobs": {"pages_to_scan": "lots"}}, 409, "knob"),
    ]
    for body, status, field in cases:
        r = http.post("/api/sessions", json=body)
        assert r.status_code == status, (body, r.text)
        assert r.json()["detail"]["field"] == field, r.text
    r = http.post(
        "/api/sessions", content=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert r.status_code == 422 and r.json()["detail"]["field"] == "body"
    r = http.post("/api/sessions", content=b"steps: [", headers={"Content-Type": "text/yaml"})
    assert r.status_code == 422 and r.json()["detail"]["field"] == "scenario"
    huge = {"scenario": {"steps": [{"op": "spawn", "proc": f"P{i}"} for i in range(5000)]}}
    r = http.post(
        "/api/sessions", content=json.dumps(huge), headers={"Content-Type": "application/json"}
    )
    assert r.status_code == 413 and r.json()["detail"]["field"] == "body"
    assert http.get("/api/sessions/nope").status_code == 404
    assert http.get("/healthz").status_code == 200


def test_controls_accept_json_and_forms(http):
    sid = new_session(http, scenario=SMALL)["id"]
    r = http.post(f"/api/sessions/{sid}/step", data={"n": "3"})
    assert r.status_code == 200 and r.json()["step"] == 3
    r = http.post(f"/api/sessions/{sid}/step", json={"n": 2, "grain": "page"})
    assert r.json()["step"] == 5
    assert http.post(f"/api/sessions/{sid}/back", data={"n": "2"}).json()["step"] == 3
    r = http.post(f"/api/sessions/{sid}/speed", data={"realtime": "true"})
    assert r.json()["realtime"] is True
    r = http.post(f"/api/sessions/{sid}/speed", json={"batches_per_second": 50})
    assert (r.json()["speed"], r.json()["realtime"]) == (50, False)
    assert http.post(f"/api/sessions/{sid}/play").json()["playing"] is True
    deadline = time.monotonic() + 30
    while http.get(f"/api/sessions/{sid}").json()["playing"] and time.monotonic() < deadline:
        time.sleep(0.05)  # playing stops by itself at the end
    info = http.post(f"/api/sessions/{sid}/pause").json()
    assert info["playing"] is False and info["at_end"] is True
    r = http.post(
        f"/api/sessions/{sid}/inject",
        data={
            "op": "madvise",
            "proc": "A",
            "vma": "heap",
            "pages": "0-4,7",
            "advice": "MADV_UNMERGEABLE",
        },
    )
    assert r.status_code == 200, r.text
    assert "break_ksm" in r.json()["summary"]
    assert http.post(f"/api/sessions/{sid}/reset").json()["step"] == 0


def test_bad_controls_give_4xx_naming_the_field(http):
    sid = new_session(http, scenario=SMALL)["id"]
    http.post(f"/api/sessions/{sid}/step", json={"n": 30}).raise_for_status()
    r = http.post(f"/api/sessions/{sid}/knob", json={"knob": "max_page_sharing", "value": 5})
    assert r.status_code == 409
    assert r.json()["detail"] | {"message": ""} == {
        "field": "knob",
        "knob": "max_page_sharing",
        "errno": "EBUSY",
        "message": "",
    }
    cases = [
        ("knob", {"knob": "pages_shared", "value": 1}, 409, "knob"),
        (
            "inject",
            {"op": "write", "proc": "A", "vma": "heap", "pages": 99, "content": "Z"},
            422,
            "pages",
        ),
        ("inject", {"op": "fly"}, 422, "op"),
        ("inject", {"op": "mmap", "proc": "A", "vma": "big", "pages": 250_000}, 413, "pages"),
        ("step", {"n": 0}, 422, "n"),
        ("step", {"grain": "year"}, 422, "grain"),
        ("seek", {"step": 10_000}, 422, "step"),
        ("seek", {"step": 1, "branch": 9}, 422, "branch"),
        ("speed", {}, 422, "batches_per_second"),
        ("back", {"n": "x"}, 422, "n"),
    ]
    for verb, body, status, field in cases:
        r = http.post(f"/api/sessions/{sid}/{verb}", json=body)
        assert r.status_code == status, (verb, body, r.text)
        assert r.json()["detail"]["field"] == field, (verb, r.text)
    assert http.get(f"/api/sessions/{sid}").json()["branches"] == 1


def test_trace_and_counters_export(http):
    sid = new_session(http, scenario=SMALL)["id"]
    http.post(f"/api/sessions/{sid}/step", json={"n": 40}).raise_for_status()
    info = http.get(f"/api/sessions/{sid}").json()
    trace = http.get(f"/api/sessions/{sid}/trace").json()
    assert trace["format"] == "ksm-trace/1"
    names = [c["name"] for c in trace["checkpoints"]]
    assert names == ["advised", "merged", f"step {info['step']}"]
    merged = trace["checkpoints"][1]
    assert merged["global"]["pages_sharing"] == 19
    assert merged["pages"]["A"]["heap"].count("K0") == 20
    r = http.get(f"/api/sessions/{sid}/counters.csv")
    assert r.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(r.text)))
    assert len(rows) == info["step"] + 1
    assert rows[-1]["pages_sharing"] == "19" and rows[-1]["A.ksm_merging_pages"] == "20"


def test_compare_creates_a_lockstep_pair(http):
    r = http.post("/api/compare", data={"preset": "zero-pages-unmerge"})
    assert r.status_code == 201, r.text
    a, b = r.json()["sessions"]
    assert (a["kernel"], b["kernel"], a["group"]) == ("6.5", "6.18", r.json()["group"])
    http.post(f"/api/sessions/{a['id']}/step", json={"n": 4}).raise_for_status()
    assert http.get(f"/api/sessions/{b['id']}").json()["step"] == 4
    r = http.post("/api/compare", json={"preset": "vm-host", "kernels": ["6.1", "6.12"]})
    old, new = r.json()["sessions"]
    assert (old["kernel"], new["kernel"]) == ("6.1", "6.12")
    # a knob only one of the two kernels has is written there and skipped on the other
    r = http.post(f"/api/sessions/{old['id']}/knob", json={"knob": "smart_scan", "value": 0})
    assert r.status_code == 200, r.text
    assert http.get(f"/api/sessions/{old['id']}").json()["step"] == 0
    assert http.get(f"/api/sessions/{new['id']}/snapshot").json()["knobs"]["smart_scan"] == 0


def test_session_limit_and_idle_expiry():
    settings = Settings(max_sessions=2, idle_expiry_seconds=2.0, expiry_check_seconds=0.1)
    with TestClient(create_app(settings)) as client:
        ids = []
        for _ in range(2):
            r = client.post("/api/sessions", json={"preset": "vm-host"})
            assert r.status_code == 201
            ids.append(r.json()["id"])
            client.post(f"/api/sessions/{ids[-1]}/speed", json={"batches_per_second": 0.1})
            client.post(f"/api/sessions/{ids[-1]}/play")
        # every session plays: nothing can be evicted, a new one is refused
        r = client.post("/api/sessions", json={"preset": "vm-host"})
        assert r.status_code == 429 and r.json()["detail"]["field"] == "sessions"
        # one pauses: the least recently used idle, unwatched session makes room
        client.post(f"/api/sessions/{ids[0]}/pause")
        client.post(f"/api/sessions/{ids[1]}/pause")
        client.get(f"/api/sessions/{ids[0]}")  # used more recently than ids[1]
        r = client.post("/api/sessions", json={"preset": "vm-host"})
        assert r.status_code == 201
        alive = {s["id"] for s in client.get("/api/sessions").json()}
        assert alive == {ids[0], r.json()["id"]}
        deadline = time.monotonic() + 30
        while client.get("/api/sessions").json() and time.monotonic() < deadline:
            time.sleep(0.2)  # listing is no request *to* a session: they stay idle
        assert client.get("/api/sessions").json() == []
        assert client.post("/api/sessions", json={"preset": "vm-host"}).status_code == 201


def test_delete_then_404(http):
    sid = new_session(http, preset="vm-host")["id"]
    assert http.delete(f"/api/sessions/{sid}").status_code == 204
    assert http.get(f"/api/sessions/{sid}").status_code == 404
    assert http.post(f"/api/sessions/{sid}/step").status_code == 404


def test_ksmlab_serve_is_registered():
    from app.cli import build_parser

    args = build_parser().parse_args(["serve", "--port", "0", "--live-only"])
    assert (args.command, args.port, args.live_only, args.host) == ("serve", 0, True, None)


def test_one_command_model_rest_bodies_are_the_messages_fields():
    from app.server import messages as m

    pairs = [
        (m.StepBody, m.StepMsg),
        (m.BackBody, m.BackMsg),
        (m.SeekBody, m.SeekMsg),
        (m.SpeedBody, m.SpeedMsg),
        (m.KnobBody, m.KnobMsg),
        (m.InjectBody, m.InjectMsg),
    ]
    for body, msg in pairs:
        assert issubclass(msg, body)
        assert set(msg.model_fields) == {*body.model_fields, "type"}
        assert "type" not in body.model_json_schema()["properties"]
    assert set(m.COMMANDS) == {"step", "back", "seek", "play", "pause", "reset"} | {
        "speed",
        "inject",
        "knob",
    }
    assert m.command("step", {"n": 2, "action": "ignored"}) == m.StepMsg(type="step", n=2)


def test_a_knob_name_is_1_to_64_characters_everywhere(http):
    from pydantic import ValidationError

    from app.server import messages as m
    from app.server.errors import ApiError
    from app.server.share import messages as link_messages

    sid = new_session(http, scenario=SMALL)["id"]
    long = "x" * 65
    r = http.post(f"/api/sessions/{sid}/knob", json={"knob": long, "value": 1})
    assert (r.status_code, r.json()["detail"]["field"]) == (422, "knob")
    r = http.post(f"/api/sessions/{sid}/knob", data={"knob": "", "value": "1"})
    assert r.status_code == 422
    r = http.post(f"/ui/sessions/{sid}/knobs", data={f"knob.{long}": "1"})
    assert r.status_code == 422 and "at most 64 characters" in r.text
    for name in ("", long):
        with pytest.raises(ValidationError):
            m.parse_client_message(json.dumps({"type": "knob", "knob": name, "value": 1}))
    with pytest.raises(ApiError) as bad_link:
        link_messages([["knob", long, 1]], 100)
    assert bad_link.value.field == "do"
    assert http.get(f"/api/sessions/{sid}").json()["step"] == 0


def test_creation_knobs_are_checked_and_skipped_knobs_are_shown(http):
    """A knob given at creation that no kernel has is a typo: 422 naming it (cut to 64
    characters), no session made. A knob the chosen kernel lacks is skipped, as the format
    says, and the session says so, in its info and on its page; a scenario's ``sysfs`` is
    never refused for it (the contract: skipped, as the replayer does)."""
    before = len(http.get("/api/sessions").json())
    r = http.post("/api/sessions", json={"scenario": SMALL, "knobs": {"use_zero_page": 1}})
    assert (r.status_code, r.json()["detail"]["field"]) == (422, "knobs.use_zero_page")
    hint = "unknown knob 'use_zero_page': did you mean use_zero_pages?"  # as an upload warns
    assert r.json()["detail"]["message"] == hint
    r = http.post("/api/sessions", json={"scenario": SMALL, "knobs": {"k" * 5_000: 1}})
    assert r.status_code == 422 and len(r.content) < 2_000
    assert r.json()["detail"]["field"] == "knobs." + "k" * 64 + "..."
    form = {"preset": "zero-pages-unmerge", "knob.use_zero_page": "1"}  # the index page's form
    r = http.post("/api/sessions", data=form)
    assert r.status_code == 422 and "use_zero_page" in r.text
    assert len(http.get("/api/sessions").json()) == before

    on_61 = new_session(http, scenario=SMALL, kernel="6.1", knobs={"smart_scan": 0})
    assert on_61["skipped_knobs"] == ["smart_scan"]
    page = http.get(f"/session?sid={on_61['id']}").text
    assert "Linux 6.1 has no sysfs knob smart_scan" in page
    typo = new_session(http, scenario={**SMALL, "sysfs": {"use_zero_page": 1, "x" * 100: 2}})
    assert typo["skipped_knobs"] == ["use_zero_page", "x" * 64 + "..."]
    assert "has no sysfs knobs use_zero_page, " in http.get(f"/session?sid={typo['id']}").text
    assert new_session(http, scenario=SMALL)["skipped_knobs"] == []
    plain = new_session(http, scenario=SMALL)["id"]
    assert "skipped-knobs" not in http.get(f"/session?sid={plain}").text


def test_sessions_session_and_groups_import_one_way():
    """``sessions -> session -> groups``: no import back, not even for type checking."""
    import ast
    from pathlib import Path

    import app.server

    root = Path(app.server.__file__).parent

    def imports(name: str) -> set[str]:
        tree = ast.parse((root / f"{name}.py").read_text())
        return {
            n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.level == 1
        }

    assert not imports("groups") & {"session", "sessions"}
    assert "sessions" not in imports("session") and "groups" in imports("session")
