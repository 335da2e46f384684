"""Views for front ends, change records and timelines."""

from __future__ import annotations

from sim import Kernel
from sim.snapshot import (
    KIND_KSM,
    KIND_KSM_ZERO,
    KIND_SKIPPED,
    KIND_UNSTABLE,
    KIND_VOLATILE,
    KIND_ZERO,
    describe_events,
    page_detail,
    page_kinds,
    structure,
)


def merged(kernel: str = "6.18", record: bool = False) -> Kernel:
    k = Kernel(kernel, {"use_zero_pages": 1}, record=record)
    k.spawn("A")
    k.mmap("A", "heap", 12)
    k.write("A", "heap", ((0, 4),), "zero")
    k.write("A", "heap", ((4, 8),), "X")
    k.write("A", "heap", ((8, 12),), "unique")
    k.madvise("A", "heap", None, "MADV_MERGEABLE")
    k.scan(2)
    return k


def test_page_kinds_show_dirty_marked_zero_pages_on_618_only() -> None:
    new, old = merged("6.18"), merged("6.5")
    assert (
        list(page_kinds(new, new.vma("A", "heap")))
        == [KIND_KSM_ZERO] * 4 + [KIND_KSM] * 4 + [KIND_UNSTABLE] * 4
    )
    assert list(page_kinds(old, old.vma("A", "heap")))[:4] == [KIND_ZERO] * 4


def test_page_detail_has_pte_bits_and_a_reason() -> None:
    k = merged()
    zero = page_detail(k, "A", "heap", 0)
    assert zero["pte"]["dirty"] and zero["pte"]["special"] and not zero["pte"]["writable"]
    assert "zero page" in zero["why"]
    ksm = page_detail(k, "A", "heap", 5)
    assert ksm["stable_node"]["rmap_hlist_len"] == 4
    assert {s["page"] for s in ksm["stable_node"]["sharers"]} == {4, 5, 6, 7}
    assert page_detail(k, "A", "heap", 9)["why"].startswith("In the unstable tree")
    old = merged("6.5")
    assert page_detail(old, "A", "heap", 0)["pte"]["dirty"] is False


def test_volatile_and_skipped_kinds() -> None:
    k = Kernel("6.18")
    k.spawn("A")
    k.mmap("A", "m", 2)
    k.write("A", "m", None, "unique")
    k.madvise("A", "m", None, "MADV_MERGEABLE")
    k.scan(1)
    assert list(page_kinds(k, k.vma("A", "m"))) == [KIND_VOLATILE] * 2
    assert "checksum gate" in page_detail(k, "A", "m", 0)["why"]
    k.write("A", "m", ((0, 1),), "unique")
    assert "Volatile" in page_detail(k, "A", "m", 0)["why"]
    k.scan(4)
    assert list(page_kinds(k, k.vma("A", "m"))) == [KIND_SKIPPED] * 2


def test_change_record_is_proportional_to_what_changed() -> None:
    k = merged(record=True)
    k.take_changes()
    k.mmap("A", "big", 50_000)
    k.write("A", "big", None, "unique")
    k.madvise("A", "big", None, "MADV_MERGEABLE")
    k.take_changes()
    k.write("A", "heap", ((0, 1),), "W")
    log = k.take_changes()
    assert log.pages == {k.key(k.vma("A", "heap"), 0)}
    assert [e["kind"] for e in describe_events(k, log)] == ["cow_zero"]


def test_zero_merge_event_names_the_kernel_path() -> None:
    k = Kernel("6.18", {"use_zero_pages": 1}, record=True)
    k.spawn("A")
    k.mmap("A", "heap", 1)
    k.write("A", "heap", None, "zero")
    k.madvise("A", "heap", None, "MADV_MERGEABLE")
    k.scan(1)
    k.take_changes()
    k.scan_page()
    events = describe_events(k, k.take_changes())
    zero = [e for e in events if e["kind"] == "zero_merge"]
    assert zero and "replace_page" in zero[0]["path"] and "dirty" in zero[0]["path"]
    assert (zero[0]["proc"], zero[0]["vma"], zero[0]["page"]) == ("A", "heap", 0)


