"""The ASGI application; the lifespan owns every resource."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

import service
from service import dashboard, logs
from service.api import (
    docs,
    downloads,
    errors,
    gateway,
    health,
    hot_read,
    receivers,
    registrations,
    videos,
    webhook_secret,
    webhooks,
)
from service.api.access import AccessLog
from service.api.limits import BodyLimit
from service.api.shortcuts import Shortcuts
from service.config import Settings
from service.runtime import Runtime


def create_app(
    settings: Settings | None = None, workers: bool = True, migrate: bool = True, api: bool = True
) -> FastAPI:
    """Build the app; nothing is opened until the lifespan starts. Without ``api`` it
    serves only health, readiness and metrics (``status-proxy work --port``)."""
    settings = settings or Settings()
    logs.configure(settings.log_level)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        runtime = Runtime(settings, workers=workers, api=api)
        app.state.runtime = runtime
        try:
            await runtime.start(migrate=migrate)
            yield
        finally:
            await runtime.stop()

    app = FastAPI(
        title="status-proxy",
        version=service.__version__,
        summary="Webhooks for an OpenAI-style video upstream that has none.",
        lifespan=lifespan,
        # Served from the package's own copy of Swagger UI (service/api/docs.py), so
        # /docs works on a closed network; ReDoc would load from a CDN.
        docs_url=None,
        redoc_url=None,
        # A path with a trailing slash is another path (404), never a redirect: Starlette's
        # would send any caller, keyed or not, to a Location built from its Host header.
        redirect_slashes=False,
    )
    errors.install(app)
    if api:  # innermost: below our middleware, before routing
        app.add_middleware(Shortcuts, shortcuts=[hot_read.SHORTCUT, registrations.SHORTCUT])
    app.add_middleware(BodyLimit, upload_limit=settings.upload_limit)
    app.add_middleware(AccessLog)  # outermost: sees every answer, 413s included
    if api:
        app.include_router(registrations.router)
        app.include_router(videos.router)
        app.include_router(gateway.router)
        app.include_router(downloads.router)
        app.include_router(webhook_secret.router)
        app.include_router(receivers.router)
        dashboard.install(app)
        webhooks.install(app)
        docs.install(app)
    app.include_router(health.router)
    return app
