"""Image decoding and SigLIP preprocessing, CPU only, no torchvision.

The pipeline follows transformers' PIL backend (`SiglipImageProcessorPil`), which
is the reference (see shared notes §3): convert to RGB compositing alpha onto
white, squash-resize with the checkpoint's PIL filter, rescale by 1/255 and
normalize with its mean/std. We add what users expect and the reference lacks:
EXIF orientation and a pixel limit checked before any pixel is decoded.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TypeAlias

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

ImageSource: TypeAlias = "str | Path | bytes | bytearray | memoryview | Image.Image"

# Formats we accept; PIL parses many exotic formats we would rather not expose. The JPEG
# opener also yields MPO (multi-picture JPEGs from phone cameras).
ALLOWED_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")

DEFAULT_MAX_PIXELS: int = default("max_image_pixels")

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
        raise ImageTooLargeError(str(exc)) from None
    except (OSError, ValueError, SyntaxError, EOFError) as exc:  # e.g. a header cut short
        raise InvalidImageError(f"truncated or corrupt image data ({exc})") from None
    check_image_size(image, max_pixels=max_pixels)
    try:
        if draft_size is not None and image.format == "JPEG":
            image.draft("RGB", (draft_size, draft_size))
        image.seek(0)  # GIF/TIFF/WebP: the first frame
        image.load()
        image = ImageOps.exif_transpose(image)
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise InvalidImageError(f"truncated or corrupt image data ({exc})") from None
    return to_rgb(image)


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
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image if image.mode == "RGB" else image.convert("RGB")


def load_image(
    source: ImageSource, *, max_pixels: int = DEFAULT_MAX_PIXELS, draft_size: int | None = None
) -> Image.Image:
    """Turn a path, raw bytes or a PIL image into a checked RGB PIL image (`draft_size`: see decode_image)."""
    if isinstance(source, Image.Image):
        check_image_size(source, max_pixels=max_pixels)
        return to_rgb(ImageOps.exif_transpose(source))
    if isinstance(source, bytes | bytearray | memoryview):
        return decode_image(source, max_pixels=max_pixels, draft_size=draft_size)
    if isinstance(source, str | Path):
        path = Path(source).expanduser()
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise InvalidImageError(f"cannot read image file {str(source)!r}: {exc.strerror}") from None
        return decode_image(data, max_pixels=max_pixels, draft_size=draft_size)
    raise InvalidImageError(f"unsupported image input of type {type(source).__name__}")


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
