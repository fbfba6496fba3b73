"""An analytic fake backend: known embeddings, so expected scores are computed by hand.

As big_vision tests its zero-shot evaluator (`discriminative_classifier_test.py`) with a tiny
model whose outputs are known. Images are the bytes ``b"img:K"`` and embed to the unit vector
e_K; a text embeds to e_K for its word ``cK`` (e.g. "c2", "a photo of c2."), else to e_{DIM-1}.
With logit_scale = log(10) and logit_bias = -5, a matching pair scores sigmoid(5) and any
other pair sigmoid(-5), whatever the engine does with batches.

The model thread can be held (`gate`) to make deadlines and overload deterministic, and every
call is counted.
"""

from __future__ import annotations

import base64
import math
import re
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from siglip_serve.backend import ModelInfo, Temperature, TokenizedText
from siglip_serve.errors import InvalidImageError
from siglip_serve.features import PatchFeatures, PatchLayout

DIM = 8
LOGIT_SCALE = math.log(10.0)
LOGIT_BIAS = -5.0
MATCH = 1 / (1 + math.exp(-5.0))  # sigmoid(10 * 1 - 5)
MISMATCH = 1 / (1 + math.exp(5.0))  # sigmoid(10 * 0 - 5)
_CLASS = re.compile(r"\bc(\d)\b")
# Dense features: a 2x2 grid of DIM-wide tokens from a tower of FEATURE_LAYERS layers (valid layers -3..2).
FEATURE_LAYERS = 2
FEATURE_GRID = (2, 2)


def image(k: int) -> str:
    """The base64 reference of the fake image whose embedding is e_k."""
    return base64.b64encode(f"img:{k}".encode()).decode()


def unit(k: int) -> np.ndarray:
    vector = np.zeros(DIM, dtype=np.float32)
    vector[k] = 1.0
    return vector


class FakeBackend:
    def __init__(self, name: str = "fake") -> None:
        self._info = ModelInfo(name=name, family="siglip", format="fake", image_size=4, patch_size=2,
                               embed_dim=DIM, text_length=16, tokens_per_image=4, device="cpu")
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()  # set when a batch has reached the model thread
        self.prepared: list[bytes] = []
        self.tokenized: list[str] = []
        self.image_batches: list[int] = []
        self.text_batches: list[int] = []
        self.feature_batches: list[tuple[int, int]] = []  # (images, layer) per forward

    @property
    def info(self) -> ModelInfo:
        return self._info

    @property
    def temperature(self) -> Temperature:
        return Temperature(logit_scale=LOGIT_SCALE, logit_bias=LOGIT_BIAS)

    def prepare_image(self, source: bytes, *, budget: Any = None) -> np.ndarray:
        self.prepared.append(bytes(source))
        match = re.fullmatch(rb"img:(\d)", bytes(source))
        if match is None:
            raise InvalidImageError("not a fake image")
        return unit(int(match.group(1)))

    def tokenize(self, texts: Sequence[str]) -> list[TokenizedText]:
        self.tokenized.extend(texts)
        out = []
        for text in texts:
            match = _CLASS.search(text)
            out.append(TokenizedText(ids=int(match.group(1)) if match else DIM - 1,
                                     num_tokens=len(text.split()) + 1))
        return out

    def _run(self) -> None:
        self.entered.set()
        self.gate.wait()

    def encode_image_batch(self, prepared: Sequence[np.ndarray]) -> torch.Tensor:
        self._run()
        self.image_batches.append(len(prepared))
        return torch.from_numpy(np.stack(prepared)) * 3.0  # raw embeddings are not normalized

    def encode_text_batch(self, ids: Sequence[int]) -> torch.Tensor:
        self._run()
        self.text_batches.append(len(ids))
        return torch.from_numpy(np.stack([unit(k) for k in ids])) * 2.0

    # --- dense features (optional backend members, siglip_serve.backend.FeatureBackend) ---

    @property
    def patch_layout(self) -> PatchLayout:
        return PatchLayout(num_layers=FEATURE_LAYERS, hidden_size=DIM, patch_size=2, grid=FEATURE_GRID,
                           max_patches=FEATURE_GRID[0] * FEATURE_GRID[1])

    def encode_patch_batch(self, prepared: Sequence[np.ndarray], *, layer: int) -> list[PatchFeatures]:
        self._run()
        self.feature_batches.append((len(prepared), layer))
        return [PatchFeatures(features=torch.from_numpy(patch_tokens(int(np.argmax(p)), layer)), grid=FEATURE_GRID,
                              pooled=torch.from_numpy(p) * 3.0) for p in prepared]


def patch_tokens(k: int, layer: int) -> np.ndarray:
    """The fake tokens of image e_k at `layer` (0..FEATURE_LAYERS): [4, DIM] float32 values that float16 cannot
    hold exactly (thirds, sevenths and elevenths), so that rounding to float16 shows."""
    patches = np.arange(FEATURE_GRID[0] * FEATURE_GRID[1], dtype=np.float32)[:, None]
    channels = np.arange(DIM, dtype=np.float32)[None, :]
    return ((k + 1) / 3 + 10 * layer + patches / 7 + channels / 11).astype(np.float32)
