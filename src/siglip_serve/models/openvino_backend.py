"""The OpenVINO runtime for the CPU: a checkpoint's towers converted, optionally quantized, compiled.

Opt-in (``--backend openvino|auto``, models/runtime_choice.py). `openvino_checkpoint` turns a loaded
float32 checkpoint into one whose towers are `OpenVinoTowers`; `siglip_serve.Model` (the backend
contract, backend.py) uses them as it uses `SiglipTowers`, so preprocessing, tokenization, scoring
and the engine are the same for both runtimes. Converted (and quantized) towers are cached on disk
(models/openvino_convert.py), so only the first start pays for conversion and calibration.

Compilation (OpenVINO docs, "CPU Device" and "Performance Hints and Thread Scheduling"):
- ``INFERENCE_PRECISION_HINT`` is set explicitly. The CPU plugin's default is bf16 on any CPU that
  lists avx512_bf16 (this project's EPYC reports `bfloat16` as the default), which would make
  "float32" silently inexact. float32 unless ``--dtype bfloat16/float16`` asks otherwise.
- ``PERFORMANCE_HINT=LATENCY`` and one stream: the engine runs one batch at a time per device (one
  model thread), so a second stream would never get a request, and would split the cores.
- ``INFERENCE_NUM_THREADS``: torch's intra-op thread count (``--torch-threads``), so both runtimes
  are sized by the same setting.
- ``ENABLE_CPU_PINNING=False`` unless asked (the plugin pins by default on Linux): pinned threads
  cannot move away from a core that a neighbour (image decoding, HTTP, another process) keeps busy
  (Intel, "OpenVINO inference time increases when running multiple processes", article 000058227).
  Measured at base-224 on the 2-core EPYC, pinned was 7% faster quiet, equal with two busy processes
  beside it, and 8% and 16% slower with other jobs on the machine (bench/results/openvino_cpu*.md):
  a server shares its cores.
- ``CACHE_DIR``: OpenVINO's own cache of compiled blobs, beside the converted models, so a cached
  start imports the compiled model instead of compiling it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import openvino as ov
import torch

from siglip_serve.backend import Temperature
from siglip_serve.models.calibration import calibration_set, calibration_source
from siglip_serve.models.checkpoint import Checkpoint
from siglip_serve.models.device_policy import resolve_dtype
from siglip_serve.models.openvino_convert import (
    TOWERS,
    CacheEntry,
    Converted,
    cache_key,
    cached,
    content_hash,
    convert_tower,
    default_cache_dir,
)
from siglip_serve.models.openvino_quantize import quantize_towers
from siglip_serve.models.runtime_choice import OpenVinoOptions

logger = logging.getLogger("siglip_serve.models")

PRECISIONS = {torch.float32: "f32", torch.bfloat16: "bf16", torch.float16: "f16"}


def compile_config(options: OpenVinoOptions, precision: str) -> dict[str, Any]:
    """The CPU plugin's properties (see the module docstring for each)."""
    threads = options.threads or torch.get_num_threads()
    return {"INFERENCE_PRECISION_HINT": precision, "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": "1",
            "INFERENCE_NUM_THREADS": threads, "ENABLE_CPU_PINNING": options.pin_threads}


class _CompiledTower:
    """One compiled tower with its own infer request. An InferRequest runs one inference at a time
    (OpenVINO docs, "OpenVINO Inference Request"); the lock keeps library callers on several threads safe."""

    def __init__(self, compiled: ov.CompiledModel) -> None:
        self._request = compiled.create_infer_request()
        self._lock = threading.Lock()

    def __call__(self, array: np.ndarray) -> torch.Tensor:
        with self._lock:
            result = self._request.infer({0: np.ascontiguousarray(array)})
            return torch.from_numpy(np.array(result[0], dtype=np.float32))


