"""A whole VM host in the simulator: 16,777,216 pages (issue 18), and the real ksmd beside it.

    uv run python bench/sim_16m.py                       # everything (root: with the host)
    uv run python bench/sim_16m.py --no-host --no-big    # quick: 65,536 and 1M pages only
    uv run python bench/sim_16m.py --no-host --sizes 65536 --traced ""  # the ratio only

The workload (the mixed one of ``bench/sim_throughput.py``, over 4 processes): each process
maps ``pages / 4`` pages, writes 25% zero pages, 25% duplicates (a label per run of 16
pages, each label in 16 pages only), 50% unique pages, then ``MADV_MERGEABLE``; kernel
6.18, ``use_zero_pages=1``, ``smart_scan=0`` (every page is scanned on every pass). Pass 1
records checksums (the **first pass**: rmap_items made and checksums recorded a run of
pages at once, ``sim.scanner.ScannerMixin._first_sight_run``), pass 2 merges (the **merging
pass**: zero pages onto the zero page, duplicates into KSM pages), pass 3 is the **steady
state** (the unique pages and the KSM pages again). Rates are pages scanned per second of
CPU time (``time.process_time``) and of wall time. ``smart_scan=0`` on both sides: every
page is looked at on every pass, so both figures count the same work (with smart scan on,
the simulator steps page by page: its runs of pages,
``sim.scanner.ScannerMixin._scan_run``, need it off).

Prints:

- at 65,536, 1,048,576 and 16,777,216 pages, with warm caches and with cold ones: the
  creation time; the first, merging and steady pages/s over all the fresh sessions of the
  size together (their pages over their CPU seconds; ``--rounds`` rounds, 3 by default,
  each of as many sessions of every smaller size as make the big session's pages, then
  the big session), with the best and the median session and the page faults (of new
  memory: each costs a few microseconds of kernel time on this VM); and the memory per
  simulated page of the whole ``Kernel`` after those three passes, in the first session
  (``deep size``: every object reachable from the kernel, counted once with
  ``sys.getsizeof``; at 65,536 and 1M also ``tracemalloc`` of building and scanning the
  session, which is too slow at 16M and agrees with the deep size at the smaller sizes);
- the no-slowdown ratio of each pass, with warm and with cold caches, over all the
  sessions and round by round: each big session against all the 65,536-page sessions of
  its own round (:func:`measure` says why, and why both cache conditions);
- the host's real ksmd on the same workload, side by side (root only; ``--host-pages``
  pages, 4 child processes): ``pages_to_scan`` = the whole area, ``sleep_millisecs=0``;
  pages_scanned over wall time and over ksmd's CPU time (``/proc/<ksmd>/schedstat``) for
  the same passes, the simulator on the same shape, and the ratio simulator / ksmd.

Host safety: the project's host lock (``app.kernel.guard``: ``$KSMLAB_KERNEL_LOCK``, default
``/var/tmp/ksmlab-kernel.lock``) is held for the measurement only; it refuses to touch the
host when ksmd is running (``run`` != 0); every writable knob is saved first (also in the
replayer's state file, so ``ksmlab replay --restore`` repairs a killed run) and restored in
a ``finally`` with ``run=2`` then ``run=0``: ksmd is never left running.
"""

from __future__ import annotations

import argparse
import gc
import mmap
import os
import resource
import struct
import sys
import time
import tracemalloc
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sim import Kernel  # noqa: E402

PROCS = 4
PAGE = 4096
#: pages of one duplicate label
DUP_RUN = 16
#: the three passes of a session, in order
PASSES = ("first", "merging", "steady")
#: one pass measured: (pages scanned, CPU seconds, wall seconds, page faults)
Pass = tuple[int, float, float, int]


