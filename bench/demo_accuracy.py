"""Accuracy of the shipped siglip-demo-shapes model on held-out images, from two separate generators.

The first demo model scored 98.9% on fresh images from its own training generator and 64% on
shapes drawn otherwise (issue 16), so the figure that counts is on images drawn by other code:
- `heldout_shapes.py` (this directory; shares no code with training): its broad `sdf` preset,
  its `issue` preset (the set the issue describes: other canvas sizes and aspect ratios, smaller
  shapes, muted gradients, slight blur, JPEG), its `mild` preset (that description drawn gently)
  and its `clean` preset (a user's first drawing);
- the training generator (`siglip_serve.training.shapes`) with a seed training never used, one
  shape per image: the in-distribution figure, for comparison.

Everything goes through the library, i.e. the serving path (decode, squash-resize, cleaning,
64-token texts without a mask, the checkpoint's learned temperature and bias): zero-shot top-1
with "This is a photo of {}." over the 48 "a {color} {shape}" labels, the 8 colors and the
6 shapes (targets on the project's hidden held-out set: >= 90%, >= 97%, >= 95%); text->image
recall@1 as /v1/rerank computes it (48 images, one per combination, as documents); per-class
accuracy; bfloat16 vs float32; the checkpoint's size and its training record.

    python bench/demo_accuracy.py              # 960 images per set, writes bench/results/demo_accuracy.{json,md}
    python bench/demo_accuracy.py --quick      # 96 images per set, smoke run
    python bench/demo_accuracy.py --model DIR  # another shapes checkpoint (e.g. a reproduction run)

Which of these sets is like the hidden one: the first demo model (commit 555c556), which the issue
measured there at 48-way 64%, colors 90%, shapes 69%, scored alike on `clean` only, and on
shapes between `clean` (74.6%) and `mild` (50.9%), about a quarter of the way down
(bench/results/demo_accuracy_first_model.md), by

    mkdir -p /tmp/first && git archive 555c556 src/siglip_serve/demo/siglip-demo-shapes | tar -x -C /tmp/first
    python bench/demo_accuracy.py --model /tmp/first/src/siglip_serve/demo/siglip-demo-shapes \
        --name demo_accuracy_first_model
"""

from __future__ import annotations

import argparse
import itertools
import time
from collections import Counter
from pathlib import Path

import common
import heldout_shapes
from common import Report, stage

TARGETS = {"combo": 0.90, "color": 0.97, "shape": 0.95}
RECALL_BAR = 0.85
HELD_OUT_SETS = ("sdf", "issue", "mild", "clean")  # heldout_shapes presets


def parse_args() -> argparse.Namespace:
    from siglip_serve.demo import demo_model_dir
    from siglip_serve.training.evaluate import HELD_OUT_SEED

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=demo_model_dir(), help="Checkpoint directory.")
    parser.add_argument("--images", type=int, default=960, help="Images per set (a multiple of 48).")
    parser.add_argument("--seed", type=int, default=HELD_OUT_SEED,
                        help="Seed of the training generator's held-out stream (training uses 0).")
    parser.add_argument("--heldout-seed", type=int, default=7, help="Seed of heldout_shapes.py's images.")
    parser.add_argument("--quick", action="store_true", help="96 images per set: proves the script works.")
    parser.add_argument("--name", default="demo_accuracy", help="Results file name under bench/results/.")
    parser.add_argument("--out-dir", type=Path, default=common.RESULTS_DIR)
    parser.add_argument("--device", default="cpu", help="Device for the half-precision comparison.")
    parser.add_argument("--dtypes", default=None,
                        help="Half precisions to compare with fp32 (default: CPU bfloat16, CUDA float16,bfloat16).")
    return parser.parse_args()


