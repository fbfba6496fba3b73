"""The shipped siglip-demo-shapes checkpoint, loaded and scored through the library (the serving path).

Quality bar (issue): on freshly generated held-out images, zero-shot top-1 with the template
"This is a photo of {}." >= 90% over the 48 "a {color} {shape}" labels and >= 97% for the 8 colors
and the 6 shapes; text->image recall@1 >= 85% over 48 images, one per combination. The images here
come from a seed that neither training (seed 0) nor bench/demo_accuracy.py uses. The model runs
as the server runs it (`--dtype auto`). Drawing and scoring 960 images takes a few seconds.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from PIL import Image, ImageDraw

import siglip_serve
from siglip_serve.demo import DEMO_MODEL_NAME, demo_model_dir
from siglip_serve.model import Model
from siglip_serve.training.evaluate import held_out, one_per_combo, rerank_recall_at_1, zero_shot_accuracy
from siglip_serve.training.shapes import COLORS, COMBOS, draw_shape, make_sample

TEST_SEED = 2_000_029
MAX_BYTES = 10_000_000
HELD_OUT_IMAGES = 960  # 20 of each color-shape combination


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
    assert config["text_config"]["max_position_embeddings"] == 64


def test_loads_with_the_real_siglip_text_settings(model: Model) -> None:
    info = model.info
    assert (info.family, info.format, info.text_length) == ("siglip", "hf", 64)
    assert (model.checkpoint.tokenizer.pad_id, model.checkpoint.tokenizer.eos_id) == (1, 1)
    temperature = model.checkpoint.towers.temperature
    assert temperature.logit_scale > 2.3 and temperature.logit_bias < 0  # learned from log 10 and -10


def test_zero_shot_accuracy_on_held_out_images(model: Model) -> None:
    accuracy = zero_shot_accuracy(model, held_out(HELD_OUT_IMAGES, seed=TEST_SEED))
    assert accuracy.images == HELD_OUT_IMAGES
    assert accuracy.combo >= 0.90, accuracy
    assert accuracy.color >= 0.97, accuracy
    assert accuracy.shape >= 0.97, accuracy


def test_text_to_image_recall_at_1(model: Model) -> None:
    assert rerank_recall_at_1(model, one_per_combo(seed=TEST_SEED)) >= 0.85


def test_readme_example_red_circle(tmp_path) -> None:
    index = next(i for i in range(48) if (make_sample(TEST_SEED + 1, i).color, make_sample(TEST_SEED + 1, i).shape)
                 == ("red", "circle"))
    path = tmp_path / "shape.png"
    make_sample(TEST_SEED + 1, index).image.save(path)
    ranked = siglip_serve.load(str(demo_model_dir()), device="cpu").classify([str(path)], ["red circle", "blue square"])
    assert ranked[0][0][0] == "red circle"
    assert ranked[0][0][1] > 0.5 > ranked[0][1][1]


def test_shipped_weights_record_how_they_were_trained() -> None:
    record = json.loads((demo_model_dir() / "training.json").read_text())
    assert record["command"].startswith("siglip-serve train ")
    assert record["interrupted"] is False
    assert record["options"]["seed"] == 0 and record["options"]["data"] is None


def drawn(color: str, shape: str) -> Image.Image:
    """The shape in its base color, centered and axis-aligned on a plain light-gray background."""
    image = Image.new("RGB", (96, 96), (235, 235, 235))
    draw_shape(ImageDraw.Draw(image), shape, np.array([48.0, 48.0]), 32.0, math.pi / 4, COLORS[color])
    return image


@pytest.mark.parametrize(("color", "shape"), [("red", "circle"), ("blue", "square")])
def test_float32_classifies_a_drawn_shape_among_the_48_labels(float32_model: Model, color: str, shape: str) -> None:
    labels = [f"{c} {s}" for c, s in COMBOS]
    assert len(labels) == 48
    right = f"{color} {shape}"
    ranked = float32_model.classify([drawn(color, shape)], labels)[0]
    assert ranked[0][0] == right
    probabilities = dict(ranked)
    assert sorted(probabilities) == sorted(labels)
    assert probabilities[right] > 0.5
    # Sigmoid probabilities are independent per label (a wrong one may pass 0.5 too): each must be below the right one.
    assert all(probabilities[label] < probabilities[right] for label in labels if label != right)
