"""Dense patch features (POST /v1/vision/features, `Model.encode_patches`): features/s and response bytes per image.

Random weights at the real vision-tower dimensions (bench/common.py ARCHS; the text tower is shrunk, it is never
run), through the library's own towers (`SiglipTowers.encode_patch_features`, `NaFlexTowers` for the NaFlex shape),
so the figures are what the server's features batcher gets. Per arch, dtype, batch and layer (-1: the final output;
-2: the penultimate layer, read from transformers' hidden-state capture): images per second, and beside it the
pooled embedding (`encode_images`) in the same run. Then the response: exact bytes per image of each encoding
(base64 and JSON floats, float32 and float16) as the route builds them (`siglip_serve.api.features.response_body`),
and the time to build them.

    python bench/features.py --quick          # smoke: base-224, fp32, batch 1
    python bench/features.py                  # base-224, so400m-384, so400m NaFlex at 256 patches; fp32 and bf16
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import common
import numpy as np
import torch
from common import Arch, Report, stage

from siglip_serve.api.features import response_body
from siglip_serve.features import PatchFeatures, Pooling
from siglip_serve.models.naflex import NaFlexTowers
from siglip_serve.models.towers import SiglipTowers
from siglip_serve.preprocess.naflex import NaFlexPixels

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
# google/siglip2-so400m-patch16-naflex: so400m's tower at patch 16, 256 patches per image (its preprocessor_config).
NAFLEX = "so400m-naflex-256"
NAFLEX_PATCH, NAFLEX_PATCHES, NAFLEX_GRID = 16, 256, (12, 21)  # a 1920x1080 photo: 12 x 21 = 252 patches
TINY_TEXT = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 1, "num_attention_heads": 2,
             "vocab_size": 256, "max_position_embeddings": 64, "projection_size": 64}
ENCODINGS = [("base64", "float32"), ("base64", "float16"), ("float", "float32"), ("float", "float16")]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="Smoke run: base-224, fp32, batch 1, 1 iteration.")
    parser.add_argument("--archs", default=f"base-224,so400m-384,{NAFLEX}",
                        help=f"Comma list of {', '.join(common.ARCHS)} and {NAFLEX}.")
    parser.add_argument("--dtypes", default="fp32,bf16")
    parser.add_argument("--batch-sizes", default="1,8", help="Batch sizes of base-224.")
    parser.add_argument("--large-batch-sizes", default="1,4", help="Batch sizes of the so400m shapes.")
    parser.add_argument("--layers", default="-1,-2")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--min-time-s", type=float, default=2.0)
    parser.add_argument("--max-time-s", type=float, default=60.0)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out-dir", type=Path, default=common.RESULTS_DIR)
    args = parser.parse_args()
    if args.quick:
        args.archs, args.dtypes, args.batch_sizes, args.layers = "base-224", "fp32", "1", "-1,-2"
        args.warmup, args.iters, args.min_time_s = 0, 1, 0.0
    return args


def build_towers(name: str) -> tuple[Any, Any, Arch]:
    """(towers, one prepared image, the arch whose vision dimensions they have)."""
    common.quiet()
    tc = common.tiny_checkpoints()
    if name != NAFLEX:
        arch = common.ARCHS[name]
        config = arch.siglip_config()
        config["text_config"] = {**config["text_config"], **TINY_TEXT}
        model = tc.random_siglip_model(config)
        image = np.random.default_rng(0).standard_normal((3, arch.image_size, arch.image_size)).astype(np.float32)
        return SiglipTowers(model, device=torch.device("cpu"), dtype=torch.float32), image, arch
    arch = common.ARCHS["so400m-384"]
    from transformers import Siglip2Config, Siglip2Model

    config = arch.siglip_config()
    config["text_config"] = {**config["text_config"], **TINY_TEXT}
    del config["vision_config"]["image_size"]
    config["vision_config"].update(patch_size=NAFLEX_PATCH, num_patches=NAFLEX_PATCHES)
    torch.manual_seed(0)
    model = Siglip2Model(Siglip2Config(**config)).eval()
    count = NAFLEX_GRID[0] * NAFLEX_GRID[1]
    patches = np.random.default_rng(0).standard_normal((count, NAFLEX_PATCH**2 * 3)).astype(np.float32)
    towers = NaFlexTowers(model, device=torch.device("cpu"), dtype=torch.float32, max_num_patches=NAFLEX_PATCHES)
    return towers, NaFlexPixels(patches=patches, spatial_shape=NAFLEX_GRID), arch


def timed(fn: Any, args: argparse.Namespace) -> list[float]:
    return common.time_calls(fn, warmup=args.warmup, iters=args.iters, min_time_s=args.min_time_s,
                             max_time_s=args.max_time_s)


def bench_speed(name: str, towers: Any, image: Any, args: argparse.Namespace) -> list[dict[str, Any]]:
    rows = []
    batches = [int(b) for b in (args.batch_sizes if name == "base-224" else args.large_batch_sizes).split(",")]
    for dtype in args.dtypes.split(","):
        towers.module.to(DTYPES[dtype])
        towers.dtype = DTYPES[dtype]
        layout = towers.patch_layout
        for batch in batches:
            prepared = [image] * batch
            cells = [("embedding", None)] + [("features", layout.resolve_layer(int(k))) for k in args.layers.split(",")]
            for what, layer in cells:
                label = f"{name} {dtype} b{batch} {what}" + ("" if layer is None else f" layer {layer}")
                with stage(label):
                    if layer is None:
                        times = timed(lambda p=prepared: towers.encode_prepared(p), args)
                    else:
                        times = timed(lambda p=prepared, k=layer: towers.encode_patch_features(p, k), args)
                stats = common.summarize(times)
                rows.append({"arch": name, "dtype": dtype, "batch": batch, "output": what,
                             "layer": "-" if layer is None else f"{layer} of {layout.num_layers}",
                             "images_per_s": batch / stats["p50"], "ms_per_image": 1000 * stats["p50"] / batch,
                             "calls": stats["count"], "seconds": stats})
    towers.module.float()
    towers.dtype = torch.float32
    return rows


def bench_bytes(name: str, towers: Any, image: Any) -> list[dict[str, Any]]:
    """Exact bytes per image of the route's JSON, per encoding: the body of 8 images minus that of 0, over 8."""
    layout = towers.patch_layout
    result = towers.encode_patch_features([image], layout.num_layers)[0]
    results = [PatchFeatures(result.features, result.grid, result.pooled)] * 8
    head = {"object": "list", "model": name, "layer": layout.num_layers, "num_layers": layout.num_layers,
            "pooling": "none", "dtype": "float32", "encoding_format": "base64"}
    usage = {"prompt_tokens": 0, "total_tokens": 0, "images": 8}
    rows = []
    for encoding_format, dtype in ENCODINGS:
        def build(n: int, fmt: str = encoding_format, dt: str = dtype) -> bytes:
            return response_body(head, results[:n], pooling=Pooling.NONE, dtype=dt, encoding_format=fmt, usage=usage)

        started = time.perf_counter()
        body = build(8)
        seconds = time.perf_counter() - started
        per_image = (len(body) - len(build(0))) / 8
        floats = result.grid[0] * result.grid[1] * layout.hidden_size
        rows.append({"arch": name, "grid": f"{result.grid[0]}x{result.grid[1]}", "hidden": layout.hidden_size,
                     "floats_per_image": floats, "encoding_format": encoding_format, "dtype": dtype,
                     "bytes_per_image": per_image, "bytes_per_float": per_image / floats,
                     "build_ms_per_image": 1000 * seconds / 8})
    return rows


