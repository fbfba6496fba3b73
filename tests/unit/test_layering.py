"""The layering the architecture promises: the HTTP layer and the request models never import torch."""

from __future__ import annotations

import subprocess
import sys


def test_api_package_does_not_import_torch() -> None:
    code = ("import sys; import siglip_serve.api.app, siglip_serve.api.protocol, siglip_serve.config; "
            "print('torch' in sys.modules)")
    # siglip_serve/__init__ imports the library (torch); import the api modules without it.
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False", result.stderr
