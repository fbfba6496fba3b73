"""Drives the playground page as a user would (file pickers, drops, typing, clicks) and reads what it shows.

Shared by the browser tests and by `screenshots.py`. Every wait is Playwright's own (expect / wait_for),
with generous timeouts: the machine running the tests may be busy.
"""

from __future__ import annotations

import base64
import io
import re
import shutil
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from urllib.parse import urlsplit

from PIL import Image, ImageDraw
from playwright.sync_api import Browser, Page, Playwright, expect

WAIT_MS = 120_000  # one request to a busy 2-core machine can take seconds; nothing here should come close
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}
COLORS = {"red": (220, 30, 30), "blue": (30, 70, 220), "green": (30, 170, 60), "yellow": (240, 210, 20),
          "purple": (130, 40, 170)}


def chromium_path() -> str | None:
    """The system's Chromium (Debian's `chromium`); Playwright's own browser download is never used."""
    return shutil.which("chromium") or shutil.which("chromium-browser")


def launch(playwright: Playwright, executable: str) -> Browser:
    return playwright.chromium.launch(executable_path=executable, headless=True, args=["--no-sandbox"])


# --- images ---------------------------------------------------------------------------------------------


def shape_png(color: str, shape: str, *, size: tuple[int, int] = (200, 200),
              box: tuple[float, ...] = (0.2, 0.2, 0.8, 0.8), background: str = "white") -> bytes:
    """A clean shape: `box` is (left, top, right, bottom) as fractions of the canvas."""
    width, height = size
    image = Image.new("RGB", size, background)
    draw = ImageDraw.Draw(image)
    left, top, right, bottom = box[0] * width, box[1] * height, box[2] * width, box[3] * height
    fill = COLORS[color]
    if shape == "circle":
        draw.ellipse((left, top, right, bottom), fill=fill)
    elif shape == "square":
        draw.rectangle((left, top, right, bottom), fill=fill)
    elif shape == "triangle":
        draw.polygon([((left + right) / 2, top), (right, bottom), (left, bottom)], fill=fill)
    else:
        raise ValueError(shape)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def png_file(name: str, data: bytes) -> dict:
    """A file for Playwright's set_input_files, without touching the disk."""
    return {"name": name, "mimeType": "image/png", "buffer": data}


def decode_data_uri(uri: str) -> Image.Image:
    header, _, payload = uri.partition(",")
    assert header.startswith("data:image/") and header.endswith(";base64"), header
    return Image.open(io.BytesIO(base64.b64decode(payload))).convert("RGB")


# --- what the page shows ----------------------------------------------------------------------------------


def shown_tolerance(text: str) -> float:
    """Half a unit in the last shown digit: '0.9973' → 5e-5, '1.4e-20' → 5e-22."""
    mantissa, _, exponent = text.lower().partition("e")
    decimals = len(mantissa.partition(".")[2])
    return 0.5 * 10.0 ** (-decimals) * 10.0 ** int(exponent or 0)


def assert_shows(text: str, value: float, what: str = "") -> None:
    """The page shows `value` to the precision it displays."""
    assert re.fullmatch(r"\d\.\d+(e-\d+)?", text), f"{what}: not a score: {text!r}"
    shown = float(Decimal(text))
    # A hair of slack over the rounding bound for the binary representation of the shown decimal.
    assert abs(shown - value) <= shown_tolerance(text) * (1 + 1e-9), f"{what}: page shows {text}, API says {value!r}"


def chart(page: Page) -> list[tuple[str, str]]:
    rows = page.locator("#classify-chart li")
    return [(row.locator(".chart-label").inner_text(), row.locator(".chart-value").inner_text()) for row in rows.all()]


def error_message(page: Page, selector: str) -> str:
    box = page.locator(selector)
    expect(box).to_be_visible(timeout=WAIT_MS)
    return box.locator(".message").inner_text()


# --- actions ------------------------------------------------------------------------------------------------


def open_page(page: Page, url: str, tab: str = "classify") -> None:
    page.goto(f"{url}/#{tab}")
    expect(page.locator(f"#panel-{tab}")).to_be_visible(timeout=WAIT_MS)


def wait_for_models(page: Page) -> list[str]:
    expect(page.locator("#model option").first).to_be_attached(timeout=WAIT_MS)
    return page.locator("#model option").evaluate_all("options => options.map(o => o.value)")


def set_chips(page: Page, list_id: str, input_id: str, values: Sequence[str]) -> None:
    """Removes every chip with its × button, then types each value and presses Enter, as a keyboard user."""
    removes = page.locator(f"#{list_id} .chip-remove")
    while removes.count():
        removes.first.click()
    for value in values:
        page.locator(f"#{input_id}").fill(value)
        page.locator(f"#{input_id}").press("Enter")
    expect(page.locator(f"#{list_id} .chip-text")).to_have_text(list(values), timeout=WAIT_MS)


def drop_files(page: Page, selector: str, files: Sequence[tuple[str, bytes]]) -> None:
    """A drop of files from the desktop: a DataTransfer holding them, dispatched as dragover then drop."""
    payload = [{"name": name, "data": b64(data)} for name, data in files]
    transfer = page.evaluate_handle("""files => {
        const transfer = new DataTransfer();
        for (const {name, data} of files) {
            const bytes = Uint8Array.from(atob(data), c => c.charCodeAt(0));
            transfer.items.add(new File([bytes], name, {type: "image/png"}));
        }
        return transfer;
    }""", payload)
    page.dispatch_event(selector, "dragover", {"dataTransfer": transfer})
    page.dispatch_event(selector, "drop", {"dataTransfer": transfer})


