"""Measure ksmd's CPU cost per page on this machine's kernel (root only).

    sudo uv run python bench/ksmd_costs.py [--pages 20000] [--rounds 3] [--json]

The numbers feed the sweep's CPU model (``ksmlab sweep --costs FIRST,LATER,SKIP``; method in
``docs/cpu-model.md``). One round:

1. a clean KSM state (``run=2``, then ``run=0``), default knobs, ``smart_scan=1``,
   ``pages_to_scan`` larger than the area (one batch is one whole pass);
2. one private anonymous area of ``--pages`` pages, ``MADV_NOHUGEPAGE``, every page written
   with bytes no other page has, then ``MADV_MERGEABLE``;
3. exactly one pass at a time: ``run=1``, then a new ``sleep_millisecs`` value (which wakes
   ksmd), wait until ``full_scans`` grows by one, ``run=0``. ksmd's CPU time for the pass is
   the growth of the first field of ``/proc/<ksmd>/schedstat`` (nanoseconds on CPU);
4. pass 1: every page is new (rmap_item created, checksum only) -> **first-pass cost** =
   CPU / pages_scanned; passes 2-4: the same pages again (checksum, unstable-tree search
   and insert; smart scan does not skip before an item's 4th visit) -> **later-pass cost**;
   pass 5: smart scan skips every page -> **skip cost** = CPU / pages_skipped.

The median over ``--rounds`` rounds is printed. Safety: it refuses to run unless root, unless
ksmd is stopped (``run=0``) and no process has mergeable memory (``--force`` skips the
latter), and it holds the kernel replayer's host lock (``$KSMLAB_KERNEL_LOCK``, default
``/var/tmp/ksmlab-kernel.lock``) so no replay runs meanwhile. Every writable knob is saved
first and restored in a ``finally`` (after a ``run=2`` that unmerges what the round left),
``run`` last and back to 0: ksmd is never left running. Standard library only.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import mmap
import os
import statistics
import struct
import sys
import time
from pathlib import Path
from typing import Any

KSM = Path("/sys/kernel/mm/ksm")
PAGE = mmap.PAGESIZE
MADV_MERGEABLE = getattr(mmap, "MADV_MERGEABLE", 12)
MADV_NOHUGEPAGE = getattr(mmap, "MADV_NOHUGEPAGE", 15)
PASS_TIMEOUT = 120.0


def read(name: str) -> str:
    return (KSM / name).read_text().strip()


def read_int(name: str) -> int:
    path = KSM / name
    return int(path.read_text()) if path.exists() else 0


def write(name: str, value: object) -> None:
    (KSM / name).write_text(f"{value}\n")


def current(name: str) -> str:
    """A knob's value; for a ``[choice] other`` list (advisor_mode) the selected word."""
    text = read(name)
    if "[" in text:
        text = text[text.index("[") + 1 : text.index("]")]
    return text


def writable_knobs() -> dict[str, str]:
    """Every writable knob and its current value."""
    return {p.name: current(p.name) for p in sorted(KSM.iterdir()) if p.stat().st_mode & 0o200}


def restore(saved: dict[str, str]) -> list[str]:
    """run=2 (unmerge whatever is left), every knob back, run last; returns problems."""
    problems = []
    try:
        write("run", 2)
    except OSError as exc:
        problems.append(f"run=2: {exc}")
    order = [k for k in saved if k != "run"]
    if saved.get("advisor_mode", "none") == "none" and "advisor_mode" in order:
        order.remove("advisor_mode")
        order.insert(0, "advisor_mode")  # switching the mode resets pages_to_scan
    for name in order:
        try:
            if current(name) != saved[name]:
                write(name, saved[name])
        except OSError as exc:
            problems.append(f"{name}={saved[name]}: {exc}")
    try:
        write("run", saved.get("run", "0"))
    except OSError as exc:
        problems.append(f"run={saved.get('run')}: {exc}")
    return problems


def ksmd_pid() -> int:
    for comm in Path("/proc").glob("[0-9]*/comm"):
        try:
            if comm.read_text().strip() == "ksmd":
                return int(comm.parent.name)
        except OSError:
            continue
    raise SystemExit("ksmd_costs: no ksmd thread found")


