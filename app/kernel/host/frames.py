"""Which page frames are KSM pages: the ``KPF_KSM`` bit, or the dirty rule and its solver.

``/proc/kpageflags``'s ``KPF_KSM`` is set on every anonymous page by 6.10-era kernels such
as 6.12 (``ksm-model.md`` §11). There, a page is taken as a KSM candidate when it is
anonymous and ``PG_dirty`` (every KSM page is marked dirty when it is created:
:func:`dirty_candidate`), which also catches an ordinary page left behind copy-on-write by a
merge; smaps' ``KSM:`` line counts each VMA's KSM pages, so :func:`solve_dirty_rule` keeps
the choices of candidates that meet every count (:func:`solve_ksm_frames`). The kernel
replayer and the live page map both classify with it. Standard library only.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from typing import Any, TypeVar

from .procfs import KPF_ANON, KPF_DIRTY, KPF_KSM, KPF_ZERO_PAGE, PM_PFN_MASK, PM_PRESENT

K = TypeVar("K", bound=Hashable)


def is_zero_page(flags: int) -> bool:
    return bool(flags >> KPF_ZERO_PAGE & 1)


def has_ksm_bit(flags: int) -> bool:
    return bool(flags >> KPF_KSM & 1)


def dirty_anon(flags: int) -> bool:
    """The dirty rule: an anonymous ``PG_dirty`` page (KSM pages are made dirty)."""
    return bool(flags >> KPF_ANON & 1 and flags >> KPF_DIRTY & 1)


def dirty_candidate(flags: int, exclusive: int = 0) -> bool:
    """A frame the dirty rule takes as possibly KSM: anonymous, ``PG_dirty``, not the zero
    page, and none of the ``exclusive`` bits (``1 << KPF_ANON_EXCLUSIVE`` where kpageflags
    shows it: a KSM page is never PageAnonExclusive)."""
    return dirty_anon(flags) and not is_zero_page(flags) and not flags & exclusive


def dirty_frames(
    pages: Iterable[tuple[K, int, int]], exclusive: int = 0
) -> dict[int, dict[K, int]]:
    """For each candidate frame (in order of first sight) how many PTEs map it per mapping;
    ``pages`` gives each page's mapping key, pagemap entry and its frame's kpageflags
    (pages not present are skipped)."""
    frames: dict[int, dict[K, int]] = {}
    for key, entry, flags in pages:
        if not entry & PM_PRESENT:
            continue
        pfn = entry & PM_PFN_MASK
        if dirty_candidate(flags, exclusive):
            sig = frames.setdefault(pfn, {})
            sig[key] = sig.get(key, 0) + 1
    return frames


def solve_dirty_rule(
    pages: Iterable[tuple[K, int, int]],
    bounds: dict[K, tuple[int, int]],
    exclusive: int = 0,
) -> tuple[set[int], set[int], int] | None:
    """The dirty rule narrowed by each mapping's KSM count (``bounds[key]``: lowest and
    highest number of KSM PTEs): ``(ksm, ambiguous, candidates)`` frames (see
    :func:`solve_ksm_frames`), None when no choice meets the bounds."""
    frames = dirty_frames(pages, exclusive)
    solved = solve_ksm_frames(frames, dict(bounds))
    if solved is None:
        return None
    return solved[0], solved[1], len(frames)


def solve_ksm_frames(
    frames: dict[int, dict[Any, int]],
    bounds: dict[Any, tuple[int, int]],
) -> tuple[set[int], set[int]] | None:
    """Which candidate frames are KSM pages, when ``KPF_KSM`` cannot say (6.10-era kernels).

    ``frames`` maps each candidate (anonymous, PG_dirty, in insertion order) to how many
    PTEs map it in each mapping; ``bounds`` gives each mapping's number of KSM PTEs as
    ``(lowest, highest)`` (smaps ``KSM:``; exact when the whole VMA was read). Frames mapped
    alike are interchangeable: every choice of how many of each such group are KSM that
    meets every bound is enumerated. Returns ``(ksm, ambiguous)``: the KSM frames of the
    first choice (most mapped groups first, each as KSM as it can be: a KSM frame gathers
    mappings) and the frames whose status differs between choices or within their group,
    which no userspace interface tells apart. None when no choice meets the bounds.
    """
    groups: dict[tuple[tuple[Any, int], ...], list[int]] = {}
    for pfn, sig in frames.items():
        groups.setdefault(tuple(sorted(sig.items(), key=repr)), []).append(pfn)
    gl = sorted(groups.items(), key=lambda g: -sum(n for _, n in g[0]))
    solutions, complete = count_solutions(
        [dict(sig) for sig, _ in gl], [len(m) for _, m in gl], bounds
    )
    if not solutions:
        return None
    ksm: set[int] = set()
    ambiguous: set[int] = set()
    for i, (_, members) in enumerate(gl):
        ks = {sol[i] for sol in solutions}
        ksm.update(members[: solutions[0][i]])
        if not complete or len(ks) > 1 or 0 < solutions[0][i] < len(members):
            ambiguous.update(members)
    return ksm, ambiguous


def count_solutions(
    sigs: list[dict[Any, int]],
    sizes: list[int],
    bounds: dict[Any, tuple[int, int]],
    limit: int = 64,
    budget: int = 200_000,
) -> tuple[list[list[int]], bool]:
    """Every way (up to ``limit``) to choose how many frames of each group are KSM pages.

    Group ``i`` has ``sizes[i]`` interchangeable frames, each mapped ``sigs[i][m]`` times
    in mapping ``m``; a choice must give every mapping between ``bounds[m]`` KSM PTEs
    (both included). Groups are tried in the order given, each from "all" down to "none".
    The flag is False when the search stopped at ``limit`` solutions or ``budget`` calls.
    """
    out: list[list[int]] = []
    low = {m: lo for m, (lo, _) in bounds.items()}  # still needed
    high = {m: hi for m, (_, hi) in bounds.items()}  # still allowed
    # what the groups from i on can still add to each mapping, to prune early
    room: list[dict[Any, int]] = [{} for _ in range(len(sigs) + 1)]
    for i in range(len(sigs) - 1, -1, -1):
        room[i] = dict(room[i + 1])
        for m, n in sigs[i].items():
            room[i][m] = room[i].get(m, 0) + n * sizes[i]
    pick: list[int] = []
    steps = 0

    def go(i: int) -> None:
        nonlocal steps
        steps += 1
        if len(out) >= limit or steps > budget:
            return
        if any(v < 0 for v in high.values()) or any(v > room[i].get(m, 0) for m, v in low.items()):
            return
        if i == len(sigs):
            out.append(list(pick))
            return
        for k in range(sizes[i], -1, -1):
            for m, n in sigs[i].items():
                low[m] = low.get(m, 0) - k * n
                high[m] = high.get(m, 1 << 62) - k * n
            pick.append(k)
            go(i + 1)
            pick.pop()
            for m, n in sigs[i].items():
                low[m] += k * n
                high[m] += k * n

    go(0)
    return out, len(out) < limit and steps <= budget
