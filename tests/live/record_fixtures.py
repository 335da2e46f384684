"""Record ``tests/live/fixtures/host-6.18`` from this machine's real files (root, KSM).

``uv run python tests/live/record_fixtures.py`` starts ``ksm_worker.py``, lets ksmd merge
its pages (taking the host lock and restoring every knob, see ``host_ksm.py``), then copies
``/sys/kernel/mm/ksm/*``, the worker's ``/proc/PID/{ksm_stat,ksm_merging_pages,comm,smaps}``,
those of pid 1 (no KSM) and pid 2 (a kernel thread), and the worker's pagemap entries and
their kpageflags words into ``pages.json`` (the tests rebuild the binary files from it).
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))

from tests.live.host_ksm import MERGE_KNOBS, ksm_host, wait_merged, worker  # noqa: E402
from tests.live.ksm_worker import PAGES  # noqa: E402


def copy_proc(dest: Path, pid: int, names: tuple[str, ...]) -> None:
    (dest / "proc" / str(pid)).mkdir(parents=True, exist_ok=True)
    for name in names:
        text = Path(f"/proc/{pid}/{name}").read_text()
        (dest / "proc" / str(pid) / name).write_text(text)


def main() -> int:
    dest = HERE / "fixtures" / "host-6.18"
    shutil.rmtree(dest, ignore_errors=True)
    ksm = dest / "sys" / "kernel" / "mm" / "ksm"
    ksm.mkdir(parents=True)
    with ksm_host(MERGE_KNOBS) as sysfs, worker() as (proc, addr):
        sysfs.write("run", 1)
        wait_merged(proc.pid, merging=64, zero=32)
        for f in sorted(Path("/sys/kernel/mm/ksm").iterdir()):
            (ksm / f.name).write_text(f.read_text())
        copy_proc(dest, proc.pid, ("ksm_stat", "ksm_merging_pages", "comm", "smaps"))
        copy_proc(dest, 1, ("ksm_stat", "ksm_merging_pages", "comm"))
        copy_proc(dest, 2, ("ksm_stat", "ksm_merging_pages", "comm"))
        page = os.sysconf("SC_PAGE_SIZE")
        with open(f"/proc/{proc.pid}/pagemap", "rb") as f:
            f.seek(addr // page * 8)
            entries = list(struct.unpack(f"<{PAGES}Q", f.read(8 * PAGES)))
        flags = {}
        with open("/proc/kpageflags", "rb") as f:
            for e in entries:
                if e >> 63:
                    pfn = e & ((1 << 55) - 1)
                    f.seek(pfn * 8)
                    flags[str(pfn)] = struct.unpack("<Q", f.read(8))[0]
        doc = {
            "pid": proc.pid,
            "address": addr,
            "pagemap": entries,
            "kpageflags": flags,
            "kernel": Path("/proc/sys/kernel/osrelease").read_text().strip(),
        }
        (dest / "pages.json").write_text(json.dumps(doc, indent=1) + "\n")
    print(f"recorded {dest} (worker pid {doc['pid']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
