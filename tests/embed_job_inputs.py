"""Inputs for tests/unit/test_embed_job.py: a folder of good and bad images, manifests, a loopback image server."""

from __future__ import annotations

import contextlib
import functools
import http.server
import io
import json
import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from PIL import Image
from sample_images import encode, photo_like

# id (path relative to the folder) -> (width, height) as the library sees it (EXIF-oriented)
GOOD = {
    "a.jpg": (40, 30),
    "b.png": (33, 47),
    "sub/c.webp": (64, 20),
    "sub/deeper/d.gif": (25, 25),
    "rotated.jpg": (30, 50),  # stored 50x30 with EXIF orientation 6 (rotate 90°)
    "no_suffix_png": (21, 17),  # an image without a suffix: found because Pillow can open it
}
BAD = ["corrupt.jpg", "empty.png", "truncated.jpg"]
NOT_IMAGES = ["notes.txt", "README"]  # skipped: not images, no image suffix


def rotated_jpeg() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6
    buffer = io.BytesIO()
    photo_like(50, 30, seed=9).save(buffer, format="JPEG", exif=exif.tobytes())
    return buffer.getvalue()


def make_folder(root: Path) -> Path:
    """GOOD images, BAD ones with image suffixes, NOT_IMAGES and a hidden file (ignored)."""
    formats = {".jpg": "JPEG", ".png": "PNG", ".webp": "WEBP", ".gif": "GIF", "": "PNG"}
    for index, (name, (width, height)) in enumerate(GOOD.items()):
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if name == "rotated.jpg":
            path.write_bytes(rotated_jpeg())
        else:
            path.write_bytes(encode(photo_like(width, height, seed=index), formats[path.suffix]))
    (root / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 definitely not the rest of a JPEG")
    (root / "empty.png").write_bytes(b"")
    whole = encode(photo_like(60, 40, seed=7), "JPEG")
    (root / "truncated.jpg").write_bytes(whole[: len(whole) // 3])
    (root / "notes.txt").write_text("not an image\n")
    (root / "README").write_text("nor this\n")
    (root / ".hidden.jpg").write_bytes(b"never read")
    return root


MANIFEST_ROWS = [  # images in the folder of `make_folder`
    {"id": "m1", "image": "a.jpg", "caption": "a red circle", "shop": "north", "price": 3},
    {"id": "m2", "image": "corrupt.jpg", "caption": "broken", "shop": "south", "price": 4},
    {"id": "m3", "image": "sub/c.webp", "caption": None, "shop": "east", "price": 5},
]


def write_manifests(directory: Path, folder: Path, unreachable_url: str, served_url: str) -> dict[str, Path]:
    """The same rows (ids prefixed by format, image paths relative to the manifest) as .jsonl, .csv and
    .parquet, plus two URL rows each."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = {}
    for fmt in ("jsonl", "csv", "parquet"):
        rows = [{**row, "id": f"{fmt}-{row['id']}", "image": os.path.relpath(folder / row["image"], directory)}
                for row in MANIFEST_ROWS]
        rows += [{"id": f"{fmt}-down", "image": unreachable_url, "caption": "gone", "shop": "west", "price": 6},
                 {"id": f"{fmt}-web", "image": served_url, "caption": "served", "shop": "web", "price": 7}]
        path = directory / f"items.{fmt}"
        if fmt == "jsonl":
            path.write_text("".join(json.dumps(row) + "\n" for row in rows))
        elif fmt == "csv":
            pacsv.write_csv(pa.Table.from_pylist(rows), path)
        else:
            pq.write_table(pa.Table.from_pylist(rows), path)
        paths[fmt] = path
    return paths


def unused_port() -> int:
    """A loopback port nothing listens on (bound, then closed: connections are refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def serve_directory(directory: Path) -> Iterator[str]:
    """http://127.0.0.1:PORT serving `directory` from a thread."""

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(directory)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
