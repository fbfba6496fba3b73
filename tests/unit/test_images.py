"""Image decoding: formats, EXIF orientation, transparency, and a typed error for every bad input.

Expected pixels are set by hand when the images are made here; nothing is compared
against a value our own decoder computed, except where the test is batch/isolation
invariance of the library.
"""

from __future__ import annotations

import io
import struct
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sample_images import encode, photo_like

import siglip_serve
from siglip_serve.errors import EmptyImageError, ImageTooLargeError, InvalidImageError, SiglipServeError
from siglip_serve.memory import PILLOW_BLOCK_BYTES, configure_image_memory
from siglip_serve.preprocess.images import ImageTransform, decode_image, load_image, prepare_image
from siglip_serve.preprocess.pixel_budget import PixelBudget

RED = (220, 20, 30)
BLUE = (20, 40, 230)
GREEN = (30, 200, 40)


def assert_close_colour(pixel: tuple[int, ...], expected: tuple[int, int, int], tolerance: int = 8) -> None:
    assert len(pixel) == 3
    assert all(abs(int(a) - int(b)) <= tolerance for a, b in zip(pixel, expected, strict=True)), (pixel, expected)


def png_with_header_only(width: int, height: int) -> bytes:
    """A PNG that declares width x height but carries almost no pixel data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 10))
            + chunk(b"IEND", b""))


def gif_with_header_only(screen: tuple[int, int], frame: tuple[int, int]) -> bytes:
    """A GIF whose logical screen and first frame declare the given sizes, with one pixel of data."""
    header = b"GIF89a" + struct.pack("<HHBBB", *screen, 0, 0, 0)  # no global colour table
    descriptor = b"," + struct.pack("<HHHHB", 0, 0, *frame, 0x80)  # a local colour table of 2 entries
    image_data = bytes([2, 2, 0x4C, 0x01, 0]) + b";"  # LZW: clear, index 0, end
    return header + descriptor + b"\0\0\0\xff\xff\xff" + image_data


# --- formats -----------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF"])
def test_decodes_each_accepted_format_from_bytes(fmt: str) -> None:
    save_args = {"quality": 95} if fmt in ("JPEG", "WEBP") else {}
    data = encode(Image.new("RGB", (40, 24), GREEN), fmt, **save_args)
    image = decode_image(data)
    assert image.mode == "RGB"
    assert image.size == (40, 24)
    assert_close_colour(image.getpixel((20, 12)), GREEN)


@pytest.mark.parametrize("kind", [bytes, bytearray, memoryview])
def test_accepts_any_bytes_like(kind: type) -> None:
    data = kind(encode(Image.new("RGB", (6, 5), BLUE), "PNG"))
    image = load_image(data)
    assert image.size == (6, 5)
    assert image.getpixel((0, 0)) == BLUE


def test_animated_gif_gives_its_first_frame() -> None:
    frames = [Image.new("RGB", (16, 16), RED), Image.new("RGB", (16, 16), BLUE)]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    data = buffer.getvalue()
    assert Image.open(io.BytesIO(data)).n_frames == 2  # the premise: really animated
    image = decode_image(data)
    assert image.mode == "RGB"
    assert_close_colour(image.getpixel((8, 8)), RED)


def test_animated_webp_gives_its_first_frame() -> None:
    frames = [Image.new("RGB", (16, 16), RED), Image.new("RGB", (16, 16), BLUE)]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="WEBP", save_all=True, append_images=frames[1:], duration=100,
                   lossless=True)
    image = decode_image(buffer.getvalue())
    assert_close_colour(image.getpixel((8, 8)), RED)


def _left_red_right_blue() -> Image.Image:
    image = Image.new("RGB", (40, 20), BLUE)
    image.paste(RED, (0, 0, 20, 20))
    return image


def _jpeg_with_orientation(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation  # Orientation
    return encode(_left_red_right_blue(), "JPEG", quality=95, exif=exif)


def test_exif_orientation_6_is_applied() -> None:
    """Orientation 6: the stored image must be turned 90 degrees clockwise for display.
    Stored 40x20, left half red -> displayed 20x40 with the red half on top."""
    image = decode_image(_jpeg_with_orientation(6))
    assert image.size == (20, 40)
    assert_close_colour(image.getpixel((10, 5)), RED)
    assert_close_colour(image.getpixel((10, 34)), BLUE)


def test_exif_orientation_of_a_pil_image_is_applied_too() -> None:
    image = load_image(Image.open(io.BytesIO(_jpeg_with_orientation(6))))
    assert image.size == (20, 40)
    assert_close_colour(image.getpixel((10, 5)), RED)


def test_exif_orientation_1_keeps_the_image_as_stored() -> None:
    image = decode_image(_jpeg_with_orientation(1))
    assert image.size == (40, 20)
    assert_close_colour(image.getpixel((5, 10)), RED)


# --- modes -------------------------------------------------------------------------------------


def test_transparent_rgba_is_composited_onto_white() -> None:
    rgba = Image.new("RGBA", (8, 8), (0, 0, 0, 0))  # fully transparent black
    rgba.putpixel((0, 0), (*RED, 255))  # one opaque pixel
    rgba.putpixel((1, 0), (0, 0, 0, 128))  # half-transparent black
    for image in (decode_image(encode(rgba, "PNG")), load_image(rgba)):
        assert image.mode == "RGB"
        assert image.getpixel((5, 5)) == (255, 255, 255)
        assert image.getpixel((0, 0)) == RED
        assert_close_colour(image.getpixel((1, 0)), (127, 127, 127), tolerance=1)


def test_palette_image_with_transparency_is_composited_onto_white() -> None:
    palette_image = Image.new("P", (8, 8), 0)
    palette_image.putpalette([0, 0, 0, *RED] + [0, 0, 0] * 254)  # index 0 black, index 1 red
    palette_image.putpixel((0, 0), 1)
    for fmt in ("PNG", "GIF"):
        data = encode(palette_image, fmt, transparency=0)
        assert Image.open(io.BytesIO(data)).mode == "P"  # the premise
        image = decode_image(data)
        assert image.mode == "RGB"
        assert image.getpixel((4, 4)) == (255, 255, 255), fmt  # transparent index -> white, not black
        assert image.getpixel((0, 0)) == RED, fmt


def test_grayscale_becomes_rgb_with_equal_channels() -> None:
    gray = Image.new("L", (6, 4), 77)
    gray.putpixel((0, 0), 200)
    for image in (decode_image(encode(gray, "PNG")), load_image(gray)):
        assert image.mode == "RGB"
        assert image.getpixel((3, 3)) == (77, 77, 77)
        assert image.getpixel((0, 0)) == (200, 200, 200)


def test_paths_are_read(tmp_path: Path) -> None:
    path = tmp_path / "green.png"
    path.write_bytes(encode(Image.new("RGB", (3, 2), GREEN), "PNG"))
    for source in (path, str(path)):
        image = load_image(source)
        assert image.size == (3, 2)
        assert image.getpixel((1, 1)) == GREEN


# --- bad input ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [b"this is not an image at all", b"\x00" * 64, b"GIF89a", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff"],
    ids=["text", "zeros", "gif-magic-only", "png-magic-only", "jpeg-magic-only"],
)
def test_garbage_bytes_are_invalid(data: bytes) -> None:
    with pytest.raises(InvalidImageError):
        decode_image(data)


@pytest.mark.parametrize("data", [b"", bytearray(), memoryview(b"")], ids=["bytes", "bytearray", "memoryview"])
def test_empty_bytes_are_invalid(data) -> None:
    with pytest.raises(InvalidImageError):
        load_image(data)


@pytest.mark.parametrize("size", [(16, 12), (64, 48), (300, 200)])
@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF"])
def test_truncated_file_is_invalid_image(fmt: str, size: tuple[int, int]) -> None:
    """Cut in half, any accepted format gives InvalidImageError, never a bare OSError."""
    data = encode(photo_like(*size), fmt)
    with pytest.raises(InvalidImageError):
        decode_image(data[: len(data) // 2])


def test_zero_size_pil_image_is_empty() -> None:
    with pytest.raises(EmptyImageError):
        load_image(Image.new("RGB", (0, 0)))
    with pytest.raises(EmptyImageError):
        load_image(Image.new("RGB", (0, 10)))


def test_image_over_the_pixel_limit_is_too_large() -> None:
    data = encode(Image.new("RGB", (300, 300), GREEN), "PNG")
    with pytest.raises(ImageTooLargeError) as info:
        decode_image(data, max_pixels=10_000)
    assert "10000" in str(info.value)
    assert decode_image(data, max_pixels=90_000).size == (300, 300)  # exactly at the limit is fine
    with pytest.raises(ImageTooLargeError):
        load_image(Image.new("RGB", (300, 300)), max_pixels=10_000)


def test_pixel_limit_is_checked_before_decoding_pixels() -> None:
    """The header says 300x300 but the data is missing: decoding would fail as truncated, so a
    size error proves the check came first."""
    data = png_with_header_only(300, 300)
    with pytest.raises(InvalidImageError):
        decode_image(data)  # under the default limit the (absent) pixels are decoded and fail
    with pytest.raises(ImageTooLargeError):
        decode_image(data, max_pixels=10_000)


def test_decompression_bomb_is_too_large_not_invalid() -> None:
    with pytest.raises(ImageTooLargeError):
        decode_image(png_with_header_only(100_000, 100_000))  # 10 gigapixels declared in 60 bytes


@pytest.mark.parametrize(
    ("data", "declared"),
    [
        (png_with_header_only(100_000, 100_000), 10**10),
        (gif_with_header_only((65_535, 65_535), (1, 1)), 65_535**2),
        (gif_with_header_only((1, 1), (65_535, 65_535)), 65_535**2),  # the first frame grows the image
    ],
    ids=["png", "gif-screen", "gif-frame"],
)
def test_decompression_bomb_message_gives_the_configured_limit(data: bytes, declared: int) -> None:
    """Pillow refuses these in Image.open (over twice its MAX_IMAGE_PIXELS), before our own check;
    the message must still be ours, with the configured limit, not Pillow's."""
    for call in (lambda: decode_image(data, max_pixels=40_000),
                 lambda: prepare_image(data, np.asarray, max_pixels=40_000)):
        with pytest.raises(ImageTooLargeError) as info:
            call()
        message = str(info.value)
        assert message == f"image is {declared} pixels, over the limit of 40000 pixels"
        assert str(2 * Image.MAX_IMAGE_PIXELS) not in message


