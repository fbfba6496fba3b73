"""Dense patch features of the vision tower: which layer, what shape, how many floats a response holds.

Torch-free, so that the HTTP layer can check a request before any work. The tower itself is run by
`siglip_serve.models.features`.

Layers are numbered as transformers numbers `hidden_states` (modeling_siglip.py, modeling_siglip2.py):
0 is the patch embeddings (plus position embeddings), k the output of encoder layer k. The last one,
L = `num_hidden_layers`, is returned as `last_hidden_state`, i.e. after the tower's final LayerNorm
(`post_layernorm`), because that is what the MAP head and PaliGemma-style consumers read; negative
indices count from it, so -1 is `last_hidden_state` and -2 is `hidden_states[-2]`, the penultimate
layer LLaVA-style models take. SigLIP has no class token: every token is a patch, in row-major order
over the grid.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from siglip_serve.errors import InvalidParameterError, LayerOutOfRangeError, ResponseTooLargeError


class Pooling(StrEnum):
    NONE = "none"  # every patch token: [h, w, d]
    MEAN = "mean"  # the mean of the chosen layer's patch tokens: [d]
    MAP = "map"  # the tower's attention-pooling head over the final layer (the raw image embedding): [d]


@dataclass(frozen=True)
class PatchLayout:
    """What a checkpoint's vision tower returns as patch tokens."""

    num_layers: int  # encoder layers L: valid layer indices are -(L+1)..L
    hidden_size: int  # d, the width of every token
    patch_size: int
    grid: tuple[int, int] | None  # (h, w) in patches for fixed resolution; None for NaFlex (per image)
    max_patches: int  # the most patches one image returns: h*w, or NaFlex's max_num_patches

    @property
    def valid_layers(self) -> str:
        return f"{-(self.num_layers + 1)}..{self.num_layers}"

    def resolve_layer(self, layer: int, *, param: str | None = "layer") -> int:
        """The non-negative index 0..L of `layer` (negative counts from the end), or a 400 naming the range."""
        if isinstance(layer, bool):
            raise LayerOutOfRangeError("layer must be an integer, got a bool", param=param)
        try:
            layer = operator.index(layer)  # numpy integers too
        except TypeError:
            raise LayerOutOfRangeError(f"layer must be an integer, got {type(layer).__name__}", param=param) from None
        if not -(self.num_layers + 1) <= layer <= self.num_layers:
            raise LayerOutOfRangeError(
                f"layer {layer} is out of range: this vision tower has {self.num_layers} layers, so layer must be "
                f"in {self.valid_layers} (0: patch embeddings; {self.num_layers} or -1: the final, post-LayerNorm "
                "output)", param=param)
        return layer % (self.num_layers + 1)

    def floats_per_image(self, pooling: Pooling) -> int:
        """Floats one image adds to a response, at most (NaFlex images are counted at their patch budget)."""
        return self.hidden_size if pooling != Pooling.NONE else self.max_patches * self.hidden_size


def check_pooling(pooling: Pooling, layer: int, layout: PatchLayout) -> None:
    """The MAP head reads the final layer only; under another layer its output would silently ignore `layer`."""
    if pooling == Pooling.MAP and layer != layout.num_layers:
        raise InvalidParameterError(
            f"pooling 'map' is the attention-pooling head over the final layer ({layout.num_layers} or -1); for "
            "an intermediate layer use pooling 'mean' or 'none'", param="pooling")


def check_response_floats(layout: PatchLayout, *, images: int, pooling: Pooling, limit: int) -> int:
    """The floats a response of `images` images would hold, or a 413 with that size when over `limit`."""
    per_image = layout.floats_per_image(pooling)
    total = images * per_image
    if total > limit:
        counted = ("its patch budget" if layout.grid is None else "its grid") if pooling == Pooling.NONE else "d"
        raise ResponseTooLargeError(
            f"the response would hold {images} images x {per_image:,} floats = {total:,} floats "
            f"({4 * total:,} bytes as float32; each image counted at {counted}), over the limit of {limit:,} "
            "(see --max-feature-floats); send fewer images per request, or pool them", param="input")
    return total


@dataclass(frozen=True)
class PatchFeatures:
    """One image's tokens of one layer, and the pooled output of the same forward."""

    features: Any  # torch.Tensor [h*w, d] float32 on the CPU, row-major over `grid`
    grid: tuple[int, int]  # (h, w) in patches; for NaFlex the image's spatial shape
    pooled: Any | None = None  # torch.Tensor [d]: the MAP head's output (the raw image embedding), when asked

    def spatial(self) -> Any:
        """The features as [h, w, d]."""
        return self.features.reshape(*self.grid, -1)


# --- files (siglip-serve features --out) ---------------------------------------------------------------------

FILE_SUFFIXES = (".npz", ".safetensors")
FILE_LAYOUT = ("features[offsets[i]:offsets[i+1]] are image i's tokens, row-major over grids[i] (h, w); "
               "paths[i] is its file")


def save_features(path: Any, paths: list[str], results: list[PatchFeatures], *, layer: int, num_layers: int,
                  model: str, float16: bool = False) -> None:
    """One file for many images of different grids: `features` [sum of h*w, d] (every image's tokens, in order),
    `grids` [N, 2], `offsets` [N+1], `pooled` [N, d] when the results have it; in a .npz also `paths`, `layer`
    and `model` arrays, in a .safetensors the same as its string metadata (safetensors holds only tensors)."""
    import numpy as np

    dtype = np.float16 if float16 else np.float32  # float16: the float32 values rounded to nearest
    arrays = {
        "features": np.concatenate([np.asarray(r.features, dtype=np.float32) for r in results]).astype(dtype),
        "grids": np.asarray([r.grid for r in results], dtype=np.int64).reshape(len(results), 2),
        "offsets": np.cumsum([0] + [r.grid[0] * r.grid[1] for r in results], dtype=np.int64),
    }
    if results and all(r.pooled is not None for r in results):
        arrays["pooled"] = np.stack([np.asarray(r.pooled, dtype=np.float32) for r in results]).astype(dtype)
    facts = {"layer": str(layer), "num_layers": str(num_layers), "model": model, "layout": FILE_LAYOUT}
    if str(path).endswith(".safetensors"):
        import json

        from safetensors.numpy import save_file

        save_file(arrays, str(path), metadata={**facts, "paths": json.dumps(paths)})
        return
    np.savez(path, **arrays, paths=np.asarray(paths, dtype=str), layer=np.int64(layer),
             num_layers=np.int64(num_layers), model=np.asarray(model), layout=np.asarray(FILE_LAYOUT))