class OpenVinoTowers:
    """What `siglip_serve.Model` uses of `SiglipTowers`, run by OpenVINO: tensors in, float32 CPU embeddings out.

    Dense patch features (POST /v1/vision/features) are not converted: the graphs end at the pooled
    embedding. They come from `features`, the float32 torch towers the conversion started from, kept for
    that (they cost the checkpoint's float32 weights in memory), so that a server on OpenVINO (the CPU
    default) serves every route a torch one does, with the same numbers for features."""

    def __init__(self, compiled: dict[str, ov.CompiledModel], *, temperature: Temperature, tokens_per_image: int,
                 dtype: torch.dtype, description: str, quantization: dict[str, Any] | None = None,
                 features: Any = None) -> None:
        self.temperature = temperature
        self.tokens_per_image = tokens_per_image
        self.device = torch.device("cpu")  # ModelInfo.device: CPU models share one model thread
        self.dtype = dtype  # the inference precision
        self.description = description
        self.quantization = quantization or {}  # what was applied per tower and its measured cosine (meta.json)
        self._vision = _CompiledTower(compiled["vision"])
        self._text = _CompiledTower(compiled["text"])
        self._features = features if hasattr(features, "encode_patch_features") else None

    def __getattr__(self, name: str) -> Any:
        # Only the dense-feature members are forwarded, and only when the torch towers have them, so that
        # `hasattr(towers, "encode_patch_features")` stays the test of whether features are served.
        features = self.__dict__.get("_features")
        if name in ("patch_layout", "encode_patch_features") and features is not None:
            return getattr(features, name)
        raise AttributeError(name)

    def encode_prepared(self, prepared: Sequence[Any]) -> torch.Tensor:
        return self._vision(np.stack(prepared))

    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] normalized pixels -> [B, D] float32 embeddings (not normalized)."""
        return self._vision(pixel_values.numpy())

    def encode_texts(self, input_ids: torch.Tensor) -> torch.Tensor:
        """[B, L] fixed-length ids -> [B, D] float32 embeddings (not normalized; no mask, as in torch)."""
        return self._text(input_ids.numpy())

    def compile(self, max_batch_size: int, *, backend: str | Callable[..., Any] = "inductor") -> None:
        """Nothing to do: OpenVINO compiled both towers when they were loaded (torch.compile is torch's)."""
        logger.info("--compile is for torch; OpenVINO towers are compiled already")

    def warm_up(self, image_shape: tuple[int, ...] | None, text_length: int) -> None:
        if image_shape is not None:
            self.encode_images(torch.zeros((1, *image_shape)))
        self.encode_texts(torch.ones((1, text_length), dtype=torch.long))


def openvino_checkpoint(checkpoint: Checkpoint, *, dtype: str, quantize: str, options: OpenVinoOptions) -> Checkpoint:
    """`checkpoint` (fixed resolution, float32, on the CPU) with its towers converted, cached and compiled."""
    precision_dtype = resolve_dtype(dtype, torch.device("cpu"))
    precision = PRECISIONS[precision_dtype]
    root = options.cache_dir or default_cache_dir()
    core = ov.Core()
    core.set_property({"CACHE_DIR": str(root / "compiled")})
    quantized = quantize != "none"
    key_options = {"quantize": quantize, "calibration": calibration_source(options.calibration) if quantized else None,
                   "min_cosine": options.min_cosine if quantized else None}
    config = compile_config(options, precision)
    check_config = compile_config(options, "f32")  # the check measures the quantization alone

    def build() -> Converted:
        assert checkpoint.image_size is not None, "NaFlex stays on torch (runtime_choice.py)"
        module = checkpoint.towers.module
        models = {tower: convert_tower(module, tower, image_size=checkpoint.image_size,
                                       text_length=checkpoint.tokenizer.length) for tower in TOWERS}
        if not quantized:
            return Converted(models, {"requested": "none"})
        calibration = calibration_set(options.calibration)
        models, meta = quantize_towers(models, quantize=quantize, checkpoint=checkpoint, calibration=calibration,
                                       threshold=options.min_cosine,
                                       run=lambda model: _runner(core.compile_model(model, "CPU", check_config)))
        return Converted(models, meta)

    checkpoint_hash = content_hash(checkpoint.directory, root / "file-hashes.json")
    entry = cached(root, cache_key(checkpoint_hash, key_options), build)
    if quantized:
        warn_about(entry.meta, synthetic=options.calibration is None)
    compiled = {tower: core.compile_model(str(entry.model_path(tower)), "CPU", config) for tower in TOWERS}
    towers = OpenVinoTowers(compiled, temperature=checkpoint.towers.temperature,
                            tokens_per_image=checkpoint.towers.tokens_per_image, dtype=precision_dtype,
                            description=describe(entry, precision=precision, config=config), quantization=entry.meta,
                            features=checkpoint.towers)
    return replace(checkpoint, towers=towers)  # type: ignore[arg-type]  # duck-typed SiglipTowers, see the class


def warn_about(meta: dict[str, Any], *, synthetic: bool) -> None:
    """At every start, not only the first: what was refused, and how little a synthetic check says."""
    wanted = {"vision": meta["requested"], "text": "int8-weights"}
    for tower in TOWERS:
        if meta[tower]["applied"] != wanted[tower]:
            logger.warning("%s tower: %s was refused at conversion (%s); serving %s", tower, wanted[tower],
                           ", ".join(f"{t['mode']} min cosine {t['min_cosine']:.5f}" for t in meta[tower]["tried"]),
                           meta[tower]["applied"])
    if synthetic and meta["vision"]["applied"] == "int8":
        logger.warning("int8 was calibrated and checked on synthetic images, which says little about yours: "
                       "pass --calibration DIR with images like those you serve")


def _runner(compiled: ov.CompiledModel) -> Callable[[np.ndarray], np.ndarray]:
    tower = _CompiledTower(compiled)
    return lambda array: tower(array).numpy()


def describe(entry: CacheEntry, *, precision: str, config: dict[str, Any]) -> str:
    """One line for the startup log: the runtime, its settings, and the measured numerics of quantization."""
    meta = entry.meta
    pinning = "on" if config["ENABLE_CPU_PINNING"] else "off"
    parts = [f"OpenVINO {ov.get_version().split('-')[0]} on the CPU, {precision}, "
             f"{config['INFERENCE_NUM_THREADS']} threads, 1 stream, pinning {pinning}",
             f"{'cached' if entry.hit else 'converted'} in {entry.directory}"]
    if meta.get("requested", "none") != "none":
        parts.append(f"--quantize {meta['requested']}")
        for tower in TOWERS:
            info = meta[tower]
            parts.append(f"{tower} tower {info['applied']} (min cosine vs float32 {info['min_cosine']:.5f} on "
                         f"{info['checked_on']}, threshold {meta['threshold']})")
    return "; ".join(parts)
