"""The `siglip-serve` command: serve, classify, embed, features, models, train, keys.

Imports are per command: `siglip-serve classify` must start fast (2.5 s with the demo model on a quiet
2-core machine, bench/cli_latency.py), so this module imports only the standard library and the light
`siglip_serve.errors`; each command's arguments and code load when that command runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import sys
import typing
from collections.abc import Callable, Sequence

from siglip_serve.errors import SiglipServeError

if typing.TYPE_CHECKING:
    from pydantic.fields import FieldInfo

    from siglip_serve.config import Settings


def add_settings_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per `Settings` field, with the field's help, type and env var (declared once)."""
    from siglip_serve.config import ENV_PREFIX, Settings

    for name, field in Settings.model_fields.items():
        flag = "--" + name.replace("_", "-")
        env = f"{ENV_PREFIX}{name.upper()}"
        default = field.get_default(call_default_factory=True)
        help_text = f"{field.description} [env {env}; default {default!r}]"
        if _is_list(field):
            parser.add_argument(flag, action="append", dest=name, default=None, help=help_text)
        elif field.annotation is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, dest=name, default=None,
                                help=help_text)
        else:
            parser.add_argument(flag, dest=name, default=None, help=help_text)


def _is_list(field: FieldInfo) -> bool:
    annotation = field.annotation
    return typing.get_origin(annotation) is list


def settings_from_args(args: argparse.Namespace) -> Settings:
    """Only flags given on the command line override the environment and the defaults."""
    from siglip_serve.config import Settings

    given = {name: getattr(args, name) for name in Settings.model_fields if getattr(args, name, None) is not None}
    return Settings(**given)


def add_classify_arguments(parser: argparse.ArgumentParser) -> None:
    from siglip_serve.command_options import ClassifyOptions
    from siglip_serve.option_flags import add_option_arguments

    add_option_arguments(parser, parser, ClassifyOptions)


def _add_models_arguments(parser: argparse.ArgumentParser) -> None:
    from siglip_serve.models_command import add_models_arguments

    add_models_arguments(parser)


def add_features_arguments(parser: argparse.ArgumentParser) -> None:
    from siglip_serve.command_options import FeaturesOptions
    from siglip_serve.option_flags import add_option_arguments

    add_option_arguments(parser, parser, FeaturesOptions)


def _add_embed_arguments(parser: argparse.ArgumentParser) -> None:
    from siglip_serve.jobs.cli import add_embed_arguments

    add_embed_arguments(parser)


def _add_train_arguments(parser: argparse.ArgumentParser) -> None:
    from siglip_serve.training.cli import add_train_arguments

    add_train_arguments(parser)


def _add_keys_arguments(parser: argparse.ArgumentParser) -> None:
    from siglip_serve.accounts.cli import add_keys_arguments

    add_keys_arguments(parser)


