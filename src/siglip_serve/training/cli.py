"""`siglip-serve train`: the flags and the command (`siglip_serve.cli` adds the subcommand)."""

from __future__ import annotations

import argparse
import dataclasses
import sys
import typing
from pathlib import Path

from siglip_serve.training.options import (
    ALTERNATIVE,
    CHOICES,
    GROUP,
    HELP,
    METAVAR,
    NONE_MEANS,
    ReportOptions,
    TrainOptions,
)

Options = typing.TypeVar("Options")

# The types a flag can be parsed to; a field of another type needs a parser here first.
FLAG_TYPES = (int, float, str, Path, bool)


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per field of TrainOptions (Architecture's in their own group) and of ReportOptions."""
    add_option_arguments(parser, parser, TrainOptions)
    add_option_arguments(parser, parser, ReportOptions)


def add_option_arguments(parser: argparse.ArgumentParser, target: argparse._ActionsContainer, options: type) -> None:
    """A flag on `target` per field of the dataclass `options`; a nested dataclass gets its own group."""
    hints = typing.get_type_hints(options)
    for spec in dataclasses.fields(options):
        hint = hints[spec.name]
        if dataclasses.is_dataclass(hint):  # a nested group of options, e.g. the architecture
            add_option_arguments(parser, parser.add_argument_group(spec.metadata[GROUP]), hint)
        else:
            add_flag(target, spec, flag_type(hint))


def add_flag(target: argparse._ActionsContainer, spec: dataclasses.Field, kind: type) -> None:
    """`--field-name`, typed, with the field's help and its default; a bool also gets `--no-field-name`."""
    flag = "--" + spec.name.replace("_", "-")
    required = spec.default is dataclasses.MISSING
    help_text = f"{spec.metadata[HELP]} {default_note(spec)}".replace("%", "%%")  # argparse %-formats help
    alternative = spec.metadata[ALTERNATIVE]
    if alternative is not None:
        target = target.add_mutually_exclusive_group()
    if kind is bool:
        action = target.add_argument(flag, action=argparse.BooleanOptionalAction, default=spec.default)
        # Set after construction: given help, BooleanOptionalAction (Python < 3.14) appends its own default note.
        action.help = help_text
    else:
        target.add_argument(flag, type=kind, required=required, default=None if required else spec.default,
                            choices=spec.metadata[CHOICES], metavar=spec.metadata[METAVAR], help=help_text)
    if alternative is not None:
        alternative_flag, alternative_help = alternative
        # Spells out the None default: same destination, and refused together with the flag itself.
        target.add_argument(alternative_flag, action="store_const", const=None, dest=spec.name,
                            help=alternative_help)


def flag_type(hint: object) -> type:
    """The type a flag parses to: the annotation, without its `| None`."""
    kinds = [kind for kind in typing.get_args(hint) if kind is not type(None)] or [hint]
    if len(kinds) != 1 or kinds[0] not in FLAG_TYPES:
        raise TypeError(f"no flag type for {hint!r}; expected one of {FLAG_TYPES}, optionally | None")
    return kinds[0]


def default_note(spec: dataclasses.Field) -> str:
    if spec.default is dataclasses.MISSING:
        return "(required)"
    if spec.default is None:
        return f"[default: {spec.metadata[NONE_MEANS]}]"
    return f"[default: {spec.default}]"


def from_args(options: type[Options], args: argparse.Namespace) -> Options:
    """Build `options` (a dataclass whose flags `add_option_arguments` declared) from parsed flags."""
    hints = typing.get_type_hints(options)
    values = {spec.name: from_args(hints[spec.name], args) if dataclasses.is_dataclass(hints[spec.name])
              else getattr(args, spec.name) for spec in dataclasses.fields(options)}
    return options(**values)


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
