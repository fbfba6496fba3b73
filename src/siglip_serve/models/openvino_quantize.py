"""Quantize the OpenVINO towers with NNCF, and check each result against float32 before serving it.

- ``int8-weights``: `nncf.compress_weights` with its default mode, INT8_ASYM (NNCF docs, "Weight
  Compression": 8-bit asymmetric per-output-channel weights of MatMul/Gather layers, data-free;
  activations stay in floating point). Both towers.
- ``int8``: the vision tower is fully quantized, weights and activations, by `nncf.quantize` on
  calibration images (NNCF docs, "Post-training Quantization", with ``model_type=TRANSFORMER``, which
  keeps the numerically sensitive parts of attention and LayerNorm in floating point and applies
  SmoothQuant). The text tower gets int8 weights: calibrating it would need prompts like the users'
  labels, which no default set can stand for.

Each quantized tower is then compared with the float32 torch module on inputs it was not calibrated
on (held-out images, `calibration.prompts()`): the minimum cosine of the embeddings is logged at
startup and stored with the cached model. Below the threshold the tower falls back one step
(int8 -> int8 weights -> float32), with a warning; see `runtime_choice.DEFAULT_MIN_COSINE` for its value.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import nncf
import numpy as np
import openvino as ov
import torch

from siglip_serve.models.calibration import CalibrationSet, prompts
from siglip_serve.models.checkpoint import Checkpoint
from siglip_serve.preprocess.images import prepare_image

logger = logging.getLogger("siglip_serve.models")

FALLBACK = {"int8": "int8-weights", "int8-weights": "none"}
Runner = Callable[[ov.Model], Callable[[np.ndarray], np.ndarray]]


def compress_weights(model: ov.Model) -> ov.Model:
    return nncf.compress_weights(model.clone())  # INT8_ASYM, data-free (see the module docstring)


# The MAP head (one learned query attending over every patch, then an MLP) stays in floating point:
# quantized with the rest, the demo model's min cosine on 192 held-out shapes was 0.64 instead of 0.998
# (bench/README.md, "OpenVINO on the CPU"); it is about 1% of the tower's FLOPs. validate=False: a pattern that
# matches nothing (a checkpoint without a head) is not an error.
KEEP_FLOAT = nncf.IgnoredScope(patterns=[r".*vision_model\.head\..*"], validate=False)


def quantize_fully(model: ov.Model, pixels: Sequence[np.ndarray]) -> ov.Model:
    dataset = nncf.Dataset([p[None] for p in pixels])  # one image per calibration step
    return nncf.quantize(model.clone(), dataset, model_type=nncf.ModelType.TRANSFORMER, subset_size=len(pixels),
                         target_device=nncf.TargetDevice.CPU, ignored_scope=KEEP_FLOAT)


def min_cosine(got: np.ndarray, expected: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(torch.from_numpy(got), expected).min())


def quantize_towers(models: dict[str, ov.Model], *, quantize: str, checkpoint: Checkpoint,
                    calibration: CalibrationSet, threshold: float, run: Runner) -> tuple[dict[str, ov.Model],
                                                                                         dict[str, Any]]:
    """The towers as requested, or as far down the fallback as the check demands; and the measurements.

    `run` compiles a model for the check; the reference is the checkpoint's float32 torch towers.
    """
    towers = checkpoint.towers
    texts = checkpoint.tokenizer(prompts())
    reference_text = towers.encode_texts(texts)
    out = dict(models)
    meta: dict[str, Any] = {"requested": quantize, "threshold": threshold}
    out["text"], text_meta = _first_passing("text", models["text"], "int8-weights", lambda m: run(m)(texts.numpy()),
                                            reference_text, threshold=threshold, pixels=None)
    meta["text"] = text_meta | {"checked_on": f"{len(texts)} prompts"}
    transform = checkpoint.image_transform
    calibrate = [prepare_image(img, transform) for img in calibration.calibrate] if quantize == "int8" else None
    held_out = np.stack([prepare_image(img, transform) for img in calibration.held_out])
    reference_vision = torch.cat([towers.encode_images(torch.from_numpy(held_out[i:i + 8]))
                                  for i in range(0, len(held_out), 8)])

    def vision_embeddings(model: ov.Model) -> np.ndarray:
        infer = run(model)
        return np.concatenate([infer(held_out[i:i + 8]) for i in range(0, len(held_out), 8)])

    vision_model, vision_meta = _first_passing("vision", models["vision"], quantize, vision_embeddings,
                                               reference_vision, threshold=threshold, pixels=calibrate)
    out["vision"] = vision_model
    meta["vision"] = vision_meta | {"checked_on": f"{len(held_out)} held-out images of {calibration.source}"}
    return out, meta


def _first_passing(tower: str, model: ov.Model, mode: str, embed: Callable[[ov.Model], np.ndarray],
                   reference: torch.Tensor, *, threshold: float,
                   pixels: Sequence[np.ndarray] | None) -> tuple[ov.Model, dict[str, Any]]:
    """Quantize `model` as `mode`, check it, and step down the fallback until a result passes."""
    tried: list[dict[str, Any]] = []
    while mode != "none":
        candidate = quantize_fully(model, pixels) if mode == "int8" and pixels else compress_weights(model)
        cosine = min_cosine(embed(candidate), reference)
        tried.append({"mode": mode, "min_cosine": cosine})
        if cosine >= threshold:
            return candidate, {"applied": mode, "min_cosine": cosine, "tried": tried}
        logger.warning("%s tower %s: min cosine %.5f vs float32 is below %.4f; falling back to %s",
                       tower, mode, cosine, threshold, FALLBACK[mode])
        mode = FALLBACK[mode]
    return model, {"applied": "none", "min_cosine": 1.0, "tried": tried}