def test_configured_pixel_limit_above_pillows_default_is_honoured() -> None:
    """The caller's max_pixels is the limit: a 90-megapixel image under a 200-megapixel limit must
    not be refused as too large (Pillow's own bomb guard, 89.5 MP, must not override it). The
    data is absent, so the decode fails as invalid instead."""
    data = png_with_header_only(10_000, 9_000)
    with pytest.raises(InvalidImageError):
        decode_image(data, max_pixels=200_000_000)


@pytest.mark.parametrize("fmt", ["ICO", "PCX", "TGA", "PPM"])
def test_formats_outside_the_allowed_list_are_invalid(fmt: str) -> None:
    data = encode(Image.new("RGB", (16, 16), GREEN), fmt)
    assert Image.open(io.BytesIO(data)).size == (16, 16)  # the premise: Pillow itself could read it
    with pytest.raises(InvalidImageError):
        decode_image(data)


def test_missing_file_is_invalid_and_names_the_path(tmp_path: Path) -> None:
    path = tmp_path / "no-such-image.jpg"
    with pytest.raises(InvalidImageError) as info:
        load_image(str(path))
    assert str(path) in str(info.value)


def test_directory_path_is_invalid(tmp_path: Path) -> None:
    with pytest.raises(InvalidImageError):
        load_image(tmp_path)


