"""`siglip-serve train`: the sigmoid loss, the shapes dataset, caption files, training, saving.

Models here are tiny (one layer, width 32) so that every test takes seconds on two cores.
"""

from __future__ import annotations

import argparse
import colorsys
import json
import math
from pathlib import Path

import numpy as np
import pytest
import sentencepiece
import torch
from PIL import Image
from safetensors import safe_open
from tiny_checkpoints import build_siglip1

import siglip_serve
from siglip_serve.preprocess.images import ImageTransform
from siglip_serve.preprocess.text import TextCleaning
from siglip_serve.training.cli import add_train_arguments, run_train
from siglip_serve.training.data import (
    CaptionsSource,
    ShapeFacts,
    ShapesPool,
    TrainingDataError,
    describes_matrix,
    dihedral,
    normalize_pixels,
    read_captions,
    resize_pixels,
)
from siglip_serve.training.loss import INIT_LOGIT_BIAS, INIT_LOGIT_SCALE, sigmoid_loss
from siglip_serve.training.options import Architecture, TrainOptions
from siglip_serve.training.shapes import (
    COLOR_RANGES,
    COLORS,
    COMBOS,
    EASY,
    LUMA,
    MIDDLE,
    SHAPES,
    Caption,
    Contrast,
    Thing,
    caption_corpus,
    contrasting_colors,
    label_captions,
    make_caption,
    make_sample,
    named_color,
    with_article,
)
from siglip_serve.training.train import optimizer_for, scratch_setup, train, training_attention, warmup_cosine

TINY = Architecture(image_size=32, patch_size=8, vision_width=32, vision_layers=1, text_width=32, text_layers=1,
                    head_dim=16, vocab_size=128)


def tiny_options(out: Path, **overrides) -> TrainOptions:
    settings = {"steps": 20, "batch_size": 16, "lr": 3e-3, "warmup_steps": 2, "architecture": TINY,
                "pool_size": 96, "easy_pool_size": 48, "middle_pool_size": 48, "curriculum_steps": 10, "threads": 1,
                "device": "cpu", "progress": False, **overrides}
    return TrainOptions(out=out, **settings)


def mean(values: list[float]) -> float:
    return sum(values) / len(values)


# --- loss ---------------------------------------------------------------------------------------


def log_sigmoid(x: float) -> float:
    return -math.log1p(math.exp(-x))


def test_loss_equals_algorithm_1_by_hand() -> None:
    # Unnormalized inputs: the loss normalizes them. cos = [[0.6, 0.8], [0.8, 0.6]].
    images = torch.tensor([[3.0, 0.0], [0.0, 0.5]])
    texts = torch.tensor([[0.6, 0.8], [1.6, 1.2]])
    scale, bias = torch.tensor([math.log(2.0)]), torch.tensor([-1.0])
    # logits = 2 * cos - 1 = [[0.2, 0.6], [0.6, 0.2]]; labels = 2 * eye - 1; sum over pairs / batch size 2.
    expected = -(log_sigmoid(0.2) + log_sigmoid(-0.6) + log_sigmoid(-0.6) + log_sigmoid(0.2)) / 2
    assert float(sigmoid_loss(images, texts, scale, bias)) == pytest.approx(expected, abs=1e-6)
    # Marking the off-diagonal pair (0, 1) positive flips its label.
    positives = torch.tensor([[True, True], [False, True]])
    expected = -(log_sigmoid(0.2) + log_sigmoid(0.6) + log_sigmoid(-0.6) + log_sigmoid(0.2)) / 2
    assert float(sigmoid_loss(images, texts, scale, bias, positives)) == pytest.approx(expected, abs=1e-6)


def test_loss_over_more_texts_than_images_sums_every_pair_per_image() -> None:
    images = torch.tensor([[1.0, 0.0]])  # one image; cosines with the texts: 1, 0, -1
    texts = torch.tensor([[2.0, 0.0], [0.0, 3.0], [-1.0, 0.0]])
    scale, bias = torch.tensor([0.0]), torch.tensor([0.5])  # logits = cos + 0.5
    positives = torch.tensor([[True, False, False]])
    expected = -(log_sigmoid(1.5) + log_sigmoid(-0.5) + log_sigmoid(0.5)) / 1
    assert float(sigmoid_loss(images, texts, scale, bias, positives)) == pytest.approx(expected, abs=1e-6)