def half_precision_rows(args: argparse.Namespace, samples) -> list[dict]:
    """Each half precision against fp32 on the same images: embedding cosine, 48-way top-1 agreement
    and accuracy. This is the evidence `--dtype auto` rests on (issue: cosine >= 0.999, agreement >= 99%)."""
    import siglip_serve
    from siglip_serve.model import DEFAULT_TEMPLATE
    from siglip_serve.training.evaluate import combo_label
    from siglip_serve.training.shapes import COMBOS

    labels = [combo_label(c, s) for c, s in COMBOS]
    truth = [combo_label(s.color, s.shape) for s in samples]
    reference = siglip_serve.load(str(args.model), device=args.device, dtype="float32")
    ref_images = reference.embed_images([s.image for s in samples]).float().cpu()
    ref_scores = reference.logits(ref_images, reference.embed_labels(labels, DEFAULT_TEMPLATE).float().cpu())
    dtypes = args.dtypes or ("float16,bfloat16" if args.device.startswith("cuda") else "bfloat16")
    rows = [{"dtype": "float32", "device": args.device, "cos_min": 1.0, "cos_mean": 1.0, "agreement": 1.0,
             "accuracy": _accuracy(ref_scores, labels, truth)}]
    for dtype in dtypes.split(","):
        model = siglip_serve.load(str(args.model), device=args.device, dtype=dtype)
        images = model.embed_images([s.image for s in samples]).float().cpu()
        scores = model.logits(images, model.embed_labels(labels, DEFAULT_TEMPLATE).float().cpu())
        cosine = (images * ref_images).sum(dim=1)  # both L2-normalized
        rows.append({"dtype": dtype, "device": args.device, "cos_min": float(cosine.min()),
                     "cos_mean": float(cosine.mean()),
                     "agreement": float((scores.argmax(1) == ref_scores.argmax(1)).float().mean()),
                     "accuracy": _accuracy(scores, labels, truth)})
    return rows


def _accuracy(scores, labels: list[str], truth: list[str]) -> float:
    return sum(labels[int(i)] == t for i, t in zip(scores.argmax(1), truth, strict=True)) / len(truth)


SIZE_BINS = (0.0, 1.0, 1.5, 2.0, 3.0, 4.0, float("inf"))  # a shape's extent in patches of the model's input


def by_size(model, embeds, samples, set_name: str) -> list[dict]:
    """6-way shape top-1 by how large the shape is in the model's input, in patches (`extent_at`): where
    a model fails, small shapes on large canvases or every shape."""
    from siglip_serve.model import DEFAULT_TEMPLATE
    from siglip_serve.training.shapes import SHAPES

    labels = list(SHAPES)
    scores = model.logits(embeds, model.embed_labels(labels, DEFAULT_TEMPLATE))
    right = [labels[int(i)] == s.shape for i, s in zip(scores.argmax(dim=1), samples, strict=True)]
    patches = [s.extent_at(model.info.image_size) / model.info.patch_size for s in samples]
    rows = []
    for low, high in itertools.pairwise(SIZE_BINS):
        hits = [ok for ok, size in zip(right, patches, strict=True) if low <= size < high]
        if hits:
            rows.append({"set": set_name, "patches": f"{low:g}-{high:g}", "images": len(hits),
                         "shape_top1": sum(hits) / len(hits)})
    return rows


def per_class(model, embeds, samples, set_name: str) -> list[dict]:
    """Accuracy per color and per shape, for the 8- and 6-way label sets."""
    from siglip_serve.model import DEFAULT_TEMPLATE
    from siglip_serve.training.shapes import COLORS, SHAPES

    rows = []
    for attribute, labels in (("color", list(COLORS)), ("shape", list(SHAPES))):
        scores = model.logits(embeds, model.embed_labels(labels, DEFAULT_TEMPLATE))
        predicted = [labels[int(i)] for i in scores.argmax(dim=1)]
        truth = [getattr(s, attribute) for s in samples]
        totals, hits = Counter(truth), Counter(t for t, p in zip(truth, predicted, strict=True) if t == p)
        rows += [{"set": set_name, "attribute": attribute, "label": label, "images": totals[label],
                  "top1": hits[label] / totals[label] if totals[label] else None} for label in labels]
    return rows


