"""/docs and /redoc work with no network (issue #16): their HTML loads only this server's URLs, those assets are
served (the vendored files, byte for byte), and in headless Chromium both pages render with every request to
another host refused. The assets are open or protected exactly as the pages are (--protect-docs-and-metrics)."""

from __future__ import annotations

import asyncio
import hashlib
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

import httpx
import pytest
from fakes import FakeBackend
from live import HTTP_TIMEOUT_S, assert_error, assert_same_ranking, png

from siglip_serve.api.app import create_app
from siglip_serve.config import Settings
from siglip_serve.engine.engine import Engine

STATIC = Path(__file__).parents[2] / "src" / "siglip_serve" / "api" / "static" / "docs"
PAGES = {"/docs": "swagger-ui-bundle.js", "/redoc": "redoc.standalone.js"}
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def http(main_server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=main_server.url, timeout=HTTP_TIMEOUT_S) as session:
        yield session


def page_urls(html: str) -> list[str]:
    """Every URL the page's HTML loads: src and href attributes, and the script's `url:` (the OpenAPI document)."""
    return re.findall(r'(?:src|href|spec-url)="([^"]*)"', html) + re.findall(r"url: '([^']*)'", html)


@pytest.mark.parametrize("page", PAGES)
def test_page_loads_only_local_urls_and_they_are_served(http, page):
    response = http.get(page)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    urls = page_urls(response.text)
    assert PAGES[page] in " ".join(urls) and "/openapi.json" in urls
    assert "cdn" not in response.text and "googleapis" not in response.text
    for url in urls:
        assert url.startswith("/") and not url.startswith("//"), f"{page} loads {url!r}"
        asset = http.get(url)
        assert asset.status_code == 200, (url, asset.text[:200])
        name = urlparse(url).path.rsplit("/", 1)[-1]
        if (STATIC / name).is_file():  # the vendored file, unchanged
            assert hashlib.sha256(asset.content).digest() == hashlib.sha256((STATIC / name).read_bytes()).digest()
    assert "img-src 'self'" in response.headers["content-security-policy"]


def test_assets_have_their_media_types(http):
    for name, media in {"swagger-ui-bundle.js": "text/javascript", "swagger-ui.css": "text/css",
                        "redoc.standalone.js": "text/javascript", "favicon-32x32.png": "image/png",
                        "swagger-ui.LICENSE": "text/plain", "redoc.LICENSE": "text/plain"}.items():
        response = http.get(f"/docs/assets/{name}")
        assert response.status_code == 200, name
        assert response.headers["content-type"].startswith(media), (name, response.headers["content-type"])


@pytest.mark.parametrize("name", ["nope.js", "..%2Fdocs.py", "README.md"])
def test_unknown_asset_is_404(http, name):
    assert_error(http.get(f"/docs/assets/{name}"), 404)


def test_licenses_are_shipped():
    for name in ["swagger-ui.LICENSE", "swagger-ui.NOTICE", "swagger-ui-bundle.js.LICENSE.txt", "redoc.LICENSE",
                 "redoc.standalone.js.LICENSE.txt"]:
        assert (STATIC / name).stat().st_size > 0, name
    assert "Apache License" in (STATIC / "swagger-ui.LICENSE").read_text()
    assert "MIT License" in (STATIC / "redoc.LICENSE").read_text()


@pytest.mark.parametrize("protect", [False, True])
def test_assets_are_protected_as_the_pages_are(protect):
    app = create_app(Settings(model=["fake"], api_key=["k1"], protect_docs_and_metrics=protect),
                     Engine({"fake": FakeBackend()}))
    paths = ["/docs", "/redoc", "/openapi.json", "/docs/assets/swagger-ui.css", "/docs/assets/redoc.standalone.js"]

    async def main() -> list[tuple[int, int]]:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=HTTP_TIMEOUT_S) as c:
                return [((await c.get(path)).status_code,
                         (await c.get(path, headers={"Authorization": "Bearer k1"})).status_code) for path in paths]

    statuses = asyncio.run(asyncio.wait_for(main(), HTTP_TIMEOUT_S))
    assert statuses == [(401 if protect else 200, 200)] * len(paths), statuses


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium (.ci/run installs it)")
@pytest.mark.parametrize(("page", "rendered"), [("/docs", ".opblock-summary-path"), ("/redoc", "h1")])
def test_page_renders_in_chromium_with_no_network(main_server, page, rendered):
    sync_api = pytest.importorskip("playwright.sync_api")
    origin = main_server.url
    refused: list[str] = []

    def only_this_server(route) -> None:
        url = route.request.url
        if url.startswith((origin + "/", "data:", "blob:")):
            route.continue_()
        else:
            refused.append(url)
            route.abort()

    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            context = browser.new_context()
            context.route("**/*", only_this_server)
            tab = context.new_page()
            tab.goto(origin + page)
            tab.wait_for_selector(rendered, timeout=60_000)
            text = tab.inner_text("body")
        finally:
            browser.close()
    assert "/v1/classify" in text or "Classify" in text
    assert refused == []


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium (.ci/run installs it)")
def test_try_it_out_uploads_a_file_from_the_docs_page(main_server, lib_tiny, tmp_path):
    """Swagger UI's form for /v1/classify: pick a file, type labels, Execute; the library's numbers come back."""
    sync_api = pytest.importorskip("playwright.sync_api")
    image = png(seed=31)
    picked = tmp_path / "cat.png"
    picked.write_bytes(image)
    op = "#operations-default-classify_v1_classify_post"
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            tab = browser.new_page()
            tab.goto(f"{main_server.url}/docs#/default/classify_v1_classify_post")
            tab.click(f"{op} >> text=Try it out", timeout=60_000)
            tab.select_option(f"{op} select.content-type", "multipart/form-data")
            tab.set_input_files(f"{op} tr[data-property-name=image] input[type=file]", picked)
            for field, value in {"labels": "cat,dog", "hypothesis_template": "", "model": "tiny", "top_k": ""}.items():
                tab.fill(f"{op} tr[data-property-name={field}] input[type=text]", value)
            with tab.expect_response(lambda r: r.url.endswith("/v1/classify")) as answer:
                tab.click(f"{op} >> text=Execute")
            response = answer.value
            sent_as = response.request.headers["content-type"]
            status, body = response.status, response.json()
        finally:
            browser.close()
    assert sent_as.startswith("multipart/form-data")
    assert status == 200, body
    got = [(p["label"], p["score"]) for p in body["data"][0]["predictions"]]
    assert_same_ranking(got, lib_tiny.classify([image], ["cat", "dog"])[0])
