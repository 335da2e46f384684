"""HTML pages and htmx partials of the dashboard (presentation only).

DOC: Overview

The pages router renders Jinja2 templates from ``templates/`` and goes through the
:class:`~app.server.sessions.SessionManager` for everything else, exactly like the REST
routes: it never computes KSM state. Full pages:

- ``GET /``: pick a preset (or upload a scenario), a kernel profile, knob overrides, or the
  side-by-side comparison;
- ``GET /session?preset=&kernel=&knob.<name>=&step=&do=``: a session page; the URL carries
  everything needed to rebuild the state (plus ``sid``, the live session to attach to), so
  a shared link reopens the same step, with what was injected by hand (``do``,
  :mod:`app.server.share`); ``POST /session`` uploads a scenario;
- ``GET /compare?preset=&left=6.5&right=6.18&step=``: two kernels in lockstep.

Partials (``/ui/sessions/{sid}/...``) target themselves: controls, knobs and event injection
(validation errors come back inline, with a 4xx status that htmx is told to swap), the page
inspector and a process's ``ksm_stat``. The page JavaScript (``static/js/``) draws the
websocket stream described in ``docs/protocol.md``.
"""

from __future__ import annotations

import json
import string
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from starlette.datastructures import UploadFile

from app.presets import UnknownPresetError, list_presets, preset_info
from sim.scenario import KERNELS

from . import messages as m
from . import share
from .deps import get_manager
from .errors import ApiError
from .security import check_control, control_refusal
from .sessions import Session, SessionManager
from .sources import YAML_TYPES, decode_document, resolve

router = APIRouter(include_in_schema=False)
#: the ``/ui/`` control routes and uploads need the presenter's token (when the server has
#: one); a refusal is shown inline in the partial, like any refused control
RefusalDep = Annotated[ApiError | None, Depends(check_control)]
ManagerDep = Annotated[SessionManager, Depends(get_manager)]

#: speed slider stops, batches per second
SPEEDS = (0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 15.0, 20.0, 30.0, 60.0, 120.0, 250.0, 500.0, 1000.0)

LEGEND = (
    ("none", "not present"),
    ("anon", "private anon"),
    ("volatile", "volatile"),
    ("unstable", "unstable tree"),
    ("ksm", "KSM page (darker: more sharers)"),
    ("zero", "zero page, clean PTE (read fault; KSM before 6.6)"),
    ("ksm_zero", "KSM-placed zero page (dirty PTE)"),
    ("skipped", "skipped by smart scan"),
)
KIND_LABELS = dict(LEGEND)

KERNEL_NOTES = {
    "6.18": "zero-page series (6.6+): a KSM-placed zero page has a dirty PTE and is counted",
    "6.12": "zero-page series (6.6+): a KSM-placed zero page has a dirty PTE and is counted",
    "6.5": "before the zero-page series: KSM's zero pages look like read faults, uncounted",
    "6.1": "before the zero-page series; no prctl, no smart scan, no profit counters",
}

KNOB_HINTS = (
    ("use_zero_pages", "0"),
    ("pages_to_scan", "100"),
    ("sleep_millisecs", "20"),
    ("max_page_sharing", "256"),
    ("smart_scan", "1"),
    ("merge_across_nodes", "1"),
)

#: HTML page responses carry no htmx-only markup; partials go to htmx requests
HTMX = "hx-request"


@lru_cache
def _templates(directory: str) -> Jinja2Templates:
    return Jinja2Templates(directory=directory)


def templates(manager: SessionManager) -> Jinja2Templates:
    return _templates(str(Path(manager.settings.templates_dir)))


def render(
    manager: SessionManager, request: Request, name: str, status: int = 200, **context: Any
) -> HTMLResponse:
    base: dict[str, Any] = {
        "kernels": KERNELS,
        "legend": LEGEND,
        "kind_labels": KIND_LABELS,
        "kernel_notes": KERNEL_NOTES,
        "token_qs": token_qs(request),
        "presenter": request.query_params.get("presenter") == "1",
    }
    base.update(context)
    return templates(manager).TemplateResponse(request, name, base, status_code=status)


def token_qs(request: Request) -> str:
    token = request.query_params.get("token")
    return "?" + urlencode({"token": token}) if token else ""