def test_clone_is_independent_and_deterministic() -> None:
    k = merged()
    twin = k.clone()
    k.write("A", "heap", None, "Y")
    k.scan(2)
    assert twin.checkpoint("x") != k.checkpoint("x")
    again = twin.clone()
    twin.write("A", "heap", None, "Y")
    twin.scan(2)
    assert twin.checkpoint("x") == k.checkpoint("x")
    assert again.checkpoint("x") == merged().checkpoint("x")


def test_structure_shows_the_cursor_mid_pass() -> None:
    k = merged()
    k.sysfs_write("pages_to_scan", 3)
    k.scan_batch()
    s = structure(k)
    assert s["ksmd"]["cursor"]["proc"] == "A"
    assert s["ksmd"]["cursor"]["vma"] == "heap"
    assert s["procs"][0]["ksm_stat"]["ksm_zero_pages"] == 4


def test_split_key_takes_apart_what_page_key_builds() -> None:
    from sim.changes import page_key, split_key

    assert split_key(page_key(7, 12)) == (7, 12)
    assert split_key(page_key(1 << 20, (1 << 32) - 1)) == (1 << 20, (1 << 32) - 1)


def test_describe_names_the_lead_event_and_carries_the_step_as_data() -> None:
    from sim.snapshot import describe
    from sim.stepper import Outcome

    k = merged(record=True)
    k.take_changes()
    k.write("A", "heap", ((0, 1),), "Y")
    log = k.take_changes()
    what = {"kind": "op", "op": "write", "proc": "A", "vma": "heap", "pages": [[0, 1]]}
    d = describe(k, log, Outcome(text="write A heap[0] 'Y'", what=what))
    assert d.text.startswith("write A heap[0] 'Y': do_wp_page -> wp_page_copy ")
    assert "A heap[0]" in d.text.split(": ", 1)[1]
    assert d.counts == {"cow_zero": 1} and d.events == [("cow_zero", "A", "heap", 0)]
    assert d.what == {
        **what,
        "counts": {"cow_zero": 1},
        "words": "A heap[0] was written: copy-on-write replaced the KSM-placed zero page with a "
        "private page (ksm_zero_pages -1)",
        "chain": "page fault → handle_mm_fault → do_wp_page → wp_page_copy → "
        "ksm_might_unmap_zero_page",
    }
    ksmd = {"kind": "ksmd", "grain": "batch", "scanned": 3, "pass_end": False}
    quiet = describe(k, None, Outcome(text="ksmd scanned 3 pages", what=ksmd))
    assert quiet.text == "ksmd scanned 3 pages: ksm_do_scan -> cmp_and_merge_page: nothing changed"
    words = {"words": "ksmd looked at 3 pages: nothing changed"}
    chain = {"chain": "ksmd → ksm_do_scan → cmp_and_merge_page"}
    assert (quiet.events, quiet.counts) == ([], {})
    assert quiet.what == {**ksmd, "counts": {}, **words, **chain}


def test_kinds_table_follows_the_kind_numbers() -> None:
    from sim.snapshot import FRAME_KINDS, KIND_NAMES, PAGE_KINDS, kinds_table

    table = kinds_table()
    assert [row["name"] for row in table["pages"]] == list(KIND_NAMES)
    assert [row["id"] for row in table["pages"]] == list(range(len(PAGE_KINDS)))
    assert KIND_NAMES[KIND_KSM_ZERO] == "ksm_zero" and KIND_NAMES[KIND_ZERO] == "zero"
    assert [row["id"] for row in table["frames"]] == list(range(len(FRAME_KINDS)))
    assert all(row["label"] and row["meaning"] for row in table["pages"] + table["frames"])