def test_unsupported_source_type_is_invalid() -> None:
    with pytest.raises(InvalidImageError):
        load_image(12345)  # type: ignore[arg-type]


# --- through the library -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def model(siglip1_dir: Path) -> siglip_serve.Model:
    return siglip_serve.load(str(siglip1_dir), device="cpu", dtype="float32")


@pytest.mark.parametrize(
    "bad",
    [b"garbage", b"", Image.new("RGB", (0, 0)), "/no/such/file.png",
     encode(photo_like(64, 48), "WEBP")[:200]],
    ids=["garbage", "empty", "zero-size", "missing-path", "truncated-webp"],
)
def test_one_bad_image_is_named_and_does_not_affect_the_others(model: siglip_serve.Model, bad) -> None:
    good = [encode(photo_like(40, 30, seed=1), "PNG"), encode(photo_like(25, 50, seed=2), "PNG")]
    with pytest.raises(SiglipServeError) as info:
        model.embed_images([good[0], bad, good[1]])
    assert isinstance(info.value, InvalidImageError | EmptyImageError)
    assert info.value.param == "input[1]"
    assert "input[1]" in str(info.value)

    together = model.embed_images(good)
    for index, image in enumerate(good):
        torch.testing.assert_close(model.embed_images([image])[0], together[index], atol=1e-5, rtol=0)


def test_bad_image_error_names_its_position_in_a_long_list(model: siglip_serve.Model) -> None:
    good = encode(photo_like(20, 20), "PNG")
    with pytest.raises(InvalidImageError) as info:
        model.embed_images([good] * 5 + [good[:40]] + [good])
    assert info.value.param == "input[5]"