def main() -> int:
    args = parse_args()
    if args.quick:
        args.images = 96
    common.quiet()
    import siglip_serve
    from siglip_serve.model import DEFAULT_TEMPLATE
    from siglip_serve.training.evaluate import held_out, rerank_recall_at_1, zero_shot_accuracy
    from siglip_serve.training.train import read_training_record

    report = Report(args.name, smoke=args.quick, args={**vars(args), "model": str(args.model),
                                                        "out_dir": str(args.out_dir)})
    model = siglip_serve.load(str(args.model), device="cpu")
    with stage(f"draw {args.images} images per set"):
        sets = {f"heldout_shapes {name}": heldout_shapes.held_out_images(args.images, preset=name,
                                                                         seed=args.heldout_seed)
                for name in HELD_OUT_SETS}
        sets["training generator (in-distribution)"] = held_out(args.images, seed=args.seed)
    started = time.perf_counter()
    rows, classes, sizes = [], [], []
    with stage("zero-shot accuracy"):
        for name, samples in sets.items():
            accuracy = zero_shot_accuracy(model, samples)
            passed = {key: getattr(accuracy, key) >= bar for key, bar in TARGETS.items()}
            rows.append({"set": name, **accuracy.as_dict(), "meets_targets": all(passed.values())})
            embeds = model.embed_images([s.image for s in samples])
            classes += per_class(model, embeds, samples, name)
            if name.startswith("heldout_shapes") and name != "heldout_shapes clean":
                sizes += by_size(model, embeds, samples, name)
    with stage("rerank recall@1"):
        recall = []
        for name, samples in sets.items():
            groups = [samples[i : i + 48] for i in range(0, len(samples) - 47, 48)]
            recall.append({"set": name, "groups": len(groups),
                           "recall_at_1": sum(rerank_recall_at_1(model, g) for g in groups) / len(groups)})
    broad = sets["heldout_shapes sdf"]
    with stage("half precision vs fp32"):
        precision = half_precision_rows(args, broad)
    eval_seconds = time.perf_counter() - started

    files = {p.name: p.stat().st_size for p in sorted(args.model.iterdir()) if p.is_file()}
    params = sum(p.numel() for p in model.checkpoint.towers.module.parameters())
    record = read_training_record(args.model) or {}
    temperature = model.checkpoint.towers.temperature
    report.add("accuracy", rows)
    report.add("targets", TARGETS)
    report.add("recall_at_1", recall)
    report.add("per_class", classes)
    report.add("by_size", sizes)
    report.add("model", {"directory": str(args.model), "bytes": sum(files.values()), "files": files,
                         "parameters": params, "logit_scale": temperature.logit_scale,
                         "logit_bias": temperature.logit_bias})
    report.add("half_precision", precision)
    report.add("training", record)
    report.add("eval_seconds", round(eval_seconds, 1))

    report.section(f"Zero-shot top-1 ({args.images} images per set, one shape each; template "
                   f"\"{DEFAULT_TEMPLATE}\"; targets on the project's hidden set: 48-way >= 90%, "
                   f"colors >= 97%, shapes >= 95%)",
                   common.markdown_table(rows, [("set", "set", ""), ("combo", "48-way", ".1%"),
                                                ("color", "8 colors", ".1%"), ("shape", "6 shapes", ".1%"),
                                                ("meets_targets", "meets targets", "")]))
    report.section(f"Text->image recall@1 as /v1/rerank ranks (48 documents, one per combination; bar "
                   f"{RECALL_BAR:.0%})", common.markdown_table(
                       recall, [("set", "set", ""), ("groups", "groups of 48", "d"),
                                ("recall_at_1", "recall@1", ".1%")]))
    info = model.info
    report.section(f"Shapes by size: 6-way top-1 by the shape's extent (twice its circumradius) in the model's "
                   f"{info.image_size} px input, in {info.patch_size} px patches (along the canvas's long side, "
                   f"after the squash resize)",
                   common.markdown_table(sizes, [("set", "set", ""), ("patches", "patches", ""),
                                                 ("images", "images", "d"), ("shape_top1", "6 shapes", ".1%")]))
    report.section("Per class", common.markdown_table(classes, [
        ("set", "set", ""), ("attribute", "label set", ""), ("label", "label", ""), ("images", "images", "d"),
        ("top1", "top-1", ".1%")]))
    report.section("bfloat16 vs float32 (heldout_shapes sdf images; 48-way labels)", common.markdown_table(
        precision, [("dtype", "dtype", ""), ("device", "device", ""), ("cos_min", "embedding cos min", ".5f"),
                    ("cos_mean", "cos mean", ".5f"), ("agreement", "top-1 agreement", ".1%"),
                    ("accuracy", "48-way top-1", ".1%")]))
    size_rows = [{"file": name, "bytes": size} for name, size in files.items()]
    size_rows.append({"file": "total", "bytes": sum(files.values())})
    report.section(f"Checkpoint ({params / 1e6:.2f}M parameters; logit_scale {temperature.logit_scale:.3f} "
                   f"= x{2.718281828 ** temperature.logit_scale:.1f}, logit_bias {temperature.logit_bias:.3f})",
                   common.markdown_table(size_rows, [("file", "file", ""), ("bytes", "bytes", ",d")]))
    if record:
        report.section("Training", "\n".join([
            f"- command: `{record.get('command')}`",
            f"- {record.get('steps_done')} steps in {record.get('seconds')} s ({record.get('total_seconds')} s in "
            f"all) with {record.get('torch_threads')} torch threads (torch {record.get('torch')}); final loss "
            f"{record.get('final_loss')}",
        ]))
    report.write(args.out_dir)
    for row in rows:
        print(f"{row['set']}: 48-way {row['combo']:.1%}, colors {row['color']:.1%}, shapes {row['shape']:.1%}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
