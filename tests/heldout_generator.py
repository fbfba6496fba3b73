"""bench/heldout_shapes.py, the held-out shapes generator, for tests (bench/ is not a package)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

PATH = Path(__file__).resolve().parents[1] / "bench" / "heldout_shapes.py"


def _load():
    spec = importlib.util.spec_from_file_location("heldout_shapes", PATH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


heldout_shapes = _load()
