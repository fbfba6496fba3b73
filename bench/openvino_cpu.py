"""OpenVINO against torch on the CPU: throughput, numerics and startup, quiet and under contention (issue #18).

Every runtime is loaded through `siglip_serve.load` (the serving path: conversion, cache, NNCF,
compile settings of models/openvino_backend.py) and run through the backend contract
(`encode_image_batch`, `encode_text_batch`), interleaved round by round so that all see the same
machine. Runtimes: torch fp32 (the reference) and bf16; OpenVINO fp32, bf16, int8 weights (NNCF
`compress_weights`) and full int8 (NNCF `quantize`, the default synthetic calibration set; the
fallback threshold is off here, so the table shows what int8 gives, with whether it passes it);
OpenVINO fp32 with its threads pinned, to show why pinning is off.

Models: the demo model (trained weights; numerics on its held-out shapes, 48 labels) and random
weights at base-224 dimensions (numerics on photo-like JPEGs, 100 labels; indicative only).
Contention: the timing pass again with two busy processes (one spinning Python loop each) beside it.

    python bench/openvino_cpu.py                 # demo + base-224, ~30 min on 2 shared cores
    python bench/openvino_cpu.py --quick         # smoke: demo only, few rounds
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import common
import torch
from common import Report, stage

RUNTIMES: dict[str, dict[str, Any]] = {
    "torch fp32": {"backend": "torch", "dtype": "float32"},
    "torch bf16": {"backend": "torch", "dtype": "bfloat16"},
    "openvino fp32": {"backend": "openvino", "dtype": "float32"},
    "openvino bf16": {"backend": "openvino", "dtype": "bfloat16"},
    "openvino int8-weights": {"backend": "openvino", "quantize": "int8-weights"},
    "openvino int8": {"backend": "openvino", "quantize": "int8"},
    "openvino fp32 pinned": {"backend": "openvino", "dtype": "float32", "pin": True},
    # demo only: full int8 calibrated on images like its own (training stream, not the held-out one)
    "openvino int8 shapes-calibrated": {"backend": "openvino", "quantize": "int8", "calibration": "shapes"},
}
DEMO_ONLY = ("openvino int8 shapes-calibrated",)
REFERENCE = "torch fp32"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="demo,base-224", help="Comma list of demo and base-224.")
    parser.add_argument("--runtimes", default=",".join(RUNTIMES), help="Comma list of the runtimes above.")
    parser.add_argument("--rounds", type=int, default=12, help="Interleaved timing rounds per pass.")
    parser.add_argument("--labels", type=int, default=10, help="Texts per text-tower call (a cold request).")
    parser.add_argument("--busy", type=int, default=2, help="Busy processes in the contention pass (0: none).")
    parser.add_argument("--threads", type=int, default=None, help="torch (and OpenVINO) threads.")
    parser.add_argument("--server-rounds", type=int, default=3, help="Server starts per runtime (0: none).")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out-dir", type=Path, default=common.RESULTS_DIR)
    return parser.parse_args()


# --- inputs ---------------------------------------------------------------------------------------


def demo_inputs(count: int) -> tuple[Path, list[Any], list[str], list[str] | None]:
    from siglip_serve.demo import demo_model_dir
    from siglip_serve.model import DEFAULT_TEMPLATE
    from siglip_serve.training.evaluate import combo_label, held_out
    from siglip_serve.training.shapes import COMBOS

    samples = held_out(count)
    labels = [DEFAULT_TEMPLATE.format(combo_label(c, s)) for c, s in COMBOS]
    truth = [DEFAULT_TEMPLATE.format(combo_label(s.color, s.shape)) for s in samples]
    return demo_model_dir(), [s.image for s in samples], labels, truth


def base_inputs(count: int) -> tuple[Path, list[Any], list[str], None]:
    arch = common.ARCHS["base-224"]
    images = [common.photo_jpeg(640, 480, seed=100 + i) for i in range(count)]
    return common.checkpoint_dir(arch), images, common.make_labels(100), None


# --- loading and timing ---------------------------------------------------------------------------


def load(directory: Path, name: str, cache_dir: Path) -> tuple[Any, float]:
    """Load a runtime twice; the second, timed, load is what a restart costs (OpenVINO: a cache hit)."""
    import siglip_serve
    from siglip_serve.models.runtime_choice import OpenVinoOptions

    spec = RUNTIMES[name]
    calibration = shapes_calibration_dir() if spec.get("calibration") == "shapes" else None
    options = OpenVinoOptions(cache_dir=cache_dir, min_cosine=0.0, pin_threads=spec.get("pin", False),
                              calibration=calibration)
    kwargs = {"device": "cpu", "dtype": spec.get("dtype", "float32"), "backend": spec["backend"],
              "quantize": spec.get("quantize", "none"), "openvino": options}
    with stage(f"load {name} (first)"):
        del_model = siglip_serve.load(str(directory), **kwargs)
    del del_model
    gc.collect()
    started = time.perf_counter()
    model = siglip_serve.load(str(directory), **kwargs)
    return model, time.perf_counter() - started


def shapes_calibration_dir(count: int = 80) -> Path:
    """PNGs from the demo's training stream (seed 7; the held-out stream is seed 1000003)."""
    from siglip_serve.training.shapes import make_sample

    directory = common.CACHE_DIR / "calibration-shapes"
    if len(list(directory.glob("*.png"))) != count:
        directory.mkdir(parents=True, exist_ok=True)
        for i in range(count):
            make_sample(7, i).image.save(directory / f"{i:03d}.png")
    return directory


