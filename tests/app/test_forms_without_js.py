"""The session page's forms without JavaScript (a real server, plain HTML form posts).

A form posted without the ``HX-Request`` header does its work and answers 303 See Other back
to the page it sits on (the token query kept), so the browser reloads the page with the new
state; bad input is a 4xx page that names the field and links back. With the header the
same endpoints keep answering with their partials.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from app.config import Settings

from .conftest import TEST_SETTINGS, LiveServer, new_session

PRESET = "zero-pages-unmerge"
HX = {"HX-Request": "true"}


def info(http: httpx.Client, sid: str) -> dict[str, Any]:
    r = http.get(f"/api/sessions/{sid}")
    assert r.status_code == 200, r.text
    out: dict[str, Any] = r.json()
    return out


def see_other(r: httpx.Response) -> tuple[str, dict[str, list[str]]]:
    """The path and query a 303 sends the browser to."""
    assert r.status_code == 303, (r.status_code, r.text[:500])
    where = urlsplit(r.headers["location"])
    assert not where.netloc, where  # always this server's page
    return where.path, parse_qs(where.query)


def back_link(r: httpx.Response) -> str:
    m = re.search(r'class="back-link" href="([^"]+)"', r.text)
    assert m, r.text[-800:]
    return m.group(1).replace("&amp;", "&")


def test_control_buttons_post_and_come_back_to_the_session_page(http: httpx.Client) -> None:
    sid = new_session(http, preset=PRESET)["id"]
    url = f"/ui/sessions/{sid}/controls"
    path, q = see_other(http.post(url, data={"action": "step"}))
    assert path == "/session" and q["sid"] == [sid] and q["step"] == ["1"]
    assert info(http, sid)["step"] == 1
    # the page it names is the session, at the new step
    page = http.get(http.post(url, data={"action": "step"}).headers["location"])
    assert page.status_code == 200 and 'class="step-no">2<' in page.text
    see_other(http.post(url, data={"action": "pass"}))
    after_pass = info(http, sid)["step"]
    assert after_pass > 2
    see_other(http.post(url, data={"action": "back"}))
    assert info(http, sid)["step"] == after_pass - 1
    # the sliders' own submit buttons: seek and speed, with the slider's value
    _, q = see_other(http.post(url, data={"action": "seek", "seek": "1", "speed": "0"}))
    assert info(http, sid)["step"] == 1 and q["step"] == ["1"]
    see_other(http.post(url, data={"action": "speed", "speed": "3", "seek": "1"}))
    assert info(http, sid)["speed"] == 4.0 and info(http, sid)["step"] == 1
    see_other(http.post(url, data={"action": "reset"}))
    assert info(http, sid)["step"] == 0


def test_fork_without_javascript_opens_the_fork(http: httpx.Client) -> None:
    sid = new_session(http, preset=PRESET)["id"]
    http.post(f"/api/sessions/{sid}/step", json={"n": 5})
    path, q = see_other(http.post(f"/ui/sessions/{sid}/controls", data={"action": "fork"}))
    assert path == "/session" and q["sid"][0] != sid
    fork = q["sid"][0]
    assert q["step"] == [str(info(http, fork)["step"])]
    # the fork starts from the parent's state at step 5
    snap = http.get(f"/api/sessions/{fork}/snapshot").json()
    assert snap["global"] == http.get(f"/api/sessions/{sid}/snapshot").json()["global"]
    assert info(http, sid)["step"] == 5


def test_bad_control_is_a_page_naming_the_field_with_a_link_back(http: httpx.Client) -> None:
    sid = new_session(http, preset=PRESET)["id"]
    url = f"/ui/sessions/{sid}/controls"
    r = http.post(url, data={"action": "seek", "seek": "-3"})
    assert r.status_code == 422
    assert "<b>seek</b>" in r.text and "a step number &gt;= 0" in r.text
    back = http.get(back_link(r))
    assert back.status_code == 200 and f'data-session="{sid}"' in back.text
    r = http.post(url, data={"action": "jump"})
    assert r.status_code == 422 and "<b>action</b>" in r.text
    r = http.post(url, data={"action": "speed", "speed": "99"})
    assert r.status_code == 422 and "<b>speed</b>" in r.text
    assert info(http, sid)["step"] == 0


def test_knobs_without_javascript(http: httpx.Client) -> None:
    sid = new_session(http, preset=PRESET)["id"]
    url = f"/ui/sessions/{sid}/knobs"
    knobs = http.get(f"/api/sessions/{sid}/snapshot").json()["knobs"]
    # the whole form, as a browser sends it: every field and its was.<name>; one changed
    form = {f"knob.{k}": str(v) for k, v in knobs.items()}
    form |= {f"was.{k}": str(v) for k, v in knobs.items()}
    form["knob.pages_to_scan"] = "37"
    path, q = see_other(http.post(url, data=form))
    assert path == "/session" and q["sid"] == [sid]
    now = http.get(f"/api/sessions/{sid}/snapshot").json()["knobs"]
    assert now == {**knobs, "pages_to_scan": 37}
    # a refused write: the page names the knob's field
    form |= {"knob.pages_to_scan": "37", "was.pages_to_scan": "37", "knob.sleep_millisecs": "x"}
    r = http.post(url, data=form)
    assert 400 <= r.status_code < 500
    assert "<b>knob.sleep_millisecs</b>" in r.text
    assert urlsplit(back_link(r)).path == "/session"
    assert http.get(f"/api/sessions/{sid}/snapshot").json()["knobs"] == now


def test_inject_without_javascript(http: httpx.Client) -> None:
    sid = new_session(http, preset=PRESET)["id"]
    http.post(f"/api/sessions/{sid}/step", json={"n": 5})
    url = f"/ui/sessions/{sid}/inject"
    fields = {"proc": "A", "vma": "heap", "pages": "250-251", "content": "Q", "child": ""}
    _, q = see_other(http.post(url, data={**fields, "op": "write"}))
    assert q["step"] == ["6"] and info(http, sid)["step"] == 6
    page = http.get(f"/api/sessions/{sid}/pages/A/heap/251").json()
    assert page["frame"]["content"] == "Q"
    r = http.post(url, data={**fields, "content": "", "op": "write"})
    assert r.status_code == 422 and "<b>content</b>" in r.text
    r = http.post(url, data={**fields, "op": "spawn"})
    assert r.status_code == 422 and "<b>op</b>" in r.text
    assert info(http, sid)["step"] == 6


def test_compare_page_forms_come_back_to_the_compare_page(http: httpx.Client) -> None:
    r = http.post("/api/compare", json={"preset": PRESET, "kernels": ["6.5", "6.18"]})
    assert r.status_code == 201, r.text
    a, b = (s["id"] for s in r.json()["sessions"])
    done = http.post(f"/ui/sessions/{a}/controls", data={"action": "step"})
    path, q = see_other(done)
    assert path == "/compare" and q["a"] == [a] and q["b"] == [b] and q["step"] == ["1"]
    assert q["left"] == ["6.5"] and q["right"] == ["6.18"] and q["preset"] == [PRESET]
    assert info(http, a)["step"] == info(http, b)["step"] == 1  # lockstep
    page = http.get(done.headers["location"])
    assert page.status_code == 200 and f'data-session="{b}"' in page.text


def test_htmx_requests_keep_their_partials(http: httpx.Client) -> None:
    sid = new_session(http, preset=PRESET)["id"]
    r = http.post(f"/ui/sessions/{sid}/controls", data={"action": "step"}, headers=HX)
    assert r.status_code == 200 and r.text.lstrip().startswith('<div class="controls"')
    r = http.post(f"/ui/sessions/{sid}/knobs", data={"knob.pages_to_scan": "x"}, headers=HX)
    assert r.status_code == 409 and r.text.lstrip().startswith("<form") and "invalid" in r.text
    r = http.post(f"/ui/sessions/{sid}/controls", data={"action": "fork"}, headers=HX)
    assert r.status_code == 200 and r.headers["HX-Redirect"].startswith("/session?sid=")


def test_forms_are_plain_html_forms_with_the_token(http: httpx.Client) -> None:
    sid = new_session(http, preset=PRESET)["id"]
    page = http.get(f"/session?sid={sid}&token=abc")
    assert page.status_code == 200
    for part in ("controls", "knobs", "inject"):
        assert f'method="post" action="/ui/sessions/{sid}/{part}?token=abc"' in page.text
    # the sliders' and branch list's buttons for a page without htmx
    for action in ("speed", "seek"):
        assert f'class="no-htmx" name="action" value="{action}"' in page.text


@pytest.fixture(scope="module")
def token_server() -> Iterator[LiveServer]:
    with LiveServer(Settings(**TEST_SETTINGS, token="s3cret")) as live:
        yield live


def test_token_query_is_kept_and_a_viewer_is_refused(token_server: LiveServer) -> None:
    with httpx.Client(base_url=token_server.url, timeout=30) as http:
        r = http.post("/api/sessions", json={"preset": PRESET}, params={"token": "s3cret"})
        sid = r.json()["id"]
        r = http.post(f"/ui/sessions/{sid}/controls?token=s3cret", data={"action": "step"})
        path, q = see_other(r)
        assert path == "/session" and q["token"] == ["s3cret"] and q["sid"] == [sid]
        assert info(http, sid)["step"] == 1
    # a viewer without the token (and without the presenter's cookie)
    with httpx.Client(base_url=token_server.url, timeout=30) as http:
        for part, data in (
            ("controls", {"action": "step"}),
            ("knobs", {"knob.run": "0"}),
            ("inject", {"op": "run-0"}),
        ):
            r = http.post(f"/ui/sessions/{sid}/{part}", data=data)
            assert r.status_code == 401, (part, r.text[:300])
            assert "<b>token</b>" in r.text and "read-only viewer" in r.text
            assert "token=" not in back_link(r)
        assert info(http, sid)["step"] == 1