def paste_files(page: Page, files: Sequence[tuple[str, bytes]]) -> None:
    """A paste of copied image files: a ClipboardEvent carrying them, dispatched on the page's body."""
    payload = [{"name": name, "data": b64(data)} for name, data in files]
    page.evaluate("""files => {
        const transfer = new DataTransfer();
        for (const {name, data} of files) {
            const bytes = Uint8Array.from(atob(data), c => c.charCodeAt(0));
            transfer.items.add(new File([bytes], name, {type: "image/png"}));
        }
        const event = new ClipboardEvent("paste", {clipboardData: transfer, bubbles: true, cancelable: true});
        document.body.dispatchEvent(event);
    }""", payload)


def classify(page: Page, image: tuple[str, bytes], labels: Sequence[str], *, templates: Sequence[str] = (),
             normalization: str = "sigmoid") -> list[tuple[str, str]]:
    page.locator("#classify-file").set_input_files(png_file(*image))
    expect(page.locator("#classify-preview")).to_be_visible(timeout=WAIT_MS)
    set_chips(page, "classify-labels", "classify-label-input", labels)
    page.locator("#classify-templates").fill("\n".join(templates))
    page.get_by_role("radio", name=re.compile(f"^{normalization}")).check()
    return submit_classify(page, expected_rows=len(labels))


def submit_classify(page: Page, expected_rows: int) -> list[tuple[str, str]]:
    page.evaluate("document.getElementById('classify-chart').replaceChildren()")  # only this answer's rows count
    page.locator("#classify-submit").click()
    expect(page.locator("#classify-chart li")).to_have_count(expected_rows, timeout=WAIT_MS)
    return chart(page)


def search(page: Page, collection: str, *, text: str | None = None, image: tuple[str, bytes] | None = None
           ) -> list[dict]:
    """Runs a search; per tile its id, shown score, and thumbnail (data URI or None for the placeholder)."""
    page.locator("#collection").select_option(collection)
    if image is not None:
        page.get_by_role("radio", name="by image").check()
        page.locator("#query-file").set_input_files(png_file(*image))
        expect(page.locator("#query-preview")).to_be_visible(timeout=WAIT_MS)
    else:
        page.get_by_role("radio", name="by text").check()
        page.locator("#query-text").fill(text or "")
    page.evaluate("document.getElementById('search-grid').replaceChildren()")
    page.locator("#search-submit").click()
    expect(page.locator("#search-grid li").first).to_be_visible(timeout=WAIT_MS)
    tiles = []
    for tile in page.locator("#search-grid li").all():
        picture = tile.locator(".thumb")
        is_image = picture.evaluate("e => e.tagName") == "IMG"
        tiles.append({"id": tile.locator(".tile-id").inner_text(), "score": tile.locator(".tile-score").inner_text(),
                      "thumbnail": picture.get_attribute("src") if is_image else None,
                      "label": picture.get_attribute("alt") or picture.get_attribute("aria-label")})
    return tiles


def compare(page: Page, images: Sequence[tuple[str, bytes]], texts: Sequence[str]) -> list[list[str]]:
    """The heatmap's cells, one row per image."""
    page.locator("#compare-file").set_input_files([png_file(*image) for image in images])
    expect(page.locator("#compare-images img")).to_have_count(len(images), timeout=WAIT_MS)
    set_chips(page, "compare-texts", "compare-text-input", texts)
    page.evaluate("document.querySelector('#heatmap tbody').replaceChildren()")
    page.locator("#compare-submit").click()
    expect(page.locator("#heatmap tbody tr")).to_have_count(len(images), timeout=WAIT_MS)
    return [row.locator("td").all_inner_texts() for row in page.locator("#heatmap tbody tr").all()]


# --- no request leaves the server -----------------------------------------------------------------------------


@dataclass
class Requests:
    """Every request the page made: to the server (let through) and to anywhere else (aborted)."""
    origin: str
    local: list[str] = field(default_factory=list)
    foreign: list[str] = field(default_factory=list)


@contextmanager
def guarded_page(browser: Browser, origin: str, viewport: dict | None = None) -> Iterator[tuple[Page, Requests]]:
    """A fresh context (own local storage) whose every request is intercepted: the server's go through,
    any other host's are aborted and recorded."""
    context = browser.new_context(viewport=viewport or DESKTOP)
    context.set_default_timeout(WAIT_MS)
    requests = Requests(origin)

    def guard(route) -> None:
        parts = urlsplit(route.request.url)
        if f"{parts.scheme}://{parts.netloc}" == origin:
            requests.local.append(parts.path)
            route.continue_()
        else:
            requests.foreign.append(route.request.url)
            route.abort()

    context.route("**/*", guard)
    try:
        yield context.new_page(), requests
    finally:
        context.close()


def screenshot(page: Page, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(path), full_page=True, animations="disabled")


def data_uri_of(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{b64(data)}"
