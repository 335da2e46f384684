"""Measure ksmd's CPU cost per page by kind and per pass on this machine's kernel (root).

    sudo uv run python bench/ksmd_costs.py [--pages 20000] [--rounds 3] [--json]

The measurement of ``ksmlab calibrate`` (:mod:`app.kernel.calibrate`, method in
``docs/cpu-model.md``), printed as figures rather than written as a calibration file: first
visit, later visit, merge, zero-page merge, KSM revisit, skipped page (ns per page), per
pass, and the wall time per batch beyond CPU and sleep. It holds the host lock for each
round only, restores every knob and leaves ksmd stopped. Prints the load it ran under.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from app.kernel.calibrate import calibrate
from app.kernel.guard import Refusal


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--pages", type=int, default=20_000, help="pages per area (20000)")
    ap.add_argument("--rounds", type=int, default=3, help="rounds; the median is kept (3)")
    ap.add_argument("--force", action="store_true", help="run even if others use KSM")
    ap.add_argument("--json", action="store_true", help="print the calibration document")
    args = ap.parse_args(argv)
    try:
        doc = calibrate(pages=args.pages, rounds=args.rounds, force=args.force)
    except Refusal as exc:
        sys.stderr.write(f"ksmd_costs: {exc}\n")
        return 2
    if args.json:
        sys.stdout.write(json.dumps(doc) + "\n")
        return 0
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    sys.stdout.write(
        f"kernel {doc['kernel']}, {args.pages} pages, median of {args.rounds} rounds, "
        f"load {load}:\n"
    )
    for name, value in doc["costs"].items():
        sys.stdout.write(f"  {name[:-3]:<6} {value / 1000:12.3f} us\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
