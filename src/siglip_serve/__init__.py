"""siglip-serve: SigLIP / SigLIP 2 zero-shot image models as a library, a CLI and an HTTP server."""

from siglip_serve.model import DEFAULT_TEMPLATE, Model, load

__all__ = ["DEFAULT_TEMPLATE", "Model", "load"]
__version__ = "0.1.0"