def knob_overrides(items: Any) -> dict[str, Any]:
    """``knob.<name>=value`` fields (query or form) as a sysfs dict; numbers as ints."""
    out: dict[str, Any] = {}
    for key, value in items:
        if not key.startswith("knob.") or not isinstance(value, str) or value.strip() == "":
            continue
        v = value.strip()
        out[key[5:]] = int(v) if v.lstrip("-").isdigit() else v
    return out


def error_dict(exc: ApiError) -> dict[str, Any]:
    return exc.detail()


def story(manager: SessionManager, session: Session) -> tuple[str, str]:
    """The title and description shown for a session."""
    if session.preset:
        try:
            info = preset_info(session.preset, manager.settings.presets_dir)
            return info.title, info.description
        except UnknownPresetError:
            pass
    return session.scenario.name, session.scenario.description


def find(manager: SessionManager, sid: str | None) -> Session | None:
    if not sid:
        return None
    try:
        return manager.get(sid)
    except ApiError:
        return None


def step_to(manager: SessionManager, session: Session, step: int, do: str | None = None) -> None:
    """Bring a new session to a shared link's ``step``: the plain steps, or the link's
    recorded actions (``do``, :mod:`app.server.share`) and then a seek back to ``step``."""
    limit = manager.settings.max_step_n
    step = max(0, min(step, limit))
    if not do:
        if step:
            manager.control(session, m.StepMsg(type="step", n=step))
        return
    for msg in share.messages(share.decode(do), limit):
        try:
            manager.control(session, msg)
        except ApiError as exc:
            raise ApiError(exc.status, "do", f"a recorded action failed: {exc.message}") from None
    t = session.timeline
    if step < t.head:
        manager.control(session, m.SeekMsg(type="seek", step=step, branch=None))
    elif step > t.step:  # the link's step moved on while playing: plain steps after ``do``
        manager.control(session, m.StepMsg(type="step", n=step - t.step))


def share_params(session: Session) -> dict[str, str | None]:
    """The link parameters of the session's current step (``sid``/``a``/``b`` dropped)."""
    t = session.timeline
    return {"step": str(t.step), "do": share.encode(t.branch.actions[: t.step])}


def with_params(request: Request, **params: str | None) -> str:
    """The request's URL with some query parameters set (None removes one)."""
    q = dict(request.query_params.multi_items())
    for k, v in params.items():
        if v is None:
            q.pop(k, None)
        else:
            q[k] = v
    return f"{request.url.path}?{urlencode(q)}"


def error_page(manager: SessionManager, request: Request, exc: ApiError) -> HTMLResponse:
    return render(
        manager,
        request,
        "index.html",
        status=exc.status,
        presets=list_presets(manager.settings.presets_dir),
        knob_hints=KNOB_HINTS,
        page_error=error_dict(exc),
    )


# --------------------------------------------------------------------------- full pages
@router.get("/", response_class=HTMLResponse)
async def get_index(request: Request, manager: ManagerDep) -> HTMLResponse:
    return render(
        manager,
        request,
        "index.html",
        presets=list_presets(manager.settings.presets_dir),
        knob_hints=KNOB_HINTS,
    )


def _int(value: str | None, default: int = 0) -> int:
    try:
        return int(value) if value is not None else default
    except ValueError:
        return default


@router.get("/session", response_class=HTMLResponse)
async def get_session_page(request: Request, manager: ManagerDep) -> Response:
    q = request.query_params
    session = find(manager, q.get("sid"))
    if session is None:
        if not q.get("preset"):
            return error_page(
                manager,
                request,
                ApiError(
                    404,
                    "session",
                    "this session is gone and its link names no preset to rebuild it",
                ),
            )
        refusal = control_refusal(manager.settings, request)
        if refusal is not None:  # a read-only viewer cannot start sessions
            return error_page(manager, request, refusal)
        try:
            sc = resolve(
                manager.settings,
                q["preset"],
                None,
                q.get("kernel"),
                knob_overrides(q.multi_items()),
            )
            session = manager.create(sc, q["preset"])
        except ApiError as exc:
            return error_page(manager, request, exc)
        try:
            step_to(manager, session, _int(q.get("step")), q.get("do"))
        except ApiError as exc:
            manager.delete(session.id, "its link could not be replayed")
            return error_page(manager, request, exc)
        return RedirectResponse(
            with_params(
                request,
                sid=session.id,
                kernel=session.kernel.version,
                step=str(session.timeline.step),
            ),
            status_code=303,
        )
    title, description = story(manager, session)
    return render(
        manager,
        request,
        "session.html",
        **session_context(session),
        title=title,
        description=description,
        share_url=with_params(request, sid=None, token=None, **share_params(session)),
    )


