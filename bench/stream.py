"""Streaming benchmark of the dashboard backend (issue 4). Loopback only, bounded time.

Prints, in one run:

1. bytes on the wire per changed page per step, for a 65,536-page session (one viewer
   stepping it over the websocket; whole ``delta`` frames, and the page records alone);
2. p50/p99 lag from step (the ``ts`` the server stamps on a step) to receipt, for 1, 100
   and 1,000 viewers of one playing session, beside a bare websocket broadcast (the
   ``websockets`` library's ``broadcast()``, no app) of the same messages at the same rate;
   ``deliv.``: of the steps made in the window (those any viewer received), the share the
   viewers received on average, ``worst``: the share of the viewer that received fewest
   (issue 18: at least 95% to every viewer; a resync snapshot counts as one step received,
   the steps it replaced as not delivered).

Usage: ``python bench/stream.py [--rate 20] [--seconds 6]``. Child processes: the server
(``--serve``), the baseline (``--baseline``) and client groups (``--clients``), all on
127.0.0.1 and all killed at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

HOST = "127.0.0.1"
DEADLINE = time.monotonic() + 900  # the whole run stops within 15 minutes whatever happens


def scenario(pages: int, pages_to_scan: int, run: int = 0) -> dict[str, Any]:
    q = pages // 4
    return {
        "name": f"bench-{pages}",
        "sysfs": {"use_zero_pages": 1, "pages_to_scan": pages_to_scan, "run": run},
        "steps": [
            {"op": "spawn", "proc": "A"},
            {"op": "mmap", "proc": "A", "vma": "heap", "pages": pages},
            {"op": "write", "proc": "A", "vma": "heap", "content": "zero", "pages": f"0-{q - 1}"},
            {
                "op": "write",
                "proc": "A",
                "vma": "heap",
                "content": "L",
                "pages": f"{q}-{2 * q - 1}",
            },
            {
                "op": "write",
                "proc": "A",
                "vma": "heap",
                "content": "unique",
                "pages": f"{2 * q}-{pages - 1}",
            },
            {"op": "madvise", "proc": "A", "vma": "heap", "advice": "MADV_MERGEABLE"},
        ]
        + ([] if run else [{"op": "scan", "passes": 3}]),
    }  # run=1: ksmd runs forever


def wait_port(port: int, timeout: float = 30) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        with socket.socket() as s:
            if s.connect_ex((HOST, port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {HOST}:{port}")


# ------------------------------------------------------------------------- children
def serve(port: int) -> None:
    import uvicorn

    from app.config import Settings
    from app.server.app import create_app
    from app.server.cli import uvicorn_options

    settings = Settings(
        max_viewers=5000, max_pages=1 << 20, ws_queue=64, max_speed=1000, max_body_bytes=1 << 20
    )
    opts = uvicorn_options(settings)
    uvicorn.run(create_app(settings), host=HOST, port=port, backlog=4096, **opts)


async def baseline(port: int, frames_file: str, rate: float) -> None:
    """A bare websockets server broadcasting recorded frames (fresh ``ts``) at ``rate``/s."""
    from websockets.asyncio.server import broadcast, serve

    frames = [json.loads(line) for line in Path(frames_file).read_text().splitlines()]
    clients: set[Any] = set()

    async def handler(ws: Any) -> None:
        clients.add(ws)
        try:
            await ws.wait_closed()
        finally:
            clients.discard(ws)

    async with serve(handler, HOST, port, compression=None, max_size=None, backlog=4096):
        i = 0
        loop = asyncio.get_running_loop()
        while True:
            t0 = loop.time()
            frame = frames[i % len(frames)]
            frame["ts"] = time.time() * 1000.0
            broadcast(clients, json.dumps(frame))
            i += 1
            await asyncio.sleep(max(0.0, 1.0 / rate - (loop.time() - t0)))


class _Viewer(asyncio.Protocol):
    """A lean websocket viewer: handshake, then frames parsed in place; it only reads the
    ``ts`` a frame carries, so that the clients cost little next to the server measured."""

    def __init__(self, path: str, sink: Any):
        self.path = path
        self.sink = sink
        self.buf = bytearray()
        self.opened = asyncio.get_running_loop().create_future()
        self.handshake = True
        self.first = True

    def connection_made(self, transport: Any) -> None:
        key = base64.b64encode(os.urandom(16)).decode()
        transport.write(
            (
                f"GET {self.path} HTTP/1.1\r\nHost: {HOST}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )

    def data_received(self, data: bytes) -> None:
        now = time.time() * 1000.0
        buf = self.buf
        buf += data
        if self.handshake:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            if b" 101 " not in buf[:end]:
                self.opened.set_exception(RuntimeError(bytes(buf[:end]).decode()))
                return
            del buf[: end + 4]
            self.handshake = False
            self.opened.set_result(None)
        pos = 0
        while len(buf) - pos >= 2:
            n, off = buf[pos + 1] & 0x7F, 2
            if n == 126:
                if len(buf) - pos < 4:
                    break
                n, off = int.from_bytes(buf[pos + 2 : pos + 4], "big"), 4
            elif n == 127:
                if len(buf) - pos < 10:
                    break
                n, off = int.from_bytes(buf[pos + 2 : pos + 10], "big"), 10
            if len(buf) - pos < off + n:
                break
            start = pos + off
            if buf[pos] & 0x0F == 1:
                self.sink(now, buf, start, start + n, self.first)
                self.first = False
            pos = start + n
        del buf[:pos]


async def clients(url: str, n: int) -> None:
    """``n`` viewers; prints ``ready``, reads ``go T0 T1``, prints lags (ms) for frames
    stamped in [T0, T1] and the number of resync snapshots."""
    lags: list[float] = []
    resyncs = [0]
    window = [float("inf"), float("inf")]
    per_viewer: list[set[float]] = []  # the steps (their ts) each viewer received

    def sink_of(seen: set[float]) -> Any:
        def sink(now: float, buf: bytearray, lo: int, hi: int, first: bool) -> None:
            at = buf.find(b'"ts":', lo, min(hi, lo + 300))
            if at < 0:
                return
            end = buf.find(b",", at)
            ts = float(buf[at + 5 : end])
            if window[0] <= ts <= window[1]:
                lags.append(now - ts)
                seen.add(ts)
                if not first and buf.find(b'"type":"snapshot"', lo, min(hi, lo + 4000)) >= 0:
                    resyncs[0] += 1

        return sink

    loop = asyncio.get_running_loop()
    host_port = url.split("//", 1)[1].split("/", 1)[0]
    path = "/" + url.split("//", 1)[1].split("/", 1)[1] if url.count("/") > 2 else "/"
    port = int(host_port.rsplit(":", 1)[1])
    sem = asyncio.Semaphore(50)
    keep = []

    async def open_one() -> None:
        seen: set[float] = set()
        per_viewer.append(seen)
        async with sem:
            _, proto = await loop.create_connection(
                lambda: _Viewer(path, sink_of(seen)), HOST, port
            )
            await asyncio.wait_for(proto.opened, 60)
            keep.append(proto)

    await asyncio.gather(*(open_one() for _ in range(n)))
    await asyncio.sleep(1.0)  # the snapshots on connect arrive
    print("ready", flush=True)
    line = await loop.run_in_executor(None, sys.stdin.readline)
    _, t0, t1 = line.split()
    window[0], window[1] = float(t0), float(t1)
    while time.time() * 1000.0 < window[1] + 1500:
        await asyncio.sleep(0.1)
    counts = [len(seen) for seen in per_viewer]
    steps = len(set().union(*per_viewer)) if per_viewer else 0
    print(json.dumps({"lags": lags, "resyncs": resyncs[0], "counts": counts, "steps": steps}))
    sys.stdout.flush()
    os._exit(0)  # the parent is done with us: no close handshakes for hundreds of sockets


# ---------------------------------------------------------------------------- parent
def spawn(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, __file__, *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )


def readline(p: subprocess.Popen[str], timeout: float) -> str:
    """One line from a child, or RuntimeError after ``timeout`` seconds."""
    import selectors

    assert p.stdout is not None
    with selectors.DefaultSelector() as sel:
        sel.register(p.stdout, selectors.EVENT_READ)
        if not sel.select(min(timeout, max(1.0, DEADLINE - time.monotonic()))):
            raise RuntimeError("a client group did not answer in time")
    return p.stdout.readline()


def measure_lag(url: str, viewers: int, seconds: float) -> dict[str, Any]:
    groups = max(1, min(4, viewers // 100))
    per = [viewers // groups + (1 if i < viewers % groups else 0) for i in range(groups)]
    procs = [spawn("--clients", url, str(n)) for n in per]
    try:
        for p in procs:
            assert p.stdout is not None
            if readline(p, 180).strip() != "ready":
                raise RuntimeError("client group failed")
        t0 = time.time() * 1000.0 + 300
        t1 = t0 + seconds * 1000.0
        for p in procs:
            assert p.stdin is not None
            p.stdin.write(f"go {t0} {t1}\n")
            p.stdin.flush()
        lags: list[float] = []
        resyncs = 0
        counts: list[int] = []
        steps = 0
        for p in procs:
            assert p.stdout is not None
            out = json.loads(readline(p, seconds + 60))
            lags += out["lags"]
            resyncs += out["resyncs"]
            counts += out["counts"]
            steps = max(steps, out["steps"])
    finally:
        for p in procs:
            p.kill()
            p.wait()
    lags.sort()
    if not lags:
        return {
            "viewers": viewers,
            "frames": 0,
            "p50": float("nan"),
            "p99": float("nan"),
            "resyncs": resyncs,
            "delivered": 0.0,
            "worst": 0.0,
        }
    return {
        "viewers": viewers,
        "frames": len(lags),
        "p50": statistics.median(lags),
        "p99": lags[min(len(lags) - 1, int(len(lags) * 0.99))],
        "resyncs": resyncs,
        # of the steps made in the window (those any viewer received), the share each got
        "delivered": sum(counts) / max(1, steps * len(counts)),
        "worst": min(counts, default=0) / max(1, steps),
    }


async def bytes_per_page(
    base: str, ws_base: str, pages: int, pts: int, steps: int, record: Path | None = None
) -> dict[str, float]:
    import httpx
    from websockets.asyncio.client import connect

    async with httpx.AsyncClient(base_url=base, timeout=120) as http:
        r = await http.post("/api/sessions", json={"scenario": scenario(pages, pts)})
        r.raise_for_status()
        sid = r.json()["id"]
        async with connect(f"{ws_base}/ws/sessions/{sid}", max_size=None, compression=None) as ws:
            frames = total = records = changed = 0
            kept = []
            for _ in range(steps):
                await ws.send('{"type": "step"}')
                while True:
                    msg = json.loads(await ws.recv())
                    if msg["type"] in ("delta", "snapshot", "end"):
                        break
                if msg["type"] == "end":
                    break
                if msg["type"] != "delta":
                    continue
                n = sum(p["n"] for p in msg["pages"])
                if n == 0:
                    continue
                frames += 1
                size = len(json.dumps(msg, separators=(",", ":")))
                total += size
                changed += n
                records += sum(len(p["d"]) for p in msg["pages"])
                kept.append(msg)
        await http.delete(f"/api/sessions/{sid}")
    if record is not None:
        record.write_text("\n".join(json.dumps(m) for m in kept))
    return {
        "pages": pages,
        "pages_to_scan": pts,
        "steps": frames,
        "changed": changed,
        "frame_bytes_per_page": total / max(1, changed),
        "record_bytes_per_page": records / max(1, changed),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rate", type=float, default=20.0, help="steps per second while playing")
    ap.add_argument("--seconds", type=float, default=6.0, help="measurement window per run")
    ap.add_argument("--viewers", default="1,100,1000")
    ap.add_argument("--serve", type=int)
    ap.add_argument("--baseline", nargs=3)
    ap.add_argument("--clients", nargs=2)
    args = ap.parse_args()
    if args.serve:
        serve(args.serve)
        return 0
    if args.baseline:
        asyncio.run(baseline(int(args.baseline[0]), args.baseline[1], float(args.baseline[2])))
        return 0
    if args.clients:
        asyncio.run(clients(args.clients[0], int(args.clients[1])))
        return 0
    return run_bench(args)


def run_bench(args: argparse.Namespace) -> int:
    import httpx

    from app.server.threaded import free_port

    port, bport = free_port(), free_port()
    base, ws_base = f"http://{HOST}:{port}", f"ws://{HOST}:{port}"
    frames_file = ROOT / "bench" / ".stream-frames.jsonl"
    server = spawn("--serve", str(port))
    children = [server]
    try:
        wait_port(port)
        print("== bytes per changed page per step (65,536-page session, one viewer)")
        for pts, steps in ((100, 400), (1000, 200)):
            r = asyncio.run(
                bytes_per_page(
                    base, ws_base, 65536, pts, steps, frames_file if pts == 100 else None
                )
            )
            print(
                f"pages_to_scan={pts:5}: {r['steps']} deltas, {r['changed']} changed pages: "
                f"{r['frame_bytes_per_page']:.2f} B/page (whole frames), "
                f"{r['record_bytes_per_page']:.2f} B/page (page records)"
            )
        print(
            f"\n== lag from step to receipt, one session playing at {args.rate:g} steps/s "
            f"(4,096 pages, pages_to_scan=100), {args.seconds:g} s windows; steps/s: frames "
            "received per viewer per second (the clients share this machine's cores)"
        )
        with httpx.Client(base_url=base, timeout=60) as http:
            made = http.post("/api/sessions", json={"scenario": scenario(4096, 100, run=1)})
            made.raise_for_status()
            sid = made.json()["id"]
            http.post(f"/api/sessions/{sid}/speed", json={"batches_per_second": args.rate})
            http.post(f"/api/sessions/{sid}/play").raise_for_status()
            bserver = spawn("--baseline", str(bport), str(frames_file), str(args.rate))
            children.append(bserver)
            wait_port(bport)
            print(
                f"{'viewers':>8} | {'ksmlab p50':>10} {'p99':>8} {'frames':>8} {'steps/s':>7} "
                f"{'resync':>6} {'deliv.':>6} {'worst':>6} | {'bare ws p50':>11} {'p99':>8} "
                f"{'frames':>8} {'steps/s':>7}"
            )
            for n in (int(v) for v in args.viewers.split(",")):
                if time.monotonic() > DEADLINE:
                    print("deadline reached, stopping")
                    break
                ours = measure_lag(f"{ws_base}/ws/sessions/{sid}", n, args.seconds)
                bare = measure_lag(f"ws://{HOST}:{bport}/", n, args.seconds)
                per = n * args.seconds
                print(
                    f"{n:>8} | {ours['p50']:>8.1f}ms {ours['p99']:>6.1f}ms "
                    f"{ours['frames']:>8} {ours['frames'] / per:>7.1f} {ours['resyncs']:>6} "
                    f"{100 * ours['delivered']:>5.1f}% {100 * ours['worst']:>5.1f}% | "
                    f"{bare['p50']:>9.1f}ms {bare['p99']:>6.1f}ms {bare['frames']:>8} "
                    f"{bare['frames'] / per:>7.1f}",
                    flush=True,
                )
            http.post(f"/api/sessions/{sid}/pause")
    finally:
        for child in children:
            child.kill()
            child.wait()
        frames_file.unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
