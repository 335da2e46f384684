"""Every attack of issue 15 against a real server, each for a bounded time, on loopback.

Usage: python bench/attack.py [--seconds S] [--only NAME[,NAME]] [--pages N]

For each attack a fresh server process is started (``ksmlab serve``'s app and uvicorn
options, bound to 127.0.0.1, recipes in a temporary data directory); while the attack runs,
a probe requests ``GET /`` every 50 ms and the server's resident memory is sampled every
50 ms from ``/proc/<pid>/status``. Printed per attack: the server's peak RSS, the p50/p99
latency of ``GET /`` during it, how many responses had status 500, how many sessions were
left that no successful request made (orphans), and what the attack did.

Targets (issue 15): peak RSS < 1.5 GiB, ``GET /`` p99 < 250 ms, 0 status 500, 0 orphans.
The process exits 1 if a target is missed.

Attacks only ever target 127.0.0.1, are bounded in count (sockets, requests) and in time.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app.server.threaded import free_port  # noqa: E402

HOST = "127.0.0.1"
TOKEN = "bench-token-0123456789"
GIB = 1 << 30


# ----------------------------------------------------------------------------- the server
class ServerProcess:
    def __init__(self, data: str, **settings: Any):
        self.port = free_port()
        self.url = f"http://{HOST}:{self.port}"
        settings = {"data_dir": data, "port": self.port, **settings}
        script = textwrap.dedent(
            f"""
            import uvicorn
            from app.config import Settings
            from app.server.app import create_app
            from app.server.cli import uvicorn_options
            s = Settings(**{settings!r})
            opts = uvicorn_options(s)
            opts["log_level"] = "info"
            uvicorn.run(create_app(s), host="{HOST}", port={self.port}, **opts)
            """
        )
        self.log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(
            [sys.executable, "-c", script], stdout=self.log, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(self.url + "/healthz", timeout=1).is_success:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or self.proc.poll() is not None:
                self.stop()
                raise RuntimeError("server did not start")
            time.sleep(0.1)

    def rss(self) -> int:
        try:
            with open(f"/proc/{self.proc.pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            pass
        return 0

    def sessions(self) -> int:
        n: int = httpx.get(self.url + "/healthz", timeout=30).json()["sessions"]
        return n

    def logs(self) -> str:
        self.log.seek(0)
        return self.log.read().decode("utf-8", "replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


# ----------------------------------------------------------------------------- measuring
@dataclass
class Result:
    name: str
    peak_rss: int = 0
    latencies: list[float] = field(default_factory=list)
    probe_failures: int = 0
    status_500: int = 0
    orphans: int = 0
    requests: int = 0
    note: str = ""

    def p(self, q: float) -> float:
        if not self.latencies:
            return float("nan")
        xs = sorted(self.latencies)
        return xs[min(len(xs) - 1, int(q * len(xs)))]

    def ok(self) -> bool:
        return (
            self.peak_rss < 1.5 * GIB
            and self.p(0.99) < 0.25
            and self.status_500 == 0
            and self.orphans == 0
            and self.probe_failures == 0
        )


class Monitor:
    """Samples RSS and ``GET /`` latency while an attack runs."""

    def __init__(self, server: ServerProcess, result: Result):
        self.server, self.result = server, result
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._rss), threading.Thread(target=self._probe)]

    def _rss(self) -> None:
        while not self.stop.is_set():
            self.result.peak_rss = max(self.result.peak_rss, self.server.rss())
            time.sleep(0.05)

    def _probe(self) -> None:
        with httpx.Client(base_url=self.server.url, timeout=10) as http:
            while not self.stop.is_set():
                t = time.monotonic()
                try:
                    r = http.get("/")
                    if r.status_code != 200:
                        self.result.probe_failures += 1
                except httpx.HTTPError:
                    self.result.probe_failures += 1
                self.result.latencies.append(time.monotonic() - t)
                time.sleep(0.05)

    def __enter__(self) -> Monitor:
        httpx.get(self.server.url + "/", timeout=30)  # warm up (templates compiled)
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join()


def count(result: Result, r: httpx.Response) -> None:
    result.requests += 1
    if r.status_code >= 500:
        result.status_500 += 1


def do_param(items: Any) -> str:
    raw = json.dumps(items, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(zlib.compress(raw, 9)).rstrip(b"=").decode()


def big_scenario(pages: int, checkpoints: int = 0) -> dict[str, Any]:
    steps: list[dict[str, Any]] = [
        {"op": "spawn", "proc": "A"},
        {"op": "mmap", "proc": "A", "vma": "heap", "pages": pages},
        {"op": "write", "proc": "A", "vma": "heap", "content": "A"},
        {"op": "madvise", "proc": "A", "vma": "heap", "advice": "MADV_MERGEABLE"},
        {"op": "sysfs", "knob": "run", "value": 1},
    ]
    steps += [{"op": "checkpoint", "name": f"c{i}"} for i in range(checkpoints)]
    return {"format": "ksm-scenario/1", "name": "attack", "kernel": "6.18", "steps": steps}


def until(seconds: float) -> Callable[[], bool]:
    end = time.monotonic() + seconds
    return lambda: time.monotonic() < end


# ----------------------------------------------------------------------------- attacks
def attack_link(s: ServerProcess, r: Result, seconds: float, pages: int) -> None:
    """1. A 31-character link asking for 10^12 steps, over and over."""
    do = do_param([[1_000_000_000_000, "batch"]])
    going = until(seconds)
    with httpx.Client(base_url=s.url, timeout=30) as http:
        while going():
            count(r, http.get(f"/session?preset=zero-pages-unmerge&do={do}&step=5"))
    r.orphans = s.sessions()
    r.note = f"do={do} ({len(do)} chars), {r.requests} requests"


def _stuck(port: int, sid: str) -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((HOST, port))
    sock.sendall(
        (
            f"GET /ws/sessions/{sid} HTTP/1.1\r\nHost: {HOST}:{port}\r\n"
            "Upgrade: websocket\r\nConnection: Upgrade\r\n"
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    return sock


def attack_stuck_viewers(s: ServerProcess, r: Result, seconds: float, pages: int) -> None:
    """2. 350 websockets that finish the handshake and never read, on a big session."""
    with httpx.Client(base_url=s.url, timeout=300) as http:
        created = http.post("/api/sessions", json={"scenario": big_scenario(pages)})
        count(r, created)
        sid = created.json()["id"]
        count(r, http.post(f"/api/sessions/{sid}/step", json={"n": 2}))
        snapshot = len(http.get(f"/api/sessions/{sid}/snapshot").content)
    socks = []
    going = until(seconds)
    try:
        while going() and len(socks) < 350:
            socks.append(_stuck(s.port, sid))
        while going():
            time.sleep(0.1)
    finally:
        for sock in socks:
            sock.close()
    r.note = f"{len(socks)} stuck viewers of a {pages}-page session, snapshot {snapshot >> 20} MB"


def attack_cross_site(s: ServerProcess, r: Result, seconds: float, pages: int) -> None:
    """3. Foreign Origin posts, JSON as text/plain, GET-created sessions, a rebound Host."""
    going = until(seconds)
    made = refused = 0
    with httpx.Client(base_url=s.url, timeout=30) as http:
        i = 0
        while going():
            i += 1
            evil = {"Origin": "http://evil.example"}
            for resp in (
                http.post("/api/sessions", data={"preset": "vm-host"}, headers=evil),
                http.post(
                    "/api/sessions",
                    content=b'{"preset": "vm-host"}',
                    headers={"Content-Type": "text/plain"},
                ),
                http.get("/", headers={"Host": "evil.example"}),
            ):
                count(r, resp)
                refused += resp.status_code in (403, 415, 421)
            # image tags: every distinct link makes (or shares) one evictable session
            resp = http.get(f"/session?preset=vm-host&step={i % 50}")
            count(r, resp)
            made += resp.status_code == 303
    alive = s.sessions()
    r.orphans = max(0, alive - min(made, 32))
    r.note = f"{refused} refused, {made} GET links opened, {alive} sessions alive (limit 32)"


def attack_uploads(s: ServerProcess, r: Result, seconds: float, pages: int) -> None:
    """4. A big upload with 9,990 checkpoint steps, stepped 100 at a time."""
    going = until(seconds)
    with httpx.Client(base_url=s.url, timeout=300) as http:
        resp = http.post("/api/sessions", json={"scenario": big_scenario(pages, 9_990)})
        count(r, resp)
        sid = resp.json()["id"]
        codes: dict[int, int] = {}
        while going():
            resp = http.post(f"/api/sessions/{sid}/step", json={"n": 100})
            count(r, resp)
            codes[resp.status_code] = codes.get(resp.status_code, 0) + 1
        step = http.get(f"/api/sessions/{sid}").json()["step"]
    r.note = f"{pages} pages + 9,990 checkpoints: step {step}, answers {codes}"


LAUGHS = (
    'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n'
    + "".join(
        f"{c}: &{c} [*{p},*{p},*{p},*{p},*{p},*{p},*{p},*{p},*{p},*{p}]\n"
        for p, c in zip("abcdefgh", "bcdefghi", strict=True)
    )
    + "steps: *i\n"
)


def attack_yaml(s: ServerProcess, r: Result, seconds: float, pages: int) -> None:
    """5. YAML billion laughs (and 50k-deep nesting)."""
    going = until(seconds)
    biggest = 0
    with httpx.Client(base_url=s.url, timeout=60) as http:
        while going():
            for body in (LAUGHS, "a: " + "[" * 50_000 + "]" * 50_000):
                resp = http.post(
                    "/api/sessions", content=body, headers={"Content-Type": "application/yaml"}
                )
                count(r, resp)
                biggest = max(biggest, len(resp.content))
    r.orphans = s.sessions()
    r.note = f"{r.requests} documents of {len(LAUGHS)} bytes, largest answer {biggest} bytes"


def attack_slowloris(s: ServerProcess, r: Result, seconds: float, pages: int) -> None:
    """6. 3,000 half-sent requests (then more as they are dropped)."""
    socks: list[socket.socket] = []
    going = until(seconds)
    opened = 0
    try:
        while going():
            while len(socks) < 3000 and going():
                try:
                    sock = socket.create_connection((HOST, s.port), timeout=2)
                    sock.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-a: ")
                    socks.append(sock)
                    opened += 1
                except OSError:
                    break
            time.sleep(0.2)
            alive = []
            for sock in socks:
                sock.setblocking(False)
                try:
                    if sock.recv(1) == b"":
                        sock.close()
                        continue
                except BlockingIOError:
                    pass
                except OSError:
                    sock.close()
                    continue
                alive.append(sock)
            socks = alive
    finally:
        for sock in socks:
            sock.close()
    r.note = f"{opened} half-sent requests opened, {len(socks)} still open at the end"


def attack_live(s: ServerProcess, r: Result, seconds: float, pages: int) -> None:
    """7. 200 /ws/live connections asking for a sample every 50 ms."""
    from websockets.asyncio.client import connect

    async def go() -> tuple[int, int]:
        socks = []
        refused = 0
        for _ in range(200):
            try:
                ws = await connect(f"ws://{HOST}:{s.port}/ws/live", max_size=None)
                socks.append(ws)
            except Exception:
                refused += 1
        for ws in socks:
            try:
                await ws.send(json.dumps({"type": "interval", "seconds": 0.05}))
            except Exception:
                pass
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            await asyncio.sleep(0.5)
            for ws in socks:
                try:
                    while True:
                        await asyncio.wait_for(ws.recv(), 0.001)
                except Exception:
                    pass
        for ws in socks:
            await ws.close()
        return len(socks), refused

    opened, refused = asyncio.run(go())
    r.note = f"{opened} live sockets opened ({refused} refused at the handshake)"


BIG = "1" * 5000


def attack_malformed(s: ServerProcess, r: Result, seconds: float, pages: int) -> None:
    """8. Huge integers, deep JSON, ops as lists, over REST, forms, links, websocket."""
    from websockets.sync.client import connect

    with httpx.Client(base_url=s.url, timeout=30) as http:
        resp = http.post("/api/sessions", json={"preset": "vm-host"})
        sid = resp.json()["id"]
        going = until(seconds)
        deep = "[" * 100_000 + "]" * 100_000
        nested_do = base64.urlsafe_b64encode(
            zlib.compress(('{"op": ' * 50_000 + "1" + "}" * 50_000).encode(), 9)
        ).decode()
        internal = 0
        while going():
            for resp in (
                http.post(
                    f"/api/sessions/{sid}/knob",
                    content=f'{{"knob": "run", "value": {BIG}}}',
                    headers={"Content-Type": "application/json"},
                ),
                http.post(f"/api/sessions/{sid}/knob", data={"knob": "run", "value": BIG}),
                http.post(
                    f"/api/sessions/{sid}/step",
                    content=deep,
                    headers={"Content-Type": "application/json"},
                ),
                http.post(f"/api/sessions/{sid}/inject", json={"op": ["spawn"]}),
                http.get(f"/session?preset=vm-host&knob.run={BIG}"),
                http.get(f"/session?preset=vm-host&do={nested_do}"),
            ):
                count(r, resp)
            with connect(f"ws://{HOST}:{s.port}/ws/sessions/{sid}", max_size=None) as ws:
                ws.recv()
                for frame in (
                    f'{{"type": "knob", "knob": "run", "value": {BIG}}}',
                    '{"type": "inject", "op": ' + "[" * 20_000 + "]" * 20_000 + "}",
                ):
                    ws.send(frame)
                    while True:
                        msg = json.loads(ws.recv(timeout=30))
                        if msg["type"] == "error":
                            internal += "internal" in msg["message"]
                            break
    r.status_500 += internal
    r.orphans = s.sessions() - 1
    r.note = f"{r.requests} malformed requests, websocket internal errors: {internal}"


def attack_token_logs(s: ServerProcess, r: Result, seconds: float, pages: int) -> None:
    """9. The token in every place a log line could take it from."""
    from websockets.sync.client import connect

    with httpx.Client(base_url=s.url, timeout=30) as http:
        going = until(seconds)
        while going():
            for path in (f"/?token={TOKEN}", f"/?%74oken={TOKEN}", f"/?TOKEN={TOKEN}"):
                count(r, http.get(path))
            try:
                with connect(f"ws://{HOST}:{s.port}/ws/live?token={TOKEN}") as ws:
                    ws.recv()
                with connect(
                    f"ws://{HOST}:{s.port}/ws/live?%74oken={TOKEN}",
                    additional_headers={"Origin": "http://evil.example"},
                ):
                    pass
            except Exception:
                pass
            time.sleep(0.2)
    logs = s.logs()
    leaked = [line for line in logs.splitlines() if TOKEN in line]
    r.status_500 += len(leaked)  # counted as failures
    r.note = f"{len(logs.splitlines())} log lines, {len(leaked)} with the token"


def attack_host_view(s: ServerProcess, r: Result, seconds: float, pages: int) -> None:
    """10-11. Headers and the host view of a server reachable from the network."""
    with httpx.Client(base_url=s.url, timeout=30) as http:
        going = until(seconds)
        leaks = 0
        while going():
            for path in ("/api/live/procs", "/api/live/procs/1/pages", "/api/live/ksm"):
                resp = http.get(path)
                count(r, resp)
                leaks += resp.status_code == 200
            page = http.get("/")
            count(r, page)
            leaks += "content-security-policy" not in page.headers
            leaks += http.get("/docs").status_code == 200
            time.sleep(0.05)
    r.status_500 += leaks
    r.note = f"{r.requests} requests without the token, {leaks} answered"


ATTACKS: dict[str, tuple[Callable[..., None], dict[str, Any]]] = {
    "1-link-10^12-steps": (attack_link, {}),
    "2-stuck-viewers": (attack_stuck_viewers, {"max_body_bytes": 4 << 20}),
    "3-cross-site": (attack_cross_site, {}),
    "4-uploads": (attack_uploads, {"max_body_bytes": 4 << 20}),
    "5-yaml": (attack_yaml, {}),
    "6-slowloris": (attack_slowloris, {}),
    "7-live": (attack_live, {}),
    "8-malformed": (attack_malformed, {}),
    "9-token-logs": (attack_token_logs, {"token": TOKEN, "host": "0.0.0.0"}),
    "10-11-headers-host": (attack_host_view, {"token": TOKEN, "host": "0.0.0.0"}),
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=10.0, help="per attack (default 10)")
    ap.add_argument("--pages", type=int, default=1 << 20, help="pages of the big sessions")
    ap.add_argument("--only", default="", help="comma-separated attack name prefixes")
    args = ap.parse_args()
    only = [o for o in args.only.split(",") if o]
    results = []
    with tempfile.TemporaryDirectory(prefix="ksmlab-attack-") as data:
        for name, (fn, settings) in ATTACKS.items():
            if only and not any(name.startswith(o) for o in only):
                continue
            server = ServerProcess(os.path.join(data, name), **settings)
            result = Result(name)
            try:
                with Monitor(server, result):
                    fn(server, result, args.seconds, args.pages)
            except Exception as exc:
                result.note = f"attack failed: {exc!r}"[:200]
                result.status_500 += 0
            finally:
                server.stop()
            results.append(result)
            print(
                f"{name:22} peak RSS {result.peak_rss / GIB:5.2f} GiB  "
                f"GET / p50 {result.p(0.5) * 1000:6.1f} ms p99 {result.p(0.99) * 1000:6.1f} ms "
                f"({len(result.latencies)} probes, {result.probe_failures} failed)  "
                f"500s {result.status_500}  orphans {result.orphans}  "
                f"{'ok' if result.ok() else 'MISSED'}\n{'':22} {result.note}",
                flush=True,
            )
    worst = max((x.p(0.99) for x in results), default=0.0)
    print(
        f"\n{len(results)} attacks, {sum(x.ok() for x in results)} within targets; "
        f"worst p99 {worst * 1000:.1f} ms; "
        f"median p50 {statistics.median([x.p(0.5) for x in results]) * 1000:.1f} ms"
    )
    return 0 if all(x.ok() for x in results) else 1


if __name__ == "__main__":
    sys.exit(main())
