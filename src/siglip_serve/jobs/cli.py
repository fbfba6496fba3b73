"""`siglip-serve embed`: flags and exit status. Imports nothing heavy until the job runs."""

from __future__ import annotations

import argparse
import signal
import sys

from siglip_serve.demo import DEMO_MODEL_NAME

EXIT_FAILED = 1  # --strict with failures, or nothing could be read at all (issue #14)
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report Ctrl-C


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def non_negative_float(text: str) -> float:
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be zero or more, got {text}")
    return value


def add_embed_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("sources", nargs="+", metavar="SOURCE",
                        help="A directory (recursive), a glob ('photos/**/*.jpg', quoted) or a manifest (.jsonl, "
                             ".csv, .parquet) with an image column (path relative to the manifest, or http(s) URL), "
                             "optional id and text columns; its other columns are kept as metadata.")
    parser.add_argument("--out", required=True,
                        help="DIR/NAME: LanceDB table NAME in database DIR (stored as DIR/NAME.lance); "
                             "FILE.parquet: one Parquet file. A rerun with the same --out resumes.")
    parser.add_argument("--format", choices=("lance", "parquet"), default=None,
                        help="Default: parquet when --out ends in .parquet, else lance.")
    parser.add_argument("--model", default=DEMO_MODEL_NAME,
                        help=f"Local checkpoint directory or hub id (default: {DEMO_MODEL_NAME}, the demo model).")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto", help="auto, float32, bfloat16 or float16 (the model's dtype).")
    parser.add_argument("--batch-size", type=positive_int, default=32, help="Images per model call (default 32).")
    parser.add_argument("--workers", type=positive_int, default=None,
                        help="Decoding threads (default: one per core, at most 8).")
    parser.add_argument("--image-column", default="image", help="Manifest column with the image (default image).")
    parser.add_argument("--id-column", default="id",
                        help="Manifest column with the id (default id; without it the image value is the id).")
    parser.add_argument("--text-column", default=None, help="Manifest column to embed as text (text_embedding).")
    parser.add_argument("--labels", default=None,
                        help='Comma-separated labels for zero-shot tagging, e.g. "cat,dog,car": adds labels and '
                             'scores (sigmoid probabilities, template "This is a photo of {}.").')
    parser.add_argument("--top-k", type=positive_int, default=None, help="Keep only the best K labels per image.")
    parser.add_argument("--half", action="store_true", help="Store embeddings as float16 (half the size).")
    parser.add_argument("--jpeg-draft", action="store_true",
                        help="Decode large JPEGs at reduced scale (several times faster; cosine >0.9999 to the full "
                             "decode, see bench/results/decode.md).")
    parser.add_argument("--commit-every", type=positive_int, default=1024, dest="commit_rows",
                        help="Commit after this many rows (default 1024); a kill loses at most the uncommitted rows.")
    parser.add_argument("--commit-seconds", type=float, default=60.0,
                        help="Also commit at least this often (default 60).")
    parser.add_argument("--allow-private-urls", action="store_true",
                        help="Let manifest URLs resolve to loopback, private or link-local addresses.")
    parser.add_argument("--fetch-timeout", type=float, default=None, help="Seconds per image URL.")
    parser.add_argument("--quiet", action="store_true", help="No progress bar (the summary line is still printed).")
    parser.add_argument("--strict", action="store_true", help="Exit non-zero when any input failed.")
    ray = parser.add_argument_group("on a Ray cluster (needs the ray extra; see scaling/data_job.py)")
    ray.add_argument("--ray", action="store_true",
                     help="Run on Ray Data: decoding as CPU tasks, the model in a pool of actors; same output.")
    ray.add_argument("--ray-address", default=None,
                     help="Cluster to join (e.g. auto or HOST:6379); default: a local cluster for this job.")
    ray.add_argument("--actors", type=positive_int, default=1, help="Model actors (default 1).")
    ray.add_argument("--gpus-per-actor", type=non_negative_float, default=0.0,
                     help="GPUs per actor (default 0; a fraction shares a GPU).")
    ray.add_argument("--cpus-per-actor", type=non_negative_float, default=1.0,
                     help="CPUs per actor, also its torch threads (default 1).")


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def run_embed_command(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from siglip_serve.jobs.embed import EmbedOptions, default_workers, run_embed
    from siglip_serve.model import quiet_transformers
    from siglip_serve.preprocess.fetch import FetchPolicy

    policy = FetchPolicy(allow_private=args.allow_private_urls)
    if args.fetch_timeout is not None:
        policy = replace(policy, timeout_s=args.fetch_timeout)
    labels = None if args.labels is None else [label.strip() for label in args.labels.split(",") if label.strip()]
    options = EmbedOptions(
        sources=args.sources, out=args.out, model=args.model, device=args.device, dtype=args.dtype,
        batch_size=args.batch_size, workers=args.workers or default_workers(), format=args.format,
        image_column=args.image_column, id_column=args.id_column, text_column=args.text_column, labels=labels,
        top_k=args.top_k, half=args.half, jpeg_draft=args.jpeg_draft, quiet=args.quiet,
        commit_rows=args.commit_rows, commit_seconds=args.commit_seconds, policy=policy,
    )
    quiet_transformers()
    # `kill`, `docker stop` and Kubernetes send SIGTERM: stop as on Ctrl-C, committing the rows already embedded.
    signal.signal(signal.SIGTERM, _interrupt)
    if args.ray:
        from siglip_serve.scaling.data_job import RayOptions, run_ray_embed

        summary = run_ray_embed(options, RayOptions(address=args.ray_address, actors=args.actors,
                                                    gpus_per_actor=args.gpus_per_actor,
                                                    cpus_per_actor=args.cpus_per_actor))
    else:
        summary = run_embed(options)
    for note in summary.notes:
        print(f"note: {note}", file=sys.stderr)
    if not args.quiet:
        for item_id, message in summary.failures:
            print(f"failed: {item_id}: {message}", file=sys.stderr)
        if summary.failed > len(summary.failures):
            print(f"... and {summary.failed - len(summary.failures)} more (the error column has them all)",
                  file=sys.stderr)
    print(summary.line())
    if summary.interrupted:
        return EXIT_INTERRUPTED
    if not summary.embedded and (summary.failed or not summary.already_present):
        return EXIT_FAILED  # nothing could be read: every image failed, or no image was found
    return EXIT_FAILED if args.strict and summary.failed else 0