def cpu_ns(pid: int) -> int:
    """Nanoseconds ksmd has spent on a CPU (schedstat; falls back to utime+stime ticks)."""
    try:
        return int(Path(f"/proc/{pid}/schedstat").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks = int(fields[11]) + int(fields[12])
        return ticks * 1_000_000_000 // os.sysconf("SC_CLK_TCK")


def other_mergeable_processes() -> list[int]:
    pids = []
    for stat in Path("/proc").glob("[0-9]*/ksm_stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        if "ksm_mergeable: yes" in text or "ksm_merge_any: yes" in text:
            pids.append(int(stat.parent.name))
    return [p for p in pids if p != os.getpid()]


class Passes:
    """Runs ksmd for exactly one full pass at a time and measures it."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.sleep = 60_000

    def one(self) -> dict[str, int]:
        before = (
            read_int("full_scans"),
            read_int("pages_scanned"),
            read_int("pages_skipped"),
            cpu_ns(self.pid),
        )
        write("run", 1)
        self.sleep = 60_001 if self.sleep == 60_000 else 60_000
        write("sleep_millisecs", self.sleep)  # a new value wakes ksmd from its sleep
        deadline = time.monotonic() + PASS_TIMEOUT
        try:
            while read_int("full_scans") == before[0]:
                if time.monotonic() > deadline:
                    raise SystemExit("ksmd_costs: a pass took too long")
                time.sleep(0.002)
        finally:
            write("run", 0)
        time.sleep(0.05)  # let ksmd go back to sleep before reading its CPU time
        return {
            "scanned": read_int("pages_scanned") - before[1],
            "skipped": read_int("pages_skipped") - before[2],
            "cpu_ns": cpu_ns(self.pid) - before[3],
        }


def one_round(pages: int, passes: Passes) -> dict[str, float]:
    write("run", 2)
    write("run", 0)
    write("pages_to_scan", max(pages * 2, 1000))
    area = mmap.mmap(-1, pages * PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    try:
        area.madvise(MADV_NOHUGEPAGE)
        stamp = os.getpid() << 32
        for i in range(pages):
            area[i * PAGE : (i + 1) * PAGE] = struct.pack("<QQ", stamp, i) * (PAGE // 16)
        area.madvise(MADV_MERGEABLE)
        runs = [passes.one() for _ in range(5)]
    finally:
        area.close()
    first = runs[0]
    later = runs[1:4]
    skip = runs[4]
    if first["scanned"] < pages or any(r["scanned"] < pages for r in later):
        raise SystemExit(f"ksmd_costs: fewer pages scanned than written: {runs}")
    if skip["skipped"] < pages:
        raise SystemExit(
            f"ksmd_costs: smart scan skipped only {skip['skipped']} pages "
            "in pass 5 (no smart scan on this kernel?)"
        )
    return {
        "first_us": first["cpu_ns"] / first["scanned"] / 1000,
        "later_us": sum(r["cpu_ns"] for r in later) / sum(r["scanned"] for r in later) / 1000,
        "skip_us": skip["cpu_ns"] / skip["skipped"] / 1000,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pages", type=int, default=20_000, help="pages in the area (20000)")
    ap.add_argument("--rounds", type=int, default=3, help="rounds; the median is kept (3)")
    ap.add_argument(
        "--force", action="store_true", help="run even if another process has mergeable memory"
    )
    ap.add_argument("--json", action="store_true", help="print JSON")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("ksmd_costs: must run as root (it writes /sys/kernel/mm/ksm)", file=sys.stderr)
        return 2
    if not (KSM / "run").exists():
        print(f"ksmd_costs: {KSM} does not exist (no CONFIG_KSM)", file=sys.stderr)
        return 2
    lock_path = Path(os.environ.get("KSMLAB_KERNEL_LOCK", "/var/tmp/ksmlab-kernel.lock"))
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    lock = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)  # waits for a running replay to finish
        if read("run") != "0":
            print(
                "ksmd_costs: ksmd is running (run != 0): someone uses KSM; not touching it",
                file=sys.stderr,
            )
            return 2
        others = other_mergeable_processes()
        if others and not args.force:
            print(
                f"ksmd_costs: processes {others} have mergeable memory (use --force)",
                file=sys.stderr,
            )
            return 2
        saved = writable_knobs()
        try:
            for name, value in (
                ("advisor_mode", "none"),
                ("smart_scan", 1),
                ("use_zero_pages", 0),
                ("max_page_sharing", 256),
            ):
                if (KSM / name).exists():
                    if name == "max_page_sharing":
                        write("run", 2)  # EBUSY while pages are shared
                    write(name, value)
            passes = Passes(ksmd_pid())
            rounds = [one_round(args.pages, passes) for _ in range(args.rounds)]
        finally:
            problems = restore(saved)
            if problems:
                print(f"ksmd_costs: knobs not restored: {problems}", file=sys.stderr)
    finally:
        os.close(lock)
    result: dict[str, Any] = {
        k: round(statistics.median(r[k] for r in rounds), 3) for k in rounds[0]
    }
    result.update(pages=args.pages, rounds=args.rounds, kernel=os.uname().release)
    if args.json:
        print(json.dumps(result))
    else:
        print(f"kernel {result['kernel']}, {args.pages} pages, median of {args.rounds} rounds:")
        print(f"  first-pass page  {result['first_us']:.3f} us")
        print(f"  later-pass page  {result['later_us']:.3f} us")
        print(f"  skipped page     {result['skip_us']:.3f} us")
        print(
            f"use: ksmlab sweep --costs {result['first_us']},{result['later_us']},"
            f"{result['skip_us']}"
        )
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
