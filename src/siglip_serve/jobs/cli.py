"""`siglip-serve embed`: flags and exit status. Imports nothing heavy until the job runs."""

from __future__ import annotations

import argparse
import signal
import sys

from siglip_serve.jobs.options import EmbedOptions, RayOptions, UrlOptions
from siglip_serve.option_flags import add_option_arguments, from_args

EXIT_FAILED = 1  # --strict with failures, or nothing could be read at all (issue #14)
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report Ctrl-C


def add_embed_arguments(parser: argparse.ArgumentParser) -> None:
    """The job's options as flags (declared on EmbedOptions, UrlOptions and RayOptions), and the command's own."""
    add_option_arguments(parser, parser, EmbedOptions)
    add_option_arguments(parser, parser.add_argument_group("fetching image URLs of a manifest"), UrlOptions)
    parser.add_argument("--strict", action="store_true", help="Exit non-zero when any input failed.")
    ray = parser.add_argument_group("on a Ray cluster (needs the ray extra; see scaling/data_job.py)")
    ray.add_argument("--ray", action="store_true",
                     help="Run on Ray Data: decoding as CPU tasks, the model in a pool of actors; same output.")
    add_option_arguments(parser, ray, RayOptions)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def run_embed_command(args: argparse.Namespace) -> int:
    from siglip_serve.jobs.embed import run_embed
    from siglip_serve.model import quiet_transformers

    options = from_args(EmbedOptions, args, policy=from_args(UrlOptions, args).policy())
    quiet_transformers()
    # `kill`, `docker stop` and Kubernetes send SIGTERM: stop as on Ctrl-C, committing the rows already embedded.
    signal.signal(signal.SIGTERM, _interrupt)
    if args.ray:
        from siglip_serve.scaling.data_job import run_ray_embed

        summary = run_ray_embed(options, from_args(RayOptions, args))
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
