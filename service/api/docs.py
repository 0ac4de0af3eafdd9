"""/docs: Swagger UI from the package's own files, never a CDN, so it works offline.

The assets come from the ``swagger-ui-py`` distribution (Swagger UI 5, which reads
OpenAPI 3.1), installed with status-proxy; only its static folder is used.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

PATH = "/docs"
ASSETS = f"{PATH}/assets"


def assets_dir() -> Path:
    """Swagger UI's files as installed."""
    return Path(str(resources.files("swagger_ui") / "static"))


def install(app: FastAPI) -> None:
    """Serve Swagger UI at /docs with its assets at /docs/assets."""
    app.mount(ASSETS, StaticFiles(directory=assets_dir()), name="docs-assets")

    @app.get(PATH, include_in_schema=False)
    async def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title=f"{app.title} API",
            swagger_js_url=f"{ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{ASSETS}/favicon-32x32.png",
            oauth2_redirect_url=f"{PATH}/oauth2-redirect",
            # Swagger UI's default sends the spec's URL to an outside validator (a badge).
            swagger_ui_parameters={"validatorUrl": None},
        )

    @app.get(f"{PATH}/oauth2-redirect", include_in_schema=False)
    async def oauth2_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()
