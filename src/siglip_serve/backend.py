"""The backend contract: what the engine needs of a model, and nothing more.

The engine (admission, batching, the label cache) talks to models only through `Backend`;
`siglip_serve.Model` implements it on torch modules (or OpenVINO), tests implement it with known
embeddings (tests/fakes.py). The split is TEI's router -> core -> backend trait
(text-embeddings-inference `backends/core`): facts, prepare, tokenize, embed.
Free of torch, so that the HTTP layer can read the facts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import torch

    from siglip_serve.features import PatchFeatures, PatchLayout
    from siglip_serve.preprocess.pixel_budget import PixelBudget


@dataclass(frozen=True)
class ModelInfo:
    """Facts of a loaded checkpoint, as `/v1/models` and usage accounting need them."""

    name: str
    family: str
    format: str
    image_size: int | None  # None for NaFlex (variable size)
    patch_size: int
    embed_dim: int
    text_length: int
    tokens_per_image: int  # patches one image becomes (NaFlex: its patch budget), for usage
    device: str  # where the towers run; backends on one device share one model thread
    max_num_patches: int | None = None  # NaFlex only


@dataclass(frozen=True)
class Temperature:
    """SigLIP's learned score parameters, read from the checkpoint (never hard-coded)."""

    logit_scale: float  # stored as a log; the multiplier is exp(logit_scale)
    logit_bias: float


@dataclass(frozen=True)
class TokenizedText:
    """One text as the text tower takes it, with its real token count (EOS included, padding not)."""

    ids: Any
    num_tokens: int


class Backend(Protocol):
    """A loaded model as the engine uses it. `encode_*` run on the engine's model thread, one batch
    per call (the engine sizes batches); `prepare_image` and `tokenize` run in its worker pool."""

    @property
    def info(self) -> ModelInfo: ...

    @property
    def temperature(self) -> Temperature: ...

    def prepare_image(self, source: bytes, *, budget: PixelBudget | None = None) -> Any:
        """Decode and preprocess one image (raises the domain errors of preprocess.images)."""

    def tokenize(self, texts: Sequence[str]) -> list[TokenizedText]: ...

    def encode_image_batch(self, prepared: Sequence[Any]) -> torch.Tensor:
        """Raw (unnormalized) [B, D] float32 embeddings of prepared images."""

    def encode_text_batch(self, ids: Sequence[Any]) -> torch.Tensor:
        """Raw (unnormalized) [B, D] float32 embeddings of tokenized texts."""


class FeatureBackend(Backend, Protocol):
    """Optional: a backend that also returns dense patch features (POST /v1/vision/features).

    The engine serves features only for backends that have both members (`serves_features`).
    """

    @property
    def patch_layout(self) -> PatchLayout: ...

    def encode_patch_batch(self, prepared: Sequence[Any], *, layer: int) -> list[PatchFeatures]:
        """Per prepared image, its tokens of `layer` (0..L after `PatchLayout.resolve_layer`), as one forward."""


def serves_features(backend: Backend) -> bool:
    return hasattr(backend, "patch_layout") and callable(getattr(backend, "encode_patch_batch", None))
