"""JPEG decoding: DCT-domain downscaling (PIL `Image.draft`) vs full decode, and decode workers vs
torch threads on this machine.

1. Speed per image at 640x480, 1600x1200 and 4000x3000 (realistic q90 JPEGs made here), one thread:
   decode alone and decode + the model's resize/normalize, full vs draft. `draft("RGB", (S, S))`
   before `load()` makes libjpeg decode at 1/2, 1/4 or 1/8 scale, the largest reduction that still
   leaves both sides >= S (Pillow's JpegImagePlugin.draft); the squash-resize to S follows as usual.
2. The effect on embeddings: cosine between draft and full-decode image embeddings and top-1
   agreement of zero-shot predictions (100 labels), on a random-weight base-224 model, and on the
   shipped demo model (`siglip_serve.demo.demo_model_dir()`) when that module exists.
3. Threads: `siglip-serve serve --torch-threads T --decode-workers W` over HTTP (classify, 10 labels,
   warm cache, 1600x1200 JPEGs), a small grid: on 2 cores decoding and the model compete.

    python bench/decode.py --quick      # smoke: ~3 min on 2 busy cores
    python bench/decode.py              # full: ~6-8 min on this 2-core CPU
"""

from __future__ import annotations

import argparse
import io
import itertools
import sys
from pathlib import Path
from typing import Any

import common
import http_e2e
import numpy as np
from common import Report, stage

SIZES = {"640x480": (640, 480), "1600x1200": (1600, 1200), "4000x3000": (4000, 3000)}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="Smoke run: 1 image per size, 2 thread settings.")
    parser.add_argument("--arch", default="base-224", choices=list(common.ARCHS))
    parser.add_argument("--speed-images", type=int, default=4, help="Distinct JPEGs per size for timing.")
    parser.add_argument("--min-time-s", type=float, default=2.0, help="Per (size, path), at least.")
    parser.add_argument("--embed-images", type=int, default=8, help="Distinct JPEGs per size for embeddings.")
    parser.add_argument("--labels", type=int, default=100)
    parser.add_argument("--torch-threads", default="1,2", help="Sweep values of --torch-threads.")
    parser.add_argument("--decode-workers", default="1,2,4", help="Sweep values of --decode-workers.")
    parser.add_argument("--sweep-concurrency", type=int, default=8)
    parser.add_argument("--sweep-requests", type=int, default=32)
    parser.add_argument("--no-sweep", action="store_true")
    parser.add_argument("--out-dir", type=Path, default=common.RESULTS_DIR)
    args = parser.parse_args()
    if args.quick:
        args.speed_images, args.min_time_s, args.embed_images, args.labels = 1, 0.0, 2, 10
        args.sweep_concurrency, args.sweep_requests = 2, 3
    return args


# --- the two decode paths -----------------------------------------------------------------------


def decode_full(data: bytes) -> Any:
    """The library's path: open, full-size decode, EXIF orientation, RGB."""
    from siglip_serve.preprocess.images import decode_image

    return decode_image(data)


def decode_draft(data: bytes, size: tuple[int, int]) -> Any:
    """The library's `--jpeg-draft` path: libjpeg scales by 1/2, 1/4 or 1/8 in the DCT domain
    (both sides stay >= size) before the usual steps."""
    from siglip_serve.preprocess.images import decode_image

    return decode_image(data, draft_size=max(size))


def time_path(fn: Any, jpegs: list[bytes], *, min_time_s: float) -> float:
    """Median seconds per image, cycling over `jpegs` (one warm-up pass)."""
    times = []
    for data in jpegs:
        times += common.time_calls(lambda data=data: fn(data), warmup=1, iters=3,
                                   min_time_s=min_time_s / len(jpegs))
    return float(np.median(times))


def speed(args: argparse.Namespace, transform: Any) -> list[dict[str, Any]]:
    size = (transform.width, transform.height)
    rows = []
    for key, (w, h) in SIZES.items():
        jpegs = [common.photo_jpeg(w, h, seed=i) for i in range(args.speed_images)]
        with stage(f"decode speed {key}"):
            full = time_path(decode_full, jpegs, min_time_s=args.min_time_s)
            draft = time_path(lambda d: decode_draft(d, size), jpegs, min_time_s=args.min_time_s)
            full_pre = time_path(lambda d: transform(decode_full(d)), jpegs, min_time_s=args.min_time_s)
            draft_pre = time_path(lambda d: transform(decode_draft(d, size)), jpegs, min_time_s=args.min_time_s)
        rows.append({"image": key, "jpeg_kb": np.mean([len(j) for j in jpegs]) / 1024,
                     "draft_decoded_size": "x".join(map(str, decode_draft(jpegs[0], size).size)),
                     "full_decode_ms": full * 1e3, "draft_decode_ms": draft * 1e3,
                     "full_megapixels_per_s": w * h / full / 1e6,
                     "full_decode_preprocess_ms": full_pre * 1e3, "draft_decode_preprocess_ms": draft_pre * 1e3,
                     "speedup": common.ratio(full_pre, draft_pre)})
    return rows


