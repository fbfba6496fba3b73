"""The shipped siglip-demo-shapes checkpoint, loaded and scored through the library (the serving path).

Its figures that count are on images drawn by code that shares nothing with its training generator
(bench/heldout_shapes.py; issue 16: the first demo model scored 98.9% on its own generator and 64%
on shapes drawn otherwise). The test marked `NOT_YET_REACHED` states what the model should do on
harder images than it has learned so far (the training generator's own broad images; figures:
bench/results/demo_accuracy.md): a strict xfail, so that a demo model that reaches it must drop
the mark, as session 14's did for the broad `sdf` preset's floors. The model runs as the server
runs it (`--dtype auto`).
"""

from __future__ import annotations

import json
import logging
import math
import warnings

import numpy as np
import pytest
from heldout_generator import heldout_shapes
from PIL import Image, ImageDraw

import siglip_serve
from siglip_serve.demo import DEMO_MODEL_NAME, demo_model_dir
from siglip_serve.model import Model
from siglip_serve.training.evaluate import held_out, one_per_combo, rerank_recall_at_1, zero_shot_accuracy
from siglip_serve.training.shapes import COLORS, COMBOS, draw_shape

TEST_SEED = 2_000_029  # neither training (seed 0) nor bench/demo_accuracy.py uses it
HELD_OUT_SEED = 29  # heldout_shapes: bench/demo_accuracy.py uses 7
MAX_BYTES = 10_000_000
NOT_YET_REACHED = pytest.mark.xfail(
    strict=True, reason="the demo model does not reach this yet on the broad images (issue 16; "
                        "bench/results/demo_accuracy.md); a model that does must drop this mark")


@pytest.fixture(scope="module")
def model() -> Model:
    return siglip_serve.load(str(demo_model_dir()), device="cpu")


@pytest.fixture(scope="module")
def float32_model() -> Model:
    return siglip_serve.load(DEMO_MODEL_NAME, device="cpu", dtype="float32")


def test_the_demo_name_loads_the_shipped_checkpoint() -> None:
    model = siglip_serve.load(DEMO_MODEL_NAME, device="cpu")
    assert model.checkpoint.directory == demo_model_dir()
    assert model.info.embed_dim == 128


def test_shipped_files_are_a_small_google_siglip_style_checkpoint() -> None:
    directory = demo_model_dir()
    assert directory.name == DEMO_MODEL_NAME
    names = {p.name for p in directory.iterdir()}
    assert {"config.json", "model.safetensors", "preprocessor_config.json", "spiece.model",
            "tokenizer_config.json", "special_tokens_map.json", "training.json"} <= names
    assert sum(p.stat().st_size for p in directory.iterdir()) <= MAX_BYTES
    config = json.loads((directory / "config.json").read_text())
    assert config["model_type"] == "siglip" and config["architectures"] == ["SiglipModel"]
    assert config["text_config"]["max_position_embeddings"] == 64


def test_the_config_names_no_token_id_outside_the_vocabulary() -> None:
    """transformers warns about special ids outside the vocabulary (CLIP's 49406/49407 were here once)."""
    text = json.loads((demo_model_dir() / "config.json").read_text())["text_config"]
    for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
        value = text.get(name)
        assert value is None or 0 <= value < text["vocab_size"], (name, value)


def test_loading_prints_no_warning(capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture) -> None:
    """No warnings, log records or progress bars (issue 16: transformers' bos/eos warnings were printed)."""
    with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.WARNING):
        warnings.simplefilter("always")
        siglip_serve.load(DEMO_MODEL_NAME, device="cpu")
    captured = capfd.readouterr()
    assert not caught, [str(w.message) for w in caught]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
    assert "token_id" not in captured.err + captured.out and "Loading weights" not in captured.err


def test_loads_with_the_real_siglip_text_settings(model: Model) -> None:
    info = model.info
    assert (info.family, info.format, info.text_length) == ("siglip", "hf", 64)
    assert (model.checkpoint.tokenizer.pad_id, model.checkpoint.tokenizer.eos_id) == (1, 1)
    temperature = model.checkpoint.towers.temperature
    assert temperature.logit_scale > 2.3 and temperature.logit_bias < 0  # learned from log 10 and -10


