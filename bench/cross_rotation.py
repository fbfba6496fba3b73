"""Where the demo model's `clean` misses come from: one cross, turned in 10° steps, at three sizes.

15 of the 22 `clean` shapes session 19's demo weights miss (session 17's: 16 of 41) are crosses called
squares. This turns one blue cross on a 256 px white canvas from 0° to 80° at 40%, 55% and 70% of the
side, drawn twice: by `heldout_shapes`' rasterizer (4×4 supersampled geometry) and by the training
generator's own polygons (`siglip_serve.training.shapes.draw_shape`), and writes, per angle, the
6-way top-1 and the cross logit minus the square logit ("This is a photo of {}."). Both drawings
failing at the same angles says the misses are the model's, not one renderer's.

    python bench/cross_rotation.py                 # the shipped demo model
    python bench/cross_rotation.py --model DIR     # another shapes checkpoint
"""

from __future__ import annotations

import argparse
import math

import common
import heldout_shapes
import numpy as np
from common import Report
from PIL import Image, ImageDraw

SIZE = 256
BLUE = np.array((65, 105, 225), np.float32)
FRACTIONS = (0.4, 0.55, 0.7)
ANGLES = tuple(range(0, 90, 10))


def on_white(coverage: np.ndarray) -> Image.Image:
    coverage = coverage[..., None]
    return Image.fromarray((255 * (1 - coverage) + BLUE * coverage).astype(np.uint8))


def rasterized(fraction: float, degrees: int) -> Image.Image:
    return on_white(heldout_shapes.rasterize("cross", (SIZE / 2, SIZE / 2), fraction * SIZE / 2,
                                             math.radians(degrees), SIZE, SIZE))


def polygon(fraction: float, degrees: int) -> Image.Image:
    from siglip_serve.training.shapes import draw_shape

    mask = Image.new("L", (SIZE, SIZE), 0)
    # Arm half-width 0.3, as heldout_shapes' cross (0.3 over its unit half-length).
    draw_shape(ImageDraw.Draw(mask), "cross", np.array([SIZE / 2, SIZE / 2]), fraction * SIZE / 2,
               math.radians(degrees), 255, arm=0.3, inner=0.42)
    return on_white(np.asarray(mask, np.float32) / 255)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="siglip-demo-shapes", help="Shapes checkpoint (default: the demo).")
    parser.add_argument("--name", default="cross_rotation", help="Results file name.")
    args = parser.parse_args()
    common.quiet()
    import siglip_serve
    from siglip_serve.templates import DEFAULT_TEMPLATE

    model = siglip_serve.load(args.model, device="cpu", dtype="float32")
    shapes = list(heldout_shapes.SHAPES)
    texts = model.embed_labels(shapes, DEFAULT_TEMPLATE)
    report = Report(args.name, smoke=False, args=vars(args))
    measured, rows = [], []
    for drawing, draw in (("heldout_shapes rasterizer", rasterized), ("training polygons", polygon)):
        for fraction in FRACTIONS:
            images = [draw(fraction, degrees) for degrees in ANGLES]
            logits = model.logits(model.embed_images(images), texts)
            angles = [{"degrees": degrees, "top1": shapes[int(scores.argmax())],
                       "cross_minus_square": round(float(scores[shapes.index("cross")]
                                                         - scores[shapes.index("square")]), 2)}
                      for degrees, scores in zip(ANGLES, logits, strict=True)]
            measured.append({"drawing": drawing, "fraction": fraction, "angles": angles})
            rows.append({"drawing": drawing, "fraction": fraction,
                         **{str(a["degrees"]): f"{a['top1']} {a['cross_minus_square']:+.1f}" for a in angles}})
    report.add("crosses", measured)
    columns = [("drawing", "drawing", ""), ("fraction", "share of the side", ".2f")] + [
        (f"{d}", f"{d}°", "") for d in ANGLES]
    report.section(f"Top-1 of 6 shapes and cross − square logit, one blue cross on a {SIZE} px white canvas "
                   f"({args.model}, float32)", common.markdown_table(rows, columns))
    report.write()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