# ----------------------------------------------------------------------------- simulator
def build(pages: int) -> Kernel:
    """The mixed workload over :data:`PROCS` processes (see the module docstring)."""
    k = Kernel("6.18", {"use_zero_pages": 1, "smart_scan": 0})
    per = pages // PROCS
    q = per // 4
    for p in range(PROCS):
        name = f"P{p}"
        k.spawn(name)
        k.mmap(name, "heap", per)
        k.write(name, "heap", ((0, q),), "zero")
        for j in range(q // DUP_RUN):
            lo = q + j * DUP_RUN
            k.write(name, "heap", ((lo, lo + DUP_RUN),), f"D{p}.{j}")
        k.write(name, "heap", ((2 * q, per),), "unique")
        k.madvise(name, "heap", None, "MADV_MERGEABLE")
    return k


def one_pass(k: Kernel) -> Pass:
    """One full pass: (pages scanned, CPU seconds, wall seconds, page faults)."""
    scanned = k.pages_scanned
    f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    c0, w0 = time.process_time(), time.perf_counter()
    k.scan_pass()
    cpu, wall = time.process_time() - c0, time.perf_counter() - w0
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0
    return k.pages_scanned - scanned, cpu, wall, faults


def deep_size(root: object) -> int:
    """Bytes of every object reachable from ``root`` (each counted once), without classes,
    modules and functions (shared by every kernel)."""
    skip = (type, type(sys), type(deep_size), type(len))
    seen: set[int] = set()
    todo = [root]
    total = 0
    while todo:
        obj = todo.pop()
        if id(obj) in seen or isinstance(obj, skip):
            continue
        seen.add(id(obj))
        total += sys.getsizeof(obj)
        todo.extend(gc.get_referents(obj))
    return total


def traced_bytes(pages: int) -> float:
    """tracemalloc: bytes per page of building the session and its first 3 passes (slow)."""
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    k = build(pages)
    for _ in range(3):
        k.scan_pass()
    gc.collect()
    used = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    del k
    return used / pages


def cache_bytes() -> int:
    """The CPU's largest cache (sysfs; 64 MiB if it says nothing)."""
    sizes = [64 << 20]
    for f in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*/size"):
        text = f.read_text().strip()
        unit = {"K": 1 << 10, "M": 1 << 20}.get(text[-1:], 1)
        sizes.append(int(text.rstrip("KM") or 0) * unit)
    return max(sizes)


#: copied over each other before each pass of a "cold" session: each as large as the
#: largest cache; made once, so that emptying the cache maps no new memory (its page
#: faults, and the allocator's trimming after it, would be counted in the next pass)
_CACHE = cache_bytes()
_SWEEP = (bytearray(_CACHE), bytes([1]) * _CACHE)


def empty_cache() -> None:
    """Evict the session from the CPU caches: read and write twice the largest of them."""
    _SWEEP[0][:] = _SWEEP[1]


def run_sim(pages: int, deep: bool = True, cold: bool = False) -> dict[str, Any]:
    """Create, 3 timed passes (``cold``: each after the caches are emptied of the session),
    then (``deep``) the deep size."""
    gc.collect()
    c0, w0 = time.process_time(), time.perf_counter()
    k = build(pages)
    create = (time.process_time() - c0, time.perf_counter() - w0)
    out: dict[str, Any] = {"pages": pages, "create": create, "cold": cold}
    for label in PASSES:
        if cold:
            empty_cache()
        out[label] = one_pass(k)
    out["counters"] = k.global_counters()
    if deep:
        out["deep"] = deep_size(k) / pages
    del k
    gc.collect()
    return out


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Sessions of one size (each :func:`run_sim` on a fresh session): per pass, the sum
    of all the sessions' pages, CPU and wall seconds and page faults (:func:`total`, from
    which the rate over all of them), the best session's rate and the median; the fastest
    creation; the rest (the deep size too) from the first session."""
    out = dict(runs[0])
    out["sessions"] = len(runs)
    out["create"] = min((r["create"] for r in runs), key=lambda c: c[1])
    for label in PASSES:
        passes = [r[label] for r in runs]
        out[label] = total(passes)
        rates = sorted(rate(p)[0] for p in passes)
        out[f"best {label}"] = rates[-1]
        out[f"median {label}"] = rates[len(rates) // 2]
    return out


def total(passes: list[Pass]) -> Pass:
    """Passes summed: (pages, CPU seconds, wall seconds, page faults)."""
    return (
        sum(p[0] for p in passes),
        sum(p[1] for p in passes),
        sum(p[2] for p in passes),
        sum(p[3] for p in passes),
    )


def measure(
    sizes: list[int], big: int | None, repeat: int, rounds: int
) -> tuple[list[dict[str, Any]], dict[bool, list[dict[str, float]]]]:
    """The sizes in ``rounds`` rounds (one without a big session): in each, fresh sessions
    of every smaller size (``repeat`` of them; 0: as many as make the big session's pages,
    256 of 65,536 for 16M), then the big session, each once with warm caches and once
    with cold ones (:func:`run_sim`), alternately. Returns :func:`summarize` for each size
    and condition over all its sessions, and per condition and round the big session's
    rates over the rates of that round's sessions of the first size taken together
    (pages over CPU seconds).

    Why sessions of equal work, compared as a whole: a 65,536-page merging pass lasts
    17 ms, a 16M one 4.5 s. The 16M figure is an average over seconds of the host's noise;
    one small pass is a sample of it, and the best of a few samples is above their average
    (by 0.7% for the merging pass, 0.9% for the steady pass, in 100 sessions of 65,536
    pages): against the best of 5 small sessions, even a 65,536-page session measured as
    a whole would look 1% slower than 65,536 pages. Summing as many small passes as make
    the big one's pages compares the same estimator at both sizes. Why rounds: the host's
    speed drifts by a few per cent over a minute on this VM, which a comparison of sessions
    measured minutes apart would count as a slowdown (or a gain) with size.

    Why both cache conditions: a 65,536-page session (3 MB) is still in the CPU's caches
    when its first pass starts, since its creation just wrote it; a 16M one (800 MB) never
    is. Warm, the comparison includes what the caches hold; cold (each pass starts after
    the caches are emptied, as after any other work of the host), it is the simulator's
    cost per page alone. Both are printed.
    """
    runs: dict[tuple[int, bool], list[dict[str, Any]]] = {}
    paired: dict[bool, list[dict[str, float]]] = {False: [], True: []}
    for _ in range(max(1, rounds) if big else 1):
        here: dict[tuple[int, bool], list[dict[str, Any]]] = {}
        for n in sizes:
            count = repeat or (max(1, big // n) if big else 5)
            for i in range(2 * count):
                cold = i % 2 == 1
                deep = not cold and (n, cold) not in runs and i == 0
                here.setdefault((n, cold), []).append(run_sim(n, deep=deep, cold=cold))
        for key, got in here.items():
            runs.setdefault(key, []).extend(got)
        if big:
            for cold in (False, True):
                one = run_sim(big, deep=not cold and (big, cold) not in runs, cold=cold)
                runs.setdefault((big, cold), []).append(one)
                if sizes:
                    small = summarize(here[sizes[0], cold])
                    paired[cold].append(
                        {
                            label: rate(one[label])[0] / max(rate(small[label])[0], 1e-9)
                            for label in PASSES
                        }
                    )
    return [summarize(r) for r in runs.values()], paired


def rate(p: Pass | tuple[int, float, float]) -> tuple[float, float]:
    """(pages per CPU second, pages per wall second)."""
    n, cpu, wall = p[0], p[1], p[2]
    return n / max(cpu, 1e-9), n / max(wall, 1e-9)


def show_sim(r: dict[str, Any]) -> None:
    g = r["counters"]
    n = r["pages"]
    many = r["sessions"] > 1
    caches = "cold caches (emptied before each pass)" if r["cold"] else "warm caches"
    print(
        f"simulator, {n:,} pages ({PROCS} processes x {n // PROCS:,}), {caches}, "
        f"{r['sessions']} session{'s' if many else ''}:"
    )
    print(f"  created in {r['create'][1]:.2f} s wall ({r['create'][0]:.2f} s CPU)")
    names = {
        "first": "first pass (pass 1)",
        "merging": "merging pass (pass 2)",
        "steady": "steady state (pass 3)",
    }
    for label in PASSES:
        cpu, wall = rate(r[label])
        faults = r[label][3] / max(r[label][0], 1) * 1000
        line = f"  {names[label]:22s} {cpu:12,.0f} pages/s CPU  {wall:12,.0f} pages/s wall"
        line += f"  ({faults:.2f} page faults per 1,000 pages)"
        if many:
            line += f"  best session {r[f'best {label}']:,.0f}, median {r[f'median {label}']:,.0f}"
        print(line)
    if "deep" in r:
        mem = f"  memory: {r['deep']:.1f} bytes per page (deep size)"
        if "traced" in r:
            mem += f", {r['traced']:.1f} (tracemalloc)"
        print(mem)
    print(
        f"  after 3 passes: pages_shared {g['pages_shared']:,}, pages_sharing "
        f"{g['pages_sharing']:,}, ksm_zero_pages {g['ksm_zero_pages']:,}, pages_unshared "
        f"{g['pages_unshared']:,}"
    )


# ---------------------------------------------------------------------------------- host
def fill(area: mmap.mmap, per: int, p: int) -> None:
    """One process's memory: the simulator's layout with real bytes."""
    q = per // 4
    stamp = os.getpid() << 32
    area[0 : q * PAGE] = bytes(q * PAGE)
    for j in range(q // DUP_RUN):
        lo = (q + j * DUP_RUN) * PAGE
        area[lo : lo + DUP_RUN * PAGE] = struct.pack("<QQ", 1 << 63 | p, j) * (PAGE // 16 * DUP_RUN)
    for i in range(2 * q, per):
        area[i * PAGE : (i + 1) * PAGE] = struct.pack("<QQ", stamp | p, i) * (PAGE // 16)


def child(per: int, p: int, ready: int, go: int) -> None:
    """A host process: map, fill, MADV_MERGEABLE, say so, wait to be told to exit."""
    try:
        area = mmap.mmap(-1, per * PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        area.madvise(mmap.MADV_NOHUGEPAGE)
        fill(area, per, p)
        area.madvise(mmap.MADV_MERGEABLE)
        os.write(ready, b"1")
        os.read(go, 1)
    finally:
        os._exit(0)


def ksmd_pid() -> int | None:
    for comm in Path("/proc").glob("[0-9]*/comm"):
        try:
            if comm.read_text().strip() == "ksmd":
                return int(comm.parent.name)
        except OSError:
            continue
    return None


def cpu_ns(pid: int) -> int:
    return int(Path(f"/proc/{pid}/schedstat").read_text().split()[0])


@contextmanager
def host_processes(pages: int) -> Iterator[list[int]]:
    """:data:`PROCS` child processes holding the workload, killed (by pid) at the end."""
    per = pages // PROCS
    ready_r, ready_w = os.pipe()
    go_r, go_w = os.pipe()
    pids = []
    try:
        for p in range(PROCS):
            pid = os.fork()
            if pid == 0:
                os.close(ready_r)
                os.close(go_w)
                child(per, p, ready_w, go_r)
            pids.append(pid)
        for _ in range(PROCS):
            if os.read(ready_r, 1) != b"1":
                raise SystemExit("sim_16m: a host process died while filling its memory")
        yield pids
    finally:
        os.close(go_w)  # the children's read returns: they exit
        for pid in pids:
            os.waitpid(pid, 0)
        for fd in (ready_r, ready_w, go_r):
            os.close(fd)


def run_host(pages: int, passes: int, say: Callable[[str], None]) -> dict[str, Any] | None:
    """ksmd on the workload: per pass (pages, ksmd CPU s, wall s); None (said why) if skipped."""
    from app.kernel.guard import KnobGuard, Refusal, host_lock, lock_file_path, state_file_path
    from app.kernel.sysfs import KsmSysfs

    sysfs = KsmSysfs()
    if os.geteuid() != 0:
        say("host ksmd: skipped (not root: writing /sys/kernel/mm/ksm needs root)")
        return None
    if not sysfs.exists("run"):
        say(f"host ksmd: skipped ({sysfs.root} does not exist: no CONFIG_KSM)")
        return None
    pid = ksmd_pid()
    if pid is None:
        say("host ksmd: skipped (no ksmd thread found)")
        return None
    with ExitStack() as stack:
        try:
            stack.enter_context(host_lock(lock_file_path(), timeout=600, on_wait=say))
        except Refusal as exc:
            say(f"host ksmd: skipped ({exc})")
            return None
        if sysfs.read("run") != 0:
            say("host ksmd: skipped (ksmd is running, run != 0: someone uses KSM)")
            return None
        guard = KnobGuard(sysfs, state_file_path())
        guard.save()
        marks: list[tuple[float, int, int, int]] = []
        try:
            sysfs.write("run", 2)
            sysfs.write("run", 0)
            for name, value in (
                ("advisor_mode", "none"),
                ("smart_scan", 0),
                ("use_zero_pages", 1),
                ("max_page_sharing", 256),
                ("merge_across_nodes", 1),
                ("pages_to_scan", pages),
                ("sleep_millisecs", 0),
            ):
                if sysfs.exists(name) and sysfs.read(name) != value:
                    sysfs.write(name, value)
            with host_processes(pages):
                fs0 = sysfs.read_int("full_scans") or 0

                def mark() -> tuple[float, int, int, int]:
                    return (
                        time.perf_counter(),
                        sysfs.read_int("full_scans") or 0,
                        sysfs.read_int("pages_scanned") or 0,
                        cpu_ns(pid),
                    )

                marks.append(mark())
                sysfs.write("run", 1)
                deadline = time.monotonic() + 600
                try:
                    while marks[-1][1] < fs0 + passes:
                        if time.monotonic() > deadline:
                            say("host ksmd: a pass took more than 10 minutes; stopped")
                            return None
                        now = mark()
                        if now[1] != marks[-1][1]:
                            marks.append(now)
                        else:
                            time.sleep(0.0005)
                finally:
                    sysfs.write("run", 0)
                counters = {
                    n: sysfs.read_int(n)
                    for n in ("pages_shared", "pages_sharing", "ksm_zero_pages", "pages_unshared")
                }
        finally:
            problems = guard.restore()
            if problems:
                say(f"host ksmd: knobs NOT restored: {problems}")
            if sysfs.read("run") != 0:
                say("host ksmd: run is not 0 after the restore")
    per_pass = []
    for a, b in zip(marks, marks[1:], strict=False):
        if b[1] != a[1] + 1:
            say("host ksmd: two passes ended between two looks; their figures are merged")
        per_pass.append((b[2] - a[2], (b[3] - a[3]) / 1e9, b[0] - a[0]))
    return {"passes": per_pass, "counters": counters, "kernel": os.uname().release}


def show_side_by_side(host: dict[str, Any], sim: dict[str, Any]) -> None:
    pages = sim["pages"]
    h = host["passes"]
    print(
        f"side by side, {pages:,} pages ({PROCS} processes), kernel {host['kernel']}, "
        f"pages_to_scan={pages}, sleep_millisecs=0, smart_scan=0, use_zero_pages=1:"
    )
    hc = host["counters"]
    g = sim["counters"]
    print(
        f"  after 3 passes: host pages_shared {hc['pages_shared']:,} sharing "
        f"{hc['pages_sharing']:,} zero {hc['ksm_zero_pages']:,}; simulator "
        f"{g['pages_shared']:,} / {g['pages_sharing']:,} / {g['ksm_zero_pages']:,}"
    )
    for label, i in (("merging pass (pass 2)", 1), ("steady state (pass 3)", 2)):
        kc, kw = rate(h[i]) if len(h) > i else (0.0, 0.0)
        sc, sw = rate(sim["merging" if i == 1 else "steady"])
        print(
            f"  {label}: ksmd {kc:,.0f} pages/s CPU, {kw:,.0f} wall; simulator {sc:,.0f} CPU, "
            f"{sw:,.0f} wall; ratio {sc / max(kc, 1e-9):.1f}x CPU, {sw / max(kw, 1e-9):.1f}x wall"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pages", type=int, default=16_777_216, help="the big session (16M)")
    ap.add_argument("--sizes", default="65536,1048576", help="smaller sessions")
    ap.add_argument("--traced", default="65536", help="sizes also measured with tracemalloc (slow)")
    ap.add_argument("--host-pages", type=int, default=131_072, help="host workload pages")
    ap.add_argument("--no-host", action="store_true", help="skip the host ksmd measurement")
    ap.add_argument("--no-big", action="store_true", help="skip the big session")
    ap.add_argument(
        "--repeat",
        type=int,
        default=0,
        help="fresh sessions per smaller size and round (0: as many pages as the big one)",
    )
    ap.add_argument(
        "--rounds", type=int, default=3, help="rounds of smaller sessions then a big one"
    )
    args = ap.parse_args()
    print(f"load: {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f}")

    def say(line: str) -> None:
        print(line, flush=True)

    if not args.no_host:
        host = run_host(args.host_pages, 3, say)
        if host is not None:
            show_side_by_side(host, run_sim(args.host_pages))
    sizes = [int(n) for n in args.sizes.split(",") if n]
    big = None if args.no_big else args.pages
    results, paired = measure(sizes, big, args.repeat, args.rounds)
    traced = {int(n): traced_bytes(int(n)) for n in args.traced.split(",") if n}
    for r in results:
        if r["pages"] in traced:
            r["traced"] = traced[r["pages"]]
    for r in results:
        show_sim(r)
    for cold in (False, True):
        same = [r for r in results if r["cold"] == cold]
        if len(same) < 2:
            continue
        small, big_r = same[0], same[-1]
        print(f"no slowdown with size, {'cold' if cold else 'warm'} caches:")
        for label in PASSES:
            a, b = rate(small[label])[0], rate(big_r[label])[0]
            each = ", ".join(f"{p[label]:.3f}" for p in paired[cold])
            print(
                f"  {label}: {b:,.0f} pages/s CPU at {big_r['pages']:,} pages vs {a:,.0f} at "
                f"{small['pages']:,} (all sessions): {b / max(a, 1e-9):.3f}x; "
                f"round by round {each}"
            )
    print(f"load: {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f}")


if __name__ == "__main__":
    main()
