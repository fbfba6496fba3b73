"""The connection limits keep the layering: the HTTP layer (siglip_serve.api) stays server-agnostic.

Its middleware (api.connections) is pure ASGI; the uvicorn/h11 protocol subclass lives server-side in
siglip_serve.http_protocol, which only the composition root (server.py) imports.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import siglip_serve.api

API_DIR = Path(siglip_serve.api.__file__).parent
SERVER_ONLY = ("uvicorn", "h11", "torch", "siglip_serve.http_protocol")


def _imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_api_modules_do_not_import_server_internals() -> None:
    files = sorted(API_DIR.glob("*.py"))
    assert API_DIR / "connections.py" in files
    offending = {
        f"{path.name}: {name}"
        for path in files
        for name in _imported_modules(path)
        if any(name == banned or name.startswith(banned + ".") for banned in SERVER_ONLY)
    }
    assert not offending, offending


def test_importing_the_api_loads_no_server_internals() -> None:
    code = ("import sys; import siglip_serve.api.app, siglip_serve.api.connections; "
            f"print(sorted(m for m in sys.modules if m.split('.')[0] in {SERVER_ONLY!r} or m in {SERVER_ONLY!r}))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]", result.stdout + result.stderr