@router.post("/session", response_class=HTMLResponse)
async def post_session_upload(
    request: Request, manager: ManagerDep, refusal: RefusalDep
) -> Response:
    """Upload a scenario file: a new session, or the upload form with the error inline."""
    form = await request.form()
    upload = form.get("scenario")
    kernel = form.get("kernel")
    try:
        if refusal is not None:
            raise refusal
        if not isinstance(upload, UploadFile):
            raise ApiError(422, "scenario", "choose a scenario file")
        data = await upload.read(manager.settings.max_body_bytes + 1)
        if len(data) > manager.settings.max_body_bytes:
            raise ApiError(413, "scenario", f"at most {manager.settings.max_body_bytes} bytes")
        name = (upload.filename or "").lower()
        yaml_ok = name.endswith((".yaml", ".yml")) or (upload.content_type or "") in YAML_TYPES
        doc = decode_document(data, yaml_ok)
        sc = resolve(manager.settings, None, doc, kernel if isinstance(kernel, str) else None, None)
        session = manager.create(sc)
    except ApiError as exc:
        if HTMX in request.headers:
            return render(
                manager, request, "partials/upload.html", status=exc.status, error=error_dict(exc)
            )
        return error_page(manager, request, exc)
    url = "/session?" + urlencode({"sid": session.id, "kernel": session.kernel.version})
    if HTMX in request.headers:
        return Response(status_code=200, headers={"HX-Redirect": url})
    return RedirectResponse(url, status_code=303)


@router.get("/compare", response_class=HTMLResponse)
async def get_compare_page(request: Request, manager: ManagerDep) -> Response:
    q = request.query_params
    left, right = find(manager, q.get("a")), find(manager, q.get("b"))
    if left is None or right is None or left.group is not right.group:
        preset = q.get("preset") or "zero-pages-unmerge"
        kernels = [q.get("left") or "6.5", q.get("right") or "6.18"]
        refusal = control_refusal(manager.settings, request)
        if refusal is not None:
            return error_page(manager, request, refusal)
        try:
            for kv in kernels:
                if kv not in KERNELS:
                    raise ApiError(422, "kernel", f"unknown kernel {kv!r}")
            sc = resolve(manager.settings, preset, None, None, knob_overrides(q.multi_items()))
            group = manager.create_compare(sc, kernels, preset)
        except ApiError as exc:
            return error_page(manager, request, exc)
        try:
            step_to(manager, group.sessions[0], _int(q.get("step")), q.get("do"))
        except ApiError as exc:
            for member in list(group.sessions):
                manager.delete(member.id, "its link could not be replayed")
            return error_page(manager, request, exc)
        a, b = group.sessions
        return RedirectResponse(
            with_params(
                request,
                preset=preset,
                left=kernels[0],
                right=kernels[1],
                a=a.id,
                b=b.id,
                step=str(a.timeline.step),
            ),
            status_code=303,
        )
    title, description = story(manager, left)
    ctx = session_context(left)
    return render(
        manager,
        request,
        "compare.html",
        **ctx,
        left=left.info(),
        right=right.info(),
        title=title,
        description=description,
        share_url=with_params(request, a=None, b=None, token=None, **share_params(left)),
    )


# ------------------------------------------------------------------------------ partials
def session_context(session: Session, **extra: Any) -> dict[str, Any]:
    info = session.info()
    speed = min(range(len(SPEEDS)), key=lambda i: abs(SPEEDS[i] - info.speed))
    label = "real time" if info.realtime else f"{SPEEDS[speed]:g} batches/s"
    ctx: dict[str, Any] = {
        "s": info,
        "speeds": SPEEDS,
        "speed_index": speed,
        "speed_label": label,
        "knobs": dict(session.kernel.knobs),
        "branch_list": [b.info() for b in session.timeline.branches],
        "form": {},
        "sel_text": "",
    }
    ctx.update(extra)
    return ctx


