"""siglip-serve: SigLIP / SigLIP 2 zero-shot image models as a library, a CLI and an HTTP server."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = ["DEFAULT_TEMPLATE", "Model", "load"]
__version__ = "0.1.0"

if TYPE_CHECKING:
    from siglip_serve.model import DEFAULT_TEMPLATE, Model, load


def __getattr__(name: str) -> Any:
    # Lazy, so that importing the torch-free parts (siglip_serve.api, siglip_serve.config) stays light.
    if name in __all__:
        from siglip_serve import model

        return getattr(model, name)
    raise AttributeError(f"module 'siglip_serve' has no attribute {name!r}")
