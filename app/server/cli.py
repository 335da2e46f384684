"""``ksmlab serve``: the dashboard server (uvicorn)."""

from __future__ import annotations

import argparse
import sys
from typing import Any


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("serve", help="serve the dashboard (FastAPI + uvicorn)")
    p.add_argument(
        "--host",
        default=None,
        help="address to bind (default 127.0.0.1; any other needs the presenter's token, "
        "KSMLAB_TOKEN, generated and printed when unset)",
    )
    p.add_argument("--port", type=int, default=None, help="port (default 8000)")
    p.add_argument(
        "--live-only",
        action="store_true",
        help="serve only the read-only live view of this host's KSM",
    )
    p.add_argument(
        "--capture",
        metavar="FILE",
        help="open a capture of real memory (ksmlab capture) as a session and print its link",
    )
    p.add_argument(
        "--merge",
        choices=("captured", "all", "prctl"),
        default="captured",
        help="with --capture: which mappings KSM may merge (default: as captured)",
    )
    p.add_argument("--kernel", default=None, help="with --capture: the kernel profile (6.18)")
    p.set_defaults(func=run)


def uvicorn_options(settings: Any) -> dict[str, Any]:
    """What every server of this app passes to uvicorn (also used by the tests and bench):
    the slowloris guards (:mod:`app.server.guard`) and a short keep-alive."""
    from .guard import guarded_h11

    return {
        "http": guarded_h11(settings.header_timeout, settings.max_connections),
        "timeout_keep_alive": settings.keep_alive_seconds,
        "ws_per_message_deflate": False,
        "ws_max_size": settings.ws_max_message_bytes * 16,
        "log_level": "warning",
        "lifespan": "on",
    }


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from app.config import get_settings

    settings = get_settings()
    host = args.host or settings.host
    port = settings.port if args.port is None else args.port
    if args.live_only:
        from app.live.routes import create_live_app
        from app.server.security import (
            TokenCookie,
            ensure_token,
            is_loopback,
            presenter_link,
            redact_access_log,
        )

        live_settings = ensure_token(settings.model_copy(update={"host": host, "port": port}))
        redact_access_log(live_settings.token)
        if live_settings.token and not is_loopback(host):
            sys.stdout.write(
                f"KSM Lab live view on {host}:{port}: reading this host needs the token.\n"
                f"Link: {presenter_link(live_settings).replace('/?', '/live?', 1)}\n"
            )
            sys.stdout.flush()
        opts = uvicorn_options(live_settings)
        opts["log_level"] = "info"
        live_app = create_live_app(lab=live_settings)
        # the token link sets the cookie the page's own requests then carry
        live_app.add_middleware(TokenCookie, settings=live_settings)
        uvicorn.run(live_app, host=host, port=port, **opts)
        return 0
    from .app import create_app
    from .security import ensure_token, is_loopback, presenter_link

    settings = ensure_token(settings.model_copy(update={"host": host, "port": port}))
    if not is_loopback(host):
        sys.stdout.write(
            f"KSM Lab on {host}:{port}: viewers watch read-only; control needs the token.\n"
            f"Presenter's link: {presenter_link(settings)}\n"
        )
        sys.stdout.flush()
    opts = uvicorn_options(settings)
    opts["log_level"] = "info"
    app = create_app(settings)
    if args.capture:
        from pathlib import Path
        from urllib.parse import urlencode

        from .errors import ApiError
        from .sources import capture_session

        try:
            data = Path(args.capture).read_bytes()
            sc, stepper, origin = capture_session(
                settings, data, args.kernel, args.merge, Path(args.capture).name
            )
            manager = app.state.manager
            session = manager.create(sc, stepper=stepper, recipe_origin=origin)
        except OSError as exc:
            sys.stderr.write(f"ksmlab serve: cannot read {args.capture}: {exc.strerror}\n")
            return 2
        except ApiError as exc:
            sys.stderr.write(f"ksmlab serve: --capture {args.capture}: {exc.message}\n")
            return 2
        link = urlencode({"sid": session.id, "kernel": sc.kernel, **manager.link_params(session)})
        sys.stdout.write(f"capture {args.capture}: http://{host}:{port}/session?{link}\n")
        sys.stdout.flush()
    uvicorn.run(app, host=host, port=port, **opts)
    return 0
