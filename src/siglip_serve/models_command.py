"""`siglip-serve models`: the known checkpoints as a table with its legend, or as JSON.

Standard library only (no torch, no pydantic): listing checkpoints should start as fast as `--help`.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass

from siglip_serve.demo import DEMO_MODEL_NAME
from siglip_serve.option_flags import add_option_arguments, option


@dataclass(frozen=True)
class ModelsOptions:
    json: bool = option(False, help="Every known fact of every checkpoint, as JSON.")


def add_models_arguments(parser: argparse.ArgumentParser) -> None:
    add_option_arguments(parser, parser, ModelsOptions)


MODELS_LEGEND = (
    "*  seed: one of the five checkpoints this server is built, tested and benchmarked around; every other "
    "row loads the same way.",
    "(default): the model used without --model: ships inside the package, works offline; not a real SigLIP "
    "(trained here on synthetic colored shapes).",
    "format: the files' layout (hf: transformers' config.json + model.safetensors; open_clip; hf-naflex: "
    "SigLIP 2 NaFlex).",
    "input: the square side in pixels and the resize filter; NaFlex checkpoints: the patch budget, aspect "
    "ratio kept.",
    "embed: embedding size. params: parameters of both towers, in millions. IN-1k 0-shot: published "
    "ImageNet-1k zero-shot top-1 (sources: --json).",
    "-  no figure: none published that we could source, so none is shown.",
)


def run_models(args: argparse.Namespace) -> int:
    from siglip_serve.models.registry import known_checkpoints

    rows = [asdict(c) for c in known_checkpoints()]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    header = ("checkpoint", "family", "format", "input", "embed", "params", "IN-1k 0-shot")
    table = [header] + [(
        r["id"] + (" *" if r["seed"] else "") + (" (default)" if r["id"] == DEMO_MODEL_NAME else ""),
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
    print()
    print("\n".join(MODELS_LEGEND))
    return 0
