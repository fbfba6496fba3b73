"""`siglip-serve embed` throughput against the model alone, in one run (issue #14 §1: target >= 90%).

For each image size (a folder of realistic q90 JPEGs, `common.photo_jpeg`), decode mode (full, or
`--jpeg-draft`) and number of decode workers:
- model only: `Model.encode_prepared_images` on one full batch of already prepared images, same model
  object, dtype and batch size; measured right before and right after the job, and averaged, so that
  drift in the machine's load hits both sides;
- the job: `run_embed` over the folder into a fresh Lance table, the model already loaded; its rate is
  the job's own summary (images embedded / seconds from the first decode to the last commit). The
  end-to-end rate (input listing, model probe, table creation included) is reported beside it.

    python bench/embed_job.py --quick     # smoke: ~2 min (plus ~1 min to build the checkpoint once)
    python bench/embed_job.py             # ~6 min on this 2-core CPU
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import common
import numpy as np
from common import Report, stage


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="Smoke run: few images, one setting.")
    parser.add_argument("--arch", default="base-224", choices=list(common.ARCHS),
                        help="Random-weight checkpoint at real dimensions (real compute cost).")
    parser.add_argument("--model", default=None, help="A checkpoint directory instead of --arch ('demo': the demo).")
    parser.add_argument("--sizes", default="640x480,1600x1200")
    parser.add_argument("--images", type=int, default=128, help="Images per size folder.")
    parser.add_argument("--unique", type=int, default=16, help="Distinct JPEGs per size (copied to --images files).")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--dtype", default="auto", help="auto is bfloat16 on CPUs with native bf16.")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--workers", default=None, help="Comma-separated decode worker counts (default: the job's).")
    parser.add_argument("--decode", default="full,draft", help="full and/or draft (--jpeg-draft).")
    parser.add_argument("--min-time-s", type=float, default=6.0, help="Model-only timing per measurement.")
    parser.add_argument("--out-dir", type=Path, default=common.RESULTS_DIR)
    args = parser.parse_args()
    if args.quick:
        args.images, args.unique, args.min_time_s, args.decode = 16, 2, 0.0, "full"
    return args


def make_folder(root: Path, size: str, count: int, unique: int) -> Path:
    width, height = (int(x) for x in size.split("x"))
    folder = root / size
    folder.mkdir(parents=True)
    for index in range(count):  # same bytes under other names decode at the same cost
        (folder / f"img{index:05d}.jpg").write_bytes(common.photo_jpeg(width, height, seed=index % unique))
    return folder


def model_only_rate(model: Any, folder: Path, batch_size: int, min_time_s: float) -> float:
    """Images/s of the model alone on one full batch of prepared images of this folder."""
    paths = sorted(folder.iterdir())
    prepared = [model.prepare_image(str(paths[i % len(paths)])) for i in range(batch_size)]
    times = common.time_calls(lambda: model.encode_prepared_images(prepared), warmup=1, iters=3,
                              min_time_s=min_time_s)
    return batch_size / float(np.median(times))


def measure(model: Any, folder: Path, *, workers: int, args: argparse.Namespace, scratch: Path) -> dict[str, Any]:
    from siglip_serve.jobs.embed import EmbedOptions, run_embed

    load_before = os.getloadavg()[0]
    before = model_only_rate(model, folder, args.batch_size, args.min_time_s)
    out = scratch / f"db-{time.monotonic_ns()}" / "bench"
    started = time.perf_counter()
    summary = run_embed(EmbedOptions(sources=[str(folder)], out=str(out), batch_size=args.batch_size,
                                     workers=workers, quiet=True), model=model)
    wall = time.perf_counter() - started
    after = model_only_rate(model, folder, args.batch_size, args.min_time_s)
    shutil.rmtree(out.parent)
    model_rate = (before + after) / 2
    return {"images": summary.embedded, "failed": summary.failed, "workers": workers,
            "model_only_before": before, "model_only_after": after, "model_only": model_rate,
            "job": summary.rate, "ratio": summary.rate / model_rate, "job_seconds": summary.seconds,
            "end_to_end": summary.embedded / wall, "load_1min_before": load_before,
            "load_1min_after": os.getloadavg()[0]}


def main() -> int:
    args = parse_args()
    report = Report("embed_job", smoke=args.quick, args={k: str(v) if isinstance(v, Path) else v
                                                         for k, v in vars(args).items()})
    common.quiet()
    import siglip_serve
    from siglip_serve.demo import demo_model_dir
    from siglip_serve.jobs.embed import compute_dtype, default_workers

    if args.model == "demo":
        checkpoint, model_name = demo_model_dir(), "demo (siglip-demo-shapes, trained)"
    elif args.model:
        checkpoint, model_name = Path(args.model), args.model
    else:
        checkpoint, model_name = common.checkpoint_dir(common.ARCHS[args.arch]), f"random {args.arch}"
    workers_list = [int(w) for w in args.workers.split(",")] if args.workers else [default_workers()]
    rows = []
    scratch = Path(tempfile.mkdtemp(prefix="embed-job-bench-"))
    try:
        with stage("images"):
            folders = {size: make_folder(scratch / "images", size, args.images, args.unique)
                       for size in args.sizes.split(",")}
        for decode in args.decode.split(","):
            model = siglip_serve.load(str(checkpoint), device=args.device, dtype=args.dtype,
                                      batch_size=args.batch_size, jpeg_draft=decode == "draft")
            dtype = compute_dtype(model, args.dtype)
            for size, folder in folders.items():
                for workers in workers_list:
                    with stage(f"{decode} {size} workers={workers}"):
                        row = measure(model, folder, workers=workers, args=args, scratch=scratch)
                    rows.append({"model": model_name, "size": size, "decode": decode, "dtype": dtype,
                                 "batch": args.batch_size, **row})
                    print(f"  job {row['job']:.2f} img/s, model only {row['model_only']:.2f} img/s, "
                          f"ratio {row['ratio']:.1%}", flush=True)
            del model
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    report.add("rows", rows)
    report.section("Embed job vs model only (same run, same model object, dtype and batch)", common.markdown_table(
        rows, [("model", "model", ""), ("size", "JPEG", ""), ("decode", "decode", ""), ("dtype", "dtype", ""),
               ("batch", "batch", "d"), ("workers", "workers", "d"), ("images", "images", "d"),
               ("model_only", "model only img/s", ".2f"), ("job", "embed img/s", ".2f"),
               ("ratio", "embed / model", ".1%"), ("end_to_end", "end to end img/s", ".2f"),
               ("model_only_before", "model before", ".2f"), ("model_only_after", "model after", ".2f"),
               ("load_1min_before", "load before", ".2f"), ("load_1min_after", "load after", ".2f")]))
    report.note("Inputs: realistic q90 JPEGs (common.photo_jpeg), "
                f"{args.unique} distinct per size copied to {args.images} files; the OS page cache holds them, so "
                "file reads cost nothing and decoding is real.")
    report.note("`embed img/s` is the job's own summary (first decode to last commit); `end to end` adds listing the "
                "inputs, the model probe and creating the table, but not loading the model.")
    report.note("`draft` decodes JPEGs at 1/2-1/8 scale in the DCT domain (--jpeg-draft): the model-only rate of that "
                "row uses the same draft-decoded inputs. Full decode is the default and equals `embed_images`.")
    report.write(args.out_dir)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
