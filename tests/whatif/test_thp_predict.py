"""The prediction and the dashboard's capture session apply the captured THPs; the check
compares counters with counters and memory with memory (uncounted zero-page PTEs)."""

from __future__ import annotations

from array import array

import pytest

from app.config import Settings
from app.server.sources import capture_session
from app.whatif.check import RealRun, Sample, compare, sample_of
from app.whatif.predict import predict
from sim.capture import PRESENT, THP, Capture, CapturedMapping, CapturedProcess
from sim.mm import THP_ZERO
from sim.stepper import Next
from tests.app.conftest import TEST_SETTINGS

PAGES = 2048  # four 2 MiB blocks from an aligned start


def guest_capture(thp: bool) -> Capture:
    """A guest's RAM: per 512-page block, 64 pages of contents shared by all blocks, 64
    unique, 384 zero-filled; every page in a THP when ``thp``."""
    flags = array("B")
    cls = array("I")
    nxt = 65
    for i in range(PAGES):
        j = i % 512
        flags.append(PRESENT | (THP if thp else 0))
        if j < 64:
            cls.append(1 + j)
        elif j < 128:
            cls.append(nxt)
            nxt += 1
        else:
            cls.append(0)
    m = CapturedMapping(0x7F0000000000, PAGES, "", True)
    proc = CapturedProcess(100, "qemu-system-x86", "qemu", "", False, None, [m])
    return Capture([proc], flags, cls, classes=nxt)


KNOBS = {"pages_to_scan": 1000, "use_zero_pages": 1}


def test_prediction_reports_the_zero_pages_no_counter_shows() -> None:
    flat = predict(guest_capture(False), "6.18", KNOBS, duration_s=10)
    huge = predict(guest_capture(True), "6.18", KNOBS, duration_s=10)
    zero = 4 * 384
    assert flat.ksm_zero_pages == zero and flat.uncounted_zero_pages == 0
    assert flat.thp_pages == 0
    # the splits put the zero-filled pages out of the counters' sight ...
    assert huge.ksm_zero_pages == 0 and huge.uncounted_zero_pages == zero
    assert huge.thp_pages == PAGES and huge.thp_splits == 4
    # ... the merges of the shared contents are the same
    assert (huge.pages_shared, huge.pages_sharing) == (flat.pages_shared, flat.pages_sharing)
    assert huge.samples[-1].uncounted_zero_pages == zero
    assert huge.samples[0].uncounted_zero_pages == 0
    s = huge.summary()
    assert s["uncounted_zero_pages"] == zero and s["thp_splits"] == 4
    text = huge.summary_text()
    assert f"{zero} zero-filled pages then mapped to the zero page" in text
    assert any("taken as 4 huge pages" in n for n in huge.notes)
    assert not any("4 KiB pages" in n for n in huge.notes)
    # 6.5 splits without remapping: KSM merges the zero-filled pages itself
    old = predict(guest_capture(True), "6.5", KNOBS, duration_s=10)
    assert old.thp_splits == 4 and old.ksm_zero_pages == 0  # not counted before 6.6
    assert old.uncounted_zero_pages == zero  # KSM's zero pages, invisible on 6.5


def test_check_compares_memory_with_memory() -> None:
    pred = predict(guest_capture(True), "6.18", KNOBS, duration_s=5)
    predicted = [sample_of(r) for r in pred.samples]
    assert predicted[-1].uncounted_zero_pages == 4 * 384
    last = predicted[-1]
    real = RealRun(
        [
            Sample(0, 0, 0, 0, 0, 0, 0),
            Sample(5, last.pages_shared, last.pages_sharing, 0, 0, 3, 10**8),
        ],
        wall_s=5.0,
        zero_ptes_start=7,
        zero_ptes_end=7 + 1500,
    )
    r = compare(predicted, real, 5.0)
    assert r["errors"]["final"] == 0  # counters with counters
    assert r["zero_page_ptes"]["predicted_uncounted"] == 4 * 384
    assert r["zero_page_ptes"]["uncounted"] == 1500
    assert r["zero_page_ptes"]["error"] == pytest.approx(36 / 1500)
    mem = r["final_memory"]
    assert mem["predicted"] == last.pages_sharing + 4 * 384
    assert mem["kernel"] == last.pages_sharing + 1500


def test_dashboard_capture_session_applies_the_thps() -> None:
    settings = Settings(**{**TEST_SETTINGS, "max_pages": 5000})
    data = guest_capture(True).to_bytes()
    sc, st, origin = capture_session(settings, data, "6.18", "all", "guest")
    k = st.kernel
    assert k.thp_pages() == PAGES
    k.knobs["use_zero_pages"] = 1
    while st.in_scenario:
        st.feed(Next("batch"))
    for _ in range(30):
        st.feed(Next("batch"))
    vma = next(iter(k.mm("qemu-system-x86-100").vmas.values()))
    assert vma.thp is not None and vma.thp[200] == THP_ZERO and vma.pfn[200] == 0
    assert k.ksm_zero_pages == 0
