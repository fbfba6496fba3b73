"""The job's CPU side: read, fetch, decode and preprocess items in a worker pool.

Threads, not processes: Pillow releases the GIL while it decodes and resizes, and so does numpy's
normalization, so a thread pool overlaps with the model (which runs on the calling thread) without
copying every prepared image between processes. URLs are fetched on one event-loop thread with the
server's guarded fetch (`read_image_reference`: SSRF checks, size and time limits), concurrently,
and only then handed to a decoding thread, so a slow host never holds a decoding thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from siglip_serve.errors import ImageTooLargeError, InvalidImageError, SiglipServeError
from siglip_serve.jobs.sources import Item
from siglip_serve.preprocess.fetch import FetchPolicy, make_client, read_image_reference

HEADER_BYTES = 64 * 1024  # enough for Pillow to identify any format it knows
FETCH_CONCURRENCY = 16  # URLs in flight at once; decoding stays bounded by the worker count
_EXIF_ORIENTATION = 0x0112
_TRANSPOSED_ORIENTATIONS = frozenset({5, 6, 7, 8})  # EXIF orientations that swap width and height


@dataclass(slots=True)
class Outcome:
    """One item after the CPU stage: a prepared model input, an error, or skipped (not an image)."""

    item: Item
    prepared: Any = None
    width: int | None = None
    height: int | None = None
    error: str | None = None
    skipped: bool = False


def read_file(path: str, max_bytes: int) -> bytes:
    """The file's bytes, refused before reading when it is larger than the fetch limit."""
    try:
        size = Path(path).stat().st_size
        if size > max_bytes:
            raise ImageTooLargeError(f"file is {size} bytes, over the limit of {max_bytes} bytes")
        return Path(path).read_bytes()
    except OSError as exc:
        raise InvalidImageError(f"cannot read file: {exc.strerror or exc}") from None


def identifiable(data: bytes) -> bool:
    """Whether Pillow recognizes any image format in the header (any of its formats, lazily)."""
    try:
        with Image.open(io.BytesIO(data)):
            return True
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError):
        return False


def displayed_size(data: bytes) -> tuple[int, int]:
    """Width and height as the library sees the image: after EXIF orientation (header only, no decode)."""
    with Image.open(io.BytesIO(data)) as image:
        width, height = image.size
        if image.getexif().get(_EXIF_ORIENTATION) in _TRANSPOSED_ORIENTATIONS:
            return height, width
        return width, height


def prepare_bytes(model: Any, item: Item, data: bytes) -> Outcome:
    try:
        prepared = model.prepare_image(data)
        width, height = displayed_size(data)
    except SiglipServeError as exc:
        if not item.must_be_image and not identifiable(data):
            return Outcome(item, skipped=True)
        return Outcome(item, error=exc.message)
    except Exception as exc:  # noqa: BLE001  a decoder bug on one odd file must not stop a million-image job
        return Outcome(item, error=f"cannot decode image: {type(exc).__name__}: {exc}")
    return Outcome(item, prepared, width, height)


def prepare_file(model: Any, item: Item, max_bytes: int) -> Outcome:
    if not item.reference:
        return Outcome(item, error="empty image reference")
    try:
        data = read_file(item.reference, max_bytes)
    except ImageTooLargeError as exc:
        # A big file without an image suffix (a video, an archive) is skipped, not an error, unless its
        # header says image: Pillow identifies formats from their first bytes.
        if not item.must_be_image and not identifiable(read_head(item.reference)):
            return Outcome(item, skipped=True)
        return Outcome(item, error=exc.message)
    except SiglipServeError as exc:
        return Outcome(item, error=exc.message)
    return prepare_bytes(model, item, data)


def read_head(path: str, size: int = HEADER_BYTES) -> bytes:
    try:
        with open(path, "rb") as file:
            return file.read(size)
    except OSError:
        return b""


class Decoder:
    """Submit items, get futures of `Outcome`s; every future resolves (errors become outcomes)."""

    def __init__(self, model: Any, *, workers: int, policy: FetchPolicy) -> None:
        self.model = model
        self.policy = policy
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="embed-decode")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._client: Any = None
        self._semaphore: asyncio.Semaphore | None = None

    def submit(self, item: Item) -> Future[Outcome]:
        if not item.is_url:
            return self.pool.submit(prepare_file, self.model, item, self.policy.max_bytes)
        outcome: Future[Outcome] = Future()
        fetched = asyncio.run_coroutine_threadsafe(self._fetch(item.reference), self._event_loop())
        fetched.add_done_callback(lambda done: self._decode_fetched(item, done, outcome))
        return outcome

    def _decode_fetched(self, item: Item, fetched: Future[bytes], outcome: Future[Outcome]) -> None:
        if fetched.cancelled():
            outcome.cancel()
            return
        exc = fetched.exception()
        if exc is not None:
            message = exc.message if isinstance(exc, SiglipServeError) else f"{type(exc).__name__}: {exc}"
            outcome.set_result(Outcome(item, error=message))
            return
        try:
            decoded = self.pool.submit(prepare_bytes, self.model, item, fetched.result())
        except RuntimeError:  # the pool was shut down: the job is stopping
            outcome.cancel()
            return
        decoded.add_done_callback(lambda done: _copy_result(done, outcome))

    def _event_loop(self) -> asyncio.AbstractEventLoop:
        """Started on the first URL, so folder-only jobs never start a thread or a client."""
        if self._loop is None:
            self._loop = asyncio.new_event_loop()
            self._thread = threading.Thread(target=self._loop.run_forever, name="embed-fetch", daemon=True)
            self._thread.start()
        return self._loop

    async def _fetch(self, url: str) -> bytes:
        if self._client is None:  # created on the loop's thread, which owns it
            self._client = make_client(self.policy)
            self._semaphore = asyncio.Semaphore(FETCH_CONCURRENCY)
        assert self._semaphore is not None
        async with self._semaphore:
            return await read_image_reference(url, policy=self.policy, client=self._client)

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)
        if self._loop is None:
            return
        with contextlib.suppress(Exception):  # best effort: the job's rows are already committed
            asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._loop.close()

    async def _shutdown(self) -> None:
        """Cancel fetches still running (an interrupted job) and close the client."""
        tasks = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._client is not None:
            await self._client.aclose()


def _copy_result(source: Future[Outcome], target: Future[Outcome]) -> None:
    if source.cancelled():
        target.cancel()
    else:
        target.set_result(source.result())
