"""Websocket fuzz: every bad client message gets an ``error``, the socket stays open, and the
server keeps serving other sessions (malformed JSON, unknown types, wrong field types,
oversized frames, control spam)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from pydantic import ValidationError

from app.server import messages as m

from .conftest import Server, create, recv, run, ws_open

MAX_MESSAGE = 2048


@pytest.fixture(scope="module")
def fuzz_server() -> Iterator[Server]:
    with Server(ws_max_message_bytes=MAX_MESSAGE, ws_queue=32) as live:
        yield live


FIELDS = (
    "n",
    "grain",
    "step",
    "branch",
    "op",
    "knob",
    "value",
    "batches_per_second",
    "realtime",
    "type",
)
TYPES = ("step", "back", "seek", "play", "pause", "reset", "speed", "inject", "knob", "ack")
JUNK: list[Any] = [
    None,
    True,
    -1,
    0,
    2**70,
    -(2**70),
    1.5,
    float("inf"),
    "",
    "x" * 300,
    [],
    {},
    [1, "a"],
    {"a": {"b": []}},
    "NaN",
    "batch",
    "\u0000",
    "é",
]


def bad_messages(n: int, seed: int = 8) -> list[str]:
    """Client frames the protocol rejects: hand-picked, then random mutations."""
    rnd = random.Random(seed)
    frames = [
        "",
        "{",
        "}",
        "not json",
        "[]",
        "null",
        "42",
        '"step"',
        "{'type': 'step'}",
        '{"type": "step",}',
        '{"type": "step"} trailing',
        "\ufeff{}",
        "{}",
        '{"n": 1}',
        '{"type": null}',
        '{"type": 1}',
        '{"type": "STEP"}',
        '{"type": "fly"}',
        '{"type": "step", "n": "many"}',
        '{"type": "step", "n": -3}',
        '{"type": "step", "n": 0}',
        '{"type": "step", "grain": "byte"}',
        '{"type": "seek"}',
        '{"type": "seek", "step": "0"}',
        '{"type": "knob", "knob": 5, "value": 1}',
        '{"type": "inject"}',
        '{"type": "inject", "op": "write"}',
        '{"type": "speed", "batches_per_second": "fast"}',
        '{"type": "ack", "step": [1]}',
        json.dumps({"type": "step", "n": 1, "x": "a" * 100}),
        '{"type": "step", "n": 1e400}',
        '{"type": "' + "x" * 1000 + '"}',
        "\x00\x01\x02",
        "[" * 500 + "]" * 500,
    ]
    while len(frames) < n:
        msg: dict[str, Any] = {}
        if rnd.random() < 0.9:
            msg["type"] = (
                rnd.choice(TYPES + ("", "nope", "Step")) if rnd.random() < 0.9 else rnd.choice(JUNK)
            )
        for key in rnd.sample(FIELDS, rnd.randint(0, 4)):
            msg[key] = rnd.choice(JUNK)
        frames.append(json.dumps(msg, allow_nan=True))
    out = []
    for f in frames:  # keep only what the protocol really rejects
        try:
            m.parse_client_message(f)
        except ValidationError:
            out.append(f)
    return out


async def expect_error(ws: Any, frame: str | bytes) -> dict[str, Any]:
    await ws.send(frame)
    err = await recv(ws, "error", timeout=10)
    assert err["message"], err
    return err


def test_every_bad_message_gets_an_error(fuzz_server: Server) -> None:
    sid = create(fuzz_server)["id"]
    other = create(fuzz_server)["id"]
    frames = bad_messages(400)
    assert len(frames) > 300

    async def go() -> None:
        ws = await ws_open(fuzz_server, sid)
        await recv(ws, "snapshot")
        for frame in frames:
            await expect_error(ws, frame)
        await expect_error(ws, b"\xff\xfe binary junk")
        # oversized (but under uvicorn's 16x hard cap): an error, the socket stays open
        big = json.dumps({"type": "step", "pad": "x" * (MAX_MESSAGE * 4)})
        err = await expect_error(ws, big)
        assert err["field"] == "message" and str(MAX_MESSAGE) in err["message"]
        # still a working control channel
        await ws.send(json.dumps({"type": "step", "n": 1}))
        assert (await recv(ws, "delta", "snapshot"))["step"] == 1
        await ws.close()

    run(go())
    with httpx.Client(base_url=fuzz_server.url) as http:
        assert http.get(f"/api/sessions/{other}/snapshot").status_code == 200
        assert http.get("/healthz").json()["status"] == "ok"


def test_frame_over_hard_cap_closes_only_that_socket(fuzz_server: Server) -> None:
    sid = create(fuzz_server)["id"]

    async def go() -> None:
        bystander = await ws_open(fuzz_server, sid)
        await recv(bystander, "snapshot")
        ws = await ws_open(fuzz_server, sid)
        await recv(ws, "snapshot")
        await ws.send("x" * (MAX_MESSAGE * 16 + 1))
        await asyncio.wait_for(ws.wait_closed(), 10)
        assert ws.close_code == 1009  # message too big, refused by uvicorn before the app
        await bystander.send(json.dumps({"type": "step", "n": 1}))
        assert (await recv(bystander, "delta", "snapshot"))["step"] == 1
        await bystander.close()

    run(go())


def test_control_spam_keeps_socket_and_other_sessions(fuzz_server: Server) -> None:
    spammed = create(fuzz_server)["id"]
    watched = create(fuzz_server, preset="vm-host")["id"]

    async def go() -> None:
        watcher = await ws_open(fuzz_server, watched)
        await recv(watcher, "snapshot")
        await watcher.send(json.dumps({"type": "speed", "batches_per_second": 50}))
        await watcher.send(json.dumps({"type": "play"}))
        spam = await ws_open(fuzz_server, spammed)
        await recv(spam, "snapshot")
        controls = [
            {"type": "step", "n": 3},
            {"type": "back", "n": 2},
            {"type": "play"},
            {"type": "pause"},
            {"type": "reset"},
            {"type": "seek", "step": 1},
            {"type": "speed", "batches_per_second": 1000},
            {"type": "knob", "knob": "pages_to_scan", "value": 7},
            {"type": "bogus"},
            "{{{",
        ]
        t0 = time.monotonic()
        for i in range(3000):
            c = controls[i % len(controls)]
            await spam.send(c if isinstance(c, str) else json.dumps(c))
        spam_s = time.monotonic() - t0
        # the watched session kept playing while the spam went on
        first = await recv(watcher, "delta", "snapshot")
        last = first["step"]
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:
            with contextlib.suppress(TimeoutError):
                msg = json.loads(await asyncio.wait_for(watcher.recv(), 0.2))
                last = max(last, msg.get("step", 0))
        assert last > first["step"]
        # the spammer's socket still answers, after the refusals the spam earned (those that
        # overflowed its bounded queue were replaced by one snapshot, as deltas are)
        await spam.send(json.dumps({"type": "pause"}))
        await spam.send('{"type": "marker-after-spam"}')
        while "marker-after-spam" not in (await recv(spam, "error", timeout=10))["message"]:
            pass
        await watcher.send(json.dumps({"type": "pause"}))
        await spam.close()
        await watcher.close()
        assert spam_s < 60

    run(go())
    with httpx.Client(base_url=fuzz_server.url) as http:
        stats = http.get(f"/api/sessions/{spammed}/viewers").json()
        assert all(v["queue"] <= v["limit"] for v in stats)