@contextlib.contextmanager
def busy_processes(count: int) -> Iterator[None]:
    """`count` processes spinning a core each, stopped (by their handles) on exit."""
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)]
    try:
        time.sleep(1.0)
        yield
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


def timing_pass(models: dict[str, Any], image: Any, texts: list[str], rounds: int) -> dict[str, dict[str, list[float]]]:
    """Seconds per image-tower call (batch 1) and text-tower call (`texts`), interleaved across runtimes."""
    prepared = {name: model.prepare_image(image) for name, model in models.items()}
    ids = {name: [t.ids for t in model.tokenize(texts)] for name, model in models.items()}
    times: dict[str, dict[str, list[float]]] = {name: {"image": [], "text": []} for name in models}
    for name, model in models.items():  # warm-up: first calls allocate
        model.encode_image_batch([prepared[name]])
        model.encode_text_batch(ids[name])
    for _ in range(rounds):
        for name, model in models.items():
            for tower, call in (("image", lambda m=model, n=name: m.encode_image_batch([prepared[n]])),
                                ("text", lambda m=model, n=name: m.encode_text_batch(ids[n]))):
                started = time.perf_counter()
                call()
                times[name][tower].append(time.perf_counter() - started)
    return times


def throughput_rows(model_name: str, condition: str, times: dict[str, dict[str, list[float]]],
                    labels: int, load_before: float) -> list[dict[str, Any]]:
    load_after = os.getloadavg()[0]
    rows = []
    for name, towers in times.items():
        image, text = statistics.median(towers["image"]), statistics.median(towers["text"])
        ref_image, ref_text = statistics.median(times[REFERENCE]["image"]), statistics.median(times[REFERENCE]["text"])
        rows.append({"model": model_name, "condition": condition, "runtime": name,
                     "image_ms_p50": image * 1e3, "image_ms_p10": _quantile(towers["image"], 0.1) * 1e3,
                     "image_ms_p90": _quantile(towers["image"], 0.9) * 1e3, "images_per_s": 1 / image,
                     "image_speedup": ref_image / image, "text_ms_p50": text * 1e3, "texts_per_s": labels / text,
                     "text_speedup": ref_text / text, "rounds": len(towers["image"]),
                     "load_1m": f"{load_before:.1f}-{load_after:.1f}"})
    return rows


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# --- numerics -------------------------------------------------------------------------------------


