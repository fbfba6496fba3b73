"""The library API on both families: batch invariance, classify, templates, input kinds, scores.

Scores are re-derived here from the embeddings and from the temperature read straight from
the checkpoint's safetensors (not through our loader); template ensembling is re-derived from
unnormalized text embeddings. Exact parity with transformers lives in tests/parity/.
"""

from __future__ import annotations

import logging
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from sample_images import encode, photo_like, sample_images

import siglip_serve
from siglip_serve.errors import EmptyInputError, InvalidTemplateError, SiglipServeError
from siglip_serve.model import Model

ATOL = 1e-5
LABELS = ["cat", "dog", "red car", "a bird over the river", "hot dog"]
SHORT = "cat"
MEDIUM = "a photo of a small dog playing on the beach"
LONG = "a very long caption about a red car near the river " * 12


@pytest.fixture(scope="module", params=["siglip1", "siglip2"])
def case(request: pytest.FixtureRequest) -> tuple[Path, Model]:
    directory = request.getfixturevalue(f"{request.param}_dir")
    return directory, siglip_serve.load(str(directory), device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def model(case) -> Model:
    return case[1]


@pytest.fixture(scope="module")
def images() -> list[Image.Image]:
    return list(sample_images().values())


def normalized(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True)


# --- batch invariance --------------------------------------------------------------------------


def test_image_embedding_does_not_depend_on_its_batch(model: Model, images: list[Image.Image]) -> None:
    batch = model.embed_images(images)
    assert batch.shape == (len(images), 32)
    for index, image in enumerate(images):
        torch.testing.assert_close(model.embed_images([image])[0], batch[index], atol=ATOL, rtol=0)
    reversed_batch = model.embed_images(images[::-1])
    torch.testing.assert_close(reversed_batch.flip(0), batch, atol=ATOL, rtol=0)


@pytest.mark.parametrize("neighbours", [[LONG], [SHORT], [LONG, SHORT, MEDIUM], ["x"] * 7])
@pytest.mark.parametrize("text", [SHORT, MEDIUM, LONG])
def test_text_embedding_does_not_depend_on_its_batch(model: Model, text: str, neighbours: list[str]) -> None:
    """The padding bug (notes §2): padding to the longest text in the batch, or using a mask,
    makes a text's embedding change with its neighbours."""
    alone = model.embed_texts([text])[0]
    torch.testing.assert_close(model.embed_texts([text, *neighbours])[0], alone, atol=ATOL, rtol=0)
    torch.testing.assert_close(model.embed_texts([*neighbours, text])[-1], alone, atol=ATOL, rtol=0)


def test_small_batch_size_chunks_give_the_same_result(model: Model, images: list[Image.Image]) -> None:
    texts = [SHORT, MEDIUM, LONG, "dog", "a red car"]
    chunked = Model(model.checkpoint, batch_size=2)
    torch.testing.assert_close(chunked.embed_images(images), model.embed_images(images), atol=ATOL, rtol=0)
    torch.testing.assert_close(chunked.embed_texts(texts), model.embed_texts(texts), atol=ATOL, rtol=0)
    for a, b in zip(chunked.classify(images, LABELS), model.classify(images, LABELS), strict=True):
        assert dict(a) == pytest.approx(dict(b), abs=ATOL)


def test_embeddings_are_unit_length_unless_asked(model: Model, images: list[Image.Image]) -> None:
    image_embeds = model.embed_images(images[:3])
    text_embeds = model.embed_texts([SHORT, LONG])
    torch.testing.assert_close(image_embeds.norm(dim=-1), torch.ones(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(text_embeds.norm(dim=-1), torch.ones(2), atol=1e-5, rtol=0)
    raw = model.embed_images(images[:3], normalize=False)
    assert not torch.allclose(raw.norm(dim=-1), torch.ones(3), atol=1e-3)
    torch.testing.assert_close(normalized(raw), image_embeds, atol=1e-6, rtol=0)
    raw_text = model.embed_texts([SHORT, LONG], normalize=False)
    torch.testing.assert_close(normalized(raw_text), text_embeds, atol=1e-6, rtol=0)
    assert image_embeds.dtype == text_embeds.dtype == torch.float32


# --- input kinds -------------------------------------------------------------------------------


def test_paths_bytes_and_pil_images_give_identical_embeddings(model: Model, tmp_path: Path) -> None:
    picture = photo_like(50, 37, seed=9)
    data = encode(picture, "PNG")  # lossless: all three carry the same pixels
    path = tmp_path / "picture.png"
    path.write_bytes(data)
    sources = [str(path), path, data, bytearray(data), memoryview(data), picture]
    pixels = [model.prepare_image(source) for source in sources]
    for array in pixels[1:]:
        assert (array == pixels[0]).all()
    embeds = model.embed_images(sources)
    for row in embeds[1:]:
        torch.testing.assert_close(row, embeds[0], atol=ATOL, rtol=0)
    torch.testing.assert_close(model.embed_images([picture])[0], embeds[0], atol=ATOL, rtol=0)


# --- scores ------------------------------------------------------------------------------------


def checkpoint_temperature(directory: Path) -> tuple[float, float]:
    tensors = load_file(directory / "model.safetensors")
    return float(tensors["logit_scale"].reshape(())), float(tensors["logit_bias"].reshape(()))


def test_sigmoid_score_is_the_siglip_formula(case, images: list[Image.Image]) -> None:
    directory, model = case
    logit_scale, logit_bias = checkpoint_temperature(directory)
    assert logit_bias != 0  # the premise: random init would zero both (notes §1)
    image_embeds = model.embed_images(images)
    text_embeds = model.embed_texts(LABELS)
    cosine = normalized(image_embeds) @ normalized(text_embeds).T
    expected = torch.sigmoid(math.exp(logit_scale) * cosine + logit_bias)
    assert 0.01 < float(expected.mean()) < 0.99  # not saturated, so the check means something
    torch.testing.assert_close(model.logits(image_embeds, text_embeds),
                               math.exp(logit_scale) * cosine + logit_bias, atol=1e-5, rtol=0)
    torch.testing.assert_close(model.score(images, LABELS), expected, atol=1e-5, rtol=0)
    # classify with the identity template scores the labels as given
    for row, ranked in zip(expected, model.classify(images, LABELS, templates="{}"), strict=True):
        got = dict(ranked)
        for label, probability in zip(LABELS, row, strict=True):
            assert got[label] == pytest.approx(float(probability), abs=1e-5)


def test_classify_ranks_every_label_by_score(model: Model, images: list[Image.Image]) -> None:
    results = model.classify(images, LABELS)
    assert len(results) == len(images)
    for ranked in results:
        assert sorted(label for label, _ in ranked) == sorted(LABELS)
        scores = [score for _, score in ranked]
        assert scores == sorted(scores, reverse=True)
        assert all(0.0 < score < 1.0 for score in scores)
        assert all(isinstance(label, str) and isinstance(score, float) for label, score in ranked)


def test_classify_default_template_is_this_is_a_photo_of(model: Model, images: list[Image.Image]) -> None:
    default = model.classify(images[:2], LABELS)
    explicit = model.classify(images[:2], LABELS, templates="This is a photo of {}.")
    for a, b in zip(default, explicit, strict=True):
        assert [label for label, _ in a] == [label for label, _ in b]
        assert [s for _, s in a] == pytest.approx([s for _, s in b], abs=1e-6)


@pytest.mark.parametrize("top_k", [1, 2, 5, 10])
def test_top_k_truncates_to_the_best(model: Model, images: list[Image.Image], top_k: int) -> None:
    full = model.classify(images[:3], LABELS)
    truncated = model.classify(images[:3], LABELS, top_k=top_k)
    for whole, part in zip(full, truncated, strict=True):
        assert len(part) == min(top_k, len(LABELS))
        assert [label for label, _ in part] == [label for label, _ in whole[:top_k]]


@pytest.mark.parametrize("top_k", [-1, -3])
def test_negative_top_k_is_rejected(model: Model, images: list[Image.Image], top_k: int) -> None:
    """A negative top_k must not silently drop the worst labels (Python slicing, order[:-1])."""
    with pytest.raises((SiglipServeError, ValueError)):
        model.classify(images[:1], LABELS, top_k=top_k)


def test_softmax_rows_sum_to_one_and_sigmoid_rows_do_not(model: Model, images: list[Image.Image]) -> None:
    softmax = model.classify(images, LABELS, normalization="softmax")
    sigmoid = model.classify(images, LABELS, normalization="sigmoid")
    for ranked in softmax:
        assert sum(score for _, score in ranked) == pytest.approx(1.0, abs=1e-5)
    assert any(abs(sum(score for _, score in ranked) - 1.0) > 1e-2 for ranked in sigmoid)
    # both normalizations are monotone in the same logits: the ranking is the same
    for a, b in zip(softmax, sigmoid, strict=True):
        assert [label for label, _ in a] == [label for label, _ in b]


def test_softmax_is_the_softmax_of_the_logits(case, images: list[Image.Image]) -> None:
    directory, model = case
    logit_scale, logit_bias = checkpoint_temperature(directory)
    cosine = normalized(model.embed_images(images)) @ normalized(model.embed_texts(LABELS)).T
    expected = torch.softmax(math.exp(logit_scale) * cosine + logit_bias, dim=-1)
    for row, ranked in zip(expected, model.classify(images, LABELS, templates="{}", normalization="softmax"),
                           strict=True):
        got = dict(ranked)
        assert [got[label] for label in LABELS] == pytest.approx(row.tolist(), abs=1e-5)


# --- templates ---------------------------------------------------------------------------------


def test_template_ensembling_formula(model: Model) -> None:
    templates = ["a photo of {}.", "a drawing of {}."]
    labels = ["cat", "red car", "hot dog"]
    first = model.embed_texts([templates[0].format(label) for label in labels], normalize=False)
    second = model.embed_texts([templates[1].format(label) for label in labels], normalize=False)
    expected = normalized((normalized(first) + normalized(second)) / 2)
    got = model.embed_labels(labels, templates)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    # and it is not the mean of the raw embeddings, nor either template alone
    assert not torch.allclose(got, normalized(first), atol=1e-3)
    assert not torch.allclose(got, normalized(second), atol=1e-3)


def test_ensembled_scores_use_the_ensembled_embedding(case, images: list[Image.Image]) -> None:
    directory, model = case
    logit_scale, logit_bias = checkpoint_temperature(directory)
    templates = ["a photo of {}.", "a drawing of {}."]
    label_embeds = model.embed_labels(LABELS, templates)
    cosine = normalized(model.embed_images(images)) @ label_embeds.T
    expected = torch.sigmoid(math.exp(logit_scale) * cosine + logit_bias)
    for row, ranked in zip(expected, model.classify(images, LABELS, templates=templates), strict=True):
        got = dict(ranked)
        assert [got[label] for label in LABELS] == pytest.approx(row.tolist(), abs=1e-5)


def test_single_template_in_a_list_equals_the_string(model: Model) -> None:
    torch.testing.assert_close(model.embed_labels(LABELS, ["a photo of {}."]),
                               model.embed_labels(LABELS, "a photo of {}."), atol=0, rtol=0)


@pytest.mark.parametrize("templates", ["a photo of a cat", "{} and {}", ["a photo of {}.", "no placeholder"]])
def test_template_without_exactly_one_placeholder_is_rejected(
    model: Model, images: list[Image.Image], templates
) -> None:
    with pytest.raises(InvalidTemplateError) as info:
        model.classify(images[:1], LABELS, templates=templates)
    assert info.value.param is not None and info.value.param.startswith("hypothesis_template")


def test_empty_template_list_is_rejected(model: Model) -> None:
    with pytest.raises(EmptyInputError):
        model.embed_labels(LABELS, [])


def test_label_with_braces_is_inserted_literally(model: Model) -> None:
    """A label is data, not a format string: '{x}' or '{}' in a label must not break the template."""
    got = model.embed_labels(["a {x} b"], "photo of {}")
    torch.testing.assert_close(got, model.embed_texts(["photo of a {x} b"]), atol=ATOL, rtol=0)


# --- empty inputs ------------------------------------------------------------------------------


def test_empty_label_list_is_rejected(model: Model, images: list[Image.Image]) -> None:
    with pytest.raises(EmptyInputError) as info:
        model.classify(images[:1], [])
    assert info.value.param == "labels"


@pytest.mark.parametrize("bad", ["", "   "])
def test_empty_label_is_rejected_by_position(model: Model, images: list[Image.Image], bad: str) -> None:
    with pytest.raises(EmptyInputError) as info:
        model.classify(images[:1], ["cat", "dog", bad])
    assert info.value.param == "labels[2]"
    assert "labels[2]" in str(info.value)


def test_empty_image_and_text_lists_are_rejected(model: Model) -> None:
    with pytest.raises(EmptyInputError) as info:
        model.embed_images([])
    assert info.value.param == "input"
    with pytest.raises(EmptyInputError) as info:
        model.embed_texts([])
    assert info.value.param == "input"


def test_empty_text_is_rejected_by_position(model: Model) -> None:
    with pytest.raises(EmptyInputError) as info:
        model.embed_texts(["cat", "  "])
    assert info.value.param == "input[1]"


# --- quiet loading -----------------------------------------------------------------------------


def test_loading_the_demo_model_writes_nothing_and_logs_nothing_above_info(
        capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture) -> None:
    import warnings

    capfd.readouterr()
    with caplog.at_level(logging.DEBUG), warnings.catch_warnings():
        warnings.simplefilter("error")  # a warnings.warn during the load fails the test
        model = siglip_serve.load("siglip-demo-shapes")
    assert [r.getMessage() for r in caplog.records if r.levelno > logging.INFO] == []
    assert capfd.readouterr() == ("", "")
    assert model.classify([sample_images()["wide"]], ["red", "blue"])  # it did load


@pytest.fixture(scope="module")
def naflex_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import tiny_naflex

    return tiny_naflex.build_naflex(tmp_path_factory.mktemp("naflex") / "ckpt")


@pytest.mark.parametrize("which", ["demo", "naflex"])
def test_a_fresh_process_loads_silently(which: str, request: pytest.FixtureRequest) -> None:
    """In a fresh interpreter, where transformers' once-per-process warnings have not fired yet: nothing on
    stdout or stderr (no progress bar, no warning), with Python warnings as errors and logging at WARNING.
    NaFlex still loads through transformers' from_pretrained, whose "Loading weights" bar and bos/eos
    warning (raised while formatting any SigLIP config for an INFO record) must not reach the user either."""
    spec = "siglip-demo-shapes" if which == "demo" else str(request.getfixturevalue("naflex_dir"))
    code = ("import logging, sys, siglip_serve\n"
            "logging.basicConfig(level=logging.WARNING)\n"
            "siglip_serve.load(sys.argv[1], device='cpu')\n")
    # Without the quieting variables tests/conftest.py sets for the whole session: the defaults a user has.
    env = {name: value for name, value in os.environ.items()
           if name not in ("TRANSFORMERS_VERBOSITY", "HF_HUB_DISABLE_PROGRESS_BARS")}
    done = subprocess.run([sys.executable, "-W", "error", "-c", code, spec], capture_output=True, text=True,
                          timeout=300, env={**env, "HF_HUB_OFFLINE": "1"}, check=False)
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")
