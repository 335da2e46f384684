"""The legend's flash swatches are the colours and words the grid flashes with
(``static/js/palette.js`` FLASH_COLOURS / FLASH_LABELS), one for one, in a real Chromium."""

from __future__ import annotations

from typing import Any

from tests.browser.conftest import api


def test_every_flash_of_the_grid_is_in_the_legend(page: Any, live_server: Any) -> None:
    sid = api(live_server, "/sessions", {"preset": "zero-pages-unmerge", "kernel": "6.18"})["id"]
    page.goto(f"{live_server.url}/session?sid={sid}")
    page.wait_for_selector(".flash-legend .fl-merge")
    got = page.evaluate(
        """async () => {
          const p = await import('/static/js/palette.js');
          const out = {};
          for (const [cls, rgb] of Object.entries(p.FLASH_COLOURS)) {
            const el = document.querySelector(`.flash-legend .fl-${cls}`);
            out[cls] = {
              want: [`rgb(${rgb.join(', ')})`, p.FLASH_LABELS[cls]],
              got: el ? [getComputedStyle(el).backgroundColor, el.textContent.trim()] : null,
            };
          }
          out.events = Object.values(p.FLASH_OF_EVENT).every((c) => c in p.FLASH_COLOURS);
          return out;
        }"""
    )
    assert got.pop("events") is True
    assert "thp_zero" in got  # a THP split's zero pages flash apart from KSM's merges
    for cls, v in got.items():
        assert v["got"] == v["want"], cls
