"""Dense patch features (issue #19) equal the references: transformers' vision models and open_clip itself.

References: `SiglipVisionModel` / `Siglip2VisionModel` (eager attention) on pixels from transformers' own PIL
processors, with `output_hidden_states=True`: layer -1 is `last_hidden_state`, layer k is `hidden_states[k]`
(0 = the patch embeddings), -2 the penultimate layer. fp32, within 1e-5. open_clip: golden features made by
tests/golden/open_clip/make_golden.py with open_clip and timm (`forward_intermediates`, `forward_features`).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from sample_images import photo_like, sample_images
from tiny_checkpoints import build_siglip1
from tiny_naflex import build_naflex
from transformers import Siglip2ImageProcessorPil, Siglip2VisionModel, SiglipImageProcessorPil, SiglipVisionModel

import siglip_serve
from siglip_serve.errors import LayerOutOfRangeError
from siglip_serve.model import Model
from siglip_serve.models.naflex import load_naflex_checkpoint
from siglip_serve.models.open_clip import load_open_clip_checkpoint

ATOL = 1e-5
BATCH_ATOL = 1e-6
GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "open_clip"
# (layer asked, index into the reference's hidden_states, or None for last_hidden_state); tiny towers have 2 layers
LAYERS = [(-1, None), (2, None), (-2, 1), (1, 1), (0, 0), (-3, 0)]

NAFLEX_IMAGES = {  # (width, height)
    "tall": photo_like(30, 120, seed=1),
    "wide": photo_like(200, 40, seed=2),
    "tiny": photo_like(5, 7, seed=3),
    "photo": photo_like(640, 480, seed=6),
}


def reference(model: torch.nn.Module, layer_index: int | None, **inputs: torch.Tensor):
    with torch.no_grad():
        out = model(**inputs, output_hidden_states=True)
    tokens = out.last_hidden_state if layer_index is None else out.hidden_states[layer_index]
    return tokens, out.pooler_output


# --- fixed resolution: SigLIP and SigLIP 2 (tiny checkpoints of the hub layouts) ----------------------------


@pytest.fixture(scope="module", params=["siglip1", "siglip2"])
def fixed(request: pytest.FixtureRequest) -> tuple[Model, SiglipVisionModel, torch.Tensor]:
    directory = request.getfixturevalue(f"{request.param}_dir")
    ref = SiglipVisionModel.from_pretrained(directory, attn_implementation="eager").eval()
    pixels = SiglipImageProcessorPil.from_pretrained(directory)(list(sample_images().values()),
                                                                return_tensors="pt")["pixel_values"]
    return siglip_serve.load(str(directory), device="cpu", dtype="float32"), ref, pixels


@pytest.mark.parametrize(("layer", "layer_index"), LAYERS)
def test_fixed_resolution_features_equal_transformers_hidden_states(fixed, layer: int, layer_index: int | None
                                                                    ) -> None:
    ours, ref, pixels = fixed
    expected, pooled = reference(ref, layer_index, pixel_values=pixels)
    got = ours.encode_patches(list(sample_images().values()), layer, pooled=True)
    assert len(got) == len(pixels)
    for row, features in enumerate(got):
        assert features.grid == (4, 4)  # 32 px at patch 8
        assert features.features.shape == (16, 32) and features.features.dtype == torch.float32
        torch.testing.assert_close(features.features, expected[row], atol=ATOL, rtol=0)
        torch.testing.assert_close(features.pooled, pooled[row], atol=ATOL, rtol=0)
        torch.testing.assert_close(features.spatial(), expected[row].reshape(4, 4, 32), atol=ATOL, rtol=0)


def test_layers_are_distinct_and_the_final_one_is_post_layernorm(fixed) -> None:
    """The comparisons above would pass vacuously if every layer returned the same tokens."""
    ours, ref, _ = fixed
    image = list(sample_images().values())[:1]
    by_layer = {layer: ours.encode_patches(image, layer)[0].features for layer in (0, 1, 2)}
    assert min(float((by_layer[a] - by_layer[b]).abs().max()) for a, b in [(0, 1), (1, 2), (0, 2)]) > 1e-2
    assert ours.encode_patches(image)[0].pooled is None  # pooled only when asked
    torch.testing.assert_close(ours.encode_patches(image, pooled=True)[0].pooled, ours.embed_images(
        image, normalize=False)[0], atol=ATOL, rtol=0)


@pytest.mark.parametrize("layer", [3, -4, 100, -100])
def test_a_layer_out_of_range_names_the_valid_range(fixed, layer: int) -> None:
    ours, _, _ = fixed
    with pytest.raises(LayerOutOfRangeError, match=r"in -3\.\.2 .*2 layers|2 layers.*-3\.\.2"):
        ours.encode_patches(list(sample_images().values())[:1], layer)


def test_fixed_resolution_batch_invariance(fixed) -> None:
    ours, _, _ = fixed
    images = list(sample_images().values())
    for layer in (-1, -2, 0):
        batch = ours.encode_patches(images, layer, pooled=True)
        for row, image in enumerate(images):
            alone = ours.encode_patches([image], layer, pooled=True)[0]
            torch.testing.assert_close(alone.features, batch[row].features, atol=BATCH_ATOL, rtol=0)
            torch.testing.assert_close(alone.pooled, batch[row].pooled, atol=BATCH_ATOL, rtol=0)


def test_so400m_grid_is_27_by_27(tmp_path_factory: pytest.TempPathFactory) -> None:
    """384 px at patch 14: the convolution drops the last 6 px, leaving 27 x 27 = 729 patches (so400m-384)."""
    directory = build_siglip1(tmp_path_factory.mktemp("ckpt") / "tiny-384-14", image_size=384, patch_size=14)
    ours = siglip_serve.load(str(directory), device="cpu", dtype="float32")
    assert ours.patch_layout.grid == (27, 27) and ours.patch_layout.max_patches == 729
    image = photo_like(500, 300, seed=9)
    ref = SiglipVisionModel.from_pretrained(directory, attn_implementation="eager").eval()
    pixels = SiglipImageProcessorPil.from_pretrained(directory)([image], return_tensors="pt")["pixel_values"]
    for layer, layer_index in [(-1, None), (-2, 1)]:
        expected, _ = reference(ref, layer_index, pixel_values=pixels)
        (got,) = ours.encode_patches([image], layer)
        assert got.grid == (27, 27) and got.features.shape == (729, 32)
        torch.testing.assert_close(got.features, expected[0], atol=ATOL, rtol=0)


# --- NaFlex: variable grids, only the real patches ----------------------------------------------------------


@pytest.fixture(scope="module")
def naflex(tmp_path_factory: pytest.TempPathFactory) -> tuple[Model, Siglip2VisionModel, dict[str, torch.Tensor]]:
    directory = build_naflex(tmp_path_factory.mktemp("ckpt") / "tiny-naflex")
    ours = Model(load_naflex_checkpoint(directory, name=str(directory), device=torch.device("cpu"),
                                        dtype=torch.float32))
    ref = Siglip2VisionModel.from_pretrained(directory, attn_implementation="eager").eval()
    inputs = Siglip2ImageProcessorPil.from_pretrained(directory)(list(NAFLEX_IMAGES.values()), return_tensors="pt")
    return ours, ref, dict(inputs)


@pytest.mark.parametrize(("layer", "layer_index"), LAYERS)
def test_naflex_features_are_the_real_patches_of_transformers_hidden_states(naflex, layer: int,
                                                                            layer_index: int | None) -> None:
    ours, ref, inputs = naflex
    expected, pooled = reference(ref, layer_index, **inputs)
    got = ours.encode_patches(list(NAFLEX_IMAGES.values()), layer, pooled=True)
    counts = inputs["pixel_attention_mask"].sum(1).tolist()
    assert min(counts) < 16, "some image must be padded, or dropping the padding is not tested"
    for row, (name, features) in enumerate(zip(NAFLEX_IMAGES, got, strict=True)):
        h, w = inputs["spatial_shapes"][row].tolist()
        assert features.grid == (h, w), name
        assert features.features.shape == (h * w, 32) and h * w == counts[row], name
        # The processor lays patches out row-major over spatial_shapes (convert_image_to_patches), real ones first.
        torch.testing.assert_close(features.features, expected[row, : h * w], atol=ATOL, rtol=0, msg=name)
        torch.testing.assert_close(features.pooled, pooled[row], atol=ATOL, rtol=0, msg=name)


def test_naflex_grids_follow_the_aspect_ratio(naflex) -> None:
    ours, _, _ = naflex
    grids = {name: f.grid for name, f in zip(NAFLEX_IMAGES, ours.encode_patches(list(NAFLEX_IMAGES.values())),
                                                 strict=True)}
    assert grids["tall"][0] > grids["tall"][1] and grids["wide"][1] > grids["wide"][0]
    assert ours.patch_layout.grid is None and ours.patch_layout.max_patches == 16


def test_naflex_batch_invariance(naflex) -> None:
    ours, _, _ = naflex
    images = list(NAFLEX_IMAGES.values())
    for layer in (-1, -2, 0):
        batch = ours.encode_patches(images, layer, pooled=True)
        for row, image in enumerate(images):
            alone = ours.encode_patches([image], layer, pooled=True)[0]
            torch.testing.assert_close(alone.features, batch[row].features, atol=BATCH_ATOL, rtol=0)
            torch.testing.assert_close(alone.pooled, batch[row].pooled, atol=BATCH_ATOL, rtol=0)


# --- open_clip format: golden features from open_clip and timm ----------------------------------------------


@pytest.fixture(scope="module")
def golden() -> dict:
    stored = np.load(GOLDEN / "golden.npz")
    if "features_layer_0" not in stored.files:
        pytest.fail("golden.npz has no features: run make_golden.py --features-only (tests/golden/open_clip)")
    return {**stored, **json.loads((GOLDEN / "golden.json").read_text())}


@pytest.fixture(scope="module")
def open_clip_model() -> Model:
    return Model(load_open_clip_checkpoint(GOLDEN, name=str(GOLDEN), device=torch.device("cpu"), dtype=torch.float32))


@pytest.mark.parametrize("layer", [-1, -2, 0, 2, 1])
def test_open_clip_features_equal_open_clip(golden: dict, open_clip_model: Model, layer: int) -> None:
    """Layer 2 (-1) is timm's forward_features, 1 (-2) open_clip's forward_intermediates of block 0, 0 the patch
    and position embeddings; no class token (tests/golden/open_clip/make_golden.py)."""
    ours = open_clip_model
    images = [GOLDEN / name for name in golden["images"]]
    expected = golden[f"features_layer_{layer % 3}"]
    got = ours.encode_patches(images, layer, pooled=True)
    assert expected.shape == (len(images), 16, 48)
    np.testing.assert_allclose(np.stack([f.features.numpy() for f in got]), expected, atol=ATOL, rtol=0)
    np.testing.assert_allclose(np.stack([f.pooled.numpy() for f in got]), golden["features_pooled"], atol=ATOL,
                               rtol=0)
    assert {f.grid for f in got} == {(4, 4)}