def controls(
    manager: SessionManager, request: Request, session: Session, error: ApiError | None = None
) -> HTMLResponse:
    return render(
        manager,
        request,
        "partials/controls.html",
        status=error.status if error else 200,
        **session_context(session, error=error_dict(error) if error else None),
    )


@router.get("/ui/sessions/{sid}/controls", response_class=HTMLResponse)
async def get_controls(sid: str, request: Request, manager: ManagerDep) -> HTMLResponse:
    return controls(manager, request, manager.get(sid))


CONTROL_ACTIONS = (
    "play",
    "pause",
    "step",
    "pass",
    "back",
    "reset",
    "speed",
    "realtime",
    "seek",
    "branch",
    "fork",
)


@router.post("/ui/sessions/{sid}/controls", response_class=HTMLResponse)
async def post_controls(
    sid: str, request: Request, manager: ManagerDep, refusal: RefusalDep
) -> Response:
    session = manager.get(sid)
    if refusal is not None:
        return controls(manager, request, session, refusal)
    form = await request.form()
    action = str(form.get("action") or "")
    try:
        msg: Any
        if action == "fork":
            new = manager.fork(session, session.timeline.step)
            url = "/session?" + urlencode({"sid": new.id, "kernel": new.kernel.version})
            return Response(status_code=200, headers={"HX-Redirect": url})
        if action == "play":
            msg = m.PlayMsg(type="play")
        elif action == "pause":
            msg = m.PauseMsg(type="pause")
        elif action == "step":
            msg = m.StepMsg(type="step", n=1)
        elif action == "pass":
            msg = m.StepMsg(type="step", n=1, grain="pass")
        elif action == "back":
            msg = m.BackMsg(type="back", n=1)
        elif action == "reset":
            msg = m.ResetMsg(type="reset")
        elif action == "speed":
            i = _int(str(form.get("speed")), -1)
            if not 0 <= i < len(SPEEDS):
                raise ApiError(422, "speed", f"choose a speed stop 0..{len(SPEEDS) - 1}")
            msg = m.SpeedMsg(type="speed", batches_per_second=SPEEDS[i])
        elif action == "realtime":
            msg = m.SpeedMsg(type="speed", batches_per_second=None, realtime=True)
        elif action == "branch":
            b = _int(str(form.get("branch")), -1)
            branches = session.timeline.branches
            if not 0 <= b < len(branches):
                raise ApiError(422, "branch", f"choose a branch 0..{len(branches) - 1}")
            msg = m.SeekMsg(type="seek", step=branches[b].head, branch=b)
        elif action == "seek":
            step = _int(str(form.get("seek")), -1)
            if step < 0:
                raise ApiError(422, "seek", "a step number >= 0")
            msg = m.SeekMsg(type="seek", step=step, branch=None)
        else:
            raise ApiError(422, "action", f"one of {', '.join(CONTROL_ACTIONS)}")
        manager.control(session, msg)
    except ApiError as exc:
        return controls(manager, request, session, exc)
    return controls(manager, request, session)


@router.post("/ui/sessions/{sid}/knobs", response_class=HTMLResponse)
async def post_knobs(
    sid: str, request: Request, manager: ManagerDep, refusal: RefusalDep
) -> HTMLResponse:
    """Write every knob whose field changed; a refused write comes back next to its field."""
    session = manager.get(sid)
    form = await request.form()
    wanted = knob_overrides((k, v) for k, v in form.multi_items())
    current = session.kernel.knobs
    written = []
    error: ApiError | None = refusal
    for knob, value in wanted.items() if refusal is None else ():
        if knob in current and str(current[knob]) == str(value):
            continue
        try:
            manager.control(session, m.KnobMsg(type="knob", knob=knob, value=value))
            written.append(f"{knob}={value}")
        except ApiError as exc:
            error = exc
            if exc.knob is None:
                exc.knob = knob
            break
    ctx = session_context(
        session,
        error=error_dict(error) if error else None,
        ok=("wrote " + ", ".join(written)) if written and not error else "",
    )
    if error and error is not refusal:  # show what the user typed in the refused field
        ctx["knobs"] = {**ctx["knobs"], error.knob or "": wanted.get(error.knob or "")}
    return render(
        manager, request, "partials/knobs.html", status=error.status if error else 200, **ctx
    )


