"""What `siglip-serve classify` and `features` can be asked to do, and the model choice every command shares.

Each field is declared once, here, with its default and its help (`option`); the flags are generated from
these fields (`option_flags.py`), as train's (`training/options.py`) and embed's (`jobs/options.py`) are.
`--model`, `--device` and `--dtype` are declared once for classify, features, embed and train; device and
dtype mirror the server's settings of the same names (`config.py`), help and default included.
Free of torch, so that `classify --help` does not load it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from siglip_serve.config import Settings, default
from siglip_serve.demo import DEMO_MODEL_NAME
from siglip_serve.option_flags import comma_list, option, positive_int
from siglip_serve.templates import DEFAULT_TEMPLATE


def setting_help(name: str, unit: str = "") -> str:
    """The help of the server setting `name`, which a flag mirrors, saying so."""
    return f"{Settings.model_fields[name].description.rstrip('.')}{unit}; the server's {name} setting."


def model_option() -> Any:
    return option(DEMO_MODEL_NAME, help="Local checkpoint directory or hub id (the default is the demo model "
                                        "in the package).")


def setting_option(name: str) -> Any:
    """A flag that means what the server setting `name` means: its description and its default."""
    return option(default(name), help=Settings.model_fields[name].description)


@dataclass(frozen=True)
class ClassifyOptions:
    images: list[str] = option(positional=True, metavar="IMAGE", help="Image file paths.")
    # Parsed to a list, blanks dropped; an empty list is the library's error (as the API's), not argparse's.
    labels: list[str] = option(parse=comma_list, metavar="LABELS", help='Comma-separated labels, e.g. "cat,dog,car".')
    model: str = model_option()
    template: list[str] | None = option(None, repeat=True, none_means=f'"{DEFAULT_TEMPLATE}"',
                                        help='Hypothesis template with "{}" (repeat to ensemble).')
    softmax: bool = option(False, help="Softmax over labels instead of SigLIP's sigmoid.")
    # Not `positive_int`: 0 is refused by the library's check, in the API's words (scoring.py).
    top_k: int | None = option(None, none_means="every label", help="Show only the best K labels.")
    device: str = setting_option("device")
    dtype: str = setting_option("dtype")
    json: bool = option(False, help="Print one JSON array instead of tables.")


@dataclass(frozen=True)
class FeaturesOptions:
    images: list[str] = option(positional=True, metavar="IMAGE",
                               help="Image files, or folders (walked recursively for image files, in sorted order).")
    out: str = option(help=(
        "Output .npz or .safetensors: features [sum of h*w, d], grids [N, 2], offsets [N+1] (image i is "
        "features[offsets[i]:offsets[i+1]], row-major over grids[i]), pooled [N, d] with --pooled, and the "
        "paths."))
    layer: int = option(-1, help=(
        "Vision layer as transformers numbers hidden_states: 0 = patch embeddings, -1 = the final output after "
        "the last LayerNorm, -2 = the penultimate layer (LLaVA-style)."))
    pooled: bool = option(False, help="Also store each image's pooled embedding (MAP head).")
    float16: bool = option(False, help="Store float16 (float32 rounded; half the bytes).")
    model: str = model_option()
    batch_size: int | None = option(None, parse=positive_int, none_means="the server's max_batch_size default",
                                    help="Images per forward.")
    device: str = setting_option("device")
    dtype: str = setting_option("dtype")