def embeddings(model: Any, images: list[Any], labels: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    return model.embed_images(images), model.embed_texts(labels)


def numerics_row(model_name: str, name: str, model: Any, got: tuple[torch.Tensor, torch.Tensor],
                 ref: tuple[torch.Tensor, torch.Tensor], labels: list[str], truth: list[str] | None,
                 reference_model: Any) -> dict[str, Any]:
    cos = torch.nn.functional.cosine_similarity
    logits, ref_logits = model.logits(*got), reference_model.logits(*ref)
    row = {"model": model_name, "runtime": name,
           "image_cos_min": float(cos(got[0], ref[0]).min()), "text_cos_min": float(cos(got[1], ref[1]).min()),
           "top1_agreement": float((logits.argmax(1) == ref_logits.argmax(1)).float().mean()),
           "prob_max_abs_diff": float((logits.sigmoid() - ref_logits.sigmoid()).abs().max()),
           "logit_max_abs_diff": float((logits - ref_logits).abs().max()),
           "fp32_top1_margin_median": float((lambda top: (top[:, 0] - top[:, 1]).median())(ref_logits.topk(2).values)),
           "images": int(got[0].shape[0]), "labels": len(labels)}
    if truth is not None:
        predicted = [labels[i] for i in logits.argmax(1).tolist()]
        row["accuracy"] = sum(p == t for p, t in zip(predicted, truth, strict=True)) / len(truth)
    quantization = getattr(model.checkpoint.towers, "quantization", {})
    if quantization.get("requested", "none") != "none":
        row["applied"] = ", ".join(f"{t} {quantization[t]['applied']} ({quantization[t]['min_cosine']:.5f})"
                                   for t in ("vision", "text"))
        row["passes_0.995"] = all(quantization[t]["min_cosine"] >= 0.995 for t in ("vision", "text"))
    return row


def bench_model(model_name: str, args: argparse.Namespace, report: Report) -> tuple[list, list, list]:
    count = 96 if model_name == "demo" else (8 if args.quick else 32)
    inputs: Callable[[int], tuple] = demo_inputs if model_name == "demo" else base_inputs
    with stage(f"{model_name} inputs"):
        directory, images, labels, truth = inputs(count)
    cache_dir = common.CACHE_DIR / "openvino"
    models, startup = {}, []
    for name in args.runtimes.split(","):
        if name in DEMO_ONLY and model_name != "demo":
            continue
        models[name], seconds = load(directory, name, cache_dir)
        startup.append({"model": model_name, "runtime": name, "load_s_cached": seconds,
                        "description": getattr(models[name].checkpoint.towers, "description", "torch")})
    rows = []
    texts = labels[: args.labels]
    with stage(f"{model_name} timing, as found"):
        before = os.getloadavg()[0]
        rows += throughput_rows(model_name, "as found", timing_pass(models, images[0], texts, args.rounds),
                                len(texts), before)
    if args.busy:
        with busy_processes(args.busy), stage(f"{model_name} timing, {args.busy} busy processes"):
            before = os.getloadavg()[0]
            rows += throughput_rows(model_name, f"+{args.busy} busy", timing_pass(models, images[0], texts,
                                                                                  args.rounds), len(texts), before)
    numerics = []
    with stage(f"{model_name} numerics"):
        ref = embeddings(models[REFERENCE], images, labels)
        for name, model in models.items():
            if name != REFERENCE:
                numerics.append(numerics_row(model_name, name, model, embeddings(model, images, labels), ref,
                                             labels, truth, models[REFERENCE]))
        if truth is not None:
            numerics.insert(0, numerics_row(model_name, REFERENCE, models[REFERENCE], ref, ref, labels, truth,
                                            models[REFERENCE]))
    if model_name == "base-224" and args.server_rounds:
        with stage("base-224 server startup"):
            servers = server_startup(directory, cache_dir, args.server_rounds)
        report.add("server_startup", servers)
        report.section("Server startup, base-224 (process start to healthy; OpenVINO from its cache)",
                       common.markdown_table(servers, [
                           ("runtime", "runtime", ""), ("startup_s_median", "startup s (median)", ".1f"),
                           ("startups", "each", ""), ("vs_torch", "× torch", ".2f"), ("logged", "startup log", "")]))
    report.note(f"{model_name}: load average after it {[round(x, 2) for x in os.getloadavg()]}")
    return rows, numerics, startup


SERVER_RUNTIMES = {"torch fp32": [], "openvino fp32": ["--backend", "openvino"],
                   "openvino int8-weights": ["--backend", "openvino", "--quantize", "int8-weights"],
                   "openvino int8": ["--backend", "openvino", "--quantize", "int8"]}


def server_startup(directory: Path, cache_dir: Path, rounds: int) -> list[dict[str, Any]]:
    """`siglip-serve serve` from process start to a healthy /health, interleaved; OpenVINO from its cache
    (the entries `load` made: same options, threshold 0)."""
    import loadgen

    extra = ["--openvino-cache-dir", str(cache_dir), "--quantize-min-cosine", "0", "--log-level", "info"]
    seconds: dict[str, list[float]] = {name: [] for name in SERVER_RUNTIMES}
    logged: dict[str, str] = {}
    for _ in range(rounds):
        for name, flags in SERVER_RUNTIMES.items():
            port = loadgen.free_port()
            command = loadgen.siglip_serve_command(directory, port=port, dtype="float32", extra=[*flags, *extra])
            with loadgen.ServerProcess(command, port=port, name=name.replace(" ", "-")) as server:
                server.wait_healthy()
                seconds[name].append(server.startup_s or 0.0)
                logged[name] = next((line.split(": ", 1)[-1] for line in server.log_tail(20000).splitlines()
                                     if "siglip_serve.models:" in line and ("OpenVINO" in line or "torch on" in line)),
                                    "")
    torch_s = statistics.median(seconds["torch fp32"])
    return [{"runtime": name, "startup_s_median": statistics.median(values), "startups": values,
             "vs_torch": statistics.median(values) / torch_s, "logged": logged[name]}
            for name, values in seconds.items()]


THROUGHPUT_COLUMNS = [("model", "model", ""), ("condition", "load", ""), ("runtime", "runtime", ""),
                      ("image_ms_p50", "image ms p50", ".1f"), ("image_ms_p10", "p10", ".1f"),
                      ("image_ms_p90", "p90", ".1f"), ("images_per_s", "img/s", ".2f"),
                      ("image_speedup", "× torch fp32", ".2f"), ("text_ms_p50", "text ms p50 (batch)", ".1f"),
                      ("text_speedup", "text × torch fp32", ".2f"), ("rounds", "rounds", "d"),
                      ("load_1m", "load 1m", "")]
NUMERICS_COLUMNS = [("model", "model", ""), ("runtime", "runtime", ""), ("image_cos_min", "image cos min", ".6f"),
                    ("text_cos_min", "text cos min", ".6f"), ("top1_agreement", "top-1 agree", ".1%"),
                    ("prob_max_abs_diff", "max |Δp|", ".4f"), ("logit_max_abs_diff", "max |Δlogit|", ".3f"),
                    ("fp32_top1_margin_median", "fp32 top-1 margin", ".3f"),
                    ("accuracy", "accuracy", ".1%"), ("applied", "applied (held-out cos)", ""),
                    ("passes_0.995", "passes 0.995", ""), ("images", "images", "d"), ("labels", "labels", "d")]


def main() -> int:
    args = parse_args()
    common.quiet()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        args.models, args.rounds = "demo", 3
    report = Report("openvino_cpu", smoke=args.quick, args=vars(args) | {"out_dir": str(args.out_dir)})
    rows, numerics, startup = [], [], []
    for model_name in args.models.split(","):
        r, n, s = bench_model(model_name, args, report)
        rows, numerics, startup = rows + r, numerics + n, startup + s
        gc.collect()
    report.add("throughput", rows)
    report.add("numerics", numerics)
    report.add("startup", startup)
    report.section("Throughput (batch 1 image tower; text tower on one cold request's labels)",
                   "Medians of interleaved rounds; `× torch fp32` is the ratio of medians in the same pass.\n\n"
                   + common.markdown_table(rows, THROUGHPUT_COLUMNS))
    report.section("Numerics vs torch fp32 (same inputs)", common.markdown_table(numerics, NUMERICS_COLUMNS))
    report.section("Startup (second load: OpenVINO from its cache)", common.markdown_table(startup, [
        ("model", "model", ""), ("runtime", "runtime", ""), ("load_s_cached", "load s", ".2f"),
        ("description", "runtime as logged", "")]))
    report.note("int8 rows are loaded with the fallback threshold off (min_cosine 0): they show what full int8 "
                "gives; `passes 0.995` says whether the server would keep it (else it serves int8 weights).")
    report.note("The default calibration set (synthetic photo-like images, models/calibration.py) is used for int8.")
    report.write(args.out_dir)
    print(common.markdown_table(rows, THROUGHPUT_COLUMNS))
    print(common.markdown_table(numerics, NUMERICS_COLUMNS))
    return 0


if __name__ == "__main__":
    sys.exit(main())
