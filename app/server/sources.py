"""Where a session's scenario comes from: a preset, an uploaded JSON/YAML document, or a
capture of real memory (``ksm-capture/1``, :func:`capture_source`).

Also the size checks made before anything runs: steps in the scenario, and the most pages
mapped at any one time (forks count their copies), against the configured limits.
"""

from __future__ import annotations

import base64
import difflib
import json
import re
from typing import Any

import yaml
from starlette.concurrency import run_in_threadpool

from app.config import Settings
from sim import Kernel, Next, ScenarioError, SimError, Stepper, parse_scenario
from sim.capture import MAGIC, Capture, CaptureError, CaptureTooLarge, load_capture
from sim.fromcapture import CAPTURED, MERGE_MODES, apply_capture, capture_document
from sim.ksm_files import KNOBS
from sim.presets import UnknownPresetError, list_presets, load_preset
from sim.runner import check_supported
from sim.scenario import KERNELS, Scenario

from .errors import ApiError, shown_name, translate

YAML_TYPES = ("application/yaml", "application/x-yaml", "text/yaml", "text/x-yaml")
#: characters of a parser's message quoted in an error
MAX_ERROR_TEXT = 200
#: nesting of a YAML document (a scenario needs 4)
MAX_YAML_DEPTH = 64


class _NoAliasLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses aliases (``*name``: the "billion laughs" expands a
    few hundred bytes into 10^8 nodes) and nesting deeper than :data:`MAX_YAML_DEPTH`."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()  # type: ignore[no-untyped-call]
            raise yaml.composer.ComposerError(
                None, None, "aliases (*name) are not accepted", event.start_mark
            )
        self._depth += 1
        try:
            if self._depth > MAX_YAML_DEPTH:
                raise yaml.composer.ComposerError(
                    None,
                    None,
                    f"nested deeper than {MAX_YAML_DEPTH}",
                    self.peek_event().start_mark,  # type: ignore[no-untyped-call]
                )
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


_DEEP = re.compile(r"[\[{](?:[^\]}\[{]{0,40}[\[{]){" + str(MAX_YAML_DEPTH) + "}")


async def decode_document_async(data: bytes, yaml_ok: bool, field: str = "scenario") -> Any:
    """:func:`decode_document` on a worker thread (a big document takes a while to parse)."""
    return await run_in_threadpool(decode_document, data, yaml_ok, field)


def _short(text: str) -> str:
    line = text.splitlines()[0] if text else text
    return line if len(line) <= MAX_ERROR_TEXT else line[:MAX_ERROR_TEXT] + "..."


