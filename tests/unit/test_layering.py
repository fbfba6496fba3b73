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


def test_the_http_layer_cannot_build_models() -> None:
    """`create_app` takes an engine (or a factory) from the composition root; nothing under
    siglip_serve.api imports the server, the engine or the model modules (issue #13: no import circle)."""
    code = ("import sys; import siglip_serve.api.app, siglip_serve.api.routes; "
            "print(sorted(m for m in sys.modules if m == 'siglip_serve.model' or m.startswith(("
            "'siglip_serve.server', 'siglip_serve.engine.engine', 'siglip_serve.scoring', "
            "'siglip_serve.models.loader', 'siglip_serve.models.towers'))))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]", result.stdout


def test_scoring_sits_below_the_library_and_the_engine() -> None:
    """The classify path calls the scoring functions directly from both sides, never through the other."""
    from pathlib import Path

    import siglip_serve

    root = Path(siglip_serve.__file__).parent
    scoring = (root / "scoring.py").read_text()
    assert "siglip_serve.engine" not in scoring and "siglip_serve.model " not in scoring
    assert "from siglip_serve.scoring import" in (root / "model.py").read_text()
    engine = (root / "engine" / "engine.py").read_text()
    assert "from siglip_serve.scoring import" in engine and "siglip_serve.model " not in engine
    assert not (root / "engine" / "scoring.py").exists()
