"""The websocket stream against a real uvicorn server: snapshots, deltas, timeline, viewers."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import struct
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from app.server.messages import Delta
from sim.presets import preset_names

from . import wire
from .conftest import LiveServer, new_session, open_ws, recv, run

KIND_ZERO, KIND_KSM_ZERO = 5, 6
PTE_DIRTY = 2


def comparable(state: dict[str, Any]) -> dict[str, Any]:
    return state


async def walk(
    server: LiveServer,
    http: httpx.Client,
    sid: str,
    steps: int,
    grains: tuple[str, ...] = ("batch",),
) -> int:
    """Step a session, checking after every step that delta + state == fresh snapshot."""
    ws = await open_ws(server, sid)
    deltas = 0
    try:
        state = wire.decode(await recv(ws, "snapshot"))
        for i in range(steps):
            await ws.send(json.dumps({"type": "step", "grain": grains[i % len(grains)]}))
            msg = await recv(ws, "snapshot", "delta", "end")
            if msg["type"] == "end":
                break
            if msg["type"] == "delta":
                Delta.model_validate(msg)
                state = wire.apply(state, msg)
                deltas += 1
            else:
                state = wire.decode(msg)
            fresh = wire.decode(http.get(f"/api/sessions/{sid}/snapshot").json())
            assert state == fresh, f"step {msg['step']}: delta + state != snapshot"
    finally:
        await ws.close()
    return deltas


@pytest.mark.parametrize("preset", preset_names())
def test_delta_applied_to_snapshot_equals_next_snapshot(server, http, preset):
    sid = new_session(http, preset=preset)["id"]
    grains = ("batch", "batch", "page", "batch", "pass") if preset == "smart-scan" else ("batch",)
    deltas = run(walk(server, http, sid, 160, grains))
    assert deltas > 3


def test_injected_ops_and_knobs_stream_consistent_deltas(server, http):
    sid = new_session(http, preset="forking-server", kernel="6.12")["id"]
    http.post(f"/api/sessions/{sid}/step", json={"n": 40}).raise_for_status()

    async def go() -> None:
        ws = await open_ws(server, sid)
        state = wire.decode(await recv(ws, "snapshot"))
        procs = list(state["procs"])
        vma = next(v for v in state["vmas"].values() if v["proc"] == procs[-1])
        ops = [
            {
                "type": "inject",
                "op": {
                    "op": "write",
                    "proc": procs[-1],
                    "vma": vma["name"],
                    "pages": "0-3",
                    "content": "zero",
                },
            },
            {"type": "knob", "knob": "pages_to_scan", "value": 37},
            {"type": "knob", "knob": "run", "value": 1},
            {"type": "step", "n": 3},
            {
                "type": "inject",
                "op": {
                    "op": "madvise",
                    "proc": procs[-1],
                    "vma": vma["name"],
                    "pages": [1, "5-7"],
                    "advice": "MADV_UNMERGEABLE",
                },
            },
            {"type": "knob", "knob": "run", "value": 2},
        ]
        for op in ops:
            await ws.send(json.dumps(op))
            for _ in range(op.get("n", 1)):
                msg = await recv(ws, "snapshot", "delta")
                state = wire.apply(state, msg) if msg["type"] == "delta" else wire.decode(msg)
            fresh = wire.decode(http.get(f"/api/sessions/{sid}/snapshot").json())
            assert state == fresh, op
        await ws.close()

    run(go())


def _zero_pages(state: dict[str, Any]) -> tuple[int, int]:
    dirty = wire.count(state, lambda pfn, pte, kind: pfn == 0 and pte & PTE_DIRTY)
    zero = wire.count(state, lambda pfn, pte, kind: pfn == 0)
    return dirty, zero


def test_dirty_zero_ptes_unmerge_on_618_but_stay_on_65(server, http):
    r = http.post("/api/compare", json={"preset": "zero-pages-unmerge"})
    assert r.status_code == 201, r.text
    sessions = r.json()["sessions"]
    assert [s["kernel"] for s in sessions] == ["6.5", "6.18"]
    sid65, sid618 = sessions[0]["id"], sessions[1]["id"]

    async def go() -> dict[str, list[tuple[str, int, int]]]:
        ws65, ws618 = await open_ws(server, sid65), await open_ws(server, sid618)
        states = {
            sid65: wire.decode(await recv(ws65, "snapshot")),
            sid618: wire.decode(await recv(ws618, "snapshot")),
        }
        seen: dict[str, list[tuple[str, int, int]]] = {sid65: [], sid618: []}
        for _ in range(60):  # one control drives both (lockstep)
            await ws618.send(json.dumps({"type": "step"}))
            ended = 0
            for sid, ws in ((sid65, ws65), (sid618, ws618)):
                msg = await recv(ws, "snapshot", "delta", "end")
                if msg["type"] == "end":
                    ended += 1
                    continue
                st = states[sid] = (
                    wire.apply(states[sid], msg) if msg["type"] == "delta" else wire.decode(msg)
                )
                seen[sid].append((msg["summary"], *_zero_pages(st)))
            if ended == 2:
                break
        await ws65.close()
        await ws618.close()
        return seen

    seen = run(go())
    # 6.18: KSM-placed zero pages are dirty-marked, and MADV_UNMERGEABLE unshares them
    dirty618 = [d for _, d, _ in seen[sid618]]
    assert max(dirty618) == 100
    peak = dirty618.index(100)
    unmerge = next(i for i, (s, _, _) in enumerate(seen[sid618]) if "MADV_UNMERGEABLE" in s)
    assert peak < unmerge and seen[sid618][unmerge][1:] == (0, 0)
    merged = next(s for s, d, _ in seen[sid618] if d > 0)
    assert "replace_page" in merged and "PTE marked dirty" in merged
    # 6.5: the same pages are on the zero page with a clean PTE, and they stay there
    assert max(d for _, d, _ in seen[sid65]) == 0
    unmerge65 = next(i for i, (s, _, _) in enumerate(seen[sid65]) if "MADV_UNMERGEABLE" in s)
    assert seen[sid65][unmerge65 - 1][2] == 100 and seen[sid65][unmerge65][2] == 100
    assert seen[sid65][-1][2] == 100


def test_step_back_then_forward_reproduces_the_same_deltas(server, http):
    sid = new_session(http, preset="vm-host")["id"]
    http.post(f"/api/sessions/{sid}/step", json={"n": 50}).raise_for_status()

    async def go() -> None:
        ws = await open_ws(server, sid)
        await recv(ws, "snapshot")
        first = []
        for _ in range(20):
            await ws.send(json.dumps({"type": "step"}))
            first.append(await recv(ws, "snapshot", "delta"))
        await ws.send(json.dumps({"type": "back", "n": 20}))
        snap = await recv(ws, "snapshot")
        assert snap["step"] == 50 and snap["head"] == 70
        again = []
        for _ in range(20):
            await ws.send(json.dumps({"type": "step"}))
            again.append(await recv(ws, "snapshot", "delta"))
        for a, b in zip(first, again, strict=True):
            for key in ("ts", "head"):
                a.pop(key), b.pop(key)
            if a["type"] == "snapshot":
                continue
            assert a == b
        await ws.close()

    run(go())
    info = http.get(f"/api/sessions/{sid}").json()
    assert info["step"] == info["head"] == 70 and info["branches"] == 1


def test_inject_in_the_past_forks_the_timeline_and_keeps_the_old_branch(server, http):
    sid = new_session(http, preset="zero-pages-unmerge")["id"]
    http.post(f"/api/sessions/{sid}/step", json={"n": 30}).raise_for_status()  # 25: its end
    old = http.get(f"/api/sessions/{sid}/snapshot").json()
    http.post(f"/api/sessions/{sid}/seek", json={"step": 10}).raise_for_status()
    r = http.post(
        f"/api/sessions/{sid}/inject",
        data={"op": "write", "proc": "A", "vma": "heap", "pages": "0-9", "content": "B"},
    )
    assert r.status_code == 200, r.text
    info = r.json()
    assert (info["step"], info["branch"], info["branches"]) == (11, 1, 2)
    branches = http.get(f"/api/sessions/{sid}/branches").json()
    assert branches[1] == {"id": 1, "parent": 0, "base_step": 10, "head": 11}
    http.post(f"/api/sessions/{sid}/seek", json={"step": 25, "branch": 0}).raise_for_status()
    back = http.get(f"/api/sessions/{sid}/snapshot").json()
    for key in ("ts", "summary", "events", "event_counts"):
        old.pop(key), back.pop(key)
    assert back == old


def test_fork_from_step_gives_an_independent_session(server, http):
    sid = new_session(http, preset="zero-pages-unmerge")["id"]
    http.post(f"/api/sessions/{sid}/step", json={"n": 20}).raise_for_status()
    at10 = None
    http.post(f"/api/sessions/{sid}/seek", json={"step": 10}).raise_for_status()
    at10 = wire.decode(http.get(f"/api/sessions/{sid}/snapshot").json())
    http.post(f"/api/sessions/{sid}/seek", json={"step": 20}).raise_for_status()
    r = http.post(f"/api/sessions/{sid}/fork", params={"step": 10})
    assert r.status_code == 201, r.text
    fid = r.json()["id"]
    assert fid != sid and r.json()["step"] == 0
    forked = wire.decode(http.get(f"/api/sessions/{fid}/snapshot").json())
    for st in (forked, at10):
        st.pop("step")
    assert forked == at10
    # driving the fork leaves the original alone, and the other way round
    http.post(f"/api/sessions/{fid}/knob", json={"knob": "pages_to_scan", "value": 7})
    http.post(f"/api/sessions/{fid}/step", json={"n": 5}).raise_for_status()
    assert http.get(f"/api/sessions/{sid}").json()["step"] == 20
    orig = http.get(f"/api/sessions/{sid}/snapshot").json()
    assert orig["knobs"]["pages_to_scan"] == 100
    http.delete(f"/api/sessions/{sid}").raise_for_status()
    assert http.get(f"/api/sessions/{fid}").json()["step"] == 6


def test_several_viewers_see_the_same_steps(server, http):
    sid = new_session(http, preset="smart-scan")["id"]

    async def go() -> None:
        viewers = [await open_ws(server, sid) for _ in range(5)]
        for ws in viewers:
            await recv(ws, "snapshot")
        http.post(f"/api/sessions/{sid}/speed", json={"batches_per_second": 200})
        http.post(f"/api/sessions/{sid}/play").raise_for_status()
        got = [[] for _ in viewers]
        for i, ws in enumerate(viewers):
            while len(got[i]) < 30:
                msg = await recv(ws, "snapshot", "delta")
                msg.pop("ts")
                got[i].append(msg)
        http.post(f"/api/sessions/{sid}/pause").raise_for_status()
        for other in got[1:]:
            assert other == got[0]
        for ws in viewers:
            await ws.close()

    run(go())


BIG = {
    "name": "big",
    "sysfs": {"pages_to_scan": 400, "use_zero_pages": 1},
    "steps": [
        {"op": "spawn", "proc": "A"},
        {"op": "mmap", "proc": "A", "vma": "heap", "pages": 24000},
        {"op": "write", "proc": "A", "vma": "heap", "content": "zero", "pages": "0-11999"},
        {"op": "write", "proc": "A", "vma": "heap", "content": "unique", "pages": "12000-23999"},
        {"op": "madvise", "proc": "A", "vma": "heap", "advice": "MADV_MERGEABLE"},
        {"op": "scan", "passes": 3},
    ],
}


class RawViewer:
    """A websocket client on a plain socket with a tiny receive buffer: it reads only when
    told to, so the server sees a viewer that stopped reading."""

    def __init__(self, port: int, path: str):
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.sock.connect(("127.0.0.1", port))
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(
            (
                f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        self.buf = b""
        while b"\r\n\r\n" not in self.buf:
            self.buf += self.sock.recv(4096)
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        assert b" 101 " in head.split(b"\r\n")[0]

    def _need(self, n: int) -> bool:
        while len(self.buf) < n:
            chunk = self.sock.recv(1 << 16)
            if not chunk:
                return False
            self.buf += chunk
        return True

    def read_all(self, idle: float) -> Iterator[dict[str, Any]]:
        """Every text frame until the server has been quiet for ``idle`` seconds."""
        self.sock.settimeout(idle)
        try:
            while self._need(2):
                b1, b2 = self.buf[0], self.buf[1]
                n, off = b2 & 0x7F, 2
                if n == 126:
                    self._need(4)
                    n, off = struct.unpack(">H", self.buf[2:4])[0], 4
                elif n == 127:
                    self._need(10)
                    n, off = struct.unpack(">Q", self.buf[2:10])[0], 10
                self._need(off + n)
                payload, self.buf = self.buf[off : off + n], self.buf[off + n :]
                if b1 & 0x0F == 1:
                    yield json.loads(payload)
        except TimeoutError:
            return

    def close(self) -> None:
        self.sock.close()


def test_slow_reader_gets_a_bounded_queue_and_a_fresh_snapshot(server, http):
    """A viewer that stops reading never makes the server queue more than ws_queue frames;
    when it reads again it gets a fresh snapshot and then deltas, and ends up exact."""
    sid = new_session(http, scenario=BIG)["id"]
    limit = server.settings.ws_queue

    async def go() -> None:
        slow = RawViewer(server.port, f"/ws/sessions/{sid}")  # connects, then does not read
        fast = await open_ws(server, sid)
        await recv(fast, "snapshot")
        http.post(f"/api/sessions/{sid}/step", json={"n": 4}).raise_for_status()
        for i in range(24):  # big snapshots fill the kernel's socket buffers
            http.post(f"/api/sessions/{sid}/seek", json={"step": 4 - i % 2}).raise_for_status()
        http.post(f"/api/sessions/{sid}/speed", json={"batches_per_second": 500})
        http.post(f"/api/sessions/{sid}/play").raise_for_status()
        n = 0
        while (await recv(fast, "snapshot", "delta", "end"))["type"] != "end":
            n += 1
        assert n > 3 * limit
        stats = http.get(f"/api/sessions/{sid}/viewers").json()
        assert all(s["max_queue"] <= limit for s in stats), stats
        assert max(s["resyncs"] for s in stats) >= 1, stats  # the slow one overflowed
        # the slow viewer now reads: a fresh snapshot, then whatever follows, exactly
        state = None
        snapshots = 0
        for msg in slow.read_all(idle=2.0):
            if msg["type"] == "snapshot":
                state, snapshots = wire.decode(msg), snapshots + 1
            elif msg["type"] == "delta":
                assert state is not None
                state = wire.apply(state, msg)
        assert snapshots >= 2  # the one on connect, and the resync
        assert state == wire.decode(http.get(f"/api/sessions/{sid}/snapshot").json())
        slow.close()
        await fast.close()

    run(go())


def test_malformed_messages_get_errors_and_the_socket_stays_open(server, http):
    sid = new_session(http, preset="zero-pages-unmerge")["id"]

    async def go() -> None:
        ws = await open_ws(server, sid)
        await recv(ws, "snapshot")
        bad = [
            "not json",
            "[]",
            '{"type": "fly"}',
            '{"type": "step", "n": "many"}',
            '{"type": "step", "n": 0}',
            '{"type": "seek"}',
            '{"type": "seek", "step": 999}',
            '{"type": "knob", "knob": "max_page_sharing", "value": 1}',
            '{"type": "knob", "knob": "no_such_knob", "value": 1}',
            '{"type": "inject", "op": {"op": "write", "proc": "Z", "vma": "heap", "content": "A"}}',
            '{"type": "speed", "batches_per_second": -1}',
            "x" * 100_000,
        ]
        for text in bad:
            await ws.send(text)
            err = await recv(ws, "error")
            assert err["message"], text
        await ws.send(json.dumps({"type": "knob", "knob": "max_page_sharing", "value": 1}))
        err = await recv(ws, "error")
        assert (err["knob"], err["errno"]) == ("max_page_sharing", "EINVAL")
        await ws.send(json.dumps({"type": "step"}))
        assert (await recv(ws, "delta", "snapshot"))["step"] == 1
        await ws.send(json.dumps({"type": "ack", "step": 1}))
        await asyncio.sleep(0.2)
        assert [v["acked"] for v in http.get(f"/api/sessions/{sid}/viewers").json()] == [1]
        await ws.close()

    run(go())
    assert http.get("/healthz").json()["status"] == "ok"


def test_deleting_a_session_ends_its_viewers(server, http):
    sid = new_session(http, preset="zero-pages-unmerge")["id"]

    async def go() -> None:
        ws = await open_ws(server, sid)
        await recv(ws, "snapshot")
        http.delete(f"/api/sessions/{sid}").raise_for_status()
        end = await recv(ws, "end")
        assert end["reason"] == "deleted"
        await ws.wait_closed()
        ws2 = await open_ws(server, sid)
        assert (await recv(ws2, "error"))["field"] == "session"

    run(go())


def test_messages_carry_the_tables_and_the_step_as_data() -> None:
    from app.server.encode import Encoder
    from app.server.messages import dump
    from sim import Kernel
    from sim.ksm_files import table
    from sim.snapshot import describe, kinds_table
    from sim.stepper import Outcome

    k = Kernel("6.18", {"use_zero_pages": 1}, record=True)
    k.spawn("A")
    k.mmap("A", "heap", 8)
    k.write("A", "heap", ((0, 8),), "zero")
    k.madvise("A", "heap", None, "MADV_MERGEABLE")
    k.take_changes()
    enc = Encoder("s")
    meta = {"step": 0, "head": 0, "branch": 0, "ts": 0.0}
    snap = json.loads(dump(enc.snapshot(k, meta)))
    assert snap["ksm_files"] == table() and snap["kind_table"] == kinds_table()
    assert snap["what"] == {}
    k.scan(2)
    log = k.take_changes()
    d = describe(k, log, Outcome("ksmd ran two passes", {"kind": "ksmd"}))
    meta = {"step": 1, "head": 1, "branch": 0, "ts": 0.0, "summary": d.text, "what": d.what}
    delta = enc.delta(k, log, meta)
    assert delta is not None
    msg = json.loads(dump(delta))
    assert (
        msg["what"]
        == {"kind": "ksmd", "counts": d.counts, "words": d.what["words"], "chain": d.what["chain"]}
        and d.counts["zero_merge"] == 8
    )
    assert msg["what"]["words"].startswith("ksmd merged A heap[0-7] into the zero page")
    assert "ksm_files" not in msg and "kind_table" not in msg