def test_prepared_image_is_squashed_to_the_model_size(model: siglip_serve.Model) -> None:
    """Any aspect ratio becomes the checkpoint's square input, values in [-1, 1]."""
    for size in ((97, 41), (30, 120), (5, 7)):
        pixels = model.prepare_image(photo_like(*size))
        assert pixels.shape == (3, 32, 32)
        assert pixels.dtype == np.float32
        assert pixels.min() >= -1.0 and pixels.max() <= 1.0
    white = model.prepare_image(Image.new("RGB", (10, 10), (255, 255, 255)))
    black = model.prepare_image(Image.new("RGB", (10, 10), (0, 0, 0)))
    np.testing.assert_allclose(white, 1.0, atol=1e-6)  # 255/255 * 2 - 1
    np.testing.assert_allclose(black, -1.0, atol=1e-6)


# --- prepare_image: decode, transform and the pixel budget ---------------------------------------

TRANSFORM = ImageTransform(height=32, width=32, resample=Image.Resampling.BICUBIC)
HANG_S = 30.0  # only turns a hang into a failure; no assertion depends on timing


def wait_until(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + HANG_S
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached")
        time.sleep(0.001)


@pytest.mark.parametrize("kind", ["bytes", "path", "pil", "pil-lazy"])
def test_prepare_image_equals_load_then_transform(kind: str, tmp_path: Path) -> None:
    for name, image in {"photo": photo_like(97, 41, seed=1), "gray": photo_like(20, 30).convert("L"),
                        "rgba": photo_like(40, 24).convert("RGBA")}.items():
        data = encode(image, "PNG")
        path = tmp_path / f"{name}.png"
        path.write_bytes(data)
        source = {"bytes": data, "path": path, "pil": image, "pil-lazy": Image.open(io.BytesIO(data))}[kind]
        expected = TRANSFORM(load_image(data))
        np.testing.assert_array_equal(prepare_image(source, TRANSFORM), expected)
        np.testing.assert_array_equal(prepare_image(source, TRANSFORM, budget=PixelBudget(10)), expected)


def test_prepare_image_orients_and_leaves_the_callers_image_alone() -> None:
    data = _jpeg_with_orientation(6)
    for source in (data, Image.open(io.BytesIO(data))):
        pixels = prepare_image(source, np.asarray)
        assert pixels.shape == (40, 20, 3)  # stored 40x20, displayed 20 wide and 40 high
        assert_close_colour(tuple(pixels[5, 10]), RED)
        assert_close_colour(tuple(pixels[34, 10]), BLUE)
    caller = Image.new("L", (40, 20), 77)
    prepare_image(caller, np.asarray)
    assert caller.mode == "L" and caller.size == (40, 20)  # neither converted nor closed
    assert caller.getpixel((5, 5)) == 77


def test_prepare_image_transform_may_return_the_image_itself() -> None:
    image = prepare_image(encode(Image.new("RGB", (6, 4), GREEN), "PNG"), lambda rgb: rgb)
    assert image.getpixel((5, 3)) == GREEN  # not closed under the caller


def test_prepare_image_holds_the_pixels_until_transformed() -> None:
    budget = PixelBudget(1_000_000)
    seen: list[int] = []

    def transform(rgb: Image.Image) -> np.ndarray:
        seen.append(budget.in_use)
        return TRANSFORM(rgb)

    prepare_image(encode(photo_like(300, 200), "PNG"), transform, budget=budget)
    assert seen == [60_000]
    assert budget.in_use == 0 and budget.peak == 60_000


def test_prepare_image_reserves_the_drafted_size() -> None:
    """With a JPEG draft, the pixels that will be decoded (1/2 scale here: 1/4 would make the
    height 192, under the draft size) are what is reserved."""
    data = encode(photo_like(1024, 768), "JPEG", quality=90)
    budget = PixelBudget(10**7)
    assert prepare_image(data, np.asarray, draft_size=200, budget=budget).shape == (384, 512, 3)
    assert budget.peak == 512 * 384
    full = PixelBudget(10**7)
    prepare_image(data, np.asarray, budget=full)
    assert full.peak == 1024 * 768


def test_concurrent_decodes_stay_within_the_budget() -> None:
    """Six threads, a budget of two images: never more than two inside at once, and two do
    run together (the barrier lets a thread on only when a second one is inside with it)."""
    size = (16, 8)
    budget = PixelBudget(2 * size[0] * size[1])
    pair = threading.Barrier(2, timeout=HANG_S)
    lock = threading.Lock()
    inside, most_inside, in_use_seen = 0, 0, []

    def slow_transform(rgb: Image.Image) -> np.ndarray:
        nonlocal inside, most_inside
        with lock:
            inside += 1
            most_inside = max(most_inside, inside)
            in_use_seen.append(budget.in_use)
        try:
            pair.wait()  # a slow transform: it holds its pixels until a partner is decoded too
            return TRANSFORM(rgb)
        finally:
            with lock:
                inside -= 1

    data = [encode(photo_like(*size, seed=seed), "PNG") for seed in range(6)]
    results: list[np.ndarray | BaseException] = [None] * len(data)  # type: ignore[list-item]

    def work(index: int) -> None:
        try:
            results[index] = prepare_image(data[index], slow_transform, budget=budget)
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            results[index] = exc

    threads = [threading.Thread(target=work, args=(i,), daemon=True) for i in range(len(data))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(HANG_S)
    assert all(isinstance(result, np.ndarray) for result in results), results
    assert most_inside == 2
    assert max(in_use_seen) <= budget.capacity
    assert budget.peak == budget.capacity and budget.in_use == 0


def test_an_image_larger_than_the_budget_decodes_alone() -> None:
    """Not refused by the budget (the per-image limit refuses): it waits until no other image
    holds pixels, then runs with nothing else decoding, and later images wait for it."""
    budget = PixelBudget(100)
    gates = {size: threading.Event() for size in ((8, 8), (20, 20), (9, 7))}  # 64, 400 and 63 pixels
    log: list[tuple[tuple[int, int], int]] = []

    def gated(rgb: Image.Image) -> tuple[int, int]:
        log.append((rgb.size, budget.in_use))
        assert gates[rgb.size].wait(HANG_S)
        return rgb.size

    def start(size: tuple[int, int]) -> threading.Thread:
        data = encode(Image.new("RGB", size, GREEN), "PNG")
        thread = threading.Thread(target=prepare_image, args=(data, gated), kwargs={"budget": budget}, daemon=True)
        thread.start()
        return thread

    threads = [start((8, 8))]
    wait_until(lambda: len(log) == 1)
    threads.append(start((20, 20)))
    wait_until(lambda: budget.waiting == 1)
    threads.append(start((9, 7)))  # would fit beside the first, but the big one came first
    wait_until(lambda: budget.waiting == 2)
    assert log == [((8, 8), 64)]
    gates[(8, 8)].set()
    wait_until(lambda: len(log) == 2)
    assert log[1] == ((20, 20), 100)  # alone: the whole budget is its, and the last still waits
    assert budget.waiting == 1
    gates[(20, 20)].set()
    gates[(9, 7)].set()
    for thread in threads:
        thread.join(HANG_S)
    assert [entry[0] for entry in log] == [(8, 8), (20, 20), (9, 7)]
    assert budget.in_use == 0 and budget.peak == 100


def test_the_budget_is_released_after_an_exception() -> None:
    budget = PixelBudget(100_000)

    def failing(rgb: Image.Image) -> np.ndarray:
        raise RuntimeError("transform failed")

    with pytest.raises(RuntimeError, match="transform failed"):
        prepare_image(encode(photo_like(30, 20), "PNG"), failing, budget=budget)
    assert budget.in_use == 0 and budget.peak == 600

    with pytest.raises(InvalidImageError):  # header fine, pixel data missing: fails while decoding
        prepare_image(png_with_header_only(300, 300), TRANSFORM, budget=budget)
    assert budget.in_use == 0 and budget.peak == 90_000

    with pytest.raises(ImageTooLargeError):  # refused from the header, before any reservation
        prepare_image(png_with_header_only(400, 400), TRANSFORM, max_pixels=100_000, budget=budget)
    assert budget.in_use == 0 and budget.peak == 90_000


# --- siglip_serve.memory -------------------------------------------------------------------------


@pytest.fixture
def pillow_block_size() -> Iterator[int]:
    """Pillow's block size, restored after the test (it is process-wide)."""
    saved = Image.core.get_block_size()
    yield saved
    Image.core.set_block_size(saved)


def test_configure_image_memory_makes_large_images_mmapped_blocks(
    pillow_block_size: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PILLOW_BLOCK_SIZE", raising=False)
    settings = configure_image_memory()
    assert Image.core.get_block_size() == settings["pillow_block_size"] == PILLOW_BLOCK_BYTES
    assert PILLOW_BLOCK_BYTES > 32 * 1024 * 1024  # above glibc's largest dynamic mmap threshold (mallopt(3))
    assert decode_image(encode(Image.new("RGB", (300, 200), GREEN), "PNG")).getpixel((1, 1)) == GREEN


def test_configure_image_memory_leaves_an_operators_block_size(
    pillow_block_size: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PILLOW_BLOCK_SIZE", "8m")
    Image.core.set_block_size(8 * 1024 * 1024)  # what Pillow did with it on import
    assert configure_image_memory()["pillow_block_size"] == 8 * 1024 * 1024
