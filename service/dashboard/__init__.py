"""The dashboard: server-rendered pages at /dashboard, behind the same keys as /v1.

A key entered once opens a session (service/dashboard/sessions.py): one per login, in
the database so every replica knows it, ended by "Log out" or after 12 hours. The
cookie (HttpOnly, SameSite=Strict, scoped to /dashboard) holds the session's random
token, never the key, so a copied cookie does not work on /v1, and the database keeps
only the token's hash. Every value shown is escaped by the templates, and the
Content-Security-Policy allows no inline script at all.
"""

from __future__ import annotations

import hmac
import time
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

from service import recovery, registrations
from service.dashboard import chart, data, sessions
from service.poller import Poller
from service.runtime import Runtime, key_digest, upstream_problems

HERE = Path(__file__).resolve().parent
COOKIE = "status_proxy_dashboard"
PATH = "/dashboard"
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
        "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}

templates = Jinja2Templates(directory=HERE / "templates")
templates.env.autoescape = True  # every template, whatever its name
templates.env.filters["when"] = lambda t: time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(t))
router = APIRouter(prefix=PATH, include_in_schema=False)
static = StaticFiles(directory=HERE / "static")


class LoginRequired(Exception):
    """No valid key on this request: show the login form."""


class CrossSite(Exception):
    """A form posted from another origin."""


def _owner_of_key(runtime: Runtime, key: str) -> str | None:
    """The owner id of a configured key, or None; every key is compared (timing tells
    nothing about which one matched)."""
    given = key_digest(key)
    owner = None
    for digest in runtime.key_digests:
        if hmac.compare_digest(given, digest):
            owner = digest.hex()
    return owner


async def get_owner(request: Request) -> str:
    """The caller's owner id from a live session or a Bearer key ("" when open)."""
    runtime: Runtime = request.app.state.runtime
    if not runtime.settings.api_keys:
        return ""
    header = request.headers.get("authorization", "")
    if header[:7].lower() == "bearer ":
        owner = _owner_of_key(runtime, header[7:].strip())
    else:
        token = request.cookies.get(COOKIE, "")
        owner = await sessions.owner_of(runtime.db, token, time.time())
        # A key removed from STATUS_PROXY_API_KEYS ends its sessions too.
        if owner is not None and bytes.fromhex(owner) not in runtime.key_digests:
            owner = None
    if owner is None:
        raise LoginRequired
    return owner


def same_origin(request: Request) -> None:
    """Refuse a form posted from another site (the cookie's SameSite=Strict aside)."""
    origin = request.headers.get("origin")
    if origin and urlsplit(origin).netloc != request.headers.get("host"):
        raise CrossSite


Owner = Annotated[str, Depends(get_owner)]


def page(request: Request, name: str, status_code: int = 200, **context: Any) -> HTMLResponse:
    runtime: Runtime = request.app.state.runtime
    context.setdefault("keys_required", bool(runtime.settings.api_keys))
    response = templates.TemplateResponse(request, name, context, status_code=status_code)
    response.headers.update(SECURITY_HEADERS)
    return response


def login_page(request: Request, error: str | None = None, status_code: int = 401) -> Response:
    return page(request, "login.html", status_code, error=error, signing_in=True)


# Tones from the best to the worst; the header shows the worst upstream's.
TONES = ("good", "muted", "warn", "bad")


def upstream_health(runtime: Runtime) -> tuple[str, str]:
    """A word on the upstreams as this process sees them, and its tone: the default's
    alone, or with several, each one that is not fine, by name."""
    if not runtime.pollers:
        return "not polled by this process", "muted"
    seen = {name: poller_health(poller) for name, poller in runtime.pollers.items()}
    if len(seen) == 1:
        return next(iter(seen.values()))
    troubled = {name: word for name, word in seen.items() if word[1] != "good"}
    if not troubled:
        return f"ok: all {len(seen)} upstreams answer", "good"
    tone = max((tone for _, tone in troubled.values()), key=TONES.index)
    return "; ".join(f"{name}: {word}" for name, (word, _) in troubled.items()), tone


def poller_health(poller: Poller) -> tuple[str, str]:
    """A word on one upstream, from its poller's view."""
    if poller.auth_problem:
        return "key refused: polling paused", "bad"
    if poller.limiter.paused_until > time.monotonic():
        return "rate limited: paused", "warn"
    health = poller.health
    if health.unreachable:
        return f"unreachable: {health.last_failure}", "bad"
    if health.failures:
        return f"not answering lately: {health.last_failure}", "warn"
    if health.last_success_at is None:
        return "not polled yet: no answer seen", "muted"
    ago = max(0, int(time.time() - health.last_success_at))
    return f"ok: last answer {ago}s ago", "good"


def _upstream_problems(runtime: Runtime) -> set[str]:
    found: set[str] = set()
    for name, poller in runtime.pollers.items():
        found.update(upstream_problems(name, poller))
    return found


async def _header(request: Request, owner: str) -> dict[str, Any]:
    runtime: Runtime = request.app.state.runtime
    health, tone = upstream_health(runtime)
    return {
        "counters": await data.counters(runtime.db, owner, time.time()),
        "health": health,
        "health_tone": tone,
        # The upstream's own problems are in its health word already.
        "problems": [p for p in runtime.problems() if p not in _upstream_problems(runtime)],
    }


