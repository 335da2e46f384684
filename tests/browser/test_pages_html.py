"""The pages router's HTML and htmx partials, without a browser (FastAPI's TestClient).

These run everywhere (no Chromium needed): links that rebuild a session, partials that
target themselves, validation errors inline with a 4xx status, the inspector's PTE bits.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from fastapi.testclient import TestClient

PRESET = "zero-pages-unmerge"
HX = {"HX-Request": "true"}


@pytest.fixture
def client() -> Iterator[TestClient]:
    from app.config import Settings
    from app.server.app import create_app

    with TestClient(create_app(Settings())) as c:
        yield c


def open_session(client: TestClient, query: str) -> tuple[str, dict[str, list[str]]]:
    r = client.get(f"/session?{query}", follow_redirects=False)
    assert r.status_code == 303, r.text
    q = parse_qs(urlsplit(r.headers["location"]).query)
    return q["sid"][0], q


def test_index_lists_presets_kernels_and_compare(client: TestClient) -> None:
    r = client.get("/")
    assert r.status_code == 200
    assert f'data-preset="{PRESET}"' in r.text
    for k in ("6.18", "6.12", "6.5", "6.1"):
        assert f'value="{k}"' in r.text
    assert 'action="/compare"' in r.text
    assert "cdn" not in r.text.lower() and "https://" not in r.text


def test_session_link_carries_preset_kernel_knobs_and_step(client: TestClient) -> None:
    sid, q = open_session(client, f"preset={PRESET}&kernel=6.5&knob.pages_to_scan=50&step=4")
    assert q["preset"] == [PRESET] and q["kernel"] == ["6.5"] and q["step"] == ["4"]
    assert q["knob.pages_to_scan"] == ["50"]
    info = client.get(f"/api/sessions/{sid}").json()
    assert info["step"] == 4 and info["kernel"] == "6.5"
    page = client.get("/session?" + "&".join(f"{k}={v[0]}" for k, v in q.items()))
    assert page.status_code == 200
    assert f'data-session="{sid}"' in page.text and 'data-kernel="6.5"' in page.text
    assert 'name="knob.pages_to_scan" value="50"' in page.text
    # the share link drops the live session id: it rebuilds the state anywhere
    share = re.search(r'class="share-link" href="([^"]+)"', page.text)
    assert share and "sid=" not in share.group(1) and "step=4" in share.group(1)


def test_a_gone_session_without_preset_says_so(client: TestClient) -> None:
    r = client.get("/session?sid=nope")
    assert r.status_code == 404
    assert "gone" in r.text


def test_unknown_preset_is_an_inline_error_on_the_index(client: TestClient) -> None:
    r = client.get("/session?preset=no-such-thing")
    assert r.status_code == 404
    assert 'class="error"' in r.text and "preset" in r.text


def test_controls_partial_steps_and_targets_itself(client: TestClient) -> None:
    sid, _ = open_session(client, f"preset={PRESET}")
    r = client.post(f"/ui/sessions/{sid}/controls", data={"action": "step"}, headers=HX)
    assert r.status_code == 200
    assert r.text.lstrip().startswith('<div class="controls" id="controls"')
    assert 'hx-target="#controls"' in r.text
    assert client.get(f"/api/sessions/{sid}").json()["step"] == 1
    r = client.post(f"/ui/sessions/{sid}/controls", data={"action": "back"}, headers=HX)
    assert client.get(f"/api/sessions/{sid}").json()["step"] == 0
    r = client.post(
        f"/ui/sessions/{sid}/controls", data={"action": "speed", "speed": "99"}, headers=HX
    )
    assert r.status_code == 422 and 'class="error"' in r.text and "speed" in r.text
    r = client.post(f"/ui/sessions/{sid}/controls", data={"action": "realtime"}, headers=HX)
    assert r.status_code == 200 and "real time" in r.text
    assert client.get(f"/api/sessions/{sid}").json()["realtime"] is True
    r = client.post(f"/ui/sessions/{sid}/controls", data={"action": "fork"}, headers=HX)
    assert r.headers["HX-Redirect"].startswith("/session?sid=")


def test_knob_error_comes_back_next_to_its_field(client: TestClient) -> None:
    sid, _ = open_session(client, f"preset={PRESET}")
    r = client.post(f"/ui/sessions/{sid}/knobs", data={"knob.max_page_sharing": "1"}, headers=HX)
    assert r.status_code in (409, 422)
    label = re.search(r'<label class="knob invalid">.*?</label>', r.text, re.S)
    assert label and "max_page_sharing" in label.group(0) and "EINVAL" in label.group(0)
    assert 'value="1"' in label.group(0)  # what the user typed stays in the field
    r = client.post(f"/ui/sessions/{sid}/knobs", data={"knob.pages_to_scan": "300"}, headers=HX)
    assert r.status_code == 200 and "wrote pages_to_scan=300" in r.text


def test_inject_on_a_selection_and_its_errors(client: TestClient) -> None:
    sid, _ = open_session(client, f"preset={PRESET}&step=2")  # spawn, mmap
    form = {"op": "write-zero", "proc": "A", "vma": "heap", "pages": "0-9"}
    r = client.post(f"/ui/sessions/{sid}/inject", data=form, headers=HX)
    assert r.status_code == 200, r.text
    trigger = json.loads(r.headers["HX-Trigger"])
    assert trigger["ksm:injected"]["op"] == "write-zero"
    bad = {"op": "read", "proc": "A", "vma": "heap", "pages": "0-999"}
    r = client.post(f"/ui/sessions/{sid}/inject", data=bad, headers=HX)
    assert r.status_code == 422 and 'class="error"' in r.text
    assert 'value="0-999"' in r.text  # the form keeps the input
    r = client.post(f"/ui/sessions/{sid}/inject", data={"op": "explode"}, headers=HX)
    assert r.status_code == 422


def play_to_merge(client: TestClient, sid: str) -> None:
    for _ in range(40):
        d = client.get(f"/api/sessions/{sid}/state").json()
        if d["global"]["ksm_zero_pages"]:
            return
        client.post(f"/api/sessions/{sid}/step", json={"n": 1})
    raise AssertionError("never merged")


def test_inspector_shows_the_dirty_bit_of_a_ksm_placed_zero_page(client: TestClient) -> None:
    sid, _ = open_session(client, f"preset={PRESET}&kernel=6.18")
    play_to_merge(client, sid)
    r = client.get(f"/ui/sessions/{sid}/pages/A/heap/5")
    assert r.status_code == 200
    assert 'data-kind="ksm_zero"' in r.text and 'data-dirty="true"' in r.text
    assert re.search(r'class="bit on[^"]*" data-bit="dirty"', r.text)
    assert "ksm_zero_pages" in r.text  # the why line
    r = client.get(f"/ui/sessions/{sid}/pages/A/heap/999")
    assert r.status_code == 404 and 'class="error"' in r.text
    r = client.get(f"/ui/sessions/{sid}/procs/A")
    assert r.status_code == 200 and "ksm_zero_pages" in r.text and "ksm_rmap_items" in r.text


def test_compare_opens_two_kernels_in_lockstep(client: TestClient) -> None:
    r = client.get(f"/compare?preset={PRESET}&left=6.5&right=6.18", follow_redirects=False)
    assert r.status_code == 303
    q = parse_qs(urlsplit(r.headers["location"]).query)
    a, b = q["a"][0], q["b"][0]
    page = client.get(r.headers["location"])
    assert page.text.index(f'data-session="{a}"') < page.text.index(f'data-session="{b}"')
    client.post(f"/ui/sessions/{a}/controls", data={"action": "step"}, headers=HX)
    steps: list[Any] = [client.get(f"/api/sessions/{s}").json()["step"] for s in (a, b)]
    assert steps == [1, 1]
    r = client.get(f"/compare?preset={PRESET}&left=6.5&right=7.0")
    assert r.status_code == 422


def test_upload_errors_inline_and_success_redirects(client: TestClient) -> None:
    r = client.post(
        "/session", files={"scenario": ("x.json", b"{not json", "application/json")}, headers=HX
    )
    assert r.status_code == 422 and r.text.lstrip().startswith('<form id="upload"')
    doc = {"format": "ksm-scenario/1", "name": "t", "steps": [{"op": "spawn", "proc": "P"}]}
    r = client.post(
        "/session",
        data={"kernel": "6.5"},
        files={"scenario": ("t.json", json.dumps(doc).encode(), "application/json")},
        headers=HX,
    )
    assert r.status_code == 200 and r.headers["HX-Redirect"].startswith("/session?sid=")
    yaml_doc = b"format: ksm-scenario/1\nname: y\nsteps:\n  - {op: spawn, proc: Q}\n"
    r = client.post(
        "/session",
        files={"scenario": ("t.yaml", yaml_doc, "application/yaml")},
        follow_redirects=False,
    )
    assert r.status_code == 303


def test_injecting_in_the_past_forks_and_the_branch_can_be_chosen(client: TestClient) -> None:
    sid, _ = open_session(client, f"preset={PRESET}&step=5")
    client.post(f"/ui/sessions/{sid}/controls", data={"action": "back"}, headers=HX)
    form = {"op": "write-unique", "proc": "A", "vma": "heap", "pages": "0"}
    assert client.post(f"/ui/sessions/{sid}/inject", data=form, headers=HX).status_code == 200
    r = client.get(f"/ui/sessions/{sid}/controls")
    assert '<select name="branch"' in r.text and r.text.count("<option") >= 2
    r = client.post(
        f"/ui/sessions/{sid}/controls", data={"action": "branch", "branch": "0"}, headers=HX
    )
    assert r.status_code == 200
    info = client.get(f"/api/sessions/{sid}").json()
    assert info["branch"] == 0 and info["step"] == 5


def test_inspector_lists_the_stable_node_and_its_sharers(client: TestClient) -> None:
    sid, _ = open_session(client, f"preset={PRESET}&kernel=6.18")
    for _ in range(60):
        if client.get(f"/api/sessions/{sid}/state").json()["global"]["pages_sharing"]:
            break
        client.post(f"/api/sessions/{sid}/step", json={"n": 1})
    r = client.get(f"/ui/sessions/{sid}/pages/A/heap/150")
    assert 'data-kind="ksm"' in r.text and "stable node" in r.text
    assert "sharer-count" in r.text  # its sharers, grouped as ranges with a count
    assert re.search(r"<li>A heap\[\d+(-\d+)?\]</li>", r.text), r.text


def test_share_link_carries_what_was_done_by_hand(client: TestClient) -> None:
    sid, _ = open_session(client, f"preset={PRESET}&kernel=6.18&step=6")  # advised
    api = f"/api/sessions/{sid}"
    first = client.get(f"{api}/share").json()
    assert {k: first[k] for k in ("step", "branch", "do")} == {"step": 6, "branch": 0, "do": None}
    assert len(first["r"]) == 32  # the session's stored recipe (app.server.store)
    for path, body in (
        ("inject", {"op": {"op": "fork", "proc": "A", "child": "B"}}),
        ("knob", {"knob": "pages_to_scan", "value": 7}),
        ("step", {"n": 5, "grain": "page"}),
        (
            "inject",
            {
                "op": {
                    "op": "write",
                    "proc": "B",
                    "vma": "heap",
                    "content": "zero",
                    "pages": "200-209",
                }
            },
        ),
        ("step", {"n": 4}),
    ):
        assert client.post(f"{api}/{path}", json=body).status_code == 200, (path, body)
    share = client.get(f"{api}/share").json()
    assert share["step"] == 6 + 12 and share["do"]
    want = client.get(f"{api}/state").json()
    assert [p["name"] for p in want["procs"]] == ["A", "B"]

    # the link rebuilds the same state in a new session (the one the page would offer too)
    page = client.get(f"/session?sid={sid}&preset={PRESET}&kernel=6.18&step=18")
    link = re.search(r'class="share-link" href="([^"]+)"', page.text)
    assert link and f"r={share['r']}" in link.group(1).replace("&amp;", "&")
    query = f"preset={PRESET}&kernel=6.18&step=18&do={share['do']}"  # an older link
    sid2, q = open_session(client, query)
    assert sid2 != sid and q["r"] == [share["r"]] and q["step"] == ["18"]
    assert client.get(f"/api/sessions/{sid2}/state").json() == want

    # an earlier step of the same link: the recorded future stays reachable
    sid3, q = open_session(client, f"preset={PRESET}&kernel=6.18&step=9&do={share['do']}")
    info = client.get(f"/api/sessions/{sid3}").json()
    assert info["step"] == 9 and info["head"] == 18
    client.post(f"/api/sessions/{sid3}/step", json={"n": 9})
    assert client.get(f"/api/sessions/{sid3}/state").json() == want


def test_a_bad_share_link_is_refused_and_leaves_no_session(client: TestClient) -> None:
    import base64
    import zlib

    before = len(client.get("/api/sessions").json())
    forged = (
        base64.urlsafe_b64encode(
            zlib.compress(b'[[2,"batch"],{"op":"fork","proc":"nobody","child":"X"}]')
        )
        .rstrip(b"=")
        .decode()
    )
    for do, words in (
        ("%%%not-base64", "cannot decode"),
        (forged, "recorded action failed"),
        (base64.urlsafe_b64encode(zlib.compress(b'[[0,"batch"]]')).decode(), "action 0"),
    ):
        r = client.get(f"/session?preset={PRESET}&step=3&do={do}", follow_redirects=False)
        assert r.status_code == 422, (do, r.status_code)
        assert "do" in r.text and words in r.text, r.text[-2000:]
    assert len(client.get("/api/sessions").json()) == before
