"""The preset library: scenario stories shipped beside this module, ``sim/presets/*.json``.

A preset is an ordinary ``ksm-scenario/1`` file with two extra top-level fields that
:func:`sim.parse_scenario` ignores: ``title`` (one short line) and ``checkpoint_notes``
(checkpoint name -> one line saying what to look at there). The dashboard lists presets
from here, ``ksmlab presets`` prints them and ``python -m sim run NAME`` runs one.

Standard library only, like the rest of ``sim``: the CLIs, the dashboard (``app.server``),
the what-if sweep (``app.whatif``) and the tests import it cheaply.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ScenarioError, UnsupportedError
from ..runner import check_supported
from ..scenario import KERNELS, Scenario, parse_scenario

PRESETS_DIR = Path(__file__).resolve().parent

#: the order of the stories (issue 6); presets not listed follow alphabetically
STORY_ORDER = (
    "zero-pages-unmerge",
    "zero-pages-ksm-chain",
    "vm-host",
    "forking-server",
    "volatile-buffers",
    "chains-and-dups",
    "smart-scan",
    "run2-unmerge-all",
    "prctl-merge-any",
)

_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")


class UnknownPresetError(ScenarioError):
    """No preset has this name."""


@dataclass(frozen=True)
class PresetInfo:
    """What a list of presets shows about one of them."""

    name: str
    title: str
    description: str
    #: checkpoint names, in step order
    checkpoints: tuple[str, ...]
    #: kernel profiles that can run it ("6.1" has no prctl)
    kernels: tuple[str, ...]
    checkpoint_notes: dict[str, str] = field(default_factory=dict, compare=False)
    path: Path = field(default=PRESETS_DIR, compare=False)

    @property
    def summary(self) -> str:
        """The first sentence of the description (one line for listings)."""
        text = " ".join(self.description.split())
        end = text.find(". ")
        return text if end < 0 else text[: end + 1]

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "title": self.title,
            "description": self.description,
            "checkpoints": list(self.checkpoints),
            "checkpoint_notes": dict(self.checkpoint_notes),
            "kernels": list(self.kernels),
        }


def preset_path(name: str, directory: Path = PRESETS_DIR) -> Path:
    """The file of a preset; :class:`UnknownPresetError` if there is none."""
    path = directory / f"{name}.json"
    if not _NAME.match(name) or not path.is_file():
        raise UnknownPresetError(f"no preset named {name!r}", field="preset")
    return path


def preset_names(directory: Path = PRESETS_DIR) -> list[str]:
    """Every preset name, in story order."""
    names = {p.stem for p in directory.glob("*.json") if _NAME.match(p.stem)}
    ordered = [n for n in STORY_ORDER if n in names]
    return ordered + sorted(names - set(ordered))


def preset_document(name: str, directory: Path = PRESETS_DIR) -> dict[str, Any]:
    """The preset's JSON document, as stored."""
    path = preset_path(name, directory)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ScenarioError(f"preset {name!r} is unreadable: {exc}") from None
    if not isinstance(doc, dict):
        raise ScenarioError(f"preset {name!r} is not a JSON object")
    return doc


def load_preset(name: str, kernel: str | None = None, directory: Path = PRESETS_DIR) -> Scenario:
    """A preset as a :class:`sim.Scenario`, optionally for another kernel profile."""
    scenario = parse_scenario(preset_document(name, directory))
    return scenario.with_kernel(kernel) if kernel else scenario


def supported_kernels(scenario: Scenario) -> tuple[str, ...]:
    """The kernel profiles that can run a scenario (prctl needs 6.4+)."""
    ok = []
    for kernel in KERNELS:
        try:
            check_supported(scenario, kernel)
        except UnsupportedError:
            continue
        ok.append(kernel)
    return tuple(ok)


def preset_info(name: str, directory: Path = PRESETS_DIR) -> PresetInfo:
    doc = preset_document(name, directory)
    scenario = parse_scenario(doc)
    notes = doc.get("checkpoint_notes", {})
    title = doc.get("title", name)
    return PresetInfo(
        name=name,
        title=title if isinstance(title, str) else name,
        description=scenario.description,
        checkpoints=tuple(s.name or "" for s in scenario.steps if s.op == "checkpoint"),
        kernels=supported_kernels(scenario),
        checkpoint_notes={str(k): str(v) for k, v in notes.items()}
        if isinstance(notes, dict)
        else {},
        path=preset_path(name, directory),
    )


def list_presets(directory: Path = PRESETS_DIR) -> list[PresetInfo]:
    """Every preset, in story order."""
    return [preset_info(name, directory) for name in preset_names(directory)]
