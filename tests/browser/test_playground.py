"""The playground in a real browser (headless system Chromium), against a live server with the demo model.

What the page shows is compared with what the API answers for the same input, called here with httpx
(the independent reference). Every test's page runs behind a route that lets requests to the server
through and aborts and records any other; each test ends by checking that list is empty.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator

import httpx
import pytest

pytest.importorskip("playwright.sync_api", reason="the browser tests need the playwright package (test extra)")

from conftest import API_KEY  # noqa: E402
from live import ImageHost, LiveServer  # noqa: E402
from playground_driver import (  # noqa: E402
    PHONE,
    WAIT_MS,
    Requests,
    assert_shows,
    classify,
    compare,
    data_uri_of,
    decode_data_uri,
    drop_files,
    error_message,
    guarded_page,
    open_page,
    paste_files,
    search,
    set_chips,
    shape_png,
    submit_classify,
    wait_for_models,
)
from playwright.sync_api import Browser, Page, expect  # noqa: E402

RED_CIRCLE = ("red-circle.png", shape_png("red", "circle"))
BLUE_SQUARE = ("blue-square.png", shape_png("blue", "square"))
GREEN_TRIANGLE = ("green-triangle.png", shape_png("green", "triangle"))
LABELS = ["a red circle", "a blue square", "a green triangle", "a purple circle"]


@pytest.fixture
def http(demo_server: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=demo_server.url, timeout=WAIT_MS / 1000) as client:
        yield client


@pytest.fixture
def guarded(browser: Browser, demo_server: LiveServer) -> Iterator[tuple[Page, Requests]]:
    with guarded_page(browser, demo_server.url) as (page, requests):
        yield page, requests
    assert requests.foreign == [], f"the page made requests to other hosts: {requests.foreign}"


@pytest.fixture
def page(guarded: tuple[Page, Requests]) -> Page:
    return guarded[0]


def api_ranking(http: httpx.Client, image: bytes, labels: list[str], **options: object) -> list[tuple[str, float]]:
    response = http.post("/v1/classify", json={"input": [data_uri_of(image)], "labels": labels, **options})
    assert response.status_code == 200, response.text
    return [(row["label"], row["score"]) for row in response.json()["data"][0]["predictions"]]


def assert_chart_is(shown: list[tuple[str, str]], expected: list[tuple[str, float]]) -> None:
    assert [label for label, _ in shown] == [label for label, _ in expected], (shown, expected)
    for (label, text), (_, score) in zip(shown, expected, strict=True):
        assert_shows(text, score, label)


# --- the page ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/", "/playground"])
def test_the_page_loads_with_the_servers_models(page: Page, http: httpx.Client, demo_server: LiveServer,
                                                path: str) -> None:
    page.goto(f"{demo_server.url}{path}")
    expect(page).to_have_title("siglip-serve playground")
    models = [card["id"] for card in http.get("/v1/models").json()["data"]]
    assert wait_for_models(page) == models
    expect(page.locator("#panel-classify")).to_be_visible()
    expect(page.locator("#panel-search")).to_be_hidden()


def test_tabs_work_by_keyboard(page: Page, demo_server: LiveServer) -> None:
    open_page(page, demo_server.url)
    page.locator("#tab-classify").focus()
    page.keyboard.press("ArrowRight")
    expect(page.locator("#tab-search")).to_be_focused()
    expect(page.locator("#tab-search")).to_have_attribute("aria-selected", "true")
    expect(page.locator("#panel-search")).to_be_visible()
    expect(page.locator("#panel-classify")).to_be_hidden()
    page.keyboard.press("End")
    expect(page.locator("#panel-compare")).to_be_visible()
    page.keyboard.press("ArrowRight")  # wraps around
    expect(page.locator("#panel-classify")).to_be_visible()


def test_every_control_and_image_is_labelled(page: Page, demo_server: LiveServer, http: httpx.Client) -> None:
    open_page(page, demo_server.url)
    wait_for_models(page)
    classify(page, RED_CIRCLE, ["a red circle"])
    page.locator("#tab-search").click()
    expect(page.locator("#collection option").first).to_be_attached(timeout=WAIT_MS)
    page.locator("#tab-compare").click()
    compare(page, [RED_CIRCLE], ["a red circle"])
    unlabelled = page.evaluate("""() => {
        const named = (e) => e.labels?.length || e.getAttribute("aria-label") || e.getAttribute("aria-labelledby")
            || (e.tagName === "BUTTON" && e.textContent.trim());
        const controls = [...document.querySelectorAll("input, select, textarea, button")]
            .filter((e) => e.type !== "radio" || !e.closest("label")).filter((e) => !named(e) && !e.closest("label"));
        const images = [...document.querySelectorAll("img")].filter((e) => !e.hidden && !e.alt);
        return [...controls, ...images].map((e) => e.outerHTML.slice(0, 120));
    }""")
    assert unlabelled == []


def test_the_page_fits_a_phone(browser: Browser, demo_server: LiveServer) -> None:
    with guarded_page(browser, demo_server.url, viewport=PHONE) as (page, requests):
        for tab in ("classify", "search", "compare"):
            open_page(page, demo_server.url, tab)
            width = page.evaluate("document.documentElement.scrollWidth")
            assert width <= PHONE["width"], f"{tab}: the page is {width} px wide on a {PHONE['width']} px screen"
    assert requests.foreign == []


# --- classify ------------------------------------------------------------------------------------------------


def test_the_chart_shows_what_the_api_answers(page: Page, http: httpx.Client, demo_server: LiveServer) -> None:
    open_page(page, demo_server.url)
    wait_for_models(page)
    shown = classify(page, RED_CIRCLE, LABELS)
    expected = api_ranking(http, RED_CIRCLE[1], LABELS)
    assert_chart_is(shown, expected)
    assert shown[0][0] == "a red circle"  # the demo model knows a red circle

    templates = ["a drawing of {}", "a picture of {}"]
    page.locator("#classify-templates").fill("\n".join(templates))
    page.get_by_role("radio", name=re.compile("^softmax")).check()
    shown = submit_classify(page, expected_rows=len(LABELS))
    expected = api_ranking(http, RED_CIRCLE[1], LABELS, hypothesis_template=templates, normalization="softmax")
    assert_chart_is(shown, expected)
    assert sum(float(text) for _, text in shown) == pytest.approx(1.0, abs=len(LABELS) * 5e-5)


def test_a_dropped_image_is_classified(page: Page, http: httpx.Client, demo_server: LiveServer) -> None:
    open_page(page, demo_server.url)
    wait_for_models(page)
    drop_files(page, "#classify-drop", [BLUE_SQUARE])
    expect(page.locator("#classify-preview")).to_have_attribute("alt", re.compile("blue-square.png"))
    set_chips(page, "classify-labels", "classify-label-input", LABELS)
    shown = submit_classify(page, expected_rows=len(LABELS))
    assert_chart_is(shown, api_ranking(http, BLUE_SQUARE[1], LABELS))


def test_a_pasted_image_is_classified(page: Page, http: httpx.Client, demo_server: LiveServer) -> None:
    open_page(page, demo_server.url)
    wait_for_models(page)
    paste_files(page, [GREEN_TRIANGLE])
    expect(page.locator("#classify-preview")).to_have_attribute("alt", re.compile("green-triangle.png"))
    set_chips(page, "classify-labels", "classify-label-input", LABELS)
    shown = submit_classify(page, expected_rows=len(LABELS))
    assert_chart_is(shown, api_ranking(http, GREEN_TRIANGLE[1], LABELS))


@pytest.fixture
def image_host() -> Iterator[ImageHost]:
    """Another host (a loopback port of its own) serving the red circle."""
    with ImageHost({"/red-circle.png": (RED_CIRCLE[1], "image/png")}) as host:
        yield host


def test_an_image_url_is_fetched_by_the_server_never_by_the_page(
        guarded: tuple[Page, Requests], http: httpx.Client, demo_server: LiveServer, image_host: ImageHost) -> None:
    page, requests = guarded
    url = f"{image_host.url}/red-circle.png"
    open_page(page, demo_server.url)
    wait_for_models(page)
    page.locator("#classify-url").fill(url)
    set_chips(page, "classify-labels", "classify-label-input", LABELS)
    shown = submit_classify(page, expected_rows=len(LABELS))
    assert image_host.requests == ["/red-circle.png"]  # fetched once, by the server
    assert requests.foreign == []  # the page never loaded it (no preview)
    response = http.post("/v1/classify", json={"input": [url], "labels": LABELS})
    assert response.status_code == 200, response.text
    assert_chart_is(shown, [(row["label"], row["score"]) for row in response.json()["data"][0]["predictions"]])


def test_nothing_is_sent_before_an_image_is_chosen(guarded: tuple[Page, Requests], demo_server: LiveServer) -> None:
    page, requests = guarded
    open_page(page, demo_server.url)
    wait_for_models(page)
    page.locator("#classify-submit").click()
    expect(page.locator("#classify-error .message")).to_have_text(re.compile("image"))
    page.locator("#tab-compare").click()
    page.locator("#compare-submit").click()
    expect(page.locator("#compare-error .message")).to_have_text(re.compile("image"))
    assert not {"/v1/classify", "/v1/rerank"} & set(requests.local), requests.local


def test_labels_are_editable_chips(page: Page, demo_server: LiveServer) -> None:
    open_page(page, demo_server.url)
    set_chips(page, "classify-labels", "classify-label-input", ["a red circle", "a blue square"])
    page.locator("#classify-label-input").fill("a cat, a dog")  # a comma separates labels
    page.locator("#classify-label-input").press("Enter")
    page.get_by_role("button", name="Edit label: a blue square").click()
    page.get_by_role("textbox", name="Edit label").fill("a green square")
    page.keyboard.press("Enter")
    page.get_by_role("button", name="Remove label: a cat").click()
    expect(page.locator("#classify-labels .chip-text")).to_have_text(["a red circle", "a green square", "a dog"])


def test_api_errors_are_shown_as_the_api_words_them(page: Page, http: httpx.Client,
                                                    demo_server: LiveServer) -> None:
    open_page(page, demo_server.url)
    wait_for_models(page)
    image = RED_CIRCLE
    page.locator("#classify-file").set_input_files({"name": image[0], "mimeType": "image/png", "buffer": image[1]})
    set_chips(page, "classify-labels", "classify-label-input", ["a red circle"])
    page.locator("#classify-templates").fill("no placeholder")
    page.locator("#classify-submit").click()
    reference = http.post("/v1/classify", json={"input": [data_uri_of(image[1])], "labels": ["a red circle"],
                                                "hypothesis_template": "no placeholder"})
    assert reference.status_code == 400
    assert error_message(page, "#classify-error") == reference.json()["error"]["message"]
    expect(page.locator("#classify-error .error-head")).to_have_text("HTTP 400 · invalid_request_error")


# --- search ---------------------------------------------------------------------------------------------------


@pytest.fixture
def shapes_collection(http: httpx.Client) -> Iterator[str]:
    """Three distinct images, ingested through the API."""
    name = f"shapes-{uuid.uuid4().hex[:8]}"
    assert http.post("/v1/collections", json={"name": name}).status_code == 201
    items = [{"id": file_name.removesuffix(".png"), "image": data_uri_of(data)}
             for file_name, data in (RED_CIRCLE, BLUE_SQUARE, GREEN_TRIANGLE)]
    response = http.post(f"/v1/collections/{name}/items", json={"items": items})
    assert response.status_code == 200 and response.json()["upserted"] == 3, response.text
    yield name
    http.delete(f"/v1/collections/{name}")


def dominant(image_uri: str) -> tuple[int, int, int]:
    """The mean color of the thumbnail's non-white pixels: what the user sees in the tile."""
    image = decode_data_uri(image_uri)
    pixels = [p for p in image.getdata() if min(p) < 200]
    assert pixels, "the thumbnail is blank"
    return tuple(sum(channel) // len(pixels) for channel in zip(*pixels, strict=True))


def test_search_by_text_shows_the_right_thumbnail_first(page: Page, http: httpx.Client, demo_server: LiveServer,
                                                          shapes_collection: str) -> None:
    open_page(page, demo_server.url, "search")
    expect(page.locator(f"#collection option[value='{shapes_collection}']")).to_be_attached(timeout=WAIT_MS)
    tiles = search(page, shapes_collection, text="a blue square")
    assert [tile["id"] for tile in tiles][:1] == ["blue-square"]
    reference = http.post(f"/v1/collections/{shapes_collection}/search",
                          json={"query": "a blue square", "with_thumbnails": True}).json()["data"]
    assert [tile["id"] for tile in tiles] == [hit["id"] for hit in reference]
    for tile, hit in zip(tiles, reference, strict=True):
        assert_shows(tile["score"], hit["score"], tile["id"])
    first = tiles[0]
    assert first["thumbnail"] is not None, "the first result shows a placeholder, not its thumbnail"
    red, green, blue = dominant(first["thumbnail"])
    assert blue > 150 and red < 100 and green < 130, (red, green, blue)
    assert first["label"] == "blue-square"


def test_search_by_image_shows_the_right_thumbnail_first(page: Page, demo_server: LiveServer,
                                                           shapes_collection: str) -> None:
    open_page(page, demo_server.url, "search")
    expect(page.locator(f"#collection option[value='{shapes_collection}']")).to_be_attached(timeout=WAIT_MS)
    # Another drawing of a red circle: smaller, off-center, on a wider canvas.
    query = ("query.png", shape_png("red", "circle", size=(300, 180), box=(0.55, 0.3, 0.85, 0.8)))
    tiles = search(page, shapes_collection, image=query)
    assert tiles[0]["id"] == "red-circle"
    red, green, blue = dominant(tiles[0]["thumbnail"])
    assert red > 150 and green < 100 and blue < 100, (red, green, blue)


def test_images_dropped_on_the_page_are_ingested(page: Page, http: httpx.Client, demo_server: LiveServer) -> None:
    name = f"dropped-{uuid.uuid4().hex[:8]}"
    open_page(page, demo_server.url, "search")
    page.get_by_label("New collection").fill(name)
    page.get_by_role("button", name="Create").click()
    expect(page.locator("#collection")).to_have_value(name, timeout=WAIT_MS)
    drop_files(page, "#ingest-drop", [RED_CIRCLE, BLUE_SQUARE, GREEN_TRIANGLE])
    expect(page.locator("#ingest-status")).to_have_text(f"Stored 3 of 3 image(s) in {name}.", timeout=WAIT_MS)
    assert http.get(f"/v1/collections/{name}").json()["count"] == 3
    hits = http.post(f"/v1/collections/{name}/search", json={"query": "a green triangle"}).json()["data"]
    assert hits[0]["id"] == "green-triangle.png"
    assert hits[0]["metadata"] == {"filename": "green-triangle.png"}
    http.delete(f"/v1/collections/{name}")


# --- compare --------------------------------------------------------------------------------------------------


def test_the_heatmap_equals_rerank(page: Page, http: httpx.Client, demo_server: LiveServer) -> None:
    images = [RED_CIRCLE, BLUE_SQUARE, GREEN_TRIANGLE]
    texts = ["a red circle", "a blue square", "a green triangle", "a yellow star"]
    open_page(page, demo_server.url, "compare")
    wait_for_models(page)
    cells = compare(page, images, texts)
    headers = page.locator("#heatmap thead th").all_inner_texts()
    assert headers[1:] == texts
    assert page.locator("#heatmap tbody th img").evaluate_all("imgs => imgs.map(i => i.alt)") == [
        name for name, _ in images]
    for (name, data), row in zip(images, cells, strict=True):
        response = http.post("/v1/rerank", json={"query": {"image": data_uri_of(data)}, "documents": texts})
        assert response.status_code == 200, response.text
        scores = {result["index"]: result["relevance_score"] for result in response.json()["results"]}
        assert len(row) == len(texts)
        for j, text in enumerate(row):
            assert_shows(text, scores[j], f"{name} × {texts[j]}")
    # Each image's own description scores highest in its row, above every other label by 10x at least.
    # Not "above 0.5": a sigmoid probability is each pair's own, and session 19's demo weights give the
    # blue square 0.25 with every other label under 1e-6.
    for i, row in enumerate(cells):
        values = [float(text) for text in row]
        assert all(values[i] > 10 * value for j, value in enumerate(values) if j != i), cells


# --- API keys -------------------------------------------------------------------------------------------------


def test_with_an_api_key_the_page_shows_the_401_then_works_once_the_key_is_entered(
        browser: Browser, keyed_server: LiveServer) -> None:
    unauthorized = httpx.get(f"{keyed_server.url}/v1/models", timeout=WAIT_MS / 1000)
    assert unauthorized.status_code == 401
    with guarded_page(browser, keyed_server.url) as (page, requests):
        response = page.goto(f"{keyed_server.url}/")
        assert response is not None and response.status == 200, "the page itself is public static content"
        assert error_message(page, "#global-error") == unauthorized.json()["error"]["message"]
        expect(page.locator("#global-error .error-head")).to_have_text("HTTP 401 · authentication_error")

        page.get_by_label("API key").fill(API_KEY)
        page.get_by_role("button", name="Save key").click()
        assert wait_for_models(page) == ["siglip-demo-shapes"]
        expect(page.locator("#global-error")).to_be_hidden()
        shown = classify(page, RED_CIRCLE, ["a red circle", "a blue square"])
        assert shown[0][0] == "a red circle"

        page.reload()  # kept in local storage
        expect(page.get_by_label("API key")).to_have_value(API_KEY)
        assert wait_for_models(page) == ["siglip-demo-shapes"]
    assert requests.foreign == []


# --- no request leaves the server -------------------------------------------------------------------------------


def test_no_request_leaves_the_server(guarded: tuple[Page, Requests], demo_server: LiveServer,
                                      shapes_collection: str) -> None:
    """Every tool used once, including an image URL on another host for classify (which the server is asked
    to fetch, never the page): every request the browser made went to the server."""
    page, requests = guarded
    open_page(page, demo_server.url)
    wait_for_models(page)
    classify(page, RED_CIRCLE, ["a red circle"])
    page.locator("#classify-url").fill("http://127.0.0.2:9/missing.png")  # nothing listens: the server says so
    page.locator("#classify-submit").click()
    expect(page.locator("#classify-error .message")).to_contain_text("127.0.0.2", timeout=WAIT_MS)
    page.locator("#tab-search").click()
    expect(page.locator(f"#collection option[value='{shapes_collection}']")).to_be_attached(timeout=WAIT_MS)
    search(page, shapes_collection, text="a red circle")
    page.locator("#tab-compare").click()
    compare(page, [RED_CIRCLE], ["a red circle"])
    # The interception saw the page, its modules and the API calls; none went anywhere else.
    for path in ("/", "/playground/style.css", "/playground/js/main.js", "/v1/models", "/v1/classify",
                 "/v1/collections", f"/v1/collections/{shapes_collection}/search", "/v1/rerank"):
        assert path in requests.local, (path, requests.local)
    assert requests.foreign == []
