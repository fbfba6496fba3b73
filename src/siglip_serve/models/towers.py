"""The two towers of a loaded checkpoint: tensors in, raw embeddings out.

Knows nothing of queues, HTTP or files. Format adapters build the module and hand it here, on the
device and in the dtype that `device_policy.py` resolved: `hf.py` our `siglip_torch.SiglipModel`
(transformers' module tree and parameter names, equal outputs), `naflex.py` transformers'
`Siglip2Model`, `open_clip.py` transformers' `SiglipModel`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from siglip_serve.backend import Temperature
from siglip_serve.features import PatchFeatures, PatchLayout
from siglip_serve.models.features import eager, run_vision_layer


class SiglipTowers:
    """Runs a SigLIP model's vision and text towers (transformers' module interface) without any mask."""

    def __init__(self, module: torch.nn.Module, *, device: torch.device, dtype: torch.dtype) -> None:
        # Read the temperature in the checkpoint's precision before any cast to half.
        self.temperature = Temperature(
            logit_scale=float(module.logit_scale.detach().float().reshape(())),
            logit_bias=float(module.logit_bias.detach().float().reshape(())),
        )
        self.device = device
        self.dtype = dtype
        self.module = module.to(device=device, dtype=dtype).eval()

    @property
    def tokens_per_image(self) -> int:
        """Patches one image becomes (for usage accounting)."""
        vision = self.module.config.vision_config
        return (vision.image_size // vision.patch_size) ** 2

    def encode_prepared(self, prepared: Sequence[Any]) -> torch.Tensor:
        """Collate what the checkpoint's image transform produced and encode it.

        Fixed-resolution checkpoints stack [3, H, W] arrays; NaFlex overrides this.
        """
        return self.encode_images(torch.from_numpy(np.stack(prepared)))

    @property
    def patch_layout(self) -> PatchLayout:
        """A fixed grid of (image_size // patch_size)^2 patches: so400m/14 at 384 is 27 x 27 (the conv drops 6 px)."""
        vision = self.module.config.vision_config
        side = int(vision.image_size) // int(vision.patch_size)
        return PatchLayout(num_layers=int(vision.num_hidden_layers), hidden_size=int(vision.hidden_size),
                           patch_size=int(vision.patch_size), grid=(side, side), max_patches=side * side)

    @torch.inference_mode()
    def encode_patch_features(self, prepared: Sequence[Any], layer: int) -> list[PatchFeatures]:
        """Per image, the tokens of `layer` (0..L, see siglip_serve.features) and the pooled output, one forward."""
        pixel_values = self.to_device(torch.from_numpy(np.stack(prepared)), self.dtype)
        tokens, pooled = run_vision_layer(eager(self.module.vision_model), layer, pixel_values=pixel_values)
        grid = self.patch_layout.grid
        assert grid is not None and tokens.shape[1] == grid[0] * grid[1], (tokens.shape, grid)
        # Cloned rows: a view would keep the whole batch alive as long as one image's features are.
        tokens, pooled = tokens.float().cpu(), pooled.float().cpu()
        return [PatchFeatures(features=tokens[i].clone(), grid=grid, pooled=pooled[i].clone())
                for i in range(tokens.shape[0])]

    def to_device(self, tensor: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
        """Host -> device; on CUDA through pinned memory, so the copy is asynchronous."""
        if self.device.type == "cuda":
            tensor = tensor.pin_memory()
        return tensor.to(self.device, non_blocking=True).to(dtype or tensor.dtype)

    def compile(self, max_batch_size: int, *, backend: str | Callable[..., Any] = "inductor") -> None:
        """torch.compile both towers for a fixed set of batch shapes (opt-in; bench/results/model_only.md).

        Batches are padded up to the next bucket (powers of two up to `max_batch_size`), so the
        compiled graphs see a handful of static shapes, each compiled once (`warm_up` does it before
        serving) instead of a recompile per new batch size. On CUDA the "reduce-overhead" mode also
        replays each bucket as a CUDA graph, removing the per-kernel launch cost of small batches.
        """
        mode = "reduce-overhead" if self.device.type == "cuda" and backend == "inductor" else None
        for tower in self.compiled_towers:
            setattr(self.module, tower, torch.compile(getattr(self.module, tower), dynamic=False, mode=mode,
                                                      backend=backend))
        self.buckets = batch_buckets(max_batch_size)

    compiled_towers: tuple[str, ...] = ("vision_model", "text_model")

    buckets: tuple[int, ...] = ()  # set by compile(): the batch sizes the towers are run at

    def warm_up(self, image_shape: tuple[int, ...] | None, text_length: int) -> None:
        """Run every bucket once, so that compilation happens now and not in a request."""
        for size in self.buckets:
            if image_shape is not None:
                self.encode_images(torch.zeros((size, *image_shape)))
            self.encode_texts(torch.ones((size, text_length), dtype=torch.long))

    def _padded(self, tensor: torch.Tensor) -> tuple[torch.Tensor, int]:
        """Pad the batch (by repeating its last row) up to its bucket; returns it and the real size."""
        rows = tensor.shape[0]
        size = next((b for b in self.buckets if b >= rows), rows)
        if size == rows:
            return tensor, rows
        return torch.cat([tensor, tensor[-1:].expand(size - rows, *tensor.shape[1:])]), rows

    @torch.inference_mode()
    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] normalized pixels -> [B, D] float32 CPU embeddings (not normalized)."""
        pixel_values, rows = self._padded(pixel_values)
        pixel_values = self.to_device(pixel_values, self.dtype)
        pooled = self.module.vision_model(pixel_values=pixel_values).pooler_output
        return pooled[:rows].float().cpu()

    @torch.inference_mode()
    def encode_texts(self, input_ids: torch.Tensor) -> torch.Tensor:
        """[B, L] fixed-length ids -> [B, D] float32 CPU embeddings (not normalized).

        No attention mask, by design: the tower was trained without one and pools position L-1.
        """
        input_ids, rows = self._padded(input_ids)
        input_ids = self.to_device(input_ids)
        pooled = self.module.text_model(input_ids=input_ids).pooler_output
        return pooled[:rows].float().cpu()


def batch_buckets(max_batch_size: int) -> tuple[int, ...]:
    """1, 2, 4, ... up to `max_batch_size`, which is always the last (e.g. 24 -> 1, 2, 4, 8, 16, 24)."""
    sizes = []
    size = 1
    while size < max_batch_size:
        sizes.append(size)
        size *= 2
    return (*sizes, max_batch_size)
