"""The library API: load a checkpoint, embed images and texts, classify zero-shot.

Works without any server::

    import siglip_serve
    model = siglip_serve.load("google/siglip-base-patch16-224")
    model.classify(["cat.jpg"], ["cat", "dog"])  # [[("cat", 0.93), ("dog", 0.01)]]
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import torch

from siglip_serve.backend import ModelInfo, Temperature, TokenizedText
from siglip_serve.config import default
from siglip_serve.errors import EmptyInputError, SiglipServeError
from siglip_serve.features import PatchFeatures, PatchLayout
from siglip_serve.models.checkpoint import Checkpoint
from siglip_serve.models.registry import download_progress
from siglip_serve.models.runtime_choice import OpenVinoOptions, load_for_backend
from siglip_serve.preprocess.images import ImageSource, ImageTransform, prepare_image
from siglip_serve.preprocess.pixel_budget import PixelBudget
from siglip_serve.scoring import (
    DEFAULT_TEMPLATE,
    as_list,
    check_classify_options,
    ensemble_templates,
    format_prompts,
    l2_normalize,
    logits,
    probabilities,
    ranked_labels,
)

__all__ = ["DEFAULT_TEMPLATE", "Model", "ModelInfo", "load"]


class Model:
    """A loaded SigLIP-family checkpoint with its preprocessing, tokenizer and scoring."""

    def __init__(self, checkpoint: Checkpoint, *, max_pixels: int = default("max_image_pixels"),
                 batch_size: int = default("max_batch_size"), jpeg_draft: bool = False):
        self.checkpoint = checkpoint
        self.max_pixels = max_pixels
        self.batch_size = batch_size
        # DCT-domain JPEG downscaling toward the input size; fixed-resolution checkpoints only,
        # since a NaFlex input size depends on the image.
        self.draft_size = checkpoint.image_size if jpeg_draft else None

    @property
    def info(self) -> ModelInfo:
        c = self.checkpoint
        return ModelInfo(
            name=c.name,
            family=c.family.value,
            format=c.format,
            image_size=c.image_size,
            patch_size=c.patch_size,
            embed_dim=c.embed_dim,
            text_length=c.tokenizer.length,
            tokens_per_image=c.towers.tokens_per_image,
            device=str(c.towers.device),
            max_num_patches=getattr(c.image_transform, "max_num_patches", None),
        )

    @property
    def temperature(self) -> Temperature:
        return self.checkpoint.towers.temperature

    def compile(self, *, backend: str | Callable[..., Any] = "inductor") -> None:
        """torch.compile the towers for batches of up to `batch_size` and compile every bucket now
        (see `SiglipTowers.compile`); NaFlex vision inputs vary per image, so only its text tower is."""
        towers, transform = self.checkpoint.towers, self.checkpoint.image_transform
        towers.compile(self.batch_size, backend=backend)
        image_shape = (3, transform.height, transform.width) if isinstance(transform, ImageTransform) else None
        towers.warm_up(image_shape, self.checkpoint.tokenizer.length)

    # --- per-item preparation (CPU; the server runs these in a worker pool) ---

    def prepare_image(self, source: ImageSource, *, budget: PixelBudget | None = None) -> Any:
        """Decode and preprocess one image: a [3, H, W] float32 array (NaFlex: patches and shape).

        With a `budget`, the decoded pixels are counted against it until they are model input.
        """
        return prepare_image(source, self.checkpoint.image_transform, max_pixels=self.max_pixels,
                             draft_size=self.draft_size, budget=budget)

    def tokenize(self, texts: Sequence[str]) -> list[TokenizedText]:
        """Fixed-length token ids of each text, with its real token count (one encode per text)."""
        tokenizer = self.checkpoint.tokenizer
        return [TokenizedText(torch.tensor(ids, dtype=torch.long), count)
                for ids, count in map(tokenizer.ids_and_count, texts)]

    def prepare_images(self, images: Sequence[ImageSource]) -> list[Any]:
        images = as_list(images)
        if not images:
            raise EmptyInputError("at least one image is required", param="input")
        prepared = []
        for index, source in enumerate(images):
            try:
                prepared.append(self.prepare_image(source))
            except SiglipServeError as exc:
                raise exc.at(f"input[{index}]") from None
        return prepared

    # --- embeddings ---

    def encode_image_batch(self, prepared: Sequence[Any]) -> torch.Tensor:
        """Raw embeddings of preprocessed images, as one forward (the engine sizes its batches)."""
        return self.checkpoint.towers.encode_prepared(prepared)

    def encode_text_batch(self, ids: Sequence[torch.Tensor]) -> torch.Tensor:
        """Raw embeddings of tokenized texts (`tokenize(...)[i].ids`), as one forward."""
        return self.checkpoint.towers.encode_texts(torch.stack(list(ids)))

    def encode_prepared_images(self, prepared: Sequence[Any]) -> torch.Tensor:
        """Raw (unnormalized) embeddings of preprocessed images, in chunks of `batch_size`."""
        return torch.cat([self.encode_image_batch(prepared[i : i + self.batch_size])
                          for i in range(0, len(prepared), self.batch_size)])

    def embed_images(self, images: Sequence[ImageSource], *, normalize: bool = True) -> torch.Tensor:
        """[N, D] float32 embeddings of paths, bytes or PIL images; L2-normalized unless asked."""
        embeds = self.encode_prepared_images(self.prepare_images(images))
        return l2_normalize(embeds) if normalize else embeds

    def embed_texts(self, texts: Sequence[str], *, normalize: bool = True) -> torch.Tensor:
        """[N, D] float32 text embeddings (texts are used as given: no template)."""
        texts = as_list(texts)
        if not texts:
            raise EmptyInputError("at least one text is required", param="input")
        ids = self.checkpoint.tokenizer(texts)
        embeds = torch.cat([
            self.checkpoint.towers.encode_texts(ids[i : i + self.batch_size])
            for i in range(0, len(ids), self.batch_size)
        ])
        return l2_normalize(embeds) if normalize else embeds

    def embed_labels(self, labels: Sequence[str], templates: str | Sequence[str] | None = None) -> torch.Tensor:
        """[labels, D] normalized class embeddings, ensembled over templates."""
        labels = as_list(labels)
        prompts = format_prompts(labels, templates)
        flat = self.embed_texts([p for row in prompts for p in row], normalize=False)
        return ensemble_templates(flat.reshape(len(prompts), len(labels), -1))

    # --- dense features (vision encoding) ---

    @property
    def patch_layout(self) -> PatchLayout:
        """Layers, width and grid of the vision tower's patch tokens (see `siglip_serve.features`).

        An AttributeError for towers that return embeddings only (OpenVINO's), so that `hasattr` tells the
        engine this model serves no features."""
        towers = self.checkpoint.towers
        if not hasattr(towers, "encode_patch_features"):
            raise AttributeError(f"{type(towers).__name__} returns no patch features; load with backend='torch'")
        return towers.patch_layout

    def encode_patch_batch(self, prepared: Sequence[Any], *, layer: int = -1) -> list[PatchFeatures]:
        """Patch tokens of `layer` of preprocessed images, as one forward (the engine sizes its batches)."""
        return self.checkpoint.towers.encode_patch_features(prepared, self.patch_layout.resolve_layer(layer))

    def encode_patches(self, images: Sequence[ImageSource], layer: int = -1, *,
                       pooled: bool = False) -> list[PatchFeatures]:
        """Per image, the vision tower's patch tokens of one layer: `features` [h*w, d] float32 in row-major
        order over `grid` (h, w), and with `pooled=True` the MAP head's output of the same forward.

        ``layer=-1`` (the default) is transformers' `last_hidden_state`, after the final LayerNorm; ``0..L-1``
        is `hidden_states[layer]` (0: the patch embeddings) and negative indices count from the end, so -2 is
        the penultimate layer. No class token: every token is a patch. NaFlex returns only each image's real
        patches, in the row-major order of its spatial shape.
        """
        index = self.patch_layout.resolve_layer(layer)  # before any decoding
        prepared = self.prepare_images(images)
        features = [row for i in range(0, len(prepared), self.batch_size)
                    for row in self.encode_patch_batch(prepared[i : i + self.batch_size], layer=index)]
        return features if pooled else [replace(row, pooled=None) for row in features]

    # --- scores ---

    def logits(self, image_embeds: torch.Tensor, text_embeds: torch.Tensor) -> torch.Tensor:
        """[I, T] SigLIP logits exp(logit_scale)*cos + logit_bias, with the checkpoint's values."""
        return logits(image_embeds, text_embeds, self.checkpoint.towers.temperature)

    def score(self, images: Sequence[ImageSource], texts: Sequence[str]) -> torch.Tensor:
        """[I, T] independent sigmoid probabilities of each (image, text) pair (texts used as given)."""
        return self.logits(self.embed_images(images), self.embed_texts(texts)).sigmoid()

    def classify(
        self,
        images: Sequence[ImageSource],
        labels: Sequence[str],
        *,
        templates: str | Sequence[str] | None = None,
        normalization: str = "sigmoid",
        top_k: int | None = None,
    ) -> list[list[tuple[str, float]]]:
        """Zero-shot classification: per image, (label, probability) pairs sorted by probability.

        Sigmoid probabilities are independent per label and need not sum to 1;
        ``normalization="softmax"`` gives a distribution over the given labels instead.
        """
        labels = as_list(labels)
        check_classify_options(normalization, top_k)
        return self.classify_embeddings(
            self.embed_images(images), self.embed_labels(labels, templates), labels,
            normalization=normalization, top_k=top_k,
        )

    def classify_embeddings(
        self,
        image_embeds: torch.Tensor,
        label_embeds: torch.Tensor,
        labels: Sequence[str],
        *,
        normalization: str = "sigmoid",
        top_k: int | None = None,
    ) -> list[list[tuple[str, float]]]:
        """`classify` on embeddings already computed (the server and CLI reuse label embeddings)."""
        probs = probabilities(self.logits(image_embeds, label_embeds), check_classify_options(normalization, top_k))
        return [ranked_labels(list(labels), row, top_k) for row in probs]


def quiet_transformers() -> None:
    """No progress bars or config warnings from transformers (and huggingface_hub downloads): CLI, server, jobs.

    Without importing transformers when nothing has yet (~1 s of a CLI run, most of which never needs it):
    its logger and huggingface_hub's progress bars read these variables when they are first imported.
    """
    if "transformers" not in sys.modules:
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        if "huggingface_hub" not in sys.modules:
            os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
            return
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
        return
    from transformers.utils import logging as transformers_logging

    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()


def load(
    spec: str,
    *,
    device: str = "auto",
    dtype: str = "auto",
    max_pixels: int = default("max_image_pixels"),
    batch_size: int = default("max_batch_size"),
    jpeg_draft: bool = False,
    backend: str = "torch",
    quantize: str = "none",
    openvino: OpenVinoOptions | None = None,
    progress: bool = False,
) -> Model:
    """Load a checkpoint from a local directory or a Hugging Face hub id.

    ``device="auto"`` uses CUDA when present, else the CPU; ``dtype="auto"`` is float32 everywhere
    (exact; why not bf16 on CPUs that list it: `siglip_serve.models.device_policy`).
    ``jpeg_draft=True`` decodes large JPEGs at reduced scale (faster, slightly different pixels).
    ``backend="openvino"`` runs both towers of a fixed-resolution checkpoint in OpenVINO on the CPU
    (``"auto"``: there where it applies, torch elsewhere), with ``quantize="int8-weights"`` or ``"int8"``
    as opt-ins whose cosine against float32 is checked and logged; `openvino` holds its cache directory,
    calibration images and threads (`siglip_serve.models.runtime_choice`, `models.openvino_backend`).

    Quiet by default: no warnings and nothing on stderr for a checkpoint that loads correctly (what it
    chose is logged at INFO on the ``siglip_serve`` logger). ``progress=True`` shows huggingface_hub's
    download progress bars for a hub id that is not in the local cache yet.
    """
    with download_progress(progress):
        checkpoint = load_for_backend(spec, device=device, dtype=dtype, backend=backend, quantize=quantize,
                                      options=openvino)
    return Model(checkpoint, max_pixels=max_pixels, batch_size=batch_size, jpeg_draft=jpeg_draft)