# --- effect on embeddings -----------------------------------------------------------------------


def embedding_effect(model: Any, *, model_name: str, jpegs: dict[str, list[bytes]], labels: list[str],
                     truth: list[str] | None = None) -> list[dict[str, Any]]:
    """Per size: pixel and embedding differences, draft vs full decode, zero-shot top-1 agreement between
    the two paths, and with `truth` (one label per image) the accuracy of each path."""
    import torch

    from siglip_serve.scoring import l2_normalize

    transform = model.checkpoint.image_transform
    size = (transform.width, transform.height)
    label_embeds = model.embed_labels(labels, http_e2e.TEMPLATE)
    rows = []
    for key, images in jpegs.items():
        with stage(f"{model_name} embeddings {key}"):
            full = [transform(decode_full(j)) for j in images]
            draft = [transform(decode_draft(j, size)) for j in images]
            diff = np.abs(np.stack(full) - np.stack(draft))
            full_e, draft_e = model.encode_prepared_images(full), model.encode_prepared_images(draft)
        cos = torch.nn.functional.cosine_similarity(full_e, draft_e)
        full_p = model.logits(l2_normalize(full_e), label_embeds).sigmoid()
        draft_p = model.logits(l2_normalize(draft_e), label_embeds).sigmoid()
        row = {"model": model_name, "image": key, "images": len(images), "labels": len(labels),
               "pixel_mean_abs_diff": float(diff.mean()), "pixel_max_abs_diff": float(diff.max()),
               "embedding_cosine_min": float(cos.min()), "embedding_cosine_mean": float(cos.mean()),
               "prob_max_abs_diff": float((full_p - draft_p).abs().max()),
               "top1_agreement": float((full_p.argmax(1) == draft_p.argmax(1)).float().mean())}
        if truth is not None:
            expected = torch.tensor([labels.index(t) for t in truth])
            row["full_accuracy"] = float((full_p.argmax(1) == expected).float().mean())
            row["draft_accuracy"] = float((draft_p.argmax(1) == expected).float().mean())
        rows.append(row)
    return rows


def photo_jpegs(count: int) -> dict[str, list[bytes]]:
    return {key: [common.photo_jpeg(w, h, seed=100 + i) for i in range(count)] for key, (w, h) in SIZES.items()}


def demo_effect(args: argparse.Namespace, report: Report) -> list[dict[str, Any]]:
    """The shipped demo model (trained on synthetic coloured shapes) on held-out shapes images upscaled to
    each size and saved as q90 JPEGs, with its 48 "a {colour} {shape}" labels: trained weights, known truth."""
    try:
        from siglip_serve.demo import demo_model_dir
        from siglip_serve.training.evaluate import HELD_OUT_SEED, combo_label
        from siglip_serve.training.shapes import COMBOS, make_sample
    except ImportError as exc:
        report.note(f"demo model part skipped: not importable yet ({exc})")
        return []
    directory = demo_model_dir()
    if not (directory / "config.json").is_file():
        report.note(f"demo model part skipped: {directory} has no checkpoint yet")
        return []
    from PIL import Image

    import siglip_serve

    samples = [make_sample(HELD_OUT_SEED, i) for i in range(args.embed_images)]
    jpegs: dict[str, list[bytes]] = {}
    for key, (w, h) in SIZES.items():
        jpegs[key] = []
        for sample in samples:
            buffer = io.BytesIO()
            sample.image.convert("RGB").resize((w, h), Image.BICUBIC).save(buffer, format="JPEG", quality=90)
            jpegs[key].append(buffer.getvalue())
    model = siglip_serve.load(str(directory), device="cpu")
    return embedding_effect(model, model_name="demo (trained)", jpegs=jpegs,
                            labels=[combo_label(c, s) for c, s in COMBOS],
                            truth=[combo_label(s.color, s.shape) for s in samples])


# --- threads: torch intra-op threads vs decode workers, over HTTP -------------------------------