def test_loss_is_lower_when_positives_align() -> None:
    generator = torch.Generator().manual_seed(0)
    embeds = torch.randn(8, 16, generator=generator)
    scale, bias = torch.tensor([INIT_LOGIT_SCALE]), torch.tensor([INIT_LOGIT_BIAS])
    aligned = sigmoid_loss(embeds, embeds, scale, bias)
    shuffled = sigmoid_loss(embeds, embeds.roll(1, dims=0), scale, bias)
    assert float(aligned) < float(shuffled)


def test_paper_initial_temperature() -> None:
    assert math.exp(INIT_LOGIT_SCALE) == pytest.approx(10.0)
    assert INIT_LOGIT_BIAS == -10.0


# The schedule is stepped without an optimizer step on purpose: only the rates it sets are checked.
@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step\\(\\)` before:UserWarning")
def test_temperature_learns_at_its_own_rate_without_weight_decay(tmp_path: Path) -> None:
    options = tiny_options(tmp_path, lr=1e-3, temperature_lr_scale=10.0, weight_decay=0.1)
    module = scratch_setup(options, caption_corpus()).module
    optimizer = optimizer_for(module, options)
    group_of = {id(p): g for g in optimizer.param_groups for p in g["params"]}
    assert len(group_of) == len(list(module.parameters()))  # every parameter in exactly one group
    for parameter in (module.logit_scale, module.logit_bias):
        assert group_of[id(parameter)]["lr"] == pytest.approx(1e-2)
        assert group_of[id(parameter)]["weight_decay"] == 0.0
    matrix = module.vision_model.embeddings.patch_embedding.weight
    assert (group_of[id(matrix)]["lr"], group_of[id(matrix)]["weight_decay"]) == (pytest.approx(1e-3), 0.1)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(2, 20))
    schedule.step()  # the schedule scales both rates alike
    assert group_of[id(module.logit_scale)]["lr"] == pytest.approx(10 * group_of[id(matrix)]["lr"])


def test_temperature_learns_faster_by_default_from_scratch_only() -> None:
    assert TrainOptions(out=Path("."), lr=1e-3).temperature_lr == pytest.approx(1e-2)
    assert TrainOptions(out=Path("."), lr=1e-3, init="google/siglip-base-patch16-224").temperature_lr == 1e-3
    assert TrainOptions(out=Path("."), lr=1e-3, init="x", temperature_lr_scale=4.0).temperature_lr == 4e-3


def test_warmup_then_cosine_to_zero() -> None:
    factor = warmup_cosine(10, 110)
    assert factor(0) == pytest.approx(0.1)
    assert factor(9) == pytest.approx(1.0)
    assert factor(60) == pytest.approx(0.5)
    assert factor(110) == pytest.approx(0.0, abs=1e-12)


# --- shapes dataset -------------------------------------------------------------------------------


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image)


def test_shapes_are_deterministic_per_seed() -> None:
    first, again, other = make_sample(7, 3), make_sample(7, 3), make_sample(8, 3)
    assert np.array_equal(pixels(first.image), pixels(again.image))
    assert first.caption == again.caption
    assert (first.color, first.shape) == (again.color, again.shape)
    assert (first.image.tobytes(), first.caption) != (other.image.tobytes(), other.caption)


def test_every_block_of_48_draws_every_color_and_shape_once() -> None:
    samples = [make_sample(0, i) for i in range(48, 96)]
    assert sorted((s.color, s.shape) for s in samples) == sorted(COMBOS)
    assert {s.color for s in samples} == set(COLORS)
    assert {s.shape for s in samples} == set(SHAPES)
    assert len({s.background for s in samples}) >= 6  # of 8 kinds
    assert len({s.caption.text for s in samples}) > 30  # varied phrasings


def test_canvases_vary_in_size_and_aspect_ratio_and_some_images_hold_several_shapes() -> None:
    samples = [make_sample(4, i) for i in range(96)]
    sizes = [s.image.size for s in samples]
    assert min(max(size) for size in sizes) < 96 and max(max(size) for size in sizes) > 512
    assert max(max(w / h, h / w) for w, h in sizes) > 2.2
    assert any(w == h for w, h in sizes) and any(w != h for w, h in sizes)
    several = [s for s in samples if len(s.things) > 1]
    assert 10 <= len(several) <= 50
    assert all(len({t.color for t in s.things}) == len(s.things) for s in several)  # colors differ
    assert all(len(make_sample(4, i, single=True).things) == 1 for i in range(48))


def test_middle_scene_draws_whole_shapes_often_on_white_paper_never_a_white_shape_there() -> None:
    samples = [make_sample(0, i, scene=MIDDLE) for i in range(96)]
    assert all(max(s.image.size) / min(s.image.size) <= MIDDLE.max_aspect + 0.05 for s in samples)
    assert all(1 <= len(s.things) <= 2 for s in samples)
    on_paper = [s for s in samples if s.background == "paper"]
    assert 16 <= len(on_paper) <= 48  # listed twice of six kinds: about a third
    assert not any("white" in {t.color for t in s.things} for s in on_paper)
    assert any(s.color == "white" for s in samples)  # white shapes are drawn, on other backgrounds
    for sample in on_paper:  # the corner is background: near-white (JPEG, noise and blur move it a little)
        corner = pixels(sample.image)[:3, :3].reshape(-1, 3).astype(float)
        assert (corner.mean(axis=0) > 200).all(), sample.image.size


def in_range(rgb: np.ndarray, name: str, slack: float = 0.05) -> np.ndarray:
    """Pixels ([N, 3] uint8) whose HSV lies in the name's range, widened by `slack`."""
    hsv = np.array([colorsys.rgb_to_hsv(*(p / 255)) for p in rgb])
    (h0, h1), (s0, s1), (v0, v1) = COLOR_RANGES[name]
    hue = (hsv[:, 0] * 360 - h0) % 360 <= (h1 - h0) + 360 * slack
    dark = hsv[:, 2] < 0.1  # hue and saturation of near-black uint8 pixels are rounding noise
    saturation = dark | ((hsv[:, 1] >= s0 - slack) & (hsv[:, 1] <= s1 + slack))
    return (hue | (h1 - h0 >= 360)) & saturation & (hsv[:, 2] >= v0 - slack) & (hsv[:, 2] <= v1 + slack)


def test_backgrounds_contrast_with_every_shape_and_give_way_when_no_color_can() -> None:
    rng = np.random.default_rng(5)
    fills = [(220, 30, 30), (40, 80, 225)]  # red and blue: luma 87 and 85, so light backgrounds exist
    colors = contrasting_colors(rng, fills, 10, saturated=False, contrast=EASY.contrast)
    assert colors.shape == (10, 3)
    assert (np.abs((colors @ LUMA)[:, None] - (np.array(fills) @ LUMA)[None]) >= 80).all()
    assert (np.linalg.norm(colors[:, None] - np.array(fills)[None], axis=2) >= 150).all()
    # Black, white and mid gray: no color is 80 luma away from all three; the contrast asked for shrinks.
    impossible = contrasting_colors(rng, [(0, 0, 0), (255, 255, 255), (128, 128, 128)], 3, saturated=False,
                                    contrast=Contrast(150.0, 80.0, math.inf))
    assert impossible.shape == (3, 3)


def test_named_colors_stay_in_their_range_and_the_typical_rgb_is_in_it() -> None:
    rng = np.random.default_rng(3)
    for name in COLORS:
        drawn = np.array([named_color(rng, name) for _ in range(50)])
        assert in_range(drawn, name, slack=0.01).all(), name
        assert in_range(np.array([COLORS[name]]), name, slack=0.0).all(), name
        others = [other for other in COLORS if other != name]
        assert not any(in_range(drawn, other, slack=0.0).any() for other in others), name


def test_shape_is_drawn_in_its_color() -> None:
    for index in range(12):
        sample = make_sample(1, index, single=True)
        small = sample.image.resize((min(sample.image.width, 200), min(sample.image.height, 200)), Image.NEAREST)
        rgb = pixels(small).reshape(-1, 3)
        assert in_range(rgb, sample.color).sum() >= 3, (sample.color, sample.shape, sample.image.size)


def spoken(text: str) -> list[tuple[str | None, str | None]]:
    """What a caption says, read from its words: one (color, shape) per object it names."""
    parts = text.replace(" next to ", " and ").replace(" with ", " and ").split(" and ")
    terms = []
    for part in parts:
        words = part.split()
        colors, shapes = [w for w in words if w in COLORS], [w for w in words if w in SHAPES]
        assert len(colors) <= 1 and len(shapes) <= 1, text
        terms.append((colors[0] if colors else None, shapes[0] if shapes else None))
    return terms


def true_of(text: str, things) -> bool:
    return all(any(c in (None, t.color) and s in (None, t.shape) for t in things) for c, s in spoken(text))


def test_captions_name_their_sample_and_are_in_the_tokenizer_corpus() -> None:
    corpus = set(caption_corpus())
    words = {word for line in corpus for word in line.split()}
    kinds = set()
    for index in range(200):
        sample = make_sample(2, index)
        caption = sample.caption
        assert caption.describes(sample.things) and true_of(caption.text, sample.things), caption
        assert spoken(caption.text) == list(caption.terms)
        assert set(caption.text.split()) <= words
        if len(caption.terms) == 1:
            assert caption.text in corpus
        kinds.add(len(caption.terms))
    assert kinds == {1, 2}
    assert with_article("a orange circle") == "an orange circle"
    assert with_article("an red star") == "a red star"


def test_pool_preprocessing_is_the_serving_transform() -> None:
    transform = ImageTransform(height=32, width=32, resample=3)
    for index in range(4):
        image = make_sample(3, index).image
        served = transform(image)
        pooled = normalize_pixels(resize_pixels(image, transform)[None], transform)[0].numpy()
        np.testing.assert_array_equal(pooled, served)


def test_dihedral_gives_the_eight_symmetries_of_the_square() -> None:
    pixels = np.arange(3 * 3 * 2).reshape(3, 3, 2)
    variants = [dihedral(pixels, op) for op in range(8)]
    assert np.array_equal(variants[0], pixels)
    assert len({v.tobytes() for v in variants}) == 8
    assert all(sorted(v.ravel()) == sorted(pixels.ravel()) for v in variants)


@pytest.fixture(scope="module")
def pool() -> ShapesPool:
    return ShapesPool(ImageTransform(height=32, width=32, resample=3), seed=0, size=96, workers=1)


def test_pool_holds_the_resized_stream_and_is_the_same_drawn_by_several_processes(pool: ShapesPool) -> None:
    sample = make_sample(0, 5)
    np.testing.assert_array_equal(pool.pixels[5], resize_pixels(sample.image, pool.transform))
    assert pool.facts[5] == ShapeFacts(sample.things)
    parallel = ShapesPool(pool.transform, seed=0, size=96, workers=2)
    assert np.array_equal(parallel.pixels, pool.pixels) and parallel.facts == pool.facts


def test_pool_batches_are_flipped_pool_images_with_fresh_captions(pool: ShapesPool) -> None:
    batch = pool.batch(step=1, size=64)  # positions 64-127: the end of epoch 0 and the start of epoch 1
    assert batch.pixel_values.shape == (64, 3, 32, 32)
    indices = [pool.index(64 + j) for j in range(64)]
    assert len(set(indices)) < 64  # the two epochs overlap: some images twice in one batch
    for row, index in zip(batch.pixel_values, indices, strict=True):
        variants = [normalize_pixels(dihedral(pool.pixels[index], op)[None], pool.transform)[0] for op in range(8)]
        assert any(torch.equal(row, variant) for variant in variants)
    facts = [pool.facts[i] for i in indices]
    for text, fact in zip(batch.captions, facts, strict=True):
        assert true_of(text, fact.things), (text, fact)
    repeated = pool.batch(step=1, size=64)
    assert repeated.captions == batch.captions and torch.equal(repeated.pixel_values, batch.pixel_values)


def sources(pixels: np.ndarray, transform: ImageTransform) -> dict[bytes, int]:
    """Every flip and rotation of every pool image, normalized as a batch row, -> the image's index."""
    return {normalize_pixels(dihedral(image, op)[None], transform)[0].numpy().tobytes(): index
            for index, image in reversed(list(enumerate(pixels))) for op in range(8)}


def test_the_curriculum_starts_on_easy_images_and_hands_over_to_the_broad_pool() -> None:
    transform = ImageTransform(height=32, width=32, resample=3)
    curriculum = ShapesPool(transform, seed=0, size=96, workers=1, easy_size=48, curriculum_steps=4)
    assert [curriculum.easy_share(step) for step in (0, 1, 2, 4, 9)] == [1.0, 0.75, 0.5, 0.0, 0.0]
    held = ShapesPool(transform, seed=0, size=96, workers=1, easy_size=48, curriculum_steps=6, easy_steps=2)
    assert [held.easy_share(step) for step in (0, 1, 2, 3, 4, 6, 9)] == [1.0, 1.0, 1.0, 0.75, 0.5, 0.0, 0.0]
    only_easy = ShapesPool(transform, seed=0, size=96, workers=1, easy_size=48, curriculum_steps=3, easy_steps=3)
    assert [only_easy.easy_share(step) for step in (0, 2, 3, 5)] == [1.0, 1.0, 0.0, 0.0]
    easy = [make_sample(0, i, scene=EASY) for i in range(48)]
    assert all(len(s.things) == 1 and s.background in EASY.backgrounds for s in easy)
    assert all(max(s.image.size) / min(s.image.size) <= EASY.max_aspect + 0.05 for s in easy)

    easy_rows, broad_rows = sources(curriculum.easy_pixels, transform), sources(curriculum.pixels, transform)

    def origins(step: int) -> list[str]:
        rows = [row.numpy().tobytes() for row in curriculum.batch(step=step, size=16).pixel_values]
        return ["easy" if row in easy_rows else "broad" if row in broad_rows else "neither" for row in rows]

    assert origins(0) == ["easy"] * 16
    assert origins(2) == ["easy"] * 8 + ["broad"] * 8

    mixed = ShapesPool(transform, seed=0, size=96, workers=1, easy_size=48, curriculum_steps=4, middle_size=48,
                       middle_share=0.25)
    middle_rows = sources(mixed.middle_pixels, transform)
    easy_rows, broad_rows = sources(mixed.easy_pixels, transform), sources(mixed.pixels, transform)

    def mixed_origins(step: int) -> list[str]:
        rows = [row.numpy().tobytes() for row in mixed.batch(step=step, size=16).pixel_values]
        return ["easy" if row in easy_rows else "middle" if row in middle_rows else "broad" if row in broad_rows
                else "neither" for row in rows]

    assert mixed_origins(0) == ["easy"] * 16  # the easy phase is easy images only
    assert mixed_origins(2) == ["easy"] * 8 + ["middle"] * 2 + ["broad"] * 6  # a quarter of the other 8
    assert mixed_origins(5) == ["middle"] * 4 + ["broad"] * 12
    with pytest.raises(ValueError, match="middle_share"):
        ShapesPool(transform, seed=0, size=96, workers=1, middle_size=48, middle_share=1.5)
    assert origins(4) == ["broad"] * 16
    # Without a curriculum a batch is the broad pool's, in its epoch order, as before.
    plain = ShapesPool(transform, seed=0, size=96, workers=1)
    plain_rows = sources(plain.pixels, transform)
    assert [plain_rows[row.numpy().tobytes()] for row in plain.batch(step=0, size=16).pixel_values] == \
        [plain.index(j) for j in range(16)]


def test_every_true_description_in_a_batch_is_a_positive(pool: ShapesPool) -> None:
    batch = pool.batch(step=0, size=64)
    facts = [pool.facts[pool.index(j)] for j in range(64)]
    assert batch.positives.diagonal().all()
    assert batch.positives.sum() > 64  # "a circle" describes every circle; two red stars describe each other
    assert any(len(f.things) > 1 for f in facts)
    for i, fact in enumerate(facts):
        for j, text in enumerate(batch.captions):
            assert bool(batch.positives[i, j]) == true_of(text, fact.things), (text, fact)


def test_describes_matrix_agrees_with_caption_describes_for_several_objects() -> None:
    rng = np.random.default_rng(7)
    facts = []
    for _ in range(40):
        colors = rng.permutation(list(COLORS))[: int(rng.integers(1, 4))]
        facts.append(ShapeFacts(tuple(Thing(str(c), str(rng.choice(SHAPES))) for c in colors)))
    captions = [make_caption(rng, f.things, kinds=(("full", 1), ("pair", 1), ("color", 1), ("shape", 1)))
                for f in facts] + label_captions(rng)
    captions += [Caption("a red circle and a blue square", (("red", "circle"), ("blue", "square")))]
    matrix = describes_matrix(captions, facts)
    assert matrix.dtype == torch.bool and matrix.shape == (40, len(captions))
    expected = [[caption.describes(fact.things) for caption in captions] for fact in facts]
    assert matrix.tolist() == expected
    assert any(len(c.terms) == 2 for c in captions[:40])  # the two-object rule was exercised
    pair = Caption("a red circle and a blue square", (("red", "circle"), ("blue", "square")))
    both = ShapeFacts((Thing("blue", "square"), Thing("red", "circle")))
    one = ShapeFacts((Thing("red", "circle"), Thing("blue", "star")))
    assert describes_matrix([pair], [both, one]).tolist() == [[True], [False]]


def test_label_bank_adds_every_shape_color_and_combination_with_true_positives(pool: ShapesPool) -> None:
    banked = ShapesPool(pool.transform, seed=0, size=96, workers=1, label_bank=True)
    batch = banked.batch(step=0, size=16)
    extra = batch.captions[16:]
    assert batch.positives.shape == (16, 16 + len(SHAPES) + len(COLORS) + len(COMBOS))
    assert batch.captions[:16] == pool.batch(step=0, size=16).captions  # the images' own captions unchanged

    def named(text: str, names) -> list[str]:
        return [name for name in names if name in text.split()]

    assert sorted(named(t, SHAPES)[0] for t in extra if not named(t, COLORS)) == sorted(SHAPES)
    assert sorted(named(t, COLORS)[0] for t in extra if not named(t, SHAPES)) == sorted(COLORS)
    assert sorted((named(t, COLORS)[0], named(t, SHAPES)[0]) for t in extra
                  if named(t, COLORS) and named(t, SHAPES)) == sorted(COMBOS)
    facts = [banked.facts[banked.index(j)] for j in range(16)]
    for i, fact in enumerate(facts):
        for j, text in enumerate(extra, start=16):
            assert bool(batch.positives[i, j]) == true_of(text, fact.things), (text, fact)
        things = fact.things  # its shapes, its colors, its combinations
        expected = len({t.shape for t in things}) + len({t.color for t in things}) + len(things)
        assert int(batch.positives[i, 16:].sum()) == expected
    assert banked.batch(step=1, size=16).captions[16:] != extra  # phrasings drawn anew per step


def test_pool_batches_label_every_shape_and_color_of_each_image(pool: ShapesPool) -> None:
    batch = pool.batch(step=0, size=16)
    assert batch.labels is not None and batch.labels.shape == (16, len(SHAPES) + len(COLORS))
    for row, position in zip(batch.labels.tolist(), range(16), strict=True):
        things = pool.facts[pool.index(position)].things
        named = {name for name, on in zip((*SHAPES, *COLORS), row, strict=True) if on == 1.0}
        assert named == {t.shape for t in things} | {t.color for t in things}
        assert set(row) <= {0.0, 1.0}


def test_label_loss_trains_a_head_beside_the_towers_and_saves_only_the_towers(tmp_path: Path) -> None:
    plain = train(tiny_options(tmp_path / "plain", steps=3, label_loss=0.0))
    labelled = train(tiny_options(tmp_path / "labelled", steps=3, label_loss=1.0))
    assert labelled.losses[0] > plain.losses[0]  # the first batch: the head's cross-entropy comes on top
    # A new linear head gives logits near 0: a cross-entropy of about log 2 per label, summed over the labels.
    assert labelled.losses[0] - plain.losses[0] == pytest.approx(len(SHAPES + tuple(COLORS)) * math.log(2), rel=0.15)
    with safe_open(str(tmp_path / "labelled" / "model.safetensors"), "pt") as saved, \
            safe_open(str(tmp_path / "plain" / "model.safetensors"), "pt") as reference:
        keys = set(saved.keys())
        assert keys == set(reference.keys())
    assert not any("label" in key for key in keys)


def test_label_loss_needs_the_shapes_dataset(tmp_path: Path, captioned_folder: Path) -> None:
    captions = captioned_folder / "captions.jsonl"
    options = tiny_options(tmp_path / "labelled", steps=4, label_loss=1.0, data=captions)
    result = train(options)
    plain = train(tiny_options(tmp_path / "plain", steps=4, label_loss=0.0, data=captions))
    # Caption files carry no labels: no head, and the very losses of the plain sigmoid loss.
    assert result.losses == plain.losses
    assert json.loads((tmp_path / "labelled" / "training.json").read_text())["options"]["label_loss"] == 1.0


# --- caption files --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def captioned_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Eight small images of two colors in images/, with captions in JSONL and CSV."""
    root = tmp_path_factory.mktemp("user-data")
    (root / "images").mkdir()
    rows = []
    for index in range(8):
        color = ("red", "blue")[index % 2]
        rgb = (220, 30, 30) if color == "red" else (30, 60, 220)
        image = Image.new("RGB", (40, 40), (200, 200, 200) if index < 4 else (60, 60, 60))
        image.paste(rgb, (5 + index, 5, 30 + index, 30))
        image.save(root / "images" / f"{index}.png")
        rows.append({"image": f"images/{index}.png", "caption": f"a {color} car"})
    (root / "captions.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    (root / "captions.csv").write_text("image,caption\n" + "".join(f"{r['image']},{r['caption']}\n" for r in rows))
    return root


@pytest.mark.parametrize("name", ["captions.jsonl", "captions.csv"])
def test_caption_files_resolve_paths_relative_to_the_file(captioned_folder: Path, name: str) -> None:
    items = read_captions(captioned_folder / name)
    assert len(items) == 8
    assert items[3].path == captioned_folder / "images" / "3.png"
    assert items[3].caption == "a blue car"


@pytest.mark.parametrize(("name", "content", "message"), [
    ("bad.jsonl", '{"image": "missing.png", "caption": "x"}\n', "does not exist"),
    ("bad.jsonl", "not json\n", "bad.jsonl:1: invalid JSON"),
    ("bad.jsonl", '{"image": "images/0.png"}\n', "caption"),
    ("bad.csv", "path,text\nimages/0.png,x\n", "'image' and 'caption'"),
    ("bad.txt", "", ".jsonl or .csv"),
    ("empty.jsonl", "\n", "no rows"),
])
def test_bad_caption_files_name_the_problem(captioned_folder: Path, name: str, content: str, message: str) -> None:
    (captioned_folder / name).write_text(content)
    with pytest.raises(TrainingDataError, match=message):
        read_captions(captioned_folder / name)


def test_captions_source_reshuffles_each_epoch_and_pairs_identical_captions(captioned_folder: Path) -> None:
    items = read_captions(captioned_folder / "captions.jsonl")
    transform = ImageTransform(height=32, width=32, resample=3)
    source = CaptionsSource(items, transform, cleaning=TextCleaning.SIGLIP, seed=0)
    epochs = [[source.index(e * 8 + i) for i in range(8)] for e in range(2)]
    assert sorted(epochs[0]) == sorted(epochs[1]) == list(range(8))
    assert epochs[0] != epochs[1]
    batch = source.batch(0, 8)
    same = torch.tensor([[a == b for b in batch.captions] for a in batch.captions])
    assert torch.equal(batch.positives, same)


# --- training -------------------------------------------------------------------------------------


def test_training_from_scratch_reduces_the_loss_and_saves_a_loadable_checkpoint(tmp_path: Path) -> None:
    result = train(tiny_options(tmp_path / "out", steps=30))
    assert not result.interrupted and result.steps_done == 30
    assert mean(result.losses[-5:]) < 0.8 * mean(result.losses[:5])
    model = siglip_serve.load(str(tmp_path / "out"), device="cpu", dtype="float32")
    assert model.info.text_length == 64 and model.info.image_size == 32
    scores = model.classify([make_sample(99, 0).image], ["red circle", "blue square"])
    assert len(scores[0]) == 2
    record = json.loads((tmp_path / "out" / "training.json").read_text())
    assert record["steps_done"] == 30 and record["options"]["seed"] == 0


def test_bf16_cpu_training_runs_eager_attention_and_the_saved_model_serves_with_sdpa(tmp_path: Path) -> None:
    seen: list[str] = []
    train(tiny_options(tmp_path, steps=2, bf16=True),
          callback=lambda step, module: seen.extend([module.vision_model.config._attn_implementation,
                                                     module.text_model.config._attn_implementation]))
    assert seen == ["eager"] * 4
    from siglip_serve.models.siglip_torch import SiglipModel

    towers = siglip_serve.load(str(tmp_path), device="cpu", dtype="float32").checkpoint.towers
    assert isinstance(towers.module, SiglipModel)  # served by our modules, whose attention is always SDPA


def test_training_attention_is_eager_on_the_cpu_and_sdpa_elsewhere() -> None:
    assert training_attention(torch.device("cpu")) == "eager"
    assert training_attention(torch.device("cuda")) == "sdpa"


def test_scratch_tokenizer_is_laid_out_like_google_siglip(tmp_path: Path) -> None:
    train(tiny_options(tmp_path, steps=1))
    processor = sentencepiece.SentencePieceProcessor(model_file=str(tmp_path / "spiece.model"))
    assert [processor.id_to_piece(i) for i in range(3)] == ["<pad>", "</s>", "<unk>"]
    assert processor.bos_id() == -1
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        assert json.loads((tmp_path / name).read_text())["pad_token"] == "</s>"
    tokenizer = siglip_serve.load(str(tmp_path), device="cpu", dtype="float32").checkpoint.tokenizer
    assert (tokenizer.pad_id, tokenizer.eos_id) == (1, 1)
    ids = tokenizer.token_ids("This is a photo of an orange hexagon.")
    assert len(ids) == 64 and ids[-1] == 1 and 2 not in ids
    assert processor.unk_id() not in processor.encode("zebra 42")  # unseen words are spelled out
    config = json.loads((tmp_path / "preprocessor_config.json").read_text())
    assert config["resample"] == 3 and config["image_mean"] == [0.5] * 3 and config["size"]["height"] == 32


def test_training_is_reproducible_for_a_seed(tmp_path: Path) -> None:
    first = train(tiny_options(tmp_path / "a", steps=4))
    second = train(tiny_options(tmp_path / "b", steps=4))
    other = train(tiny_options(tmp_path / "c", steps=4, seed=1))
    assert first.losses == second.losses
    assert first.losses != other.losses


def test_half_precision_save_keeps_the_temperature_in_float32(tmp_path: Path) -> None:
    train(tiny_options(tmp_path / "fp32", steps=3))
    train(tiny_options(tmp_path / "fp16", steps=3, save_dtype="float16"))
    with safe_open(str(tmp_path / "fp16" / "model.safetensors"), "pt") as weights:
        assert weights.get_tensor("logit_bias").dtype == torch.float32
        assert weights.get_tensor("vision_model.head.probe").dtype == torch.float16
    assert (tmp_path / "fp16" / "model.safetensors").stat().st_size < 0.6 * (
        tmp_path / "fp32" / "model.safetensors").stat().st_size
    full, half = (siglip_serve.load(str(tmp_path / d), device="cpu", dtype="float32") for d in ("fp32", "fp16"))
    image = make_sample(5, 5).image
    cosine = torch.nn.functional.cosine_similarity(full.embed_images([image]), half.embed_images([image]))
    assert float(cosine) > 0.999
    assert full.checkpoint.towers.temperature == half.checkpoint.towers.temperature


class InterruptAt:
    """A batch source that behaves like Ctrl-C at a given step."""

    def __init__(self, source, step: int) -> None:
        self.source, self.step = source, step

    def batch(self, step: int, size: int):
        if step == self.step:
            raise KeyboardInterrupt
        return self.source.batch(step, size)


def test_interrupt_saves_the_checkpoint(tmp_path: Path) -> None:
    source = InterruptAt(ShapesPool(ImageTransform(height=32, width=32, resample=3), size=96, workers=1), step=3)
    result = train(tiny_options(tmp_path, steps=50), source=source)
    assert result.interrupted and result.steps_done == 3
    assert json.loads((tmp_path / "training.json").read_text())["interrupted"] is True
    siglip_serve.load(str(tmp_path), device="cpu", dtype="float32").embed_texts(["a red circle"])


def test_fine_tuning_a_checkpoint_on_a_caption_file(tmp_path: Path, captioned_folder: Path) -> None:
    initial = build_siglip1(tmp_path / "init")
    out = tmp_path / "tuned"
    result = train(tiny_options(out, steps=25, batch_size=8, lr=1e-3, init=str(initial),
                                data=captioned_folder / "captions.jsonl"))
    assert mean(result.losses[-5:]) < mean(result.losses[:5])
    assert (out / "spiece.model").read_bytes() == (initial / "spiece.model").read_bytes()
    model = siglip_serve.load(str(out), device="cpu", dtype="float32")
    before = siglip_serve.load(str(initial), device="cpu", dtype="float32")
    assert model.info.embed_dim == before.info.embed_dim == 32
    assert not torch.equal(model.embed_texts(["a red car"]), before.embed_texts(["a red car"]))


def test_command_line_trains_and_reports(tmp_path: Path, captioned_folder: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser()
    add_train_arguments(parser)
    args = parser.parse_args([
        "--out", str(tmp_path / "cli"), "--data", str(captioned_folder / "captions.csv"), "--steps", "3",
        "--batch-size", "4", "--threads", "1", "--device", "cpu", "--no-progress", "--image-size", "32",
        "--vision-width", "32",
        "--vision-layers", "1", "--text-width", "32", "--text-layers", "1", "--head-dim", "16",
        "--save-dtype", "float16",
    ])
    assert run_train(args) == 0
    assert "3 steps" in capsys.readouterr().out
    assert siglip_serve.load(str(tmp_path / "cli"), device="cpu", dtype="float32").info.image_size == 32
    with pytest.raises(SystemExit):
        parser.parse_args(["--out", "x", "--init", "y", "--from-scratch"])
