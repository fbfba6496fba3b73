"""Command-line flags generated from dataclass fields: each option is declared once, on its field.

A field made by `option(default, help=...)` becomes `--field-name` with that help, type, default and
choices; `from_args` builds the dataclass back from the parsed flags. `siglip-serve train`
(`training/options.py`), `embed` (`jobs/options.py`), `classify` and `features` (`command_options.py`)
declare their options this way; the server's live in pydantic-settings (`config.py`), which also
gives them environment variables.
Standard library only: a command's flags are built without importing torch.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

# The metadata keys `option` writes and `add_option_arguments` reads.
HELP = "help"
CHOICES = "choices"
NONE_MEANS = "none_means"
METAVAR = "metavar"
ALTERNATIVE = "alternative"
GROUP = "group"
FLAG = "flag"
PARSE = "parse"
POSITIONAL = "positional"
REPEAT = "repeat"

Options = typing.TypeVar("Options")

# The types a flag can be parsed to; a field of another type needs a `parse` function.
FLAG_TYPES = (int, float, str, Path, bool)


def option(default: Any = dataclasses.MISSING, *, help: str, choices: tuple[str, ...] | None = None,
           none_means: str | None = None, metavar: str | None = None,
           alternative: tuple[str, str] | None = None, flag: str | None = None,
           parse: Callable[[str], Any] | None = None, positional: bool = False, repeat: bool = False) -> Any:
    """A dataclass field that is also a flag.

    `help` says what it does; `choices` restricts a string; `none_means` says what a None default
    does (shown as the default in --help); `alternative` is (flag, help) of a flag that spells out
    the None default and excludes this one (e.g. --from-scratch against --init); `flag` names the
    flag when it is not `--field-name`; `parse` turns the flag's text into the value (and rejects
    bad text with argparse.ArgumentTypeError); `positional` makes a list field the command's
    positional arguments (one or more); `repeat` makes a list field a flag given once per item
    (`--template A --template B`). No default: required.
    """
    if default is None and none_means is None:
        raise ValueError("an option whose default is None must say what None means")
    if repeat and default not in (None, dataclasses.MISSING):
        raise ValueError("a repeated option's default must be None (argparse appends to a list default)")
    metadata = {HELP: help, CHOICES: choices, NONE_MEANS: none_means, METAVAR: metavar, ALTERNATIVE: alternative,
                FLAG: flag, PARSE: parse, POSITIONAL: positional, REPEAT: repeat}
    return dataclasses.field(default=default, metadata=metadata)


def is_flag(spec: dataclasses.Field) -> bool:
    """Fields made by `option` (or nested groups of them); other fields are set by code, not flags."""
    return HELP in spec.metadata or GROUP in spec.metadata


def add_option_arguments(parser: argparse.ArgumentParser, target: argparse._ActionsContainer, options: type) -> None:
    """A flag on `target` per `option` field of the dataclass `options`; a nested dataclass gets its own group."""
    hints = typing.get_type_hints(options)
    for spec in dataclasses.fields(options):
        if not is_flag(spec):
            continue
        hint = hints[spec.name]
        if dataclasses.is_dataclass(hint):  # a nested group of options, e.g. the architecture
            add_option_arguments(parser, parser.add_argument_group(spec.metadata[GROUP]), hint)
        else:
            add_flag(target, spec, hint)


def add_flag(target: argparse._ActionsContainer, spec: dataclasses.Field, hint: object) -> None:
    """`--field-name`, typed, with the field's help and its default; a bool also gets `--no-field-name`."""
    meta = spec.metadata
    kind = meta[PARSE] or flag_type(item_type(hint) if meta[POSITIONAL] or meta[REPEAT] else hint)
    if meta[POSITIONAL]:
        target.add_argument(spec.name, nargs="+", type=kind, metavar=meta[METAVAR], help=meta[HELP])
        return
    required = spec.default is dataclasses.MISSING
    help_text = f"{meta[HELP]} {default_note(spec)}".replace("%", "%%")  # argparse %-formats help
    flag = meta[FLAG] or "--" + spec.name.replace("_", "-")
    alternative = meta[ALTERNATIVE]
    if alternative is not None:
        target = target.add_mutually_exclusive_group()
    if kind is bool and not meta[REPEAT]:
        action = target.add_argument(flag, action=argparse.BooleanOptionalAction, dest=spec.name,
                                     default=spec.default)
        # Set after construction: given help, BooleanOptionalAction (Python < 3.14) appends its own default note.
        action.help = help_text
    else:  # a repeated flag appends each value to a list (its default is None: `option` checks)
        target.add_argument(flag, action="append" if meta[REPEAT] else "store", type=kind, required=required,
                            default=None if required else spec.default, dest=spec.name, choices=meta[CHOICES],
                            metavar=meta[METAVAR], help=help_text)
    if alternative is not None:
        alternative_flag, alternative_help = alternative
        # Spells out the None default: same destination, and refused together with the flag itself.
        target.add_argument(alternative_flag, action="store_const", const=None, dest=spec.name,
                            help=alternative_help)


def flag_type(hint: object) -> type:
    """The type a flag parses to: the annotation, without its `| None`."""
    kinds = [kind for kind in typing.get_args(hint) if kind is not type(None)] or [hint]
    if len(kinds) != 1 or kinds[0] not in FLAG_TYPES:
        raise TypeError(f"no flag type for {hint!r}; expected one of {FLAG_TYPES}, optionally | None, "
                        "or a `parse` function")
    return kinds[0]


def item_type(hint: object) -> object:
    """`list[X]` (or `list[X] | None`) -> X: what one positional argument or one repeated flag parses to."""
    members = (hint,) if typing.get_origin(hint) is list else typing.get_args(hint)
    lists = [kind for kind in members if typing.get_origin(kind) is list]
    if len(lists) != 1:
        raise TypeError(f"a positional or repeated option must be a list, got {hint!r}")
    return typing.get_args(lists[0])[0]


def default_note(spec: dataclasses.Field) -> str:
    if spec.default is dataclasses.MISSING:
        return "(required)"
    if spec.default is None:
        return f"[default: {spec.metadata[NONE_MEANS]}]"
    return f"[default: {spec.default}]"


def from_args(options: type[Options], args: argparse.Namespace, **others: Any) -> Options:
    """Build `options` (a dataclass whose flags `add_option_arguments` declared) from parsed flags;
    `others` sets the fields that are not flags (those left out keep their defaults)."""
    hints = typing.get_type_hints(options)
    values = {spec.name: from_args(hints[spec.name], args) if dataclasses.is_dataclass(hints[spec.name])
              else getattr(args, spec.name) for spec in dataclasses.fields(options) if is_flag(spec)}
    return options(**values, **others)


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be more than zero, got {text}")
    return value


def non_negative_float(text: str) -> float:
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be zero or more, got {text}")
    return value


def comma_list(text: str) -> list[str]:
    """'cat, dog,,car' -> ['cat', 'dog', 'car']: a comma-separated flag, blanks dropped."""
    return [item.strip() for item in text.split(",") if item.strip()]
