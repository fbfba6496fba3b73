"""Screenshots of each playground tab at desktop (1280×800) and phone (390×844) width, for the README.

    python tests/browser/screenshots.py [--out docs/screenshots]

Starts `siglip-serve serve` with the shipped demo model on a loopback port (data in a temporary
directory), fills a collection through the API, drives the page in the system's headless Chromium, and
writes {classify,search,compare}-{desktop,phone}.png. Like the tests, it aborts any request to another host.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "integration"), str(HERE.parent)]  # live.py and its sample_images

from live import LiveServer  # noqa: E402
from playground_driver import (  # noqa: E402
    DESKTOP,
    PHONE,
    WAIT_MS,
    chromium_path,
    classify,
    compare,
    data_uri_of,
    guarded_page,
    launch,
    open_page,
    screenshot,
    search,
    shape_png,
    wait_for_models,
)
from playwright.sync_api import Browser, expect, sync_playwright  # noqa: E402

REPO = HERE.parent.parent
COLLECTION = "shapes"
SHAPES = [("red", "circle"), ("blue", "square"), ("green", "triangle"), ("yellow", "circle"),
          ("purple", "triangle"), ("blue", "circle"), ("red", "square"), ("green", "circle")]


def image(color: str, shape: str) -> tuple[str, bytes]:
    return f"{color}-{shape}.png", shape_png(color, shape)


def fill_collection(url: str) -> None:
    with httpx.Client(base_url=url, timeout=WAIT_MS / 1000) as http:
        http.post("/v1/collections", json={"name": COLLECTION}).raise_for_status()
        items = [{"id": name.removesuffix(".png"), "image": data_uri_of(data)}
                 for name, data in (image(*pair) for pair in SHAPES)]
        http.post(f"/v1/collections/{COLLECTION}/items", json={"items": items}).raise_for_status()


def shoot(browser: Browser, url: str, out: Path, size: str, viewport: dict) -> None:
    with guarded_page(browser, url, viewport=viewport) as (page, requests):
        open_page(page, url, "classify")
        wait_for_models(page)
        classify(page, image("red", "circle"), ["a red circle", "a blue square", "a purple circle", "a red star"])
        screenshot(page, out / f"classify-{size}.png")

        page.locator("#tab-search").click()
        expect(page.locator(f"#collection option[value='{COLLECTION}']")).to_be_attached(timeout=WAIT_MS)
        search(page, COLLECTION, text="a blue square")
        screenshot(page, out / f"search-{size}.png")

        page.locator("#tab-compare").click()
        compare(page, [image("red", "circle"), image("blue", "square"), image("green", "triangle")],
                ["a red circle", "a blue square", "a green triangle", "a yellow star"])
        screenshot(page, out / f"compare-{size}.png")
    if requests.foreign:
        raise SystemExit(f"the page made requests to other hosts: {requests.foreign}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "screenshots")
    args = parser.parse_args()
    executable = chromium_path()
    if executable is None:
        raise SystemExit("no system Chromium on PATH (Debian: apt-get install chromium)")
    with tempfile.TemporaryDirectory() as tmp:
        server = LiveServer({}, ["--data-dir", str(Path(tmp) / "data")], Path(tmp) / "server.log")
        try:
            server.wait_healthy(600)
            fill_collection(server.url)
            with sync_playwright() as playwright:
                browser = launch(playwright, executable)
                for size, viewport in (("desktop", DESKTOP), ("phone", PHONE)):
                    shoot(browser, server.url, args.out, size, viewport)
                browser.close()
        finally:
            server.stop()
    for path in sorted(args.out.glob("*.png")):
        print(path.relative_to(REPO) if path.is_relative_to(REPO) else path)


if __name__ == "__main__":
    main()
