"""/docs (Swagger UI) and /redoc (ReDoc) without a network (issue #16), and the OpenAPI document they show.

FastAPI's own pages load Swagger UI's and ReDoc's scripts from a CDN (and ReDoc's fonts from Google), so they
are blank offline. These are the same pages (`get_swagger_ui_html`, `get_redoc_html`) pointed at the files
vendored in ``static/docs`` (its README names the versions, sources and licenses) and served under
``/docs/assets/`` by name only (`api.shipped_files`), as the playground's are. `api.security` treats the
assets as it treats /docs: open unless --protect-docs-and-metrics.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse, Response

from siglip_serve.api.shipped_files import ShippedFiles

STATIC_DIR = Path(__file__).parent / "static" / "docs"
DOCS_URL = "/docs"
REDOC_URL = "/redoc"
ASSETS_PREFIX = "/docs/assets"
MEDIA_TYPES = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8", ".png": "image/png",
               ".txt": "text/plain; charset=utf-8", ".LICENSE": "text/plain; charset=utf-8",
               ".NOTICE": "text/plain; charset=utf-8"}
ASSETS = ShippedFiles(STATIC_DIR, MEDIA_TYPES, what="docs file", headers={"Cache-Control": "no-cache"})
BEARER = "bearer"
# The pages fetch, show and call only this server. ReDoc 2's sidebar always shows Redocly's logo from its CDN
# (hidden again if it fails to load): the policy stops that request before it leaves the browser. Scripts and
# styles are left alone: both pages have inline ones.
CONTENT_SECURITY_POLICY = "img-src 'self' data: blob:; font-src 'self' data:; connect-src 'self'"

router = APIRouter(include_in_schema=False)


def _asset_url(request: Request, name: str) -> str:
    # root_path: the prefix a proxy mounts the server under, as FastAPI's own docs pages use it.
    return f"{request.scope.get('root_path', '')}{ASSETS_PREFIX}/{name}"


def _openapi_url(request: Request) -> str:
    return f"{request.scope.get('root_path', '')}{request.app.openapi_url}"


def _local_only(page: HTMLResponse) -> HTMLResponse:
    page.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    return page


@router.get(DOCS_URL)
async def swagger_ui(request: Request) -> HTMLResponse:
    return _local_only(get_swagger_ui_html(
        openapi_url=_openapi_url(request), title=f"{request.app.title} - Swagger UI",
        swagger_js_url=_asset_url(request, "swagger-ui-bundle.js"),
        swagger_css_url=_asset_url(request, "swagger-ui.css"),
        swagger_favicon_url=_asset_url(request, "favicon-32x32.png"),
        # Keys are entered with the Authorize button (the bearer scheme of `openapi`); keep them across reloads.
        swagger_ui_parameters={"persistAuthorization": True},
    ))


@router.get(REDOC_URL)
async def redoc(request: Request) -> HTMLResponse:
    return _local_only(get_redoc_html(
        openapi_url=_openapi_url(request), title=f"{request.app.title} - ReDoc",
        redoc_js_url=_asset_url(request, "redoc.standalone.js"),
        redoc_favicon_url=_asset_url(request, "favicon-32x32.png"), with_google_fonts=False))


@router.get(ASSETS_PREFIX + "/{name}")
async def asset(name: str) -> Response:
    return ASSETS.response(name)


def install_docs(app: FastAPI) -> None:
    """Serve /docs, /redoc and their assets, and an OpenAPI document that declares the bearer keys.

    The app must be made with docs_url=None and redoc_url=None, so that FastAPI's CDN pages are not there.
    """
    app.include_router(router)
    build = app.openapi  # FastAPI's own builder; it caches the document in app.openapi_schema

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = build()
            # OpenAI's `Authorization: Bearer KEY`, needed only when the server has keys: [{}] makes it optional.
            schema.setdefault("components", {})["securitySchemes"] = {
                BEARER: {"type": "http", "scheme": "bearer",
                         "description": "An API key (--api-key or a stored key), when the server requires one."}}
            schema["security"] = [{}, {BEARER: []}]
            return schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]  # FastAPI's documented way to extend the document
