"""Traces (``ksm-trace/1``): building, and comparing two of them.

Two traces *agree* when they have the same checkpoints (by position and name) and every
checkpoint has the same ``global``, ``procs`` and ``pages`` values. ``K<n>`` tokens may be
numbered differently as long as the renumbering is consistent within a checkpoint (a
bijection between the two numberings). ``meta``, ``source`` and ``scenario`` are ignored.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from .errors import ScenarioError
from .ksm_files import GLOBAL_COUNTERS, KSM_STAT

FORMAT = "ksm-trace/1"
GLOBAL_FIELDS = GLOBAL_COUNTERS
PROC_FIELDS = KSM_STAT


def load_trace(path: str | Path) -> dict[str, Any]:
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ScenarioError(f"cannot read {path}: {exc.strerror}") from None
    except json.JSONDecodeError as exc:
        raise ScenarioError(f"{path}: invalid JSON at line {exc.lineno}: {exc.msg}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("checkpoints"), list):
        raise ScenarioError(f"{path}: not a {FORMAT} document (no checkpoints list)")
    return doc


def _compare_dict(where: str, a: Any, b: Any, out: list[str]) -> None:
    if not isinstance(a, dict) or not isinstance(b, dict):
        if a != b:
            out.append(f"{where}: {a!r} != {b!r}")
        return
    for key in list(a) + [k for k in b if k not in a]:
        if key not in a:
            out.append(f"{where}.{key}: missing in first")
        elif key not in b:
            out.append(f"{where}.{key}: missing in second")
        elif a[key] != b[key]:
            out.append(f"{where}.{key}: {a[key]!r} != {b[key]!r}")


def _compare_pages(where: str, a: Any, b: Any, out: list[str]) -> None:
    if not isinstance(a, dict) or not isinstance(b, dict):
        if a != b:
            out.append(f"{where}: {a!r} != {b!r}")
        return
    fwd: dict[str, str] = {}
    back: dict[str, str] = {}
    for proc in list(a) + [p for p in b if p not in a]:
        if proc not in a or proc not in b:
            out.append(f"{where}.{proc}: missing in {'first' if proc not in a else 'second'}")
            continue
        ma, mb = a[proc], b[proc]
        for vma in list(ma) + [v for v in mb if v not in ma]:
            if vma not in ma or vma not in mb:
                side = "first" if vma not in ma else "second"
                out.append(f"{where}.{proc}.{vma}: missing in {side}")
                continue
            ta, tb = ma[vma].split(), mb[vma].split()
            if len(ta) != len(tb):
                out.append(f"{where}.{proc}.{vma}: {len(ta)} pages != {len(tb)} pages")
                continue
            bad = []
            for i, (x, y) in enumerate(zip(ta, tb, strict=True)):
                if x.startswith("K") and y.startswith("K"):
                    if fwd.setdefault(x, y) == y and back.setdefault(y, x) == x:
                        continue
                elif x == y:
                    continue
                bad.append(f"[{i}] {x} != {y}")
            if bad:
                more = f" (+{len(bad) - 8} more)" if len(bad) > 8 else ""
                out.append(f"{where}.{proc}.{vma}: " + ", ".join(bad[:8]) + more)


def compare_traces(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """Differences between two traces, one line each; empty when they agree."""
    out: list[str] = []
    ca, cb = a.get("checkpoints", []), b.get("checkpoints", [])
    if len(ca) != len(cb):
        out.append(f"checkpoints: {len(ca)} != {len(cb)}")
    for i, (x, y) in enumerate(zip(ca, cb, strict=False)):
        name = x.get("name")
        where = f"checkpoint {i} {name!r}"
        if name != y.get("name"):
            out.append(f"checkpoint {i}: name {name!r} != {y.get('name')!r}")
        _compare_dict(f"{where} global", x.get("global"), y.get("global"), out)
        procs_a, procs_b = x.get("procs") or {}, y.get("procs") or {}
        for proc in list(procs_a) + [p for p in procs_b if p not in procs_a]:
            if proc not in procs_a or proc not in procs_b:
                side = "first" if proc not in procs_a else "second"
                out.append(f"{where} procs.{proc}: missing in {side}")
                continue
            _compare_dict(f"{where} procs.{proc}", procs_a[proc], procs_b[proc], out)
        _compare_pages(f"{where} pages", x.get("pages"), y.get("pages"), out)
    return out


def tied_pages(trace: dict[str, Any]) -> list[dict[str, Any]]:
    """The pages a kernel trace could not classify (``meta.page_classification
    .ambiguous_pages``, written by the replayer where ``KPF_KSM`` is unreliable, 6.12)."""
    meta = trace.get("meta") or {}
    ties = (meta.get("page_classification") or {}).get("ambiguous_pages") or []
    return [t for t in ties if isinstance(t, dict)]


def without_ties(a: dict[str, Any], b: dict[str, Any]) -> list[str] | None:
    """The differences left when the pages either trace could not classify are set aside.

    Where ``/proc/kpageflags`` cannot tell KSM pages, the replayer lists the pages whose
    frames userspace cannot tell apart (a KSM frame and left-over copy-on-write frames
    mapped alike; ``docs/replayer.md``). Those pages are compared by their number of KSM
    pages only; everything else exactly. None: neither trace lists such pages.
    """
    ties = tied_pages(a) + tied_pages(b)
    if not ties:
        return None
    a, b = copy.deepcopy(a), copy.deepcopy(b)
    out: list[str] = []
    for tie in ties:
        try:
            i, proc, vma = int(tie["checkpoint"]), str(tie["proc"]), str(tie["vma"])
            ta = a["checkpoints"][i]["pages"][proc][vma].split()
            tb = b["checkpoints"][i]["pages"][proc][vma].split()
            pages = sorted({int(x) for x in tie["pages"]})
        except (KeyError, IndexError, TypeError, ValueError, AttributeError):
            continue  # the plain comparison reports what is missing
        if len(ta) != len(tb):
            continue
        pages = [x for x in pages if 0 <= x < len(ta)]
        na = sum(ta[x].startswith("K") for x in pages)
        nb = sum(tb[x].startswith("K") for x in pages)
        if na != nb:
            out.append(
                f"checkpoint {i} pages.{proc}.{vma}: {na} KSM page(s) among the tied pages != {nb}"
            )
        for x in pages:
            ta[x] = tb[x] = "?"
        a["checkpoints"][i]["pages"][proc][vma] = " ".join(ta)
        b["checkpoints"][i]["pages"][proc][vma] = " ".join(tb)
    return out + compare_traces(a, b)
