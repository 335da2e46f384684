"""The full pages: the index, a session page, a compare page, the scenario upload.

- ``GET /``: pick a preset (or upload a scenario), a kernel profile, knob overrides, or the
  side-by-side comparison;
- ``GET /session?r=<recipe>&step=``: a session page; ``r`` names the session's stored
  recipe (:mod:`app.server.store`: preset or uploaded scenario or fork, and every action),
  so the link rebuilds the identical state after eviction, a restart or ``kill -9``
  (plus ``sid``, the live session to attach to while it lives). Older links
  ``?preset=&kernel=&knob.<name>=&step=&do=`` still work (``do``: :mod:`app.server.share`,
  replayed by :func:`step_to` as the same commands the buttons send). Identical links share
  one session (``SessionManager.linked``); a link that fails leaves no session behind.
  ``POST /session`` uploads a scenario;
- ``GET /compare?preset=&left=6.5&right=6.18&step=``: two kernels in lockstep.
"""

from __future__ import annotations

from urllib.parse import urlencode

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from starlette.datastructures import UploadFile

from sim.presets import list_presets
from sim.scenario import KERNELS

from .. import share
from ..errors import ApiError
from ..security import control_refusal
from ..session import Session
from ..sessions import SessionManager
from ..sources import (
    YAML_TYPES,
    capture_session_async,
    decode_document_async,
    is_capture,
    resolve,
)
from .forms import command, knob_overrides, knob_warnings, to_int
from .render import (
    HTMX,
    KNOB_HINTS,
    ManagerDep,
    RefusalDep,
    error_dict,
    error_page,
    find,
    render,
    session_context,
    story,
)

router = APIRouter(include_in_schema=False)


async def step_to(
    manager: SessionManager, session: Session, step: int, do: str | None = None
) -> None:
    """Bring a new session to a shared link's ``step``: the plain steps, or the link's
    recorded actions (``do``, :mod:`app.server.share`) and then a seek back to ``step``
    (limits checked before any work)."""
    limit = manager.settings.max_step_n
    step = max(0, min(step, limit))
    if not do:
        if step:
            await session.run_control(command("step", {"n": step}))
        return
    for msg in share.messages(share.decode(do), limit):
        try:
            await session.run_control(msg)
        except ApiError as exc:
            raise ApiError(exc.status, "do", f"a recorded action failed: {exc.message}") from None
    t = session.timeline
    if step < t.head:
        await session.run_control(command("seek", {"step": step, "branch": None}))
    elif step > t.step:  # the link's step moved on while playing: plain steps after ``do``
        await session.run_control(command("step", {"n": step - t.step}))


def share_params(manager: SessionManager, session: Session) -> dict[str, str | None]:
    """The link parameters of the session's current step: its recipe and step (``sid``,
    ``do`` dropped: the recipe holds every action)."""
    return {**manager.link_params(session), "do": None}


def link_key(request: Request) -> str:
    """What identifies a link (identical links share one session): its parameters but the
    live session, the token and the presenter flag, sorted."""
    skip = {"sid", "token", "presenter", "a", "b"}
    items = sorted((k, v) for k, v in request.query_params.multi_items() if k not in skip)
    return request.url.path + "?" + urlencode(items)


def with_params(request: Request, **params: str | None) -> str:
    """The request's URL with some query parameters set (None removes one)."""
    q = dict(request.query_params.multi_items())
    for k, v in params.items():
        if v is None:
            q.pop(k, None)
        else:
            q[k] = v
    return f"{request.url.path}?{urlencode(q)}"


# --------------------------------------------------------------------------- full pages
@router.get("/", response_class=HTMLResponse)
async def get_index(request: Request, manager: ManagerDep) -> HTMLResponse:
    return render(
        manager,
        request,
        "index.html",
        presets=list_presets(manager.settings.presets_dir),
        knob_hints=KNOB_HINTS,
        open_sessions=[
            (
                s.info(),
                "/session?" + urlencode({"sid": s.id, "r": s.recipe, "step": s.timeline.step}),
            )
            for s in sorted(manager.list_sessions(), key=lambda s: -s.last_active)
        ],
        max_sessions=manager.settings.max_sessions,
    )