def thread_sweep(args: argparse.Namespace, checkpoint: Path) -> list[dict[str, Any]]:
    grid = list(itertools.product([int(t) for t in args.torch_threads.split(",")],
                                  [int(w) for w in args.decode_workers.split(",")]))
    if args.quick:
        grid = grid[:1] + grid[-1:]
    http_args = http_e2e.parse_args(["--quick"] if args.quick else [])
    http_args.images_per_size = 4
    http_args.min_requests = http_args.max_requests = args.sweep_requests
    http_args.cell_duration_s = 120.0
    images = http_e2e.load_images(http_args)
    cell = http_e2e.Scenario("classify", "1600x1200", 10, "warm", (args.sweep_concurrency,))
    rows = []
    for torch_threads, workers in grid:
        extra = ["--torch-threads", str(torch_threads), "--decode-workers", str(workers)]
        cells, _ = http_e2e.run_ours(checkpoint, [cell], images, http_args, extra=extra,
                                     tag=f" T={torch_threads} W={workers}")
        r = cells[0]
        metrics = r["server_metrics"]
        rows.append({"torch_threads": torch_threads, "decode_workers": workers, "concurrency": r["concurrency"],
                     "ok": r["ok"], "throughput_rps": r["throughput_rps"], "p50_ms": r["p50_ms"],
                     "p95_ms": r["p95_ms"],
                     "decode_ms_per_image": 1e3 * metrics.get("mean_s[stage=decode]", float("nan")),
                     "mean_image_batch": next((v for k, v in metrics.items()
                                               if k.startswith("mean_batch[") and "/image" in k), None),
                     "statuses": r["statuses"]})
    return rows


# --- main ---------------------------------------------------------------------------------------


def main() -> int:
    args = parse_args()
    report = Report("decode", smoke=args.quick, args={k: str(v) if isinstance(v, Path) else v
                                                      for k, v in vars(args).items()})
    common.quiet()
    import torch

    import siglip_serve

    checkpoint = common.checkpoint_dir(common.ARCHS[args.arch])
    model = siglip_serve.load(str(checkpoint), device="cpu")
    torch_threads = torch.get_num_threads()
    torch.set_num_threads(1)  # decode timings: one core, as one decode worker
    speed_rows = speed(args, model.checkpoint.image_transform)
    torch.set_num_threads(torch_threads)
    effect = embedding_effect(model, model_name=f"random {args.arch}", jpegs=photo_jpegs(args.embed_images),
                              labels=common.make_labels(args.labels))
    del model
    effect += demo_effect(args, report)
    sweep = [] if args.no_sweep else thread_sweep(args, checkpoint)
    report.add("speed", speed_rows)
    report.add("embedding_effect", effect)
    report.add("thread_sweep", sweep)
    report.section("Decode speed, one thread (median per image)", common.markdown_table(speed_rows, [
        ("image", "image", ""), ("jpeg_kb", "JPEG KB", ".0f"), ("draft_decoded_size", "draft decodes to", ""),
        ("full_decode_ms", "full decode ms", ".1f"), ("draft_decode_ms", "draft decode ms", ".1f"),
        ("full_megapixels_per_s", "full MP/s", ".0f"), ("full_decode_preprocess_ms", "full + resize ms", ".1f"),
        ("draft_decode_preprocess_ms", "draft + resize ms", ".1f"), ("speedup", "speed-up", ".2f")]))
    report.section("Effect of draft decoding on embeddings (same JPEGs, same model)", common.markdown_table(effect, [
        ("model", "model", ""), ("image", "image", ""), ("images", "images", "d"), ("labels", "labels", "d"),
        ("pixel_mean_abs_diff", "pixel mean abs Δ", ".4f"), ("pixel_max_abs_diff", "pixel max abs Δ", ".3f"),
        ("embedding_cosine_min", "cos min", ".5f"), ("embedding_cosine_mean", "cos mean", ".5f"),
        ("prob_max_abs_diff", "max abs Δp", ".4f"), ("top1_agreement", "top-1 agree", ".1%"),
        ("full_accuracy", "accuracy full", ".1%"), ("draft_accuracy", "accuracy draft", ".1%")]))
    if sweep:
        report.section("torch threads vs decode workers (HTTP, classify 10 labels warm, 1600x1200)",
                       common.markdown_table(sweep, [
                           ("torch_threads", "torch threads", "d"), ("decode_workers", "decode workers", "d"),
                           ("concurrency", "conc", "d"), ("ok", "ok", "d"), ("throughput_rps", "req/s", ".2f"),
                           ("p50_ms", "p50 ms", ".0f"), ("p95_ms", "p95 ms", ".0f"),
                           ("decode_ms_per_image", "decode ms/img (server)", ".1f"),
                           ("mean_image_batch", "img batch", ".1f")]))
    report.note("Pixel differences are in normalized units ([-1, 1]). Random weights say little about accuracy; "
                "the demo model's rows (trained weights) are the ones to decide a default on.")
    report.write(args.out_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
