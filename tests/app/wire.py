"""A small Python client of docs/protocol.md: decode snapshots, apply deltas."""

from __future__ import annotations

import base64
import struct
from typing import Any

META = ("ts", "summary", "events", "event_counts", "session", "head", "branch", "type")


def _b64(s: str) -> bytes:
    return base64.b64decode(s)


def _i32(s: str) -> list[int]:
    raw = _b64(s)
    return list(struct.unpack(f"<{len(raw) // 4}i", raw))


def _uvarint(buf: bytes, i: int) -> tuple[int, int]:
    shift = n = 0
    while True:
        b = buf[i]
        i += 1
        n |= (b & 0x7F) << shift
        if b < 0x80:
            return n, i
        shift += 7


def _unzigzag(n: int) -> int:
    return (n >> 1) ^ -(n & 1)


def decode(snap: dict[str, Any]) -> dict[str, Any]:
    """A snapshot as plain Python lists and dicts (the state a client keeps)."""
    assert snap["type"] == "snapshot"
    vmas = {}
    procs = {}
    for p in snap["procs"]:
        procs[p["name"]] = {k: p[k] for k in ("pid", "registered", "merge_any", "ksm_stat")}
        for v in p["vmas"]:
            vmas[v["uid"]] = {
                "proc": p["name"],
                "name": v["name"],
                "npages": v["npages"],
                "mergeable": [list(r) for r in v["mergeable"]],
                "pfn": _i32(v["pfn"]),
                "pte": list(_b64(v["pte"])),
                "kind": list(_b64(v["kind"])),
                "item": list(_b64(v["item"])),
            }
    frames = snap["frames"]
    return {
        "step": snap["step"],
        "kernel": snap["kernel"],
        "knobs": dict(snap["knobs"]),
        "global": dict(snap["global"]),
        "procs": procs,
        "vmas": vmas,
        "frames": {"kind": list(_b64(frames["kind"])), "mapcount": _i32(frames["mapcount"])},
        "stable_nodes": {row[0]: list(row) for row in snap["stable_nodes"]},
        "ksmd": snap["ksmd"],
        "unstable_tree": snap["unstable_tree"],
    }


def page_records(d: str) -> list[tuple[int, int, int, int]]:
    """(index, pfn, flags byte, kind) per record."""
    buf = _b64(d)
    out = []
    i, idx, pfn = 0, -1, 0
    while i < len(buf):
        gap, i = _uvarint(buf, i)
        dz, i = _uvarint(buf, i)
        idx += gap + 1
        pfn += _unzigzag(dz)
        out.append((idx, pfn, buf[i], buf[i + 1]))
        i += 2
    return out


def frame_records(d: str) -> list[tuple[int, int, int]]:
    buf = _b64(d)
    out = []
    i, pfn = 0, -1
    while i < len(buf):
        gap, i = _uvarint(buf, i)
        pfn += gap + 1
        kind = buf[i]
        mapcount, i = _uvarint(buf, i + 1)
        out.append((pfn, kind, mapcount))
    return out


def apply(state: dict[str, Any], delta: dict[str, Any]) -> dict[str, Any]:
    """The state after a delta (a new dict; ``state`` is not changed)."""
    import copy

    assert delta["type"] == "delta"
    s = copy.deepcopy(state)
    s["step"] = delta["step"]
    s["global"].update(delta["global"])
    for proc, stat in delta["ksm_stat"].items():
        s["procs"][proc]["ksm_stat"].update(stat)
    for rec in delta["pages"]:
        v = s["vmas"][rec["uid"]]
        recs = page_records(rec["d"])
        assert len(recs) == rec["n"]
        for idx, pfn, flags, kind in recs:
            v["pfn"][idx] = pfn
            v["pte"][idx] = flags & 0x0F
            v["item"][idx] = flags >> 4
            v["kind"][idx] = kind
    for uid, runs in delta["mergeable"].items():
        s["vmas"][int(uid)]["mergeable"] = [list(r) for r in runs]
    fr = s["frames"]
    grow = delta["frames"]["count"] - len(fr["kind"])
    fr["kind"].extend([0] * grow)
    fr["mapcount"].extend([0] * grow)
    for pfn, kind, mapcount in frame_records(delta["frames"]["d"]):
        fr["kind"][pfn] = kind
        fr["mapcount"][pfn] = mapcount
    for row in delta["stable_nodes"]["upsert"]:
        s["stable_nodes"][row[0]] = list(row)
    for nid in delta["stable_nodes"]["removed"]:
        del s["stable_nodes"][nid]
    if delta["ksmd"] is not None:
        s["ksmd"] = delta["ksmd"]
    s["unstable_tree"] = delta["unstable_tree"]
    s["knobs"].update(delta["knobs"])
    return s


def count(state: dict[str, Any], pred: Any) -> int:
    """Pages for which pred(pfn, pte, kind) holds, over every mapping."""
    n = 0
    for v in state["vmas"].values():
        for pfn, pte, kind in zip(v["pfn"], v["pte"], v["kind"], strict=True):
            n += bool(pred(pfn, pte, kind))
    return n
