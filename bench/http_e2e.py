"""End to end over HTTP, against the baseline, in the same run on the same checkpoint and inputs.

1. `siglip-serve serve` as a subprocess on a loopback port: /v1/classify (10 and 1,000 labels, warm
   and cold label cache) and /v1/embeddings (images), realistic JPEGs of 640x480 and 1600x1200
   (quality 90, made here), closed-loop load at several concurrency levels.
2. The baseline (bench/baseline_app.py): transformers' zero-shot pipeline behind a plain FastAPI
   endpoint, one request at a time; the same cells (it has no label cache: warm = cold).
3. In process: the pipeline called directly, and our library, per call; plus score agreement
   between the pipeline and ours on the same images and labels.

Cold cache = label strings unique to each request. Warm = the same labels every request, after one
untimed request. On 2 CPU cores a cold 1,000-label request is about a minute of text tower, so, for
time alone, that cell runs at concurrency 1 with 2 requests; the baseline's 1,000-label cells likewise.

    python bench/http_e2e.py --quick        # smoke: ~5 min on 2 busy cores
    python bench/http_e2e.py                # full: ~25-35 min on this 2-core CPU (base-224, fp32)

Several server configurations in one run (issue #18's targets: each option against the same baseline,
measured in the same run; `--cells targets` keeps the cells those targets name):

    python bench/http_e2e.py --cells targets --no-inprocess \
        --variant "torch-fp32=--backend torch" --variant "openvino-fp32=--backend openvino" \
        --variant "int8-weights=--backend openvino --quantize int8-weights" \
        --variant "int8=--backend openvino --quantize int8"
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import common
import loadgen
from common import Report, stage

TEMPLATE = "This is a photo of {}."
SIZES = {"640x480": (640, 480), "1600x1200": (1600, 1200)}


@dataclass(frozen=True)
class Scenario:
    endpoint: str  # "classify" or "embeddings" (images)
    image: str  # key of SIZES
    labels: int  # 0 for embeddings
    cache: str  # "warm", "cold" or "-" (embeddings)
    concurrencies: tuple[int, ...]
    max_requests: int | None = None  # overrides the per-cell request budget

    @property
    def key(self) -> tuple[str, str, int]:
        return self.endpoint, self.image, self.labels


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="Smoke run: few requests, concurrency 1 and 4.")
    parser.add_argument("--arch", default="base-224", choices=list(common.ARCHS))
    parser.add_argument("--checkpoint", type=Path, default=None, help="This checkpoint dir instead of a random one.")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="auto", help="Our server's --dtype (the baseline runs fp32).")
    parser.add_argument("--concurrency", default="1,4,16,64")
    parser.add_argument("--many-labels", type=int, default=1000)
    parser.add_argument("--requests-per-worker", type=int, default=4, help="Cell budget: concurrency x this ...")
    parser.add_argument("--min-requests", type=int, default=8, help="... at least this ...")
    parser.add_argument("--max-requests", type=int, default=128, help="... at most this.")
    parser.add_argument("--cell-duration-s", type=float, default=60.0, help="Stop sending after this per cell.")
    parser.add_argument("--images-per-size", type=int, default=8, help="Distinct JPEGs per size, cycled.")
    parser.add_argument("--torch-threads", type=int, default=None, help="Both servers' torch intra-op threads.")
    parser.add_argument("--decode-workers", type=int, default=None, help="Our server's --decode-workers.")
    parser.add_argument("--server-arg", action="append", default=[], help="Extra `siglip-serve serve` argument.")
    parser.add_argument("--variant", action="append", default=[], metavar="NAME=ARGS",
                        help="A server configuration to measure (repeat): NAME=extra `serve` arguments. "
                             "The baseline runs once, between the first variant and the rest.")
    parser.add_argument("--cells", choices=("all", "targets"), default="all",
                        help="targets: classify 640x480 with 10 labels (warm c=1,4; cold c=1) and embeddings c=4.")
    parser.add_argument("--no-baseline", action="store_true")
    parser.add_argument("--no-inprocess", action="store_true")
    parser.add_argument("--inprocess-calls", type=int, default=8, help="Per in-process cell (1,000 labels: 1).")
    parser.add_argument("--out-dir", type=Path, default=common.RESULTS_DIR)
    args = parser.parse_args(argv)
    if args.quick:
        args.concurrency = "1,4"
        args.many_labels = 40
        args.requests_per_worker, args.min_requests, args.max_requests = 1, 2, 4
        args.cell_duration_s = 30.0
        args.images_per_size = 2
        args.inprocess_calls = 2
    return args


def scenarios(args: argparse.Namespace) -> list[Scenario]:
    levels = tuple(int(c) for c in args.concurrency.split(","))
    many = args.many_labels
    if args.cells == "targets":
        return [Scenario("classify", "640x480", 10, "warm", (1, 4)), Scenario("classify", "640x480", 10, "cold", (1,)),
                Scenario("embeddings", "640x480", 0, "-", (4,))]
    if args.quick:
        return [Scenario("classify", "640x480", 10, "warm", levels), Scenario("classify", "640x480", 10, "cold", (1,)),
                Scenario("classify", "640x480", many, "warm", (1,)),
                Scenario("classify", "640x480", many, "cold", (1,), max_requests=1),
                Scenario("embeddings", "640x480", 0, "-", levels), Scenario("embeddings", "1600x1200", 0, "-", (1,))]
    return [
        Scenario("classify", "640x480", 10, "warm", levels), Scenario("classify", "1600x1200", 10, "warm", levels),
        Scenario("classify", "640x480", 10, "cold", levels),
        Scenario("classify", "640x480", many, "warm", levels),
        Scenario("classify", "640x480", many, "cold", (1,), max_requests=2),
        Scenario("embeddings", "640x480", 0, "-", levels), Scenario("embeddings", "1600x1200", 0, "-", levels),
    ]


def baseline_scenarios(ours: list[Scenario]) -> list[Scenario]:
    """One baseline cell per (endpoint, image, labels): it has no cache. Many labels: concurrency 1 only."""
    seen: dict[tuple[str, str, int], Scenario] = {}
    for s in ours:
        if s.key not in seen:
            many = s.labels > 100
            seen[s.key] = Scenario(s.endpoint, s.image, s.labels, "-", (1,) if many else s.concurrencies,
                                   max_requests=2 if many and s.max_requests is None else s.max_requests)
    return list(seen.values())


def load_images(args: argparse.Namespace) -> dict[str, list[bytes]]:
    return {key: [common.photo_jpeg(w, h, seed=i) for i in range(args.images_per_size)]
            for key, (w, h) in SIZES.items()}


def budget(args: argparse.Namespace, scenario: Scenario, concurrency: int) -> int:
    if scenario.max_requests is not None:
        return scenario.max_requests
    return max(args.min_requests, min(args.max_requests, concurrency * args.requests_per_worker))


# --- bodies -------------------------------------------------------------------------------------


def body_factory(server: str, scenario: Scenario, images: list[bytes], *, salt: str) -> loadgen.BodyFactory:
    """Request index -> JSON body; images cycle; cold labels are unique per request."""
    encoded = [loadgen.b64(image) for image in images]
    warm_labels = common.make_labels(scenario.labels) if scenario.labels else []

    def labels_for(index: int) -> list[str]:
        return common.make_labels(scenario.labels, salt=f"{salt}r{index}") if scenario.cache == "cold" else warm_labels

    def make(index: int) -> bytes:
        image = encoded[index % len(encoded)]
        if server == "baseline":
            if scenario.endpoint == "embeddings":
                return loadgen.json_body({"image": image})
            return loadgen.json_body({"image": image, "labels": labels_for(index), "hypothesis_template": TEMPLATE})
        if scenario.endpoint == "embeddings":
            return loadgen.json_body({"model": "bench", "input": [image], "modality": "image",
                                      "encoding_format": "float"})
        return loadgen.json_body({"model": "bench", "input": [image], "labels": labels_for(index),
                                  "hypothesis_template": TEMPLATE})

    return make


def path_of(server: str, endpoint: str) -> str:
    if server == "baseline":
        return "/embed" if endpoint == "embeddings" else "/classify"
    return "/v1/embeddings" if endpoint == "embeddings" else "/v1/classify"


# --- measuring one server -----------------------------------------------------------------------


def measure_server(server: str, proc: loadgen.ServerProcess, cells: list[Scenario], images: dict[str, list[bytes]],
                   args: argparse.Namespace, *, tag: str = "") -> list[dict[str, Any]]:
    """Warm the server up, then run every (scenario, concurrency) cell; one row per cell."""
    rows = []
    warmup = [Scenario("classify", "640x480", 10, "warm", (1,)), Scenario("embeddings", "640x480", 0, "-", (1,))]
    with stage(f"{server}{tag} warm-up"):
        for s in warmup:
            make = body_factory(server, s, images[s.image], salt="warmup")
            for i in range(2):
                loadgen.post(proc.url + path_of(server, s.endpoint), make(i))
    counter = itertools.count()
    for scenario in cells:
        url = proc.url + path_of(server, scenario.endpoint)
        for concurrency in scenario.concurrencies:
            salt = f"{tag}c{next(counter)}t{time.time_ns()}"
            make = body_factory(server, scenario, images[scenario.image], salt=salt)
            if scenario.cache == "warm":
                loadgen.post(url, make(0))  # untimed: fills the label cache
            before = loadgen.scrape(proc.url) if server == "siglip-serve" else {}
            label = f"{server}{tag} {scenario.endpoint} {scenario.image} labels={scenario.labels} " \
                    f"cache={scenario.cache} c={concurrency}"
            with stage(label):
                cell = loadgen.run_cell(url, make, concurrency=concurrency,
                                        max_requests=budget(args, scenario, concurrency),
                                        max_duration_s=args.cell_duration_s)
            metrics = loadgen.metrics_delta(before, loadgen.scrape(proc.url)) if before else {}
            lat = cell.pop("latency_s")
            rows.append({"server": server + tag, **{k: v for k, v in asdict(scenario).items()
                                                     if k not in ("concurrencies", "max_requests")},
                         **cell, "p50_ms": _ms(lat.get("p50")), "p95_ms": _ms(lat.get("p95")),
                         "p99_ms": _ms(lat.get("p99")), "mean_ms": _ms(lat.get("mean")), "server_metrics": metrics})
    return rows


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1e3


def run_ours(checkpoint: Path, cells: list[Scenario], images: dict[str, list[bytes]], args: argparse.Namespace,
             *, extra: list[str] | None = None, tag: str = "") -> tuple[list[dict[str, Any]], dict[str, Any]]:
    extra = list(extra if extra is not None else args.server_arg)
    if args.torch_threads and "--torch-threads" not in extra:
        extra += ["--torch-threads", str(args.torch_threads)]
    if args.decode_workers and "--decode-workers" not in extra:
        extra += ["--decode-workers", str(args.decode_workers)]
    command = loadgen.siglip_serve_command(checkpoint, port=loadgen.free_port(), device=args.device,
                                           dtype=args.dtype, extra=extra)
    with loadgen.ServerProcess(command, port=int(command[command.index("--port") + 1]), name="siglip-serve") as proc:
        with stage(f"siglip-serve{tag} start"):
            proc.wait_healthy()
        rows = measure_server("siglip-serve", proc, cells, images, args, tag=tag)
        info = {"command": " ".join(command[1:]), "startup_s": proc.startup_s, "rss_mb_at_end": proc.rss_mb()}
    return rows, info


def run_baseline(checkpoint: Path, cells: list[Scenario], images: dict[str, list[bytes]],
                 args: argparse.Namespace) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    port = loadgen.free_port()
    command = [sys.executable, str(common.REPO / "bench" / "baseline_app.py"), "--model", str(checkpoint),
               "--port", str(port), "--device", args.device]
    if args.torch_threads:
        command += ["--threads", str(args.torch_threads)]
    with loadgen.ServerProcess(command, port=port, name="baseline") as proc:
        with stage("baseline start"):
            proc.wait_healthy()
        import httpx

        facts = httpx.get(proc.url + "/info", timeout=60).json()
        rows = measure_server("baseline", proc, cells, images, args)
        info = {"command": " ".join(command[1:]), "startup_s": proc.startup_s, "rss_mb_at_end": proc.rss_mb(),
                "pipeline": facts}
    return rows, info


# --- in process ---------------------------------------------------------------------------------


def in_process(checkpoint: Path, images: dict[str, list[bytes]], args: argparse.Namespace) -> dict[str, Any]:
    """Per-call latency of the pipeline and of our library, and score agreement on the same inputs."""
    import io

    import torch
    from baseline_app import load_pipeline
    from PIL import Image

    import siglip_serve

    common.quiet()
    pipe = load_pipeline(str(checkpoint), device=args.device, explicit_image_processor=False)
    ours = siglip_serve.load(str(checkpoint), device=args.device, dtype=args.dtype)  # as our server
    jpegs = images["640x480"]
    rows = []
    for n_labels in (10, args.many_labels):
        labels = common.make_labels(n_labels)
        calls = args.inprocess_calls if n_labels <= 100 else 1
        label_embeds = ours.embed_labels(labels, TEMPLATE)
        cases = {
            "pipeline": lambda i, labels=labels: pipe(Image.open(io.BytesIO(jpegs[i % len(jpegs)])),
                                                     candidate_labels=labels, hypothesis_template=TEMPLATE),
            "siglip_serve library, labels per call": lambda i, labels=labels: ours.classify(
                [jpegs[i % len(jpegs)]], labels, templates=TEMPLATE),
            "siglip_serve library, label embeddings reused": lambda i, labels=labels, e=label_embeds: (
                ours.classify_embeddings(ours.embed_images([jpegs[i % len(jpegs)]]), e, labels)),
        }
        for name, fn in cases.items():
            if n_labels <= 100:
                fn(0)  # warm-up (the many-label calls come after these and cost a minute each on 2 cores)
            times = []
            for i in range(calls):
                t0 = time.perf_counter()
                fn(i)
                times.append(time.perf_counter() - t0)
            stats = common.summarize(times)
            rows.append({"runner": name, "labels": n_labels, "calls": calls, "p50_ms": _ms(stats["p50"]),
                         "mean_ms": _ms(stats["mean"])})
    # Agreement: ours vs the pipeline vs the pipeline's model run without the attention mask.
    labels = common.make_labels(10)
    pil = [Image.open(io.BytesIO(j)).convert("RGB") for j in jpegs[:4]]
    ours_p = ours.score(pil, [TEMPLATE.format(x) for x in labels])
    pipe_scores = [{d["label"]: d["score"] for d in pipe(im, candidate_labels=labels, hypothesis_template=TEMPLATE)}
                   for im in pil]
    pipe_p = torch.tensor([[scores[x] for x in labels] for scores in pipe_scores])
    tokens = pipe.tokenizer([TEMPLATE.format(x) for x in labels], padding="max_length", max_length=64,
                            truncation=True, return_tensors="pt")
    pixel_values = pipe.image_processor(images=pil, return_tensors="pt")["pixel_values"]
    with torch.inference_mode():
        no_mask = pipe.model(input_ids=tokens["input_ids"], pixel_values=pixel_values).logits_per_image.sigmoid()
    agreement = {
        "pipeline_vs_ours_max_abs_prob_diff": float((pipe_p - ours_p).abs().max()),
        "pipeline_vs_ours_top1_agreement": float((pipe_p.argmax(1) == ours_p.argmax(1)).float().mean()),
        "pipeline_without_mask_vs_ours_max_abs_prob_diff": float((no_mask - ours_p).abs().max()),
        "pipeline_without_mask_vs_ours_top1_agreement": float((no_mask.argmax(1) == ours_p.argmax(1)).float().mean()),
        "images": len(pil), "labels": len(labels),
    }
    return {"rows": rows, "agreement": agreement}


# --- report -------------------------------------------------------------------------------------


def parse_variant(text: str) -> tuple[str, list[str]]:
    name, _, extra = text.partition("=")
    if not name:
        raise SystemExit(f"--variant needs NAME=ARGS, got {text!r}")
    return name, extra.split()


def variant_table(ratio_rows: list[dict[str, Any]]) -> str:
    """One row per variant, one column per cell: ratio to the baseline (and our req/s)."""
    cells: dict[str, dict[str, str]] = {}
    for r in ratio_rows:
        cell = f"{r['endpoint']} {r['labels'] or ''} {r['cache']} c={r['concurrency']}".replace("  ", " ")
        text = "-" if r["throughput_ratio"] is None else f"{r['throughput_ratio']:.2f}x ({r['ours_rps']:.2f} req/s)"
        cells.setdefault(r["server"], {})[cell] = text
    columns = list(dict.fromkeys(c for row in cells.values() for c in row))
    lines = ["| server | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    lines += [f"| {server} | " + " | ".join(row.get(c, "-") for c in columns) + " |" for server, row in cells.items()]
    return "\n".join(lines)


def ratios(ours_rows: list[dict[str, Any]], base_rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Ours over the baseline at equal (endpoint, image, labels, concurrency): throughput ratio and
    p50 latency speed-up (baseline p50 / ours p50; at concurrency 1 that is single-request latency)."""
    base = {(r["endpoint"], r["image"], r["labels"], r["concurrency"]): r for r in base_rows}
    out = []
    for r in ours_rows:
        b = base.get((r["endpoint"], r["image"], r["labels"], r["concurrency"]))
        if b is None:
            continue
        out.append({k: r[k] for k in ("server", "endpoint", "image", "labels", "cache", "concurrency")} | {
            "ours_rps": r["throughput_rps"], "baseline_rps": b["throughput_rps"],
            "throughput_ratio": common.ratio(r["throughput_rps"], b["throughput_rps"]),
            "ours_p50_ms": r["p50_ms"], "baseline_p50_ms": b["p50_ms"],
            "p50_latency_speedup": common.ratio(b["p50_ms"], r["p50_ms"])})
    return out


