"""The playground: a static page at ``/`` and ``/playground`` that drives the public API from the browser.

Only files shipped in ``static/playground`` are served, by name only (`api.shipped_files`): a request
path never reaches the filesystem (no traversal, nothing outside the package). The page is
public static content; its API calls carry the key the user enters (``Authorization: Bearer``).
Relative URLs throughout the page keep it working behind a proxy that mounts the server under a prefix.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import RedirectResponse, Response

from siglip_serve.api.shipped_files import ShippedFiles

STATIC_DIR = Path(__file__).parent / "static" / "playground"
PREFIX = "/playground"
PAGE_PATHS = frozenset({"/", PREFIX})
MEDIA_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
               ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml", ".png": "image/png"}
# The page loads nothing from another origin and sends its requests only to this server; the browser
# enforces it. Images are the user's own files (blob:, data:) and thumbnails (data:). Image URLs given for
# classification are fetched by the server, never previewed by the browser.
CONTENT_SECURITY_POLICY = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
                           "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
HEADERS = {"Content-Security-Policy": CONTENT_SECURITY_POLICY, "Cache-Control": "no-cache",
           "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"}
ASSETS = ShippedFiles(STATIC_DIR, MEDIA_TYPES, what="playground file", recursive=True, headers=HEADERS)

router = APIRouter(include_in_schema=False)


def is_playground_path(path: str) -> bool:
    """Whether `path` is the page or one of its files: public static content, like /docs."""
    return path in PAGE_PATHS or path.startswith(PREFIX + "/")


def asset(name: str) -> Response:
    return ASSETS.response(name)


@router.get("/")
@router.get(PREFIX)
async def page() -> Response:
    return asset("index.html")


@router.get(PREFIX + "/{name:path}")
async def playground_file(name: str) -> Response:
    if not name:  # "/playground/": the page's relative URLs resolve from "/playground", without the slash
        return RedirectResponse("../playground", status_code=308)
    return asset(name)
