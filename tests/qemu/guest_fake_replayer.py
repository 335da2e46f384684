"""A stand-in replayer for the pipeline tests; runs inside the guest (stdlib only).

``main(argv)`` like the real one (``SCENARIO --trace OUT``). The scenario's name picks the
behaviour: ``ok`` writes a small trace with the guest's KSM knobs, ``unsupported`` exits 4,
``hang`` never ends, ``panic`` crashes the guest kernel, ``raise`` raises.
"""

import json
import os
import sys
import time
from pathlib import Path


def main(argv: list[str]) -> int:
    doc = json.loads(Path(argv[0]).read_text())
    out = Path(argv[argv.index("--trace") + 1])
    name = doc["name"]
    if name == "ok":
        knobs = {p.name: p.read_text().strip() for p in Path("/sys/kernel/mm/ksm").iterdir()}
        trace = {
            "format": "ksm-trace/1",
            "scenario": name,
            "source": f"kernel {os.uname().release}",
            "checkpoints": [],
            "meta": {"ksm": knobs, "euid": os.geteuid(), "pid": os.getpid()},
        }
        out.write_text(json.dumps(trace))
        return 0
    if name == "unsupported":
        sys.stderr.write("ksmlab replay: unsupported on this kernel: prctl\n")
        return 4
    if name == "hang":
        time.sleep(3600)
    if name == "panic":
        Path("/proc/sys/kernel/sysrq").write_text("1\n")
        Path("/proc/sysrq-trigger").write_text("c\n")
        time.sleep(3600)
    if name == "raise":
        raise RuntimeError("boom")
    return 3


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