@pytest.mark.parametrize(("preset", "count", "floors"), [
    ("clean", 96, {"combo": 0.90, "color": 0.97, "shape": 0.90}),
    # Reached in session 14 (59.4 / 95.8 / 61.7% on these 480 images); a strict xfail until then.
    # Session 15's weights: 61.5 / 97.3 / 63.1%; session 17's: 67.5 / 97.7 / 67.9%; session 19's: 69.4 / 97.9 / 70.4%.
    ("sdf", 480, {"combo": 0.65, "color": 0.95, "shape": 0.65}),
    # The issue's description drawn gently and drawn harshly (bench/heldout_shapes.py); floors a few
    # points under the shipped weights (session 19's: 93.1 / 100 / 93.3% and 67.3 / 99.6 / 67.5%;
    # session 17's: 92.1 / 100 / 91.7% and 66.2 / 99.8 / 65.2%), so that a retrained demo model
    # cannot fall back unnoticed.
    ("mild", 480, {"combo": 0.90, "color": 0.97, "shape": 0.90}),
    ("issue", 480, {"combo": 0.63, "color": 0.95, "shape": 0.63}),
])
def test_zero_shot_accuracy_on_the_separate_held_out_generator(model: Model, preset: str, count: int,
                                                               floors: dict[str, float]) -> None:
    accuracy = zero_shot_accuracy(model, heldout_shapes.held_out_images(count, preset=preset, seed=HELD_OUT_SEED))
    assert accuracy.images == count
    for key, floor in floors.items():
        assert getattr(accuracy, key) >= floor, accuracy


@NOT_YET_REACHED
def test_zero_shot_accuracy_on_the_training_generator_with_an_unseen_seed(model: Model) -> None:
    accuracy = zero_shot_accuracy(model, held_out(480, seed=TEST_SEED))
    assert accuracy.combo >= 0.60 and accuracy.color >= 0.85 and accuracy.shape >= 0.65, accuracy


def test_text_to_image_recall_at_1(model: Model) -> None:
    clean = heldout_shapes.held_out_images(48, preset="clean", seed=HELD_OUT_SEED)
    assert rerank_recall_at_1(model, clean) >= 0.85
    assert rerank_recall_at_1(model, one_per_combo(seed=TEST_SEED)) >= 0.5


def best_of_48(model: Model, image: Image.Image) -> tuple[str, dict[str, float]]:
    labels = [f"{c} {s}" for c, s in COMBOS]
    ranked = model.classify([image], labels)[0]
    return ranked[0][0], dict(ranked)


def test_a_purple_hexagon_with_a_vertex_pointing_right_is_a_purple_hexagon(float32_model: Model) -> None:
    """The first demo model called this "purple square" at 0.994 (issue 16)."""
    image = Image.new("RGB", (256, 256), (255, 255, 255))
    # A regular hexagon with vertices at 0, 60, ..., 300 degrees: one points right.
    vertices = [(128 + 90 * math.cos(k * math.pi / 3), 128 + 90 * math.sin(k * math.pi / 3)) for k in range(6)]
    ImageDraw.Draw(image).polygon(vertices, fill=(128, 0, 128))
    best, scores = best_of_48(float32_model, image)
    assert best == "purple hexagon", sorted(scores.items(), key=lambda item: -item[1])[:3]
    assert scores["purple square"] < scores["purple hexagon"]


def test_a_red_circle_on_a_306_px_gradient_is_a_red_circle(float32_model: Model) -> None:
    """The first demo model called this "red square" (issue 16)."""
    ramp = np.linspace(0, 1, 306, dtype=np.float32)[None, :, None]
    pixels = (np.array([200, 210, 230]) * (1 - ramp) + np.array([120, 140, 170]) * ramp).repeat(306, axis=0)
    image = Image.fromarray(pixels.astype(np.uint8), "RGB")
    ImageDraw.Draw(image).ellipse((93, 93, 213, 213), fill=(230, 20, 20))
    best, scores = best_of_48(float32_model, image)
    assert best == "red circle", sorted(scores.items(), key=lambda item: -item[1])[:3]


def test_shipped_weights_record_how_they_were_trained() -> None:
    record = json.loads((demo_model_dir() / "training.json").read_text())
    assert record["command"].startswith("siglip-serve train ")
    assert record["interrupted"] is False
    assert record["options"]["seed"] == 0 and record["options"]["data"] is None


def drawn(color: str, shape: str) -> Image.Image:
    """The shape in its typical color, centered and rotated 45 degrees, on a plain light-gray background."""
    image = Image.new("RGB", (96, 96), (235, 235, 235))
    draw_shape(ImageDraw.Draw(image), shape, np.array([48.0, 48.0]), 32.0, math.pi / 4, COLORS[color])
    return image


@pytest.mark.parametrize(("color", "shape"), [("red", "circle"), ("blue", "square")])
def test_float32_classifies_a_drawn_shape_among_the_48_labels(float32_model: Model, color: str, shape: str) -> None:
    right = f"{color} {shape}"
    best, probabilities = best_of_48(float32_model, drawn(color, shape))
    assert best == right
    assert sorted(probabilities) == sorted(f"{c} {s}" for c, s in COMBOS)
    assert probabilities[right] > 0.5
    # Sigmoid probabilities are independent per label (a wrong one may pass 0.5 too): each must be below the right one.
    assert all(p < probabilities[right] for label, p in probabilities.items() if label != right)
