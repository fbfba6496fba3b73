"""The engine's view of one request item (torch-free, so the HTTP protocol can build it)."""

from __future__ import annotations

from dataclasses import dataclass

ImageRef = str | bytes  # URL, data URI or base64 string; or raw bytes (library callers)


@dataclass(frozen=True)
class Input:
    """One item of a request: exactly one of text or image, and the name of its field (e.g. input[3])."""

    param: str
    text: str | None = None
    image: ImageRef | None = None
