"""The playground's files over HTTP (no browser): what is served, with which headers, and nothing else."""

from __future__ import annotations

import re
from collections.abc import Iterator

import httpx
import pytest
from live import LiveServer, assert_error

from siglip_serve.api.playground import ASSETS, CONTENT_SECURITY_POLICY


@pytest.fixture
def http(demo_server: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=demo_server.url, timeout=120) as client:
        yield client


@pytest.mark.parametrize("path", ["/", "/playground"])
def test_the_page_is_served_with_a_policy_that_keeps_it_on_this_server(http: httpx.Client, path: str) -> None:
    response = http.get(path)
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    assert "<title>siglip-serve playground</title>" in response.text
    policy = response.headers["content-security-policy"]
    assert "connect-src 'self'" in policy and "script-src 'self'" in policy and "default-src 'none'" in policy
    assert policy == CONTENT_SECURITY_POLICY


def test_every_shipped_file_is_served_with_its_type(http: httpx.Client) -> None:
    assert {"index.html", "style.css", "js/main.js", "js/api.js"} <= set(ASSETS.files)
    types = {".html": "text/html", ".css": "text/css", ".js": "text/javascript"}
    for name, path in ASSETS.files.items():
        response = http.get(f"/playground/{name}")
        assert response.status_code == 200, name
        assert response.headers["content-type"].split(";")[0] == types[path.suffix], name
        assert response.content == path.read_bytes()


def test_modules_import_only_files_that_are_shipped() -> None:
    """A module importing a file missing from the package would break the page only in a browser."""
    for name, path in ASSETS.files.items():
        if name.endswith(".js"):
            for target in re.findall(r'from "\./([\w.-]+)"', path.read_text()):
                assert f"js/{target}" in ASSETS.files, (name, target)


@pytest.mark.parametrize("path", ["/playground/nothing.js", "/playground/../pyproject.toml",
                                  "/playground/%2e%2e/playground.py", "/playground/js/../../api/app.py"])
def test_nothing_else_is_served(http: httpx.Client, path: str) -> None:
    response = http.get(path)
    assert_error(response, 404)
    assert "siglip_serve" not in response.text and "import" not in response.text


def test_the_folder_url_leads_to_the_page(http: httpx.Client) -> None:
    response = http.get("/playground/", follow_redirects=True)
    assert response.status_code == 200
    assert str(response.url).endswith("/playground")
    assert "<title>siglip-serve playground</title>" in response.text


def test_the_page_is_not_in_the_api_schema(http: httpx.Client) -> None:
    paths = set(http.get("/openapi.json").json()["paths"])
    assert not {path for path in paths if path == "/" or path.startswith("/playground")}
