"""How fast does the demo's vision tower learn shapes? A supervised probe, without the text tower.

The demo model learns colors within a few hundred steps and shapes far more slowly, on the broad
training images not at all within 1,500 steps (README, "What was tried"). This bench asks whether
that is the contrastive objective or the vision tower itself: it trains only `SiglipVisionModel`
of a given size (transformers' module, initialized as `siglip-serve train` initializes it) with a
linear head and a multi-label cross-entropy on what each pool image shows (every shape and every
color in it), and measures top-1 shape and color accuracy every `--every` steps on:

- the `heldout_shapes` presets (`clean`, `issue`, `sdf`: drawn by separate code), and
- unseen images of the scene it trains on (`own`: the first object's shape and color), which
  separates learning shapes at all from carrying them to other drawings.

Each run draws its pool of images once (`training.data.draw_pool`, the trainer's own code) and
samples batches with the 8 symmetries of the square, as the trainer does. Seeded: a run repeats.

    python bench/shape_probe.py            # the default runs, writes bench/results/shape_probe.{json,md}
    python bench/shape_probe.py --quick    # 2 short runs, smoke
    python bench/shape_probe.py --run "easy:patch_size=8" --steps 1000
    python bench/shape_probe.py --run medium: --name shape_probe_medium
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, field

import common
import heldout_shapes
from common import Report, stage

# scene:architecture overrides: the runs behind the README's table (session 9).
DEFAULT_RUNS = ("easy:", "easy:head_dim=32", "easy:vision_layers=6", "easy:patch_size=8", "broad:")
# The architecture the runs change: the demo model's of session 9 (64 px, patch 16, width 128, 4 layers,
# head width 64), kept fixed here so that the recorded runs keep their meaning when the demo's size changes.
BASE = {"image_size": 64, "patch_size": 16, "vision_width": 128, "vision_layers": 4, "head_dim": 64}
HELD_OUT_SETS = ("clean", "issue", "sdf")


@dataclass(frozen=True)
class Run:
    scene: str
    overrides: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        extra = ",".join(f"{k}={v}" for k, v in self.overrides.items())
        return f"{self.scene}" + (f" {extra}" if extra else "")


def parse_run(text: str) -> Run:
    """'easy:patch_size=8,head_dim=32' -> Run('easy', {...}); the values are ints."""
    scene, _, rest = text.partition(":")
    if scene not in ("easy", "medium", "broad"):
        raise argparse.ArgumentTypeError(f"scene must be easy, medium or broad, got {scene!r}")
    overrides = {}
    for item in filter(None, rest.split(",")):
        key, _, value = item.partition("=")
        overrides[key.strip()] = int(value)
    return Run(scene, overrides)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", action="append", type=parse_run, dest="runs",
                        help="scene:overrides, e.g. 'easy:patch_size=8' (repeatable; default: the README's runs)")
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--every", type=int, default=250)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--pool", type=int, default=8000, help="images drawn per run")
    parser.add_argument("--eval-images", type=int, default=192, help="per held-out set")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--bf16", action="store_true",
                        help="bfloat16 autocast (17x slower than float32 on a CPU without AVX-512)")
    parser.add_argument("--name", default="shape_probe", help="results file name")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    args.runs = args.runs or [parse_run(r) for r in DEFAULT_RUNS]
    if args.quick:
        args.runs, args.steps, args.every, args.pool, args.eval_images = args.runs[:1] + args.runs[-1:], 20, 10, 96, 48
    return args


def medium_scene():
    """Between EASY and BROAD, near the `issue` held-out preset: shapes 25-80% of the short side on
    canvases 64-512 px up to 2:1, smooth muted backgrounds, a few outlines and second shapes, little
    cut by the edge. Not a training scene: a question for the probe (does shape learning start here?)."""
    from siglip_serve.training.shapes import Contrast, Scene

    return Scene((64, 512), 2.0, (0.25, 0.8), ("solid", "gradient", "radial", "noise", "clouds"),
                 ((1, 0.85), (2, 0.15)), Contrast(120.0, 60.0, 170.0), saturated_p=0.1, outline_p=0.1,
                 shown=0.8, stream=7)


def probe(run: Run, args: argparse.Namespace) -> dict:
    import numpy as np
    import torch

    from siglip_serve.preprocess.images import ImageTransform
    from siglip_serve.training.data import LABELS, dihedral, draw_pool, normalize_pixels
    from siglip_serve.training.options import Architecture
    from siglip_serve.training.shapes import BROAD, COLORS, EASY, SHAPES
    from siglip_serve.training.train import BICUBIC, new_module, seed_everything, training_attention

    colors = list(COLORS)
    arch = Architecture(**{**BASE, **run.overrides})
    scene = {"easy": EASY, "medium": medium_scene(), "broad": BROAD}[run.scene]
    transform = ImageTransform(height=arch.image_size, width=arch.image_size, resample=BICUBIC)
    seed_everything(args.seed)
    with stage(f"{run.name}: draw {args.pool} images"):
        pixels, facts = draw_pool(transform, args.seed, args.pool, scene, args.threads, False)
        own_pixels, own_facts = draw_pool(transform, args.seed + 1_000, args.eval_images, scene, 1, False)

    # The trainer's own initialization and its attention kernel on the CPU.
    model = new_module(arch, 64)
    model.set_attn_implementation(training_attention(torch.device("cpu")))
    tower = model.vision_model
    head = torch.nn.Linear(arch.vision_width, len(LABELS))  # shapes, then colors
    params = [*tower.parameters(), *head.parameters()]
    optimizer = torch.optim.AdamW(params, lr=args.lr, betas=(0.9, 0.95), weight_decay=1e-4)
    warmup = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / 300))

    eval_sets = {name: heldout_shapes.held_out_images(args.eval_images, preset=name, seed=1_000_003)
                 for name in HELD_OUT_SETS}
    eval_pixels = {name: torch.from_numpy(np.stack([transform(s.image) for s in samples]))
                   for name, samples in eval_sets.items()}
    truth = {name: ([s.shape for s in samples], [s.color for s in samples]) for name, samples in eval_sets.items()}
    eval_pixels["own"] = normalize_pixels(own_pixels, transform)
    truth["own"] = ([f.things[0].shape for f in own_facts], [f.things[0].color for f in own_facts])

    rng = np.random.default_rng([args.seed, 17])
    curve, train_seconds = [], 0.0
    for step in range(args.steps):
        began = time.perf_counter()
        rows = rng.integers(len(facts), size=args.batch_size)
        batch = normalize_pixels(np.stack([dihedral(pixels[i], int(rng.integers(8))) for i in rows]), transform)
        target = torch.tensor([facts[i].label_row for i in rows])  # every object's shape and color: LABELS
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
            logits = head(tower(pixel_values=batch).pooler_output)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits.float(), target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        warmup.step()
        train_seconds += time.perf_counter() - began
        if (step + 1) % args.every == 0 or step + 1 == args.steps:
            point = {"step": step + 1, "loss": round(float(loss.detach()), 4)}
            with torch.no_grad():
                for name, px in eval_pixels.items():
                    out = head(tower(pixel_values=px).pooler_output)
                    shapes, names = truth[name]
                    point[f"{name}_shape"] = float(np.mean([SHAPES[int(k)] == s for k, s in
                                                            zip(out[:, :len(SHAPES)].argmax(1), shapes, strict=True)]))
                    point[f"{name}_color"] = float(np.mean([colors[int(k)] == c for k, c in
                                                            zip(out[:, len(SHAPES):].argmax(1), names, strict=True)]))
            print(run.name, point, flush=True)
            curve.append(point)
    return {"run": run.name, "scene": run.scene, "architecture": run.overrides,
            "ms_per_step": round(1000 * train_seconds / args.steps, 1), "curve": curve}


def main() -> int:
    args = parse_args()
    common.quiet()
    import torch

    torch.set_num_threads(args.threads)
    report = Report(args.name, smoke=args.quick,
                    args={**vars(args), "runs": [r.name for r in args.runs]})
    results = [probe(run, args) for run in args.runs]
    report.add("runs", results)
    rows = [{"run": r["run"], "ms_per_step": r["ms_per_step"], **p} for r in results for p in r["curve"]]
    columns = [("run", "run (scene, overrides)", ""), ("step", "step", ""), ("ms_per_step", "ms/step", ".0f"),
               ("own_shape", "own shapes", ".0%"), ("clean_shape", "clean shapes", ".0%"),
               ("issue_shape", "issue shapes", ".0%"), ("sdf_shape", "sdf shapes", ".0%"),
               ("issue_color", "issue colors", ".0%")]
    report.section(f"Held-out top-1 while training the vision tower alone ({args.batch_size} images a step, "
                   f"lr {args.lr:g}, pool {args.pool}, {args.eval_images} images per set; 6 shapes: chance 17%)",
                   common.markdown_table(rows, columns))
    report.note("`own`: unseen images of the scene the run trains on (its first object); clean, issue, sdf: "
                "bench/heldout_shapes.py, drawn by separate code. Architecture: session 9's demo "
                "(64 px, patch 16, width 128, 4 layers, head width 64) with the run's overrides.")
    report.write()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
