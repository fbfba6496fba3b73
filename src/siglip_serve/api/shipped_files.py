"""Static files shipped inside the package (the playground, the docs pages' assets), served by name.

The files are listed once, at import, into a table from the names a URL may use to their paths; a
request's path is only a key into that table, so it never reaches the filesystem (no traversal, no
file outside the directory, no file of a type not listed).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from fastapi.responses import FileResponse, Response

from siglip_serve.api.errors import error_response
from siglip_serve.errors import shown


class ShippedFiles:
    """The files of `directory` (and, with `recursive`, its subdirectories, named by their relative
    POSIX path) whose suffix has a media type in `media_types`."""

    def __init__(self, directory: Path, media_types: Mapping[str, str], *, what: str, recursive: bool = False,
                 headers: Mapping[str, str] | None = None) -> None:
        self.media_types, self.what, self.headers = dict(media_types), what, dict(headers or {})
        found = directory.rglob("*") if recursive else directory.iterdir()
        self.files: dict[str, Path] = {path.relative_to(directory).as_posix(): path for path in sorted(found)
                                       if path.is_file() and path.suffix in self.media_types}

    def __contains__(self, name: str) -> bool:
        return name in self.files

    def response(self, name: str) -> Response:
        """The file named `name`, or a 404 in the API's error body naming it."""
        found = self.files.get(name)
        if found is None:
            return error_response(404, f"no {self.what} {shown(name)}", type_="not_found_error")
        return FileResponse(found, media_type=self.media_types[found.suffix], headers=self.headers)