def inject_op(action: str, f: dict[str, str], session: Session) -> dict[str, Any]:
    """The scenario step an inject button stands for (``docs/protocol.md`` ``inject``)."""
    proc, vma, pages = f.get("proc", ""), f.get("vma", ""), f.get("pages", "")
    where: dict[str, Any] = {"proc": proc, "vma": vma}
    if pages:
        where["pages"] = pages
    if action in ("write", "write-zero", "write-unique"):
        content = {"write-zero": "zero", "write-unique": "unique"}.get(action) or f.get("content")
        if not content:
            raise ApiError(422, "content", "a label to write, e.g. A")
        return {"op": "write", **where, "content": content}
    if action == "read":
        return {"op": "read", **where}
    if action in ("MADV_MERGEABLE", "MADV_UNMERGEABLE"):
        return {"op": "madvise", **where, "advice": action}
    if action == "fork":
        child = f.get("child") or next(
            (c for c in string.ascii_uppercase if c not in session.kernel.procs), "child"
        )
        return {"op": "fork", "proc": proc, "child": child}
    if action == "exit":
        return {"op": "exit", "proc": proc}
    if action in ("prctl-0", "prctl-1"):
        return {"op": "prctl", "proc": proc, "value": int(action[-1])}
    if action in ("run-0", "run-1", "run-2"):
        return {"op": "sysfs", "knob": "run", "value": int(action[-1])}
    raise ApiError(422, "op", f"unknown event {action!r}")


@router.post("/ui/sessions/{sid}/inject", response_class=HTMLResponse)
async def post_inject(
    sid: str, request: Request, manager: ManagerDep, refusal: RefusalDep
) -> HTMLResponse:
    session = manager.get(sid)
    form = await request.form()
    fields = {k: v.strip() for k, v in form.items() if isinstance(v, str)}
    action = fields.get("op", "")
    error: ApiError | None = None
    ok = ""
    try:
        if refusal is not None:
            raise refusal
        op = inject_op(action, fields, session)
        manager.control(session, m.InjectMsg(type="inject", op=op))
        ok = "injected " + " ".join(f"{k}={v}" for k, v in op.items())
    except ApiError as exc:
        error = exc
    sel = f"{fields.get('proc', '')} {fields.get('vma', '')}[{fields.get('pages', '')}]"
    ctx = session_context(
        session,
        form=fields,
        error=error_dict(error) if error else None,
        ok=ok,
        sel_text=sel if fields.get("proc") else "",
    )
    resp = render(
        manager, request, "partials/inject.html", status=error.status if error else 200, **ctx
    )
    if not error:
        label = {"run-2": "run=2", "run-1": "run=1"}.get(action, action)
        resp.headers["HX-Trigger"] = json.dumps(
            {"ksm:injected": {"op": label, "step": session.timeline.step}}
        )
    return resp


@router.get("/ui/sessions/{sid}/pages/{proc}/{vma}/{page}", response_class=HTMLResponse)
async def get_page_inspector(
    sid: str, proc: str, vma: str, page: int, request: Request, manager: ManagerDep
) -> HTMLResponse:
    session = manager.get(sid)
    try:
        detail = session.page_detail(proc, vma, page)
    except ApiError as exc:
        return render(
            manager, request, "partials/error.html", status=exc.status, error=error_dict(exc)
        )
    return render(manager, request, "partials/inspector_page.html", d=detail)


@router.get("/ui/sessions/{sid}/procs/{proc}", response_class=HTMLResponse)
async def get_proc_inspector(
    sid: str, proc: str, request: Request, manager: ManagerDep
) -> HTMLResponse:
    session = manager.get(sid)
    for p in session.state_view()["procs"]:
        if p["name"] == proc:
            return render(manager, request, "partials/inspector_proc.html", p=p)
    return render(
        manager,
        request,
        "partials/error.html",
        status=404,
        error={"field": "proc", "message": f"no process {proc!r} at this step"},
    )
