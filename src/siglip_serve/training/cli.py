"""`siglip-serve train`: the flags and the command (`siglip_serve.cli` adds the subcommand)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from siglip_serve.option_flags import add_option_arguments, from_args
from siglip_serve.training.options import ReportOptions, TrainOptions


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per field of TrainOptions (Architecture's in their own group) and of ReportOptions."""
    add_option_arguments(parser, parser, TrainOptions)
    add_option_arguments(parser, parser, ReportOptions)


def options_from_args(args: argparse.Namespace) -> TrainOptions:
    return from_args(TrainOptions, args)


def run_train(args: argparse.Namespace, *, command: str | None = None) -> int:
    """Train as the flags say; `command` (the command line) is recorded in training.json."""
    from siglip_serve.model import quiet_transformers
    from siglip_serve.training.train import emulated_bf16_warning, train

    quiet_transformers()
    options = options_from_args(args)
    report = from_args(ReportOptions, args)
    warning = emulated_bf16_warning(options)
    if warning:
        print(warning, file=sys.stderr)
    result = train(options, command=command)
    state = f"interrupted after {result.steps_done} steps" if result.interrupted else f"{result.steps_done} steps"
    tail = result.losses[-50:]
    loss = f", loss {sum(tail) / len(tail):.4f}" if tail else ""
    print(f"{state} in {result.seconds:.0f} s ({result.total_seconds:.0f} s in all){loss}; saved to {result.out}")
    if result.interrupted:
        return 130
    if options.data is None and report.eval_images > 0:
        report_shapes_accuracy(result.out, report.eval_images)
    return 0


def report_shapes_accuracy(directory: Path, count: int) -> None:
    import siglip_serve
    from siglip_serve.training.evaluate import held_out, zero_shot_accuracy

    accuracy = zero_shot_accuracy(siglip_serve.load(str(directory), device="cpu"), held_out(count))
    print(f"held-out zero-shot top-1 on {accuracy.images} images: {accuracy.combo:.1%} (48 color+shape), "
          f"{accuracy.color:.1%} (8 colors), {accuracy.shape:.1%} (6 shapes)")
