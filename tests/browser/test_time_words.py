"""Issue 14's time and money, plain words and upload warnings, without a browser.

- the timeline's time account (``story``: time_ns, cpu_ns, batches, saved_bytes) equals what
  the what-if sweep computes (:func:`app.whatif.sweep.run_point`) for the same preset, kernel
  and knobs at the end of the story, and is restored exactly after back, seek and forks;
- each step's plain-words sentence and kernel call chain (``what.words``, ``what.chain``)
  come from sim/snapshot.py's table, by profile (6.1/6.5 vs the zero-page series);
- the upload form warns about an unknown knob name without JavaScript.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.server.timeline import Timeline
from app.whatif.sweep import SweepPoint, run_point
from sim import Kernel
from sim.presets import load_preset
from sim.stepper import Inject, Next, Stepper, validate_op

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def client() -> Iterator[TestClient]:
    from app.config import Settings
    from app.server.app import create_app

    with TestClient(create_app(Settings())) as c:
        yield c


def timeline(preset: str, kernel: str, knobs: dict[str, int] | None = None) -> Timeline:
    sc = load_preset(preset).with_kernel(kernel)
    sysfs = {**sc.sysfs, **(knobs or {})}
    return Timeline(sc, Stepper(Kernel(sc.kernel, sysfs, record=True), sc.steps), interval=8)


def to_story_end(t: Timeline, until: str | None) -> None:
    """Forward to where the sweep stops: the end of the scenario, or its ``sweep_until``."""
    while t.stepper.in_scenario:
        res = t.forward("batch")
        if res is not None and until is not None and res.checkpoint == until:
            return


def account(t: Timeline) -> tuple[int, int, int, int]:
    s = t.story()
    return s["time_ns"], s["cpu_ns"], s["batches"], s["saved_bytes"]


@pytest.mark.parametrize(
    ("preset", "kernel", "knobs"),
    [
        ("zero-pages-unmerge", "6.18", {}),
        ("zero-pages-unmerge", "6.1", {}),
        ("vm-host", "6.5", {"pages_to_scan": 64, "sleep_millisecs": 50}),
        ("smart-scan", "6.18", {}),
        ("forking-server", "6.12", {"max_page_sharing": 4}),
        ("chains-and-dups", "6.18", {}),
        ("run2-unmerge-all", "6.1", {}),
    ],
)
def test_the_time_account_equals_the_sweeps(
    preset: str, kernel: str, knobs: dict[str, int]
) -> None:
    t = timeline(preset, kernel, knobs)
    to_story_end(t, t.scenario.raw.get("sweep_until"))
    r = run_point(SweepPoint(preset, kernel, tuple(knobs.items())), max_passes=0)
    assert r.error == ""
    assert account(t) == (r.total_ns, r.cpu_ns, r.batches, r.general_profit)
    assert r.batches > 0 and r.cpu_ns > 0


def test_the_time_account_is_restored_by_back_seek_and_forks() -> None:
    t = timeline("zero-pages-unmerge", "6.18")
    seen = {0: account(t)}
    while (res := t.forward("batch")) is not None:
        seen[res.step] = account(t)
    head = t.step
    for step in (3, head, 11, 0, 17, head - 1):
        t.seek(step)
        assert account(t) == seen[step], step
    # a fork at step 12: the account up to there is the old branch's, then it goes its own way
    t.seek(12)
    t.act(
        Inject(
            validate_op(
                t.kernel, {"op": "write", "proc": "A", "vma": "heap", "pages": "0", "content": "x"}
            )
        )
    )
    assert t.branch.id == 1 and account(t)[:3] == seen[12][:3]
    t.forward("batch")
    t.seek(12, branch=0)
    assert account(t) == seen[12]
    # ops cost no time; a batch costs its CPU plus sleep_millisecs (pages_to_scan=100 here)
    t.seek(13, branch=0)
    assert account(t)[0] - seen[12][0] == account(t)[1] - seen[12][1] + 20_000_000


def to_first_scan(t: Timeline) -> None:
    while t.stepper.upcoming is None or t.stepper.upcoming.op != "scan":
        t.forward("batch")


def test_a_pass_and_a_page_are_charged_as_batches_are() -> None:
    by_batch, by_pass, by_page = (timeline("zero-pages-unmerge", "6.18") for _ in range(3))
    for t in (by_batch, by_pass, by_page):
        to_first_scan(t)
    start = account(by_page)
    by_batch.forward("batch")
    while not by_batch.forward("batch").outcome.what["pass_end"]:  # type: ignore[union-attr]
        pass
    by_pass.forward("batch")  # the scan's first batch, then the rest of the pass at once
    by_pass.forward("pass")
    assert account(by_pass) == account(by_batch)
    by_page.forward("page")  # one page: its CPU, no sleep
    now, cpu, batches, _ = account(by_page)
    assert now - start[0] == cpu - start[1] > 0 and batches == start[2]  # part of a batch


def test_steps_carry_time_and_the_times_export(client: TestClient) -> None:
    sid = client.post("/api/sessions", json={"preset": "vm-host", "kernel": "6.18"}).json()["id"]
    client.post(f"/api/sessions/{sid}/step", json={"n": 40})
    story = client.get(f"/api/sessions/{sid}/snapshot").json()["story"]
    times = client.get(f"/api/sessions/{sid}/times").json()
    assert times["step"] == 40 and len(times["time_ns"]) == 41
    assert times["time_ns"][-1] == story["time_ns"] and times["cpu_ns"][-1] == story["cpu_ns"]
    assert times["batches"][-1] == story["batches"]
    assert all(a <= b for a, b in zip(times["time_ns"], times["time_ns"][1:], strict=False))
    client.post(f"/api/sessions/{sid}/back", json={"n": 5})
    again = client.get(f"/api/sessions/{sid}/snapshot").json()["story"]
    assert again["time_ns"] == times["time_ns"][35] and again["cpu_ns"] == times["cpu_ns"][35]


def words_of(preset: str, kernel: str) -> list[tuple[str, str, dict[str, Any]]]:
    from sim.snapshot import describe

    sc = load_preset(preset).with_kernel(kernel)
    st = Stepper(Kernel(sc.kernel, sc.sysfs, record=True), sc.steps)
    st.kernel.take_changes()
    out = []
    while (o := st.feed(Next("batch"))) is not None:
        d = describe(st.kernel, st.kernel.take_changes(), o)
        out.append((d.what["words"], d.what["chain"], d.what))
    return out


def test_plain_words_and_call_chains_by_profile() -> None:
    new = words_of("zero-pages-unmerge", "6.18")
    zero = next(w for w in new if "into the zero page" in w[0])
    assert zero[0] == (
        "ksmd merged A heap[0-99] into the zero page: their PTEs are now dirty-marked "
        "(ksm_zero_pages +100)"
    )
    assert zero[1] == (
        "ksmd → ksm_do_scan → cmp_and_merge_page → try_to_merge_with_zero_page → "
        "try_to_merge_one_page → write_protect_page → replace_page (pte_mkdirty)"
    )
    unmerge = next(w for w in new if w[2].get("advice") == "MADV_UNMERGEABLE")
    assert unmerge[0].startswith("MADV_UNMERGEABLE: A heap[0-99] left the zero page")
    assert unmerge[1].startswith("madvise → ksm_madvise → unmerge_ksm_pages → break_ksm")
    merged = next(w for w in new if w[0].startswith("ksmd merged A heap[100-199]"))
    assert "try_to_merge_two_pages" in merged[1] and "stable_tree_insert" in merged[1]
    old = words_of("zero-pages-unmerge", "6.5")
    zero65 = next(w for w in old if "into the zero page" in w[0])
    assert "stay clean" in zero65[0] and "try_to_merge_with_zero_page" not in zero65[1]
    assert zero65[1].endswith(
        "cmp_and_merge_page → try_to_merge_one_page → write_protect_page → replace_page"
    )
    run2 = next(w for w in words_of("run2-unmerge-all", "6.18") if "run=2" in w[0])
    assert run2[0].startswith("run=2: ksmd unmerged every KSM page")
    assert run2[1].startswith("echo 2 > run → run_store → unmerge_and_remove_all_rmap_items → ")
    assert "break_ksm" in run2[1]
    # never a sentence parsed: every step has words; ksmd steps have a chain
    for words, chain, what in new:
        assert words
        if what["kind"] == "ksmd":
            assert chain.startswith("ksmd → ksm_do_scan")


def test_first_visits_are_not_called_changed() -> None:
    """A page's first visit stores its first checksum through the checksum gate (logged
    volatile): its words say ksmd met it, not that it changed; a page rewritten between two
    looks is the one that "changed since its last look"."""
    first = words_of("zero-pages-unmerge", "6.18")
    assert not [w for w, _, _ in first if "changed since" in w]
    met = [w for w, _, _ in first if "for the first time" in w]
    assert met[:3] == [
        f"ksmd met A heap[{lo}-{lo + 99}] for the first time: a new rmap_item and a checksum each"
        for lo in (0, 100, 200)
    ]
    volatile = [w for w, _, _ in words_of("volatile-buffers", "6.18") if "changed since" in w]
    assert volatile and volatile[0].startswith("ksmd found app buf[0-99] changed since")


def test_sharers_grouped_as_ranges() -> None:
    from sim.snapshot import page_detail, page_ranges

    t = timeline("forking-server", "6.18")
    while t.stepper.in_scenario:
        t.forward("batch")
    k = t.kernel
    d = next(
        page_detail(k, p, v.name, i)
        for p, mm in k.procs.items()
        for v in mm.vmas.values()
        for i in range(v.npages)
        if v.pfn[i] > 0 and k.f_node[v.pfn[i]] >= 0
    )
    node = d["stable_node"]
    assert node["sharer_ranges"]
    assert sum(
        (int(r.split("[")[1].rstrip("]").split("-")[-1]) - int(r.split("[")[1].split("-")[0]) + 1)
        for r in node["sharer_ranges"]
    ) == len(node["sharers"])
    from sim.changes import page_key

    v = k.vma(d["proc"], d["vma"])
    keys = [page_key(v.uid, i) for i in (5, 6, 7, 9)]
    assert page_ranges(k, keys, None)[0] == [
        f"{d['proc']} {d['vma']}[5-7]",
        f"{d['proc']} {d['vma']}[9]",
    ]


def test_upload_warns_about_an_unknown_knob_without_javascript(client: TestClient) -> None:
    doc = json.loads((REPO / "sim" / "presets" / "zero-pages-unmerge.json").read_text())
    doc["sysfs"] = {"use_zero_page": 1}
    body = json.dumps(doc).encode()
    r = client.post(
        "/session",
        data={"kernel": "6.18"},
        files={"scenario": ("typo.json", body, "application/json")},
        follow_redirects=False,
    )
    assert r.status_code == 200 and 'class="warning upload-warnings"' in r.text
    assert "sysfs.use_zero_page" in r.text and "did you mean use_zero_pages?" in r.text
    assert '<textarea name="scenario_text" hidden>' in r.text
    # "open it anyway": the form carries the file's text (a new page cannot keep the file)
    r2 = client.post(
        "/session",
        data={"kernel": "6.18", "anyway": "1", "scenario_text": body.decode()},
        files={"scenario": ("", b"", "application/octet-stream")},
        follow_redirects=False,
    )
    assert r2.status_code == 303 and r2.headers["location"].startswith("/session?sid=")
    # a fixed file chosen on the warning page wins over the carried text
    doc["sysfs"] = {"use_zero_pages": 1}
    r3 = client.post(
        "/session",
        data={"kernel": "6.18", "scenario_text": body.decode()},
        files={"scenario": ("fixed.json", json.dumps(doc).encode(), "application/json")},
        follow_redirects=False,
    )
    assert r3.status_code == 303