@router.get("/session", response_class=HTMLResponse)
async def get_session_page(request: Request, manager: ManagerDep) -> Response:
    q = request.query_params
    session = find(manager, q.get("sid"))
    if session is None:
        if not q.get("preset") and not q.get("r"):
            return error_page(
                manager,
                request,
                ApiError(
                    404,
                    "session",
                    "this session is gone and its link names no recipe to rebuild it",
                ),
            )
        refusal = control_refusal(manager.settings, request)
        if refusal is not None:  # a read-only viewer cannot start sessions
            return error_page(manager, request, refusal)
        key = link_key(request)
        session = manager.linked(key)
        if session is None:
            try:
                session = await build_from_link(manager, request)
            except ApiError as exc:
                return error_page(manager, request, exc)
            manager.remember_link(key, session)
        return RedirectResponse(
            with_params(
                request,
                sid=session.id,
                kernel=session.kernel.version,
                **share_params(manager, session),
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
        share_url=with_params(request, sid=None, token=None, **share_params(manager, session)),
    )


async def build_from_link(manager: SessionManager, request: Request) -> Session:
    """A new session for a link (``r``, or an older ``preset``/``do`` link); every limit
    is checked before any work, and a failure leaves no session behind."""
    q = request.query_params
    step = to_int(q.get("step"))
    recipe = q.get("r")
    if recipe:
        return await manager.from_recipe(recipe, max(0, step))
    do = q.get("do")
    if do:
        share.check_steps(share.decode(do), manager.settings.max_step_n)
    sc = resolve(
        manager.settings,
        q["preset"],
        None,
        q.get("kernel"),
        knob_overrides(q.multi_items()),
    )
    session = manager.create(sc, q["preset"])
    try:
        await step_to(manager, session, step, do)
    except BaseException as exc:
        manager.delete(session.id, "its link could not be replayed")
        if isinstance(exc, ApiError):
            raise
        raise ApiError(422, "do", "the link's actions could not be replayed") from None
    return session


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
        # the file; or, after a warning page without JavaScript, the text it carried
        text = form.get("scenario_text")
        chosen = isinstance(upload, UploadFile) and bool(upload.filename)
        if isinstance(upload, UploadFile) and (chosen or not isinstance(text, str) or not text):
            data = await upload.read(manager.settings.max_body_bytes + 1)
            name = (upload.filename or "").lower()
            yaml_ok = name.endswith((".yaml", ".yml")) or (upload.content_type or "") in YAML_TYPES
        elif isinstance(text, str) and text:
            data = text.encode()
            yaml_ok = form.get("scenario_yaml") == "1"
        else:
            raise ApiError(422, "scenario", "choose a scenario file")
        if len(data) > manager.settings.max_body_bytes:
            raise ApiError(413, "scenario", f"at most {manager.settings.max_body_bytes} bytes")
        if is_capture(data):  # a capture of real memory (ksmlab capture)
            merge = form.get("merge")
            sc, stepper, origin = await capture_session_async(
                manager.settings,
                data,
                kernel if isinstance(kernel, str) else None,
                merge if isinstance(merge, str) else None,
                (upload.filename or "") if isinstance(upload, UploadFile) else "",
            )
            session = manager.create(sc, stepper=stepper, recipe_origin=origin)
            return _opened(request, manager, session)
        doc = await decode_document_async(data, yaml_ok)
        warnings = [] if form.get("anyway") == "1" else knob_warnings(doc)
        if warnings and HTMX in request.headers:  # the form warns; a second press opens it
            page = render(manager, request, "partials/upload_warnings.html", warnings=warnings)
            page.headers.update({"HX-Retarget": "#upload .upload-result", "HX-Reswap": "innerHTML"})
            return page
        if warnings:  # no JavaScript: the start page, with the warnings in the upload form
            return render(
                manager,
                request,
                "index.html",
                presets=list_presets(manager.settings.presets_dir),
                knob_hints=KNOB_HINTS,
                warnings=warnings,
                scenario_text=data.decode("utf-8", "replace"),
                scenario_yaml=yaml_ok,
            )
        sc = resolve(manager.settings, None, doc, kernel if isinstance(kernel, str) else None, None)
        session = manager.create(sc)
    except ApiError as exc:
        if HTMX in request.headers:
            return render(
                manager, request, "partials/upload.html", status=exc.status, error=error_dict(exc)
            )
        return error_page(manager, request, exc)
    return _opened(request, manager, session)


def _opened(request: Request, manager: SessionManager, session: Session) -> Response:
    """The answer to an upload that opened ``session``: go there."""
    params = {"sid": session.id, "kernel": session.kernel.version, **manager.link_params(session)}
    url = "/session?" + urlencode(params)
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
            if q.get("do"):
                share.check_steps(share.decode(q["do"]), manager.settings.max_step_n)
            await step_to(manager, group.sessions[0], to_int(q.get("step")), q.get("do"))
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
        share_url=with_params(
            request,
            a=None,
            b=None,
            token=None,
            step=str(left.timeline.step),
            do=share.encode(left.timeline.branch.actions[: left.timeline.step]),
        ),
    )
