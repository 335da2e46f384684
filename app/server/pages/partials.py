"""The htmx partials (``/ui/sessions/{sid}/...``): each targets itself.

Controls, knobs and event injection parse their form into a command
(:mod:`app.server.pages.forms`) and apply it with :meth:`~app.server.session.Session.control`;
a validation error or a refusal comes back inline, with a 4xx status that htmx is told to
swap. The page inspector and a process's ``ksm_stat`` are read-only.
"""

from __future__ import annotations

import json
from urllib.parse import urlencode

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from ..errors import ApiError
from ..session import Session
from ..sessions import SessionManager
from .forms import control_command, inject_command, inject_op, knob_command, knob_overrides
from .render import (
    ManagerDep,
    RefusalDep,
    error_dict,
    error_page,
    render,
    session_context,
    token_qs,
)

router = APIRouter(include_in_schema=False)


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
        if action == "fork":
            new = manager.fork(session, session.timeline.step)
            params = {"sid": new.id, "kernel": new.kernel.version, **manager.link_params(new)}
            url = "/session?" + urlencode(params)
            return Response(status_code=200, headers={"HX-Redirect": url})
        await session.run_control(control_command(action, form, session))
    except ApiError as exc:
        return controls(manager, request, session, exc)
    return controls(manager, request, session)


@router.post("/ui/sessions/{sid}/knobs", response_class=HTMLResponse)
async def post_knobs(
    sid: str, request: Request, manager: ManagerDep, refusal: RefusalDep
) -> HTMLResponse:
    """Write only the knobs whose field the user changed; a refused write comes back next to
    its field.

    Each field comes with ``was.<name>``, the kernel's value the field showed (the page keeps
    both up to date on every step); a field equal to its ``was`` value is left alone, so a
    form drawn before a scenario or injected knob write cannot write the old value back.
    Without ``was`` fields (no script), a field equal to the kernel's value is left alone.
    """
    session = manager.get(sid)
    form = await request.form()
    items = list(form.multi_items())
    wanted = knob_overrides(items)
    shown = knob_overrides(
        (k.replace("was.", "knob.", 1), v) for k, v in items if k.startswith("was.")
    )
    current = session.kernel.knobs
    written = []
    error: ApiError | None = refusal
    for knob, value in wanted.items() if refusal is None else ():
        before = shown[knob] if knob in shown else current.get(knob)
        if str(before) == str(value):
            continue
        try:
            await session.run_control(knob_command(knob, value))
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
        await session.run_control(inject_command(op))
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


@router.post("/ui/sessions/{sid}/close", response_class=HTMLResponse)
async def post_close(
    sid: str, request: Request, manager: ManagerDep, refusal: RefusalDep
) -> Response:
    """Close a session (the index's list of open sessions): its viewers get ``end``; its
    link still rebuilds it (the recipe stays stored)."""
    if refusal is not None:
        return error_page(manager, request, refusal)
    try:
        manager.delete(sid, "closed")
    except ApiError as exc:
        return error_page(manager, request, exc)
    return RedirectResponse("/" + token_qs(request), status_code=303)