# The "recover since" choices: hours back, and how the menu says it.
RECOVER_WINDOWS = ((1, "1 hour ago"), (6, "6 hours ago"), (24, "24 hours ago"),
                   (72, "3 days ago"), (168, "7 days ago"), (720, "30 days ago"))  # fmt: skip


async def _panels(request: Request, owner: str, recovered: int | None) -> dict[str, Any]:
    """The chart of the last hour and the recover form, for the front page."""
    runtime: Runtime = request.app.state.runtime
    tries = len(runtime.settings.delivery_retry_schedule) + 1
    minutes = await data.last_hour(runtime.db, owner, time.time(), tries)
    keyed = bool(runtime.settings.api_keys)
    return {
        "circuits": await data.open_circuits(runtime.db, owner, keyed),
        "chart": chart.build(minutes),
        "geometry": chart.FRAME,
        "recover_windows": RECOVER_WINDOWS,
        "recovered": recovered,
    }


@router.get("")
async def index(
    request: Request, owner: Owner, state: str = "all", recovered: str = ""
) -> Response:
    runtime: Runtime = request.app.state.runtime
    which = state if state in data.FILTERS else "all"
    rows = await data.rows(runtime.db, owner, which)
    header = await _header(request, owner)
    panels = await _panels(request, owner, int(recovered) if recovered.isdigit() else None)
    return page(
        request, "index.html", rows=rows, which=which, filters=data.FILTER_HELP,
        **header, **panels,
    )  # fmt: skip


@router.post("/recover")
async def recover(
    request: Request, owner: Owner, hours: Annotated[float, Form(gt=0, le=24 * 366)] = 24
) -> Response:
    """Send again the caller's terminal webhooks that died in the last ``hours``."""
    same_origin(request)
    runtime: Runtime = request.app.state.runtime
    now = time.time()
    count = await recovery.recover(runtime.db, owner, now - hours * 3600, now, now)
    if count:
        runtime.kick_delivery()
    return RedirectResponse(f"{PATH}?recovered={count}", 303)


@router.get("/registrations/{registration_id}")
async def registration(
    request: Request, registration_id: str, owner: Owner, done: str | None = None
) -> Response:
    runtime: Runtime = request.app.state.runtime
    found = await data.detail(runtime.db, owner, registration_id)
    if found is None:
        return page(request, "missing.html", 404)
    detail, tries = found
    header = await _header(request, owner)
    notice = {"redelivered": "Redelivery queued: a new attempt follows shortly."}.get(done or "")
    return page(
        request, "registration.html", detail=detail, attempts=tries, notice=notice, **header
    )


@router.post("/registrations/{registration_id}/redeliver")
async def redeliver(request: Request, registration_id: str, owner: Owner) -> Response:
    same_origin(request)
    runtime: Runtime = request.app.state.runtime
    try:
        await registrations.redeliver(runtime.db, owner, registration_id, time.time())
    except registrations.NotFound:
        return page(request, "missing.html", 404)
    except registrations.Conflict as exc:
        found = await data.detail(runtime.db, owner, registration_id)
        assert found is not None
        header = await _header(request, owner)
        return page(
            request, "registration.html", 409,
            detail=found[0], attempts=found[1], error=str(exc), **header,
        )  # fmt: skip
    runtime.kick_delivery()
    return RedirectResponse(f"{PATH}/registrations/{registration_id}?done=redelivered", 303)


@router.post("/login")
async def login(request: Request, key: Annotated[str, Form(max_length=500)] = "") -> Response:
    same_origin(request)
    runtime: Runtime = request.app.state.runtime
    if not runtime.settings.api_keys:
        return RedirectResponse(PATH, 303)
    owner = _owner_of_key(runtime, key.strip())
    if owner is None:
        return login_page(request, "That key is not one of STATUS_PROXY_API_KEYS.")
    token = await sessions.start(runtime.db, owner, time.time())
    response = RedirectResponse(PATH, 303)
    response.set_cookie(
        COOKIE, token, path=PATH, httponly=True, samesite="strict",
        secure=request.url.scheme == "https", max_age=int(sessions.LIFETIME),
    )  # fmt: skip
    return response


@router.post("/logout")
async def logout(request: Request) -> Response:
    """End this login's session on the server (the cookie alone no longer opens the page)."""
    same_origin(request)
    runtime: Runtime = request.app.state.runtime
    await sessions.end(runtime.db, request.cookies.get(COOKIE, ""))
    response = RedirectResponse(PATH, 303)
    response.delete_cookie(COOKIE, path=PATH)
    return response


def install(app: Any) -> None:
    """Mount the pages and their static files, and answer a missing login with the form."""

    async def needs_login(request: Request, _exc: Exception) -> Response:
        return login_page(request)

    async def cross_site(_request: Request, _exc: Exception) -> Response:
        return Response("cross-site form refused", 403, media_type="text/plain")

    app.add_exception_handler(LoginRequired, needs_login)
    app.add_exception_handler(CrossSite, cross_site)
    app.mount(f"{PATH}/static", static, name="dashboard-static")
    app.include_router(router)