# name -> (help, how its arguments are added). The adders import their command's module, so a parser for
# one command imports nothing the others need.
COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None]]] = {
    "serve": ("Serve models over an OpenAI-compatible HTTP API.", add_settings_arguments),
    "classify": ("Zero-shot classify images from the command line.", add_classify_arguments),
    "embed": ("Embed a folder, glob or manifest of images into a Lance (LanceDB) or Parquet dataset.",
              _add_embed_arguments),
    "features": ("Dump the vision tower's patch tokens of one layer for images to .npz or .safetensors.",
                 add_features_arguments),
    "models": ("List known checkpoints.", _add_models_arguments),
    "train": ("Train a SigLIP with the sigmoid loss (shapes dataset) or fine-tune one on captioned images.",
              _add_train_arguments),
    "keys": ("Create, list and revoke API keys; show usage and cost.", _add_keys_arguments),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The whole parser; with `command`, only that subcommand gets its arguments (and imports)."""
    parser = argparse.ArgumentParser(prog="siglip-serve", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    for name, (help_text, add_arguments) in COMMANDS.items():
        subparser = commands.add_parser(name, help=help_text)
        if command in (None, name):
            add_arguments(subparser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # The top-level parser has no options of its own but -h, so a command, when given, comes first.
    command = argv[0] if argv and argv[0] in COMMANDS else None
    args = build_parser(command).parse_args(argv)
    try:
        if args.command == "serve":
            from siglip_serve.server import serve

            return serve(settings_from_args(args))
        if args.command == "classify":
            return run_classify(args)
        if args.command == "embed":
            from siglip_serve.jobs.cli import run_embed_command

            return run_embed_command(args)
        if args.command == "features":
            return run_features(args)
        if args.command == "train":
            from siglip_serve.training.cli import run_train

            return run_train(args, command="siglip-serve " + shlex.join(argv))
        if args.command == "keys":
            from siglip_serve.accounts.cli import run_keys

            return run_keys(args)
        from siglip_serve.models_command import run_models

        return run_models(args)
    except SiglipServeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def run_classify(args: argparse.Namespace) -> int:
    from siglip_serve.command_options import ClassifyOptions
    from siglip_serve.model import load
    from siglip_serve.option_flags import from_args
    from siglip_serve.scoring import check_classify_options

    options = from_args(ClassifyOptions, args)
    normalization = check_classify_options("softmax" if options.softmax else "sigmoid", options.top_k)
    # A terminal sees a hub download's progress; pipes, logs and the library see nothing.
    model = load(options.model, device=options.device, dtype=options.dtype, progress=sys.stderr.isatty())
    label_embeds = model.embed_labels(options.labels, options.template)
    results, failed = [], 0
    for path in options.images:  # one bad image fails only its own line
        try:
            image_embeds = model.encode_prepared_images([model.prepare_image(path)])
            ranked = model.classify_embeddings(
                image_embeds, label_embeds, options.labels,
                normalization=normalization, top_k=options.top_k,
            )[0]
            results.append({"image": path, "predictions": [{"label": lb, "score": s} for lb, s in ranked]})
        except SiglipServeError as exc:
            failed += 1
            results.append({"image": path, "error": exc.message})
    if options.json:
        print(json.dumps(results, indent=2))
    else:
        print_tables(results)
    return 1 if failed else 0


def image_paths(arguments: Sequence[str]) -> list[str]:
    """Files as given; folders walked recursively for image files (by suffix), hidden ones skipped."""
    from pathlib import Path

    from siglip_serve.jobs.sources import IMAGE_SUFFIXES

    paths = []
    for argument in arguments:
        path = Path(argument)
        if path.is_dir():
            paths += sorted(str(p) for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                            and not any(part.startswith(".") for part in p.relative_to(path).parts))
        else:
            paths.append(argument)
    return paths


def run_features(args: argparse.Namespace) -> int:
    """Every image's tokens of one layer into one file; an image that fails is reported and left out (exit 1)."""
    from siglip_serve.command_options import FeaturesOptions
    from siglip_serve.features import FILE_SUFFIXES, save_features
    from siglip_serve.option_flags import from_args

    options = from_args(FeaturesOptions, args)
    if not options.out.endswith(FILE_SUFFIXES):
        raise SiglipServeError(f"--out must end with {' or '.join(FILE_SUFFIXES)}, got {options.out!r}")
    from siglip_serve.model import load

    model = load(options.model, device=options.device, dtype=options.dtype, progress=sys.stderr.isatty())
    layer = model.patch_layout.resolve_layer(options.layer, param="--layer")  # before decoding anything
    batch_size = options.batch_size or model.batch_size
    paths: list[str] = []
    results: list = []
    pending: list = []  # (path, prepared image) waiting for a forward

    def flush() -> None:
        paths.extend(path for path, _ in pending)
        results.extend(model.encode_patch_batch([prepared for _, prepared in pending], layer=layer))
        pending.clear()

    failed = 0
    for path in image_paths(options.images):
        try:
            pending.append((path, model.prepare_image(path)))
        except SiglipServeError as exc:
            failed += 1
            print(f"error: {path}: {exc.message}", file=sys.stderr)
        if len(pending) == batch_size:
            flush()
    if pending:
        flush()
    if not results:
        print("error: no image could be read; nothing written", file=sys.stderr)
        return 1
    if not options.pooled:
        results = [dataclasses.replace(r, pooled=None) for r in results]
    save_features(options.out, paths, results, layer=layer, num_layers=model.patch_layout.num_layers,
                  model=options.model, float16=options.float16)
    tokens = sum(r.grid[0] * r.grid[1] for r in results)
    print(f"wrote {len(results)} images ({tokens} tokens x {model.patch_layout.hidden_size}, layer {layer} of "
          f"{model.patch_layout.num_layers}) to {options.out}", file=sys.stderr)
    return 1 if failed else 0


def print_tables(results: list[dict]) -> None:
    for result in results:
        print(result["image"])
        if "error" in result:
            print(f"  error: {result['error']}")
            continue
        width = max(len(p["label"]) for p in result["predictions"])
        for prediction in result["predictions"]:
            print(f"  {prediction['label']:<{width}}  {prediction['score']:.4f}")


if __name__ == "__main__":
    sys.exit(main())
