"""The `siglip-serve` command: serve, classify, embed, models, train."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import typing
from collections.abc import Sequence

from pydantic.fields import FieldInfo

from siglip_serve.config import ENV_PREFIX, Settings
from siglip_serve.demo import DEMO_MODEL_NAME
from siglip_serve.errors import SiglipServeError
from siglip_serve.jobs.cli import add_embed_arguments, run_embed_command
from siglip_serve.training.cli import add_train_arguments, run_train


def add_settings_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per `Settings` field, with the field's help, type and env var (declared once)."""
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
    given = {name: getattr(args, name) for name in Settings.model_fields if getattr(args, name, None) is not None}
    return Settings(**given)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="siglip-serve", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="Serve models over an OpenAI-compatible HTTP API.")
    add_settings_arguments(serve)

    classify = commands.add_parser("classify", help="Zero-shot classify images from the command line.")
    classify.add_argument("images", nargs="+", metavar="IMAGE", help="Image file paths.")
    classify.add_argument("--labels", required=True, help='Comma-separated labels, e.g. "cat,dog,car".')
    classify.add_argument("--model", default=DEMO_MODEL_NAME,
                          help=f"Local checkpoint directory or hub id (default: {DEMO_MODEL_NAME}, the demo model).")
    classify.add_argument("--template", action="append", default=None,
                          help='Hypothesis template with "{}" (repeat to ensemble). '
                               'Default: "This is a photo of {}."')
    classify.add_argument("--softmax", action="store_true", help="Softmax over labels instead of sigmoid.")
    classify.add_argument("--top-k", type=int, default=None, help="Show only the best K labels.")
    classify.add_argument("--device", default="auto")
    classify.add_argument("--dtype", default="auto")
    classify.add_argument("--json", action="store_true", help="Print one JSON array instead of tables.")

    embed = commands.add_parser(
        "embed", help="Embed a folder, glob or manifest of images into a Lance (LanceDB) or Parquet dataset.")
    add_embed_arguments(embed)

    models = commands.add_parser("models", help="List known checkpoints.")
    models.add_argument("--json", action="store_true")

    train = commands.add_parser(
        "train", help="Train a SigLIP with the sigmoid loss (shapes dataset) or fine-tune one on captioned images.")
    add_train_arguments(train)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    try:
        if args.command == "serve":
            from siglip_serve.server import serve

            return serve(settings_from_args(args))
        if args.command == "classify":
            return run_classify(args)
        if args.command == "embed":
            return run_embed_command(args)
        if args.command == "train":
            return run_train(args, command="siglip-serve " + shlex.join(argv))
        return run_models(args)
    except SiglipServeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def run_classify(args: argparse.Namespace) -> int:
    import siglip_serve
    from siglip_serve.model import check_classify_options, quiet_transformers

    labels = [label.strip() for label in args.labels.split(",") if label.strip()]
    normalization = check_classify_options("softmax" if args.softmax else "sigmoid", args.top_k)
    quiet_transformers()
    model = siglip_serve.load(args.model, device=args.device, dtype=args.dtype)
    label_embeds = model.embed_labels(labels, args.template)
    results, failed = [], 0
    for path in args.images:  # one bad image fails only its own line
        try:
            image_embeds = model.encode_prepared_images([model.prepare_image(path)])
            ranked = model.classify_embeddings(
                image_embeds, label_embeds, labels,
                normalization=normalization, top_k=args.top_k,
            )[0]
            results.append({"image": path, "predictions": [{"label": lb, "score": s} for lb, s in ranked]})
        except SiglipServeError as exc:
            failed += 1
            results.append({"image": path, "error": exc.message})
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        print_tables(results)
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


def run_models(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from siglip_serve.models.registry import known_checkpoints

    rows = [asdict(c) for c in known_checkpoints()]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    header = ("checkpoint", "family", "format", "input", "embed", "params", "IN-1k 0-shot")
    table = [header] + [(
        r["id"] + (" *" if r["seed"] else ""),
        r["family"],
        r["format"],
        f"{r['image_size']} {r['resample']}" if r["image_size"] else f"<={r['max_num_patches']} patches",
        str(r["embed_dim"]),
        f"{r['params_m']:.1f}M" if r["params_m"] else "-",
        f"{r['imagenet_zero_shot']:.1f}%" if r["imagenet_zero_shot"] else "-",
    ) for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    print("\n* seed checkpoint. Accuracy sources: `siglip-serve models --json`.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
