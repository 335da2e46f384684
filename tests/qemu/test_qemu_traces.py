"""Public scenarios replayed on Debian's 6.1 and 6.12 kernels reproduce the shared traces.

One guest boot per kernel replays every scenario of ``shared/scenarios`` (module-scoped
fixture), then each scenario is one test.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from app.kernel import qemu
from sim.trace import compare_traces

pytestmark = pytest.mark.qemu_guest
VERSIONS = ("6.1", "6.12")
_SHARED = Path(__file__).resolve().parents[3] / "shared"


def _scenarios(shared: Path) -> list[Path]:
    return sorted((shared / "scenarios").glob("*.json"))


@pytest.fixture(scope="module")
def replays(shared_dir: Path) -> dict[str, dict[str, qemu.GuestResult]]:
    """{version: {scenario file name: result}}, one boot per kernel."""
    paths = _scenarios(shared_dir)
    assert paths, f"no scenarios in {shared_dir / 'scenarios'}"
    out = {}
    for version in VERSIONS:
        results = qemu.replay_many_in_guest(paths, version)
        out[version] = {p.name: r for p, r in zip(paths, results, strict=True)}
    return out


def _public_names() -> list[str]:
    import os

    env = os.environ.get("KSMLAB_SHARED")
    shared = Path(env) if env else _SHARED
    return [p.name for p in _scenarios(shared)] or ["(no scenarios found)"]


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("name", _public_names())
def test_public_scenario_reproduces_the_recorded_trace(
    replays: dict[str, dict[str, qemu.GuestResult]], shared_dir: Path, version: str, name: str
) -> None:
    expected_path = shared_dir / f"traces-{version}" / name
    result = replays[version][name]
    if not expected_path.exists():  # the kernel cannot run it (prctl on 6.1): no trace
        assert result.status == 4, result.stderr
        return
    assert result.status == 0, result.stderr
    assert result.trace is not None
    assert result.trace["meta"]["guest"]["kernel_profile"] == version
    expected = json.loads(expected_path.read_text())
    assert compare_traces(expected, result.trace) == []


def _zero_page_tokens(trace: dict[str, object], checkpoint: str) -> set[str]:
    cps = {c["name"]: c for c in trace["checkpoints"]}  # type: ignore[attr-defined]
    return set(cps[checkpoint]["pages"]["A"]["heap"].split()[:100])


def test_on_6_1_unmergeable_leaves_ksm_placed_zero_pages_mapped(
    replays: dict[str, dict[str, qemu.GuestResult]],
) -> None:
    """The seed bug on the real 6.1 kernel: the 100 zero-filled pages that KSM mapped to the
    shared zero page (use_zero_pages=1) still map it after MADV_UNMERGEABLE and after one
    more pass; 6.12 (after the series) unshares them."""
    old = replays["6.1"]["zero-pages-unmerge.json"].trace
    new = replays["6.12"]["zero-pages-unmerge.json"].trace
    assert old is not None and new is not None
    assert _zero_page_tokens(old, "pass2-merged") == {"Z"}
    assert _zero_page_tokens(old, "unmergeable") == {"Z"}
    assert _zero_page_tokens(old, "unmergeable+1pass") == {"Z"}
    assert _zero_page_tokens(new, "pass2-merged") == {"Z"}
    assert _zero_page_tokens(new, "unmergeable") == {"A"}