SPEED_COLUMNS = [("arch", "arch", ""), ("dtype", "dtype", ""), ("batch", "batch", "d"), ("output", "output", ""),
                 ("layer", "layer", ""), ("images_per_s", "images/s", ".2f"), ("ms_per_image", "ms/image", ".0f"),
                 ("calls", "timed calls", "d")]
BYTES_COLUMNS = [("arch", "arch", ""), ("grid", "grid", ""), ("hidden", "d", "d"),
                 ("floats_per_image", "floats/image", ",d"), ("encoding_format", "encoding", ""),
                 ("dtype", "dtype", ""), ("bytes_per_image", "bytes/image", ",.0f"),
                 ("bytes_per_float", "bytes/float", ".2f"), ("build_ms_per_image", "build ms/image", ".1f")]


def main() -> int:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    report = Report("features", smoke=args.quick, args=vars(args) | {"out_dir": str(args.out_dir)})
    speed, sizes = [], []
    for name in args.archs.split(","):
        with stage(f"build random {name}"):
            towers, image, _ = build_towers(name)
        sizes += bench_bytes(name, towers, image)
        speed += bench_speed(name, towers, image, args)
        del towers
    report.add("speed", speed)
    report.add("response_bytes", sizes)
    report.section("Features per second (CPU, one forward per batch, as the features batcher runs it)",
                   common.markdown_table(speed, SPEED_COLUMNS))
    report.section("Response bytes per image (pooling none; exact, from the route's own body builder)",
                   common.markdown_table(sizes, BYTES_COLUMNS))
    report.note("Random weights at the real vision dimensions; speed is real, values are not. 'embedding' is "
                "encode_images (the pooled vector) in the same run, the cost without returning tokens.")
    report.note(f"{NAFLEX}: google/siglip2-so400m-patch16-naflex's tower (patch 16, 256-patch budget), one "
                f"{NAFLEX_GRID[0]}x{NAFLEX_GRID[1]} grid (a 16:9 photo), run padded to 256 as the server does.")
    report.note("The machine is shared with other jobs: see the load averages at start and end.")
    report.write(args.out_dir)
    print(common.markdown_table(speed, SPEED_COLUMNS))
    print(common.markdown_table(sizes, BYTES_COLUMNS))
    return 0


if __name__ == "__main__":
    sys.exit(main())
