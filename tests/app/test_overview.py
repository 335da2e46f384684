"""The overview of a large session over a real server and real websockets: per-bucket kind
counts that equal the pages' kinds, deltas that keep them true, the viewport message and its
validation (an ``error`` naming the field, the socket stays open)."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from app.config import Settings
from app.server import overview as ov
from sim.snapshot import KIND_NAMES
from tests.app.conftest import TEST_SETTINGS, LiveServer, open_ws, recv, run

GUESTS, PAGES = 2, 600_000  # 1,200,000 pages: more than DETAIL_MAX_PAGES
PLANTED = 450_001


@pytest.fixture(scope="module")
def big() -> Iterator[tuple[LiveServer, str]]:
    settings = {**TEST_SETTINGS, "max_pages": 2_000_000, "max_body_bytes": 1 << 20}
    sc = ov.vm_host_scenario(guests=GUESTS, pages=PAGES, labels=64, planted=(PLANTED,))
    with (
        LiveServer(Settings(**settings)) as live,
        httpx.Client(base_url=live.url, timeout=300) as h,
    ):
        r = h.post("/api/sessions", json={"scenario": sc})
        assert r.status_code == 201, r.text
        sid = r.json()["id"]
        r = h.post(f"/api/sessions/{sid}/step", json={"n": len(sc["steps"])})
        assert r.status_code == 200, r.text
        assert r.json()["pages"] == GUESTS * PAGES
        yield live, sid


def totals(snap: dict[str, Any]) -> tuple[int, dict[int, int]]:
    total, by_kind = 0, {}
    for lane in snap["overview"]["lanes"]:
        recs = ov.decode_records(base64.b64decode(lane["d"]))
        assert len(recs) == lane["n"]
        for _b, counts in recs:
            for k, c in counts.items():
                by_kind[k] = by_kind.get(k, 0) + c
                total += c
    return total, by_kind


def test_lane_records_equal_a_naive_count() -> None:
    kinds = bytearray([1] * 1000 + [6] + [1] * 3000 + [4] * 96 + [3] * 5)
    for bucket in (1, 4, 16, 64, 256, 4096, 1 << 14):
        n, rec = ov.lane_records(kinds, bucket)
        got = ov.decode_records(rec)
        assert n == len(got) == -(-len(kinds) // bucket)
        for b, counts in got:
            chunk = kinds[b * bucket : (b + 1) * bucket]
            assert counts == {k: chunk.count(k) for k in set(chunk)}, (bucket, b)
    n, rec = ov.changed_records(kinds, 64, [(1000, 1001), (4099, 4100), (5, 6)])
    assert [b for b, _ in ov.decode_records(rec, gaps=True)] == [0, 15, 64]
    # the one KSM-placed zero page among 4,096 is in its bucket's counts
    assert ov.decode_records(ov.lane_records(kinds, 4096)[1])[0][1][6] == 1


def test_the_overview_counts_every_page_and_the_planted_minority(
    big: tuple[LiveServer, str],
) -> None:
    live, sid = big

    async def go() -> None:
        ws = await open_ws(live, sid)
        snap = await recv(ws, "snapshot")
        assert snap["overview"] is not None and snap["procs"][0]["vmas"][0]["kind"] == ""
        total, _ = totals(snap)
        assert total == GUESTS * PAGES
        await ws.send(json.dumps({"type": "step", "n": 2, "grain": "pass"}))
        await recv(ws, "delta", timeout=120)
        await recv(ws, "delta", timeout=120)
        await ws.send(json.dumps({"type": "viewport", "bucket": snap["overview"]["bucket"]}))
        snap = await recv(ws, "snapshot")
        total, by_kind = totals(snap)
        assert total == GUESTS * PAGES
        ksm_zero = KIND_NAMES.index("ksm_zero")
        # every zero-filled page and the planted one are KSM-placed zero pages now
        assert by_kind[ksm_zero] == GUESTS * (PAGES // 4) + 1
        # bucket of 4,096 pages around the planted page: one ksm_zero among the others
        await ws.send(json.dumps({"type": "viewport", "bucket": 4096}))
        snap = await recv(ws, "snapshot")
        uid = snap["procs"][1]["vmas"][0]["uid"]
        lane = next(lane for lane in snap["overview"]["lanes"] if lane["uid"] == uid)
        recs = dict(ov.decode_records(base64.b64decode(lane["d"])))
        assert recs[PLANTED // 4096][ksm_zero] == 1
        await ws.close()

    run(go())


def test_deltas_keep_the_buckets_true_and_send_pages_only_in_the_viewport(
    big: tuple[LiveServer, str],
) -> None:
    live, sid = big

    async def go() -> None:
        ws = await open_ws(live, sid)
        snap = await recv(ws, "snapshot")
        uid = snap["procs"][0]["vmas"][0]["uid"]
        await ws.send(json.dumps({"type": "viewport", "bucket": 64, "detail": [[uid, 0, 5000]]}))
        snap = await recv(ws, "snapshot")
        assert snap["overview"]["bucket"] == 64
        (det,) = snap["overview"]["detail"]
        assert (det["uid"], det["lo"], det["hi"]) == (uid, 0, 5000)
        state = {
            lane["uid"]: dict(ov.decode_records(base64.b64decode(lane["d"])))
            for lane in snap["overview"]["lanes"]
        }
        await ws.send(
            json.dumps(
                {
                    "type": "inject",
                    "op": {
                        "op": "write",
                        "proc": "vm1",
                        "vma": "ram",
                        "content": "unique",
                        "pages": ["10-20", 300000],
                    },
                }
            )
        )
        delta = await recv(ws, "delta", "error", "snapshot")
        assert delta["type"] == "delta", {k: v for k, v in delta.items() if k != "overview"}
        for rec in delta["pages"]:
            assert rec["uid"] == uid
        assert sum(r["n"] for r in delta["pages"]) == 11  # page 300000 is outside the detail
        for lane in delta["overview"]["lanes"]:
            for b, counts in ov.decode_records(base64.b64decode(lane["d"]), gaps=True):
                state[lane["uid"]][b] = counts
        await ws.send(json.dumps({"type": "viewport", "bucket": 64}))
        fresh = await recv(ws, "snapshot")
        for lane in fresh["overview"]["lanes"]:
            assert dict(ov.decode_records(base64.b64decode(lane["d"]))) == state[lane["uid"]]
        await ws.close()

    run(go())


@pytest.mark.parametrize(
    ("message", "field"),
    [
        ({"type": "viewport", "bucket": 3}, "bucket"),
        ({"type": "viewport", "bucket": 0}, "bucket"),
        ({"type": "viewport", "bucket": 1 << 25}, "bucket"),
        ({"type": "viewport", "bucket": 1}, "bucket"),  # too many buckets for 1.2M pages
        ({"type": "viewport", "bucket": 64, "detail": [[1, 10, 5]]}, "detail"),
        ({"type": "viewport", "bucket": 64, "detail": [[1, 0, 1 << 20]]}, "detail"),
        ({"type": "viewport", "bucket": 64, "detail": [[99999, 0, 10]]}, "detail"),
        ({"type": "viewport", "bucket": 64, "detail": "all"}, "detail"),
        ({"type": "viewport", "bucket": 64, "zoom": 2}, "zoom"),
    ],
)
def test_a_bad_viewport_gets_an_error_naming_the_field_and_the_socket_stays_open(
    big: tuple[LiveServer, str], message: dict[str, Any], field: str
) -> None:
    live, sid = big

    async def go() -> None:
        ws = await open_ws(live, sid)
        await recv(ws, "snapshot")
        await ws.send(json.dumps(message))
        err = await recv(ws, "error")
        assert field in err["field"].split("."), err  # "viewport.bucket" or "bucket"
        await ws.send(json.dumps({"type": "viewport", "bucket": 256}))
        snap = await recv(ws, "snapshot")
        assert snap["overview"]["bucket"] == 256
        await ws.close()

    run(go())


def test_when_two_clones_do_not_fit_the_budget_only_step_0_is_kept_and_replay_is_exact() -> None:
    from app.server.timeline import Timeline, estimate_bytes
    from sim import Kernel
    from sim.presets import load_preset
    from sim.stepper import Stepper

    sc = load_preset("vm-host")
    t = Timeline(sc, Stepper(Kernel(sc.kernel, sc.sysfs, record=True), sc.steps), interval=4)
    t.memory_bytes = estimate_bytes(t.kernel)  # room for one clone: the timeline's step 0
    states = [t.kernel.checkpoint("s")]
    while t.step < 80 and t.forward() is not None:
        states.append(t.kernel.checkpoint("s"))
    n = t.step
    assert n > 20
    assert list(t.branch.checkpoints) == [0]
    for step in (3, n // 2, n - 1, 0, n):
        t.seek(step)
        assert t.kernel.checkpoint("s") == states[step], step


@pytest.mark.parametrize(
    ("guests", "pages", "name"),
    [(4, 4_194_304, "vm-host-64g"), (4, 16_384, "vm-host-256m"), (2, 100, "vm-host-800k")],
)
def test_a_vm_host_is_named_by_its_memory(guests: int, pages: int, name: str) -> None:
    """The scenario's name says the host's memory in a unit that shows it (a 256 MiB host
    was named "vm-host-0g")."""
    assert ov.vm_host_scenario(guests=guests, pages=pages)["name"] == name
