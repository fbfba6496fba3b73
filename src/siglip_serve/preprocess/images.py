"""Image decoding and SigLIP preprocessing, CPU only, no torchvision.

The pipeline follows transformers' PIL backend (`SiglipImageProcessorPil`), which
is the reference (transformers image_processing_siglip.py): convert to RGB compositing alpha onto
white, squash-resize with the checkpoint's PIL filter, rescale by 1/255 and
normalize with its mean/std. We add what users expect and the reference lacks:
EXIF orientation and a pixel limit checked before any pixel is decoded.
"""

from __future__ import annotations

import io
import re
import warnings
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TypeAlias, TypeVar

import numpy as np
from PIL import (  # noqa: F401  the plugins register the formats we accept
    BmpImagePlugin,
    GifImagePlugin,
    Image,
    ImageOps,
    JpegImagePlugin,
    PngImagePlugin,
    TiffImagePlugin,
    UnidentifiedImageError,
    WebPImagePlugin,
)

from siglip_serve.config import default
from siglip_serve.errors import EmptyImageError, ImageTooLargeError, InvalidImageError
from siglip_serve.preprocess.pixel_budget import PixelBudget

ImageSource: TypeAlias = "str | Path | bytes | bytearray | memoryview | Image.Image"

# Formats we accept; PIL parses many exotic formats we would rather not expose. The JPEG
# opener also yields MPO (multi-picture JPEGs from phone cameras).
ALLOWED_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")

DEFAULT_MAX_PIXELS: int = default("max_image_pixels")

T = TypeVar("T")
_POSITIVE_INT = re.compile(r"[1-9][0-9]*")

# Pillow warns from ~89 MP on; `check_image_size` enforces the configured limit instead.
warnings.simplefilter("ignore", Image.DecompressionBombWarning)


@dataclass(frozen=True)
class ImageTransform:
    """What a checkpoint's `preprocessor_config.json` says about its input."""

    height: int
    width: int
    resample: int  # PIL filter id: 2 bilinear, 3 bicubic
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    rescale_factor: float = 1 / 255

    def __call__(self, image: Image.Image) -> np.ndarray:
        return preprocess_image(image, self)


def decode_image(
    data: bytes | bytearray | memoryview, *, max_pixels: int = DEFAULT_MAX_PIXELS, draft_size: int | None = None
) -> Image.Image:
    """Decode image bytes to an RGB PIL image: first frame, EXIF-oriented, alpha on white.

    With `draft_size`, a JPEG at least twice that size on both sides is decoded at 1/2, 1/4
    or 1/8 scale in the DCT domain (Pillow's `draft`), never below `draft_size`: several
    times faster for large photos, at slightly different pixels (bench/decode.py measures it).
    Raises InvalidImageError, EmptyImageError or ImageTooLargeError.
    """
    image = _open_checked(data, max_pixels=max_pixels)
    _draft(image, draft_size)
    return _decode_rgb(image, max_pixels=max_pixels)


def prepare_image(
    source: ImageSource,
    transform: Callable[[Image.Image], T],
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    draft_size: int | None = None,
    budget: PixelBudget | None = None,
) -> T:
    """Check, decode and transform one image into model input, holding its pixels in `budget`.

    The order bounds memory: the size is checked from the header; then the pixels to be
    decoded (after any JPEG draft) are reserved from `budget`, waiting while other decodes
    hold it; the image is decoded, EXIF-oriented and made RGB; `transform` (an
    `ImageTransform`, or any callable from an RGB image to model input) turns it into the
    small model input; and every full-size image is freed before the pixels are released.
    `source` and `draft_size` are as in `load_image`; the same errors are raised.
    """
    if isinstance(source, Image.Image):
        check_image_size(source, max_pixels=max_pixels)
        width, height = source.size
        with _reserved(budget, width * height):
            rgb = _convert_to_rgb(_copy_oriented(source, max_pixels=max_pixels))
            return _transform_and_close(rgb, transform)
    image = _open_checked(_read_source(source), max_pixels=max_pixels)
    _draft(image, draft_size)
    width, height = image.size  # what will be decoded: after a draft, the reduced size
    with _reserved(budget, width * height):
        try:
            rgb = _decode_rgb(image, max_pixels=max_pixels)
        except BaseException:
            image.close()
            raise
        return _transform_and_close(rgb, transform)


def check_image_size(image: Image.Image, *, max_pixels: int) -> None:
    width, height = image.size
    if width <= 0 or height <= 0:
        raise EmptyImageError(f"image has zero size ({width}x{height})")
    if width * height > max_pixels:
        raise ImageTooLargeError(
            f"image is {width}x{height} = {width * height} pixels, over the limit of {max_pixels}"
        )


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB with any transparency composited onto white, as transformers' `convert_to_rgb`."""
    if "A" in image.getbands() or image.info.get("transparency") is not None:
        # No copy of an RGBA image (convert to its own mode copies), and the white background is
        # freed before the last conversion: at most three full images (source, composite, RGB) are
        # alive at once, 12 bytes a pixel for RGBA (Pillow stores RGB in 4 bytes too), not 20.
        rgba = image if image.mode == "RGBA" else image.convert("RGBA")
        composited = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
        del rgba
        return composited.convert("RGB")
    return image if image.mode == "RGB" else image.convert("RGB")


def load_image(
    source: ImageSource, *, max_pixels: int = DEFAULT_MAX_PIXELS, draft_size: int | None = None
) -> Image.Image:
    """Turn a path, raw bytes or a PIL image into a checked RGB PIL image (`draft_size`: see decode_image)."""
    if isinstance(source, Image.Image):
        check_image_size(source, max_pixels=max_pixels)
        return _convert_to_rgb(_copy_oriented(source, max_pixels=max_pixels))
    return decode_image(_read_source(source), max_pixels=max_pixels, draft_size=draft_size)


