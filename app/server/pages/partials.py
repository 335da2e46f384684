"""The htmx partials (``/ui/sessions/{sid}/...``): each targets itself.

Controls, knobs and event injection parse their form into a command
(:mod:`app.server.pages.forms`) and apply it with :meth:`~app.server.session.Session.control`;
a validation error or a refusal comes back inline, with a 4xx status that htmx is told to
swap. The page inspector and a process's ``ksm_stat`` are read-only.

The same forms work without JavaScript (a locked-down browser, htmx failing to load): they
carry ``method="post"`` and ``action=`` to these endpoints, and a request without the
``HX-Request`` header is answered with 303 See Other back to the page the form sits on
(:func:`page_url`: the session page, or the compare page of a compared pair; the token query
kept), so the browser reloads it with the new state; bad input or a refusal is a 4xx page
naming the field with a link back (:func:`form_error`).
"""

from __future__ import annotations

import json
from urllib.parse import urlencode

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from .. import share
from ..errors import ApiError
from ..session import Session
from ..sessions import SessionManager
from .forms import control_command, inject_command, inject_op, knob_command, knob_overrides
from .render import (
    HTMX,
    ManagerDep,
    RefusalDep,
    error_dict,
    error_page,
    render,
    session_context,
    token_qs,
)

router = APIRouter(include_in_schema=False)


def page_url(manager: SessionManager, request: Request, session: Session) -> str:
    """The page a form of ``session`` sits on, at its current step: the compare page when it
    is one of a compared pair (its ``a`` and ``b``, and ``preset``/``left``/``right``/``do``
    that rebuild it), else the session page (``sid`` and its recipe link); with the token
    query when the request had one."""
    members = session.group.sessions
    token = request.query_params.get("token")
    params: dict[str, str] = {}
    if len(members) == 2:
        a, b = members
        step = a.timeline.step
        if a.preset:
            params["preset"] = a.preset
        params |= {"left": a.kernel.version, "right": b.kernel.version, "a": a.id, "b": b.id}
        params["step"] = str(step)
        do = share.encode(a.timeline.branch.actions[:step])
        if do:
            params["do"] = do
        path = "/compare"
    else:
        params = {"sid": session.id, "kernel": session.kernel.version}
        params |= manager.link_params(session)
        path = "/session"
    if token:
        params["token"] = token
    return path + "?" + urlencode(params)


def form_error(
    manager: SessionManager, request: Request, session: Session, exc: ApiError
) -> HTMLResponse:
    """A form posted without JavaScript that failed: a page with the error, naming its
    field, and a link back to the session (the 4xx status of the error)."""
    return render(
        manager,
        request,
        "form_error.html",
        status=exc.status,
        error=error_dict(exc),
        back=page_url(manager, request, session),
    )


def back_to_page(manager: SessionManager, request: Request, session: Session) -> Response:
    """A form posted without JavaScript that did its work: reload the page it sits on."""
    return RedirectResponse(page_url(manager, request, session), status_code=303)


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
    htmx = HTMX in request.headers
    if refusal is not None:
        if not htmx:
            return form_error(manager, request, session, refusal)
        return controls(manager, request, session, refusal)
    form = await request.form()
    action = str(form.get("action") or "")
    try:
        if action == "fork":
            new = manager.fork(session, session.timeline.step)
            url = page_url(manager, request, new)
            if not htmx:
                return RedirectResponse(url, status_code=303)
            return Response(status_code=200, headers={"HX-Redirect": url})
        await session.run_control(control_command(action, form, session))
    except ApiError as exc:
        if not htmx:
            return form_error(manager, request, session, exc)
        return controls(manager, request, session, exc)
    if not htmx:
        return back_to_page(manager, request, session)
    return controls(manager, request, session)


@router.post("/ui/sessions/{sid}/knobs", response_class=HTMLResponse)
async def post_knobs(
    sid: str, request: Request, manager: ManagerDep, refusal: RefusalDep
) -> Response:
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
    if HTMX not in request.headers:  # no JavaScript: the page again, or the error's page
        if error:
            return form_error(manager, request, session, error)
        return back_to_page(manager, request, session)
    if error and error is not refusal:  # show what the user typed in the refused field
        ctx["knobs"] = {**ctx["knobs"], error.knob or "": wanted.get(error.knob or "")}
    return render(
        manager, request, "partials/knobs.html", status=error.status if error else 200, **ctx
    )


@router.post("/ui/sessions/{sid}/inject", response_class=HTMLResponse)
async def post_inject(
    sid: str, request: Request, manager: ManagerDep, refusal: RefusalDep
) -> Response:
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
    if HTMX not in request.headers:  # no JavaScript: the page again, or the error's page
        if error:
            return form_error(manager, request, session, error)
        return back_to_page(manager, request, session)
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
