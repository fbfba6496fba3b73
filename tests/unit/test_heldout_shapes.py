"""bench/heldout_shapes.py records each shape's size, which bench/demo_accuracy.py bins accuracy by."""

from __future__ import annotations

import numpy as np
import pytest
from heldout_generator import heldout_shapes


def test_a_clean_circle_spans_its_recorded_extent() -> None:
    """On the clean preset (flat background, no blur or JPEG) a circle's bounding box is its diameter:
    0.8 of the recorded extent (twice the circumradius; `inside_unit_shape` draws circles at 0.8 so that
    their area is about the polygons')."""
    circles = [s for s in heldout_shapes.held_out_images(48, preset="clean", seed=3) if s.shape == "circle"]
    assert len(circles) == 8  # one per color in every block of 48
    for sample in circles:
        pixels = np.asarray(sample.image, dtype=np.int16)
        inked = np.abs(pixels - pixels[0, 0]).max(axis=2) > 60  # the corner is background: the shape is centered
        rows, columns = np.flatnonzero(inked.any(axis=1)), np.flatnonzero(inked.any(axis=0))
        assert sample.canvas == sample.image.size
        for span in (rows[-1] - rows[0] + 1, columns[-1] - columns[0] + 1):
            assert abs(span - 0.8 * sample.extent) <= 2, (span, sample.extent)


def test_extent_at_scales_by_the_long_side() -> None:
    """A 144 px shape on a 1280x720 photo squashed to 96x96 is 144 * 96 / 1280 = 10.8 px wide."""
    sample = heldout_shapes.HeldOutSample(image=None, color="red", shape="circle", extent=144.0, canvas=(1280, 720))
    assert sample.extent_at(96) == pytest.approx(10.8)
    assert heldout_shapes.HeldOutSample(None, "red", "circle", 144.0, (720, 1280)).extent_at(96) == pytest.approx(10.8)


def test_the_mild_preset_draws_its_declared_range() -> None:
    """`mild` (the second calibration point, session 13): shapes of 30-60% of the short side on
    canvases no wider than 4:3, inside the canvas, on white or gradients, with JPEG on some."""
    samples = heldout_shapes.held_out_images(96, preset="mild", seed=5)
    assert {(s.color, s.shape) for s in samples} == set(heldout_shapes.CLASSES)
    for sample in samples:
        width, height = sample.canvas
        assert max(width, height) / min(width, height) <= 4 / 3 + 1e-9
        assert 0.3 * min(width, height) <= sample.extent <= 0.6 * min(width, height)
    corners = [np.asarray(s.image, dtype=np.int16)[0, 0] for s in samples]
    white = sum(bool((corner >= 235).all()) for corner in corners)
    assert 0 < white < len(samples)  # some on white paper, the rest on gradients