# --- the steps, in the order they run -----------------------------------------------------------


def _read_source(source: ImageSource) -> bytes | bytearray | memoryview:
    """The encoded bytes of a bytes-like or a path; InvalidImageError for anything else."""
    if isinstance(source, bytes | bytearray | memoryview):
        return source
    if isinstance(source, str | Path):
        path = Path(source).expanduser()
        try:
            return path.read_bytes()
        except OSError as exc:
            raise InvalidImageError(f"cannot read image file {str(source)!r}: {exc.strerror}") from None
    raise InvalidImageError(f"unsupported image input of type {type(source).__name__}")


def _open_checked(data: bytes | bytearray | memoryview, *, max_pixels: int) -> Image.Image:
    """Parse the header only (Pillow decodes no pixel before `load`) and check the size."""
    if len(data) == 0:
        raise InvalidImageError("empty image data")
    # Our own limit (checked from the header, below) replaces Pillow's global one; raise
    # Pillow's so that it never refuses an image that our configured limit allows.
    if Image.MAX_IMAGE_PIXELS is not None and max_pixels > Image.MAX_IMAGE_PIXELS:
        Image.MAX_IMAGE_PIXELS = max_pixels
    try:
        image = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
    except UnidentifiedImageError:
        raise InvalidImageError(
            f"cannot decode image: not one of {', '.join(f.lower() for f in ALLOWED_FORMATS)}"
        ) from None
    except Image.DecompressionBombError as exc:
        raise _too_large(exc, max_pixels) from None
    except (OSError, ValueError, SyntaxError, EOFError) as exc:  # e.g. a header cut short
        raise InvalidImageError(f"truncated or corrupt image data ({exc})") from None
    check_image_size(image, max_pixels=max_pixels)
    return image


def _too_large(exc: Image.DecompressionBombError, max_pixels: int) -> ImageTooLargeError:
    """Our message for Pillow's bomb guard, which fires at twice `Image.MAX_IMAGE_PIXELS`
    (Pillow docs, Image.open: "DecompressionBombError") before our own check can run: the
    user should see the configured limit, not Pillow's internal one."""
    declared = _POSITIVE_INT.search(str(exc))  # "Image size (N pixels) exceeds limit of ..."
    size = f"{declared.group()} pixels, " if declared else ""
    return ImageTooLargeError(f"image is {size}over the limit of {max_pixels} pixels")


def _draft(image: Image.Image, draft_size: int | None) -> None:
    """Let a JPEG decode at reduced scale; `image.size` becomes the size it will decode to."""
    if draft_size is not None and image.format == "JPEG":
        image.draft("RGB", (draft_size, draft_size))


def _decode_rgb(image: Image.Image, *, max_pixels: int) -> Image.Image:
    """Decode an image we opened (and so may change) to RGB: first frame, EXIF-oriented."""
    try:
        image.seek(0)  # GIF/TIFF/WebP: the first frame
        image.load()
        # In place: for the common orientation 1, `exif_transpose` would otherwise return a
        # full copy of the decoded image (Pillow docs, ImageOps.exif_transpose).
        ImageOps.exif_transpose(image, in_place=True)
    except Image.DecompressionBombError as exc:  # a later GIF frame's extent
        raise _too_large(exc, max_pixels) from None
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise InvalidImageError(f"truncated or corrupt image data ({exc})") from None
    return _convert_to_rgb(image)


def _copy_oriented(image: Image.Image, *, max_pixels: int) -> Image.Image:
    """A caller's image, EXIF-oriented, as a copy: the caller's object is never changed."""
    try:
        oriented = ImageOps.exif_transpose(image)
    except Image.DecompressionBombError as exc:
        raise _too_large(exc, max_pixels) from None
    except (OSError, ValueError, SyntaxError, EOFError) as exc:  # a lazily opened image that fails to load
        raise InvalidImageError(f"truncated or corrupt image data ({exc})") from None
    assert oriented is not None  # not in place: always a new image
    return oriented


def _convert_to_rgb(image: Image.Image) -> Image.Image:
    """`to_rgb` of an image we own, freeing the original as soon as a converted copy exists."""
    rgb = to_rgb(image)
    if rgb is not image:
        image.close()
    return rgb


def _transform_and_close(rgb: Image.Image, transform: Callable[[Image.Image], T]) -> T:
    """`transform(rgb)`, then free `rgb` at once (unless the transform returned it): the
    budget's pixels are released right after, and so must be the memory they stood for."""
    try:
        result = transform(rgb)
    except BaseException:
        rgb.close()
        raise
    if result is not rgb:
        rgb.close()
    return result


def _reserved(budget: PixelBudget | None, pixels: int) -> AbstractContextManager[None]:
    return budget.reserve(pixels) if budget is not None else nullcontext()


def preprocess_image(image: Image.Image, transform: ImageTransform) -> np.ndarray:
    """Squash-resize, rescale and normalize to a float32 CHW array.

    The affine step is folded into one multiply-add per channel; it equals
    transformers' rescale-then-normalize to float32 rounding (about 1e-7).
    """
    size = (transform.width, transform.height)
    resized = image if image.size == size else image.resize(size, resample=transform.resample)
    pixels = np.asarray(resized, dtype=np.float32)  # HWC, 0..255
    mean = np.asarray(transform.mean, dtype=np.float32)
    std = np.asarray(transform.std, dtype=np.float32)
    scale = np.float32(transform.rescale_factor) / std
    pixels = pixels * scale - mean / std
    return np.ascontiguousarray(pixels.transpose(2, 0, 1))
