"""The shipped demo model: a small SigLIP trained here on synthetic colored shapes.

It is not a real SigLIP. It knows 8 colors and 6 shapes (see README, "The demo model") and
exists so that a fresh install, offline, has weights that actually know something.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

DEMO_MODEL_NAME = "siglip-demo-shapes"


def demo_model_dir() -> Path:
    """The checkpoint directory inside the installed package (a normal HF-format SigLIP checkpoint)."""
    return Path(str(resources.files(__name__).joinpath(DEMO_MODEL_NAME)))