def decode_document(data: bytes, yaml_ok: bool, field: str = "scenario") -> Any:
    """A JSON (or YAML) document from bytes; 422 naming ``field`` if it is not one."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ApiError(422, field, "not UTF-8 text") from None
    if yaml_ok:
        if _DEEP.search(text):  # PyYAML scans a whole flow collection before its events
            raise ApiError(422, field, f"invalid YAML: nested deeper than {MAX_YAML_DEPTH}")
        try:
            return yaml.load(text, Loader=_NoAliasLoader)  # noqa: S506 - a SafeLoader
        except yaml.MarkedYAMLError as exc:
            where = f" at line {exc.problem_mark.line + 1}" if exc.problem_mark else ""
            raise ApiError(422, field, _short(f"invalid YAML{where}: {exc.problem}")) from None
        except (yaml.YAMLError, ValueError) as exc:
            raise ApiError(422, field, _short(f"invalid YAML: {exc}")) from None
        except RecursionError:
            raise ApiError(422, field, "invalid YAML: nested too deeply") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ApiError(422, field, f"invalid JSON at line {exc.lineno}: {exc.msg}") from None
    except RecursionError:
        raise ApiError(422, field, "invalid JSON: nested too deeply") from None
    except ValueError as exc:  # an integer of over 4,300 digits
        raise ApiError(422, field, _short(f"invalid JSON: {exc}")) from None


def presets(settings: Settings) -> list[dict[str, Any]]:
    return [p.to_dict() for p in list_presets(settings.presets_dir)]


def unknown_knob(name: str) -> str | None:
    """None for a knob of some KSM kernel (a kernel that lacks it skips it), else why not,
    with the closest known name when there is one (``use_zero_page`` -> ``use_zero_pages``;
    the name cut by :func:`~app.server.errors.shown_name`)."""
    if name in KNOBS:
        return None
    shown = shown_name(name)
    close = difflib.get_close_matches(shown, KNOBS, n=1, cutoff=0.6)
    hint = f"did you mean {close[0]}?" if close else f"known knobs: {', '.join(KNOBS)}"
    return f"unknown knob {shown!r}: {hint}"


def resolve(
    settings: Settings,
    preset: str | None,
    scenario: Any,
    kernel: str | None,
    knobs: dict[str, Any] | None,
) -> Scenario:
    """The scenario to run, on ``kernel`` with ``knobs`` added to its ``sysfs``."""
    if (preset is None) == (scenario is None):
        raise ApiError(422, "preset", "give exactly one of 'preset' or 'scenario'")
    if kernel is not None and kernel not in KERNELS:
        raise ApiError(422, "kernel", f"unknown kernel {kernel!r} (known: {', '.join(KERNELS)})")
    try:
        if preset is not None:
            sc = load_preset(preset, None, settings.presets_dir)
        else:
            if isinstance(scenario, dict) and isinstance(scenario.get("steps"), list):
                if len(scenario["steps"]) > settings.max_scenario_steps:
                    raise ApiError(
                        413, "scenario.steps", f"at most {settings.max_scenario_steps} steps"
                    )
            sc = parse_scenario(scenario)
    except UnknownPresetError as exc:
        raise ApiError(404, "preset", exc.message) from None
    except ScenarioError as exc:
        raise translate(exc, "" if preset else "scenario") from None
    if kernel is not None:
        sc = sc.with_kernel(kernel)
    if knobs:
        for name, value in knobs.items():
            why = unknown_knob(name)
            if why is not None:
                # a typo would be skipped as a knob this kernel lacks, and the session would
                # run with the default: the knobs given here are checked against every kernel
                raise ApiError(422, f"knobs.{shown_name(name)}", why)
            if isinstance(value, bool) or not isinstance(value, (int, str)):
                raise ApiError(422, f"knobs.{name}", "expected an integer or a string")
        raw = dict(sc.raw)
        raw["sysfs"] = {**sc.sysfs, **knobs}
        sc = Scenario(sc.name, sc.description, sc.kernel, raw["sysfs"], sc.steps, raw)
    try:
        check_supported(sc, sc.kernel)
    except ScenarioError as exc:  # pragma: no cover - UnsupportedError is not one
        raise translate(exc) from None
    except Exception as exc:
        raise translate(exc, "kernel") from None
    pages = max_live_pages(sc)
    if pages > settings.max_pages:
        raise ApiError(
            413,
            "pages",
            f"the scenario maps up to {pages} pages at once; "
            f"this server allows {settings.max_pages} per session",
        )
    return sc


def max_live_pages(sc: Scenario) -> int:
    """The most pages mapped at any one time while the scenario runs."""
    procs: dict[str, dict[str, int]] = {}
    live = best = 0
    for step in sc.steps:
        if step.op == "spawn" and step.proc:
            procs[step.proc] = {}
        elif step.op == "fork" and step.proc and step.child:
            procs[step.child] = dict(procs.get(step.proc, {}))
            live += sum(procs[step.child].values())
        elif step.op == "exit" and step.proc:
            live -= sum(procs.pop(step.proc, {}).values())
        elif step.op == "mmap" and step.proc and step.vma:
            procs.setdefault(step.proc, {})[step.vma] = step.count or 0
            live += step.count or 0
        elif step.op == "munmap" and step.proc and step.vma:
            live -= procs.get(step.proc, {}).pop(step.vma, 0)
        best = max(best, live)
    return best


# --------------------------------------------------------------------------- captures
def is_capture(data: bytes) -> bool:
    """The bytes are a ``ksm-capture/1`` file (its magic), not a scenario document."""
    return data.startswith(MAGIC)


def _load_capture_checked(
    settings: Settings, data: bytes, kernel: str | None, merge: str | None
) -> tuple[Capture, str, str]:
    merge = merge or "captured"
    if merge not in MERGE_MODES:
        raise ApiError(
            422, "merge", f"unknown merge mode {merge!r} (known: {', '.join(MERGE_MODES)})"
        )
    if kernel is not None and kernel not in KERNELS:
        raise ApiError(422, "kernel", f"unknown kernel {kernel!r} (known: {', '.join(KERNELS)})")
    try:  # the page count is checked before any column is decompressed
        cap = load_capture(data, max_pages=settings.max_pages)
    except CaptureTooLarge as exc:
        raise ApiError(
            413, "pages", f"{exc.message}; this server allows {settings.max_pages} per session"
        ) from None
    except CaptureError as exc:
        raise ApiError(422, "capture", _short(str(exc))) from None
    return cap, kernel or "6.18", merge


def capture_session(
    settings: Settings, data: bytes, kernel: str | None, merge: str | None, name: str
) -> tuple[Scenario, Stepper, dict[str, Any]]:
    """What a dashboard session of a capture starts from: the kernel already holding the
    captured processes (their story applied at once, off the timeline: a capture of three
    guests is some 46,000 ops; then its memcmp order and transparent huge pages,
    :func:`sim.fromcapture.apply_capture`), a two-step story (the ``captured`` checkpoint, then
    ``sysfs run=1``: "KSM is switched on with these knobs") and the recipe origin that
    rebuilds it (the capture file itself, base64, with the kernel and merge mode).
    422 naming the field for a bad file, kernel or merge mode, 413 when it maps more pages
    than a session may."""
    cap, kernel, merge = _load_capture_checked(settings, data, kernel, merge)
    title = "capture " + (name or "upload")[:64]
    try:
        full = parse_scenario(capture_document(cap, kernel, None, merge, title))
        check_supported(full, full.kernel)
        k = Kernel(full.kernel, full.sysfs, record=True)
        setup = Stepper(k, full.steps[: capture_setup_steps(full) - 1])
        while setup.in_scenario:
            out = setup.feed(Next("batch"))
            if out is not None and out.error is not None:
                raise out.error
        apply_capture(k, cap)  # its memcmp order, its huge pages: no scenario op says them
        k.take_changes()
        story = dict(full.raw)
        story["steps"] = full.raw["steps"][-2:]  # the checkpoint, then run=1
        sc = parse_scenario(story)
    except ScenarioError as exc:
        raise translate(exc, "capture") from None
    except SimError as exc:
        raise translate(exc, "merge") from None
    origin = {
        "capture": base64.b64encode(data).decode("ascii"),
        "name": name[:256],
        "kernel": kernel,
        "merge": merge,
    }
    return sc, Stepper(k, sc.steps), origin


def capture_session_from_origin(
    settings: Settings, origin: dict[str, Any]
) -> tuple[Scenario, Stepper, dict[str, Any]]:
    """:func:`capture_session` of a stored recipe's origin (a link to a capture session)."""
    text = origin.get("capture")
    kernel, merge, name = origin.get("kernel"), origin.get("merge"), origin.get("name")
    if not isinstance(text, str):
        raise ApiError(422, "r", "not a recipe of this server")
    try:
        data = base64.b64decode(text, validate=True)
    except ValueError:
        raise ApiError(422, "r", "the recipe's capture is not base64") from None
    return capture_session(
        settings,
        data,
        kernel if isinstance(kernel, str) else None,
        merge if isinstance(merge, str) else None,
        name if isinstance(name, str) else "",
    )


async def capture_session_async(
    settings: Settings, data: bytes, kernel: str | None, merge: str | None, name: str
) -> tuple[Scenario, Stepper, dict[str, Any]]:
    """:func:`capture_session` on a worker thread (a large capture takes seconds)."""
    return await run_in_threadpool(capture_session, settings, data, kernel, merge, name)


def capture_setup_steps(sc: Scenario) -> int:
    """Steps of a capture's story up to its ``captured`` checkpoint (included): the session
    opens there, the captured processes in the grid, the next step switching KSM on."""
    for step in sc.steps:
        if step.op == "checkpoint" and step.name == CAPTURED:
            return step.index + 1
    return 0


async def capture_session_from_origin_async(
    settings: Settings, origin: dict[str, Any]
) -> tuple[Scenario, Stepper, dict[str, Any]]:
    """:func:`capture_session_from_origin` on a worker thread."""
    return await run_in_threadpool(capture_session_from_origin, settings, origin)