SERIES_COLOURS = {"baseline": "tab:gray", "siglip-serve": "tab:blue", "siglip-serve (warm cache)": "tab:green",
                  "siglip-serve (cold cache)": "tab:orange"}


def plot(rows: list[dict[str, Any]], path: Path) -> str | None:
    """Throughput vs concurrency, one panel per (endpoint, image, labels); None or why it was skipped."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import ScalarFormatter
    except ImportError:
        return "plot skipped: matplotlib is not installed (pip install matplotlib)"
    levels: dict[tuple[str, str, int], set[int]] = {}
    for r in rows:
        levels.setdefault((r["endpoint"], r["image"], r["labels"]), set()).add(r["concurrency"])
    groups = sorted(group for group, seen in levels.items() if len(seen) > 1)
    if not groups:
        return "plot skipped: no scenario ran at more than one concurrency"
    fig, axes = plt.subplots(1, len(groups), figsize=(4.4 * len(groups), 3.6), squeeze=False)
    for ax, group in zip(axes[0], groups, strict=True):
        series: dict[str, list[tuple[int, float]]] = {}
        for r in rows:
            if (r["endpoint"], r["image"], r["labels"]) == group and r["throughput_rps"]:
                name = r["server"] + ("" if r["cache"] == "-" else f" ({r['cache']} cache)")
                series.setdefault(name, []).append((r["concurrency"], r["throughput_rps"]))
        for name, points in sorted(series.items()):
            xs, ys = zip(*sorted(points), strict=True)
            ax.plot(xs, ys, marker="o", label=name, color=SERIES_COLOURS.get(name))
        ax.set_xscale("log", base=2)
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.set_xticks(sorted(levels[group]))
        ax.set_ylim(bottom=0)
        ax.set_xlabel("concurrency")
        ax.set_ylabel("requests/s (1 image each)")
        endpoint, image, labels = group
        ax.set_title(f"{endpoint} {image}" + (f", {labels} labels" if labels else ""), fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return None


CELL_COLUMNS = [("server", "server", ""), ("endpoint", "endpoint", ""), ("image", "image", ""),
                ("labels", "labels", "d"), ("cache", "cache", ""), ("concurrency", "conc", "d"),
                ("ok", "ok", "d"), ("requests", "sent", "d"), ("throughput_rps", "req/s", ".2f"),
                ("p50_ms", "p50 ms", ".0f"), ("p95_ms", "p95 ms", ".0f"), ("p99_ms", "p99 ms", ".0f"),
                ("mean_image_batch", "img batch", ".1f"), ("errors", "errors", "")]


def tidy(rows: list[dict[str, Any]]) -> None:
    for r in rows:
        metrics = r.get("server_metrics") or {}
        r["mean_image_batch"] = next((v for k, v in metrics.items() if k.startswith("mean_batch[") and "/image" in k),
                                     None)
        bad = {k: v for k, v in r["statuses"].items() if k != "200"}
        r["errors"] = ", ".join(f"{k}x{v}" for k, v in bad.items()) or None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    report = Report("http_e2e", smoke=args.quick, args={k: str(v) if isinstance(v, Path) else v
                                                         for k, v in vars(args).items()})
    common.quiet()
    with stage("checkpoint"):
        checkpoint = args.checkpoint or common.checkpoint_dir(common.ARCHS[args.arch])
    with stage("images"):
        images = load_images(args)
    report.add("checkpoint", str(checkpoint))
    report.add("image_bytes", {k: [len(b) for b in v] for k, v in images.items()})
    cells = scenarios(args)
    variants = [parse_variant(v) for v in args.variant] or [("", list(args.server_arg))]
    ours_rows: list[dict[str, Any]] = []
    ours_info: dict[str, Any] = {}
    base_rows: list[dict[str, Any]] = []
    base_info: dict[str, Any] = {}
    for position, (name, extra) in enumerate(variants):
        tag = f" [{name}]" if name else ""
        rows_v, info_v = run_ours(checkpoint, cells, images, args, extra=extra, tag=tag)
        ours_rows += rows_v
        ours_info[name or "siglip-serve"] = info_v | {"load_average_after": [round(x, 2) for x in os.getloadavg()]}
        if position == 0 and not args.no_baseline:
            base_rows, base_info = run_baseline(checkpoint, baseline_scenarios(cells), images, args)
            base_info["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    inproc: dict[str, Any] = {}
    if not args.no_inprocess:
        with stage("in process: pipeline and library"):
            inproc = in_process(checkpoint, images, args)
    rows = ours_rows + base_rows
    tidy(rows)
    ratio_rows = ratios(ours_rows, base_rows)
    report.add("servers", {"siglip-serve": ours_info, "baseline": base_info})
    if args.variant:
        report.section("Variants over the baseline (warm 10-label classify and embeddings, one run)",
                       variant_table(ratio_rows))
    report.add("cells", rows)
    report.add("ratios", ratio_rows)
    report.add("in_process", inproc)
    report.section("Ours over the baseline (same run, checkpoint and inputs)",
                   "`throughput ratio` = ours req/s / baseline req/s at equal concurrency; `p50 speed-up` = "
                   "baseline p50 / ours p50 (at concurrency 1: single-request latency). The baseline has no "
                   "label cache, so both our warm and cold rows compare with its one row.\n\n"
                   + common.markdown_table(ratio_rows, [
                       ("endpoint", "endpoint", ""), ("image", "image", ""), ("labels", "labels", "d"),
                       ("cache", "our cache", ""), ("concurrency", "conc", "d"), ("ours_rps", "ours req/s", ".2f"),
                       ("baseline_rps", "baseline req/s", ".2f"), ("throughput_ratio", "throughput ratio", ".2f"),
                       ("ours_p50_ms", "ours p50 ms", ".0f"), ("baseline_p50_ms", "baseline p50 ms", ".0f"),
                       ("p50_latency_speedup", "p50 speed-up", ".2f")]))
    report.section("All cells", common.markdown_table(rows, CELL_COLUMNS))
    if inproc:
        report.section("In process (per call, 640x480 JPEG bytes in)", common.markdown_table(inproc["rows"], [
            ("runner", "runner", ""), ("labels", "labels", "d"), ("calls", "calls", "d"),
            ("p50_ms", "p50 ms", ".0f"), ("mean_ms", "mean ms", ".0f")]))
        agreement = inproc["agreement"]
        report.section(f"Score agreement with the pipeline ({agreement['labels']} labels, {agreement['images']} "
                       "images; 'without mask' = the pipeline's own model and tokens, no attention_mask)",
                       common.markdown_table(
            [{"key": k, "value": v} for k, v in inproc["agreement"].items()], [("key", "", ""), ("value", "", ".6g")]))
    if base_info:
        facts = base_info["pipeline"]
        report.note(f"Baseline pipeline: image processor {facts['image_processor']}, tokenizer {facts['tokenizer']} "
                    f"returning {facts['tokenizer_outputs']}; padding {facts['pipeline_padding']}; attention "
                    f"{facts['attn_implementation']}. Passes an attention mask to the text tower: "
                    f"{facts['passes_attention_mask']} (SigLIP was trained without one, notes §2).")
    report.note("Client and servers share this machine's cores; the client sends pre-encoded bodies to keep its "
                "share small. One image per request; labels templated with 'This is a photo of {}.'")
    report.note("Servers started one after the other; siglip-serve flags: "
                + "; ".join(f"{k}: {v['command']}" for k, v in ours_info.items()))
    skipped = plot(rows, args.out_dir / "http_e2e.png")
    if skipped:
        report.note(skipped)
    else:
        report.section("Plot", "![throughput vs concurrency](http_e2e.png)")
    report.write(args.out_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
