"""Model-only throughput of the seed architectures, per device, dtype and batch size.

Random weights at the real dimensions (bench/common.py ARCHS; notes §6), run through the
library's own `SiglipTowers` (transformers SiglipModel, SDPA, no text mask), so the figures
are what the server's batcher gets. Also, in the same run:
- the device's matmul rate per dtype, and each row's achieved fraction of it;
- ONNX Runtime fp32 vision tower vs PyTorch fp32 on the CPU (torch.onnx.export);
- half precision vs fp32 numerics: embedding cosine, logit error, top-1 zero-shot agreement.

    python bench/model_only.py --quick                      # smoke: base-224, batch 1, ~2 min on 2 cores
    python bench/model_only.py                              # CPU: base-224 + base-512; CUDA: all archs
    python bench/model_only.py --archs all --devices cpu    # so400m fp32 is ~3.7 s/img on 2 cores
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import common
import numpy as np
import torch
from common import Arch, Report, stage

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# Notes §7: this 2-core CPU, 2 threads, batch 1, measured once before the project had code (ms/image).
ANCHORS_MS = {("base-224", "torch", "fp32"): 210, ("base-224", "torch", "bf16"): 65,
              ("base-224", "onnxruntime", "fp32"): 90, ("so400m-384", "torch", "fp32"): 3700,
              ("so400m-384", "torch", "bf16"): 1500, ("so400m-384", "onnxruntime", "fp32"): 1800}


@dataclass(frozen=True)
class Plan:
    """What to run on one device."""

    device: str
    dtypes: list[str]
    batch_sizes: list[int]
    text_batch_sizes: list[int]
    warmup: int
    iters: int
    min_time_s: float
    max_time_s: float


def parse_args() -> argparse.Namespace:
    cuda = torch.cuda.is_available()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="Smoke run: base-224, CPU, batch 1, 2 iterations.")
    parser.add_argument("--archs", default=None,
                        help=f"Comma list of {', '.join(common.ARCHS)} or 'all'. "
                             "Default: base-224,base-512 on CPU-only machines, all with CUDA.")
    parser.add_argument("--devices", default="cpu,cuda" if cuda else "cpu")
    parser.add_argument("--cpu-dtypes", default="fp32,bf16", help="This CPU has avx512_bf16 (notes §7).")
    parser.add_argument("--cuda-dtypes", default="fp32,fp16,bf16")
    parser.add_argument("--batch-sizes", default=None, help="Image batch sizes. Default CPU 1,8; CUDA 1,8,32,128.")
    parser.add_argument("--text-batch-sizes", default=None, help="Default CPU 8,32; CUDA 32,256.")
    parser.add_argument("--towers", default="image,text")
    parser.add_argument("--warmup", type=int, default=None, help="Untimed calls per cell. Default CPU 1, CUDA 5.")
    parser.add_argument("--iters", type=int, default=None, help="Timed calls per cell (at least). Default 5 / 20.")
    parser.add_argument("--min-time-s", type=float, default=None, help="Per cell, at least. Default 2 / 1.")
    parser.add_argument("--max-time-s", type=float, default=120.0, help="Per cell, stop early past this.")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's).")
    parser.add_argument("--no-onnx", action="store_true", help="Skip the ONNX Runtime comparison.")
    parser.add_argument("--no-numerics", action="store_true", help="Skip half-precision vs fp32 numerics.")
    parser.add_argument("--numerics-images", type=int, default=8)
    parser.add_argument("--numerics-labels", type=int, default=100)
    parser.add_argument("--matmul-size", type=int, default=None, help="Default CPU 2048, CUDA 8192.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out-dir", type=Path, default=common.RESULTS_DIR)
    args = parser.parse_args()
    if args.quick:
        args.archs = args.archs or "base-224"
        args.devices = "cpu"
        args.batch_sizes = args.batch_sizes or "1"
        args.text_batch_sizes = args.text_batch_sizes or "8"
        args.warmup, args.iters, args.min_time_s = 1, 2, 0.0
        args.numerics_images, args.numerics_labels = 2, 10
        args.matmul_size = args.matmul_size or 1024
    if args.archs is None:
        args.archs = "all" if cuda else "base-224,base-512"
    return args


def plan_for(args: argparse.Namespace, device: str) -> Plan:
    cpu = device == "cpu"
    return Plan(device=device, dtypes=(args.cpu_dtypes if cpu else args.cuda_dtypes).split(","),
                batch_sizes=ints(args.batch_sizes or ("1,8" if cpu else "1,8,32,128")),
                text_batch_sizes=ints(args.text_batch_sizes or ("8,32" if cpu else "32,256")),
                warmup=args.warmup if args.warmup is not None else (1 if cpu else 5),
                iters=args.iters if args.iters is not None else (5 if cpu else 20),
                min_time_s=args.min_time_s if args.min_time_s is not None else (2.0 if cpu else 1.0),
                max_time_s=args.max_time_s)


def ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def sync_for(device: str) -> Any:
    return torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)


def strict_fp32(device: str) -> None:
    """fp32 means fp32: TF32 off for matmuls and for cuDNN convolutions (the patch embedding; notes §5)."""
    if device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")


# --- inputs -------------------------------------------------------------------------------------


def pixels(arch: Arch, batch: int, *, distinct: int = 8, offset: int = 0) -> torch.Tensor:
    """[batch, 3, S, S] from realistic 640x480 JPEGs through the library's own preprocessing."""
    from siglip_serve.preprocess.images import ImageTransform, decode_image

    transform = ImageTransform(height=arch.image_size, width=arch.image_size, resample=arch.resample)
    arrays = [transform(decode_image(common.photo_jpeg(640, 480, seed=offset + i))) for i in range(distinct)]
    return torch.from_numpy(np.stack([arrays[i % distinct] for i in range(batch)]))


def text_ids(arch: Arch, batch: int, *, seed: int = 0) -> torch.Tensor:
    """[batch, 64] ids shaped like real labels: 4-16 tokens, EOS, then padding (notes §2 special ids)."""
    pad_id, eos_id = (1, 1) if arch.family == "siglip" else (0, 1)
    generator = torch.Generator().manual_seed(seed)
    ids = torch.full((batch, arch.text_length), pad_id, dtype=torch.long)
    for row in range(batch):
        length = int(torch.randint(4, 17, (1,), generator=generator))
        ids[row, :length] = torch.randint(3, arch.vocab, (length,), generator=generator)
        ids[row, length] = eos_id
    return ids


# --- measurements -------------------------------------------------------------------------------


def matmul_rate(device: str, dtype: torch.dtype, *, n: int, min_time_s: float) -> dict[str, Any]:
    """Sustained TFLOP/s of an n x n @ n x n product loop: the device's practical ceiling for this dtype."""
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    reps = 8 if device.startswith("cuda") else 1
    times = common.time_calls(lambda: [a @ b for _ in range(reps)], warmup=2, iters=3, min_time_s=min_time_s,
                              sync=sync_for(device))
    best = min(times) / reps
    return {"device": device, "dtype": str(dtype).removeprefix("torch."), "n": n,
            "tflops": 2 * n**3 / best / 1e12, "calls": len(times) * reps}


def time_cell(fn: Any, *, device: str, plan: Plan) -> list[float]:
    return common.time_calls(fn, warmup=plan.warmup, iters=plan.iters, min_time_s=plan.min_time_s,
                             max_time_s=plan.max_time_s, sync=sync_for(device))


def row(*, arch: Arch, device: str, dtype: str, runtime: str, tower: str, batch: int, times: list[float],
        matmul_tflops: float | None) -> dict[str, Any]:
    stats = common.summarize(times)
    per_item_s = stats["p50"] / batch
    gflops = common.image_gflops(arch) if tower == "image" else common.text_gflops(arch)
    achieved = gflops / per_item_s / 1e3
    anchor = ANCHORS_MS.get((arch.name, runtime, dtype)) if device == "cpu" and batch == 1 and tower == "image" \
        else None
    return {"arch": arch.name, "checkpoint": arch.checkpoint, "device": device, "dtype": dtype, "runtime": runtime,
            "tower": tower, "batch_size": batch, "calls": stats["count"], "s_per_batch_p50": stats["p50"],
            "s_per_batch_mean": stats["mean"], "items_per_s": 1 / per_item_s, "ms_per_item": per_item_s * 1e3,
            "gflops_per_item": gflops, "achieved_tflops": achieved, "matmul_tflops": matmul_tflops,
            "fraction_of_matmul": achieved / matmul_tflops if matmul_tflops else None, "anchor_ms_notes": anchor}


def bench_torch(towers: Any, arch: Arch, *, device: str, dtype: str, args: argparse.Namespace, plan: Plan,
                matmul_tflops: float | None) -> list[dict[str, Any]]:
    rows = []
    selected = args.towers.split(",")
    if "image" in selected:
        for batch in plan.batch_sizes:
            x = pixels(arch, batch)
            with stage(f"{arch.name} {device} {dtype} image b{batch}"):
                times = time_cell(lambda x=x: towers.encode_images(x), device=device, plan=plan)
            rows.append(row(arch=arch, device=device, dtype=dtype, runtime="torch", tower="image", batch=batch,
                            times=times, matmul_tflops=matmul_tflops))
    if "text" in selected:
        for batch in plan.text_batch_sizes:
            ids = text_ids(arch, batch)
            with stage(f"{arch.name} {device} {dtype} text b{batch}"):
                times = time_cell(lambda ids=ids: towers.encode_texts(ids), device=device, plan=plan)
            rows.append(row(arch=arch, device=device, dtype=dtype, runtime="torch", tower="text", batch=batch,
                            times=times, matmul_tflops=matmul_tflops))
    return rows


class VisionTower(torch.nn.Module):
    """pixel_values -> pooled embedding: the part the server runs per image."""

    def __init__(self, vision_model: torch.nn.Module) -> None:
        super().__init__()
        self.vision_model = vision_model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.vision_model(pixel_values=pixel_values).pooler_output


def export_onnx(master: torch.nn.Module, arch: Arch, path: Path) -> tuple[str, list[str]]:
    """Export the fp32 vision tower with a dynamic batch axis. Returns (exporter used, failures).

    The TorchScript exporter (dynamo=False) needs only `onnx`; the dynamo exporter needs onnxscript,
    which is tried only when it is installed."""
    wrapper = VisionTower(copy.deepcopy(master.vision_model).float().eval())
    example = pixels(arch, 2)
    failures: list[str] = []
    attempts: list[tuple[str, dict[str, Any]]] = [("torchscript", {
        "dynamo": False, "dynamic_axes": {"pixel_values": {0: "batch"}, "embeds": {0: "batch"}}})]
    try:
        import onnxscript  # noqa: F401

        batch_dim = {"pixel_values": {0: torch.export.Dim("batch")}}
        attempts.append(("dynamo", {"dynamo": True, "dynamic_shapes": batch_dim}))
    except ImportError:
        failures.append("dynamo exporter not tried (onnxscript not installed)")
    for name, kwargs in attempts:
        try:
            with warnings.catch_warnings(), torch.no_grad():
                warnings.simplefilter("ignore")
                torch.onnx.export(wrapper, (example,), str(path), input_names=["pixel_values"],
                                  output_names=["embeds"], opset_version=18, **kwargs)
            return name, failures
        except Exception as exc:  # record why, try the next exporter
            failures.append(f"{name} exporter failed: {type(exc).__name__}: {str(exc)[:500]}")
    return "", failures


def bench_onnx(master: torch.nn.Module, arch: Arch, *, args: argparse.Namespace, plan: Plan,
               matmul_tflops: float | None, report: Report) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    try:
        import onnxruntime as ort
    except ImportError:
        report.note("ONNX Runtime comparison skipped: onnxruntime is not installed (pip install onnxruntime onnx)")
        return [], {}
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="siglip-bench-onnx-") as tmp:
        path = Path(tmp) / f"{arch.name}-vision.onnx"
        with stage(f"{arch.name} ONNX export"):
            exporter, failures = export_onnx(master, arch, path)
        info: dict[str, Any] = {"arch": arch.name, "exporter": exporter or None, "export_failures": failures}
        if not exporter:
            report.note(f"{arch.name}: ONNX export failed: {failures}")
            return rows, info
        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        x = pixels(arch, 2, offset=100)
        with torch.inference_mode():
            expected = VisionTower(master.vision_model.float()).eval()(x)
        got = torch.from_numpy(session.run(None, {"pixel_values": x.numpy()})[0])
        info.update(max_abs_diff_vs_torch_fp32=float((got - expected).abs().max()),
                    min_cosine_vs_torch_fp32=float(torch.nn.functional.cosine_similarity(got, expected).min()),
                    onnx_bytes=path.stat().st_size + sum(p.stat().st_size for p in Path(tmp).iterdir()
                                                        if p != path))
        for batch in plan.batch_sizes:
            feed = {"pixel_values": pixels(arch, batch).numpy()}
            with stage(f"{arch.name} cpu fp32 onnxruntime image b{batch}"):
                times = time_cell(lambda feed=feed: session.run(None, feed), device="cpu", plan=plan)
            rows.append(row(arch=arch, device="cpu", dtype="fp32", runtime="onnxruntime", tower="image",
                            batch=batch, times=times, matmul_tflops=matmul_tflops))
    return rows, info


def embeddings_for_numerics(towers: Any, arch: Arch, args: argparse.Namespace) -> tuple[torch.Tensor, torch.Tensor]:
    images = pixels(arch, args.numerics_images, distinct=args.numerics_images, offset=200)
    ids = text_ids(arch, args.numerics_labels, seed=1)
    image_embeds = torch.cat([towers.encode_images(images[i:i + 8]) for i in range(0, len(images), 8)])
    text_embeds = torch.cat([towers.encode_texts(ids[i:i + 32]) for i in range(0, len(ids), 32)])
    return image_embeds, text_embeds


def compare_numerics(reference: tuple[torch.Tensor, torch.Tensor], low: tuple[torch.Tensor, torch.Tensor], *,
                     temperature: Any) -> dict[str, Any]:
    """Half precision vs fp32 on the same inputs: cosine of embeddings, logits/probabilities, top-1."""
    from siglip_serve.scoring import l2_normalize, logits

    cos = torch.nn.functional.cosine_similarity
    (ref_img, ref_txt), (img, txt) = reference, low
    ref_logits = logits(l2_normalize(ref_img), l2_normalize(ref_txt), temperature)
    low_logits = logits(l2_normalize(img), l2_normalize(txt), temperature)
    top2 = ref_logits.topk(min(2, ref_logits.shape[1]), dim=1).values
    return {
        "image_cosine_min": float(cos(img, ref_img).min()), "image_cosine_mean": float(cos(img, ref_img).mean()),
        "text_cosine_min": float(cos(txt, ref_txt).min()), "text_cosine_mean": float(cos(txt, ref_txt).mean()),
        "logit_max_abs_diff": float((low_logits - ref_logits).abs().max()),
        "prob_max_abs_diff": float((low_logits.sigmoid() - ref_logits.sigmoid()).abs().max()),
        "top1_agreement": float((low_logits.argmax(1) == ref_logits.argmax(1)).float().mean()),
        "fp32_top1_margin_median": float((top2[:, 0] - top2[:, -1]).median()),
        "images": int(ref_img.shape[0]), "labels": int(ref_txt.shape[0]),
    }


def bench_arch(arch: Arch, *, plan: Plan, args: argparse.Namespace, rates: dict[str, float],
               master: torch.nn.Module) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    from siglip_serve.models.towers import SiglipTowers

    device = plan.device
    rows, numerics = [], []
    reference = None
    # fp32 first: it is the reference for the numerics of the half-precision dtypes.
    for dtype in sorted(plan.dtypes, key=lambda d: d != "fp32"):
        towers = SiglipTowers(copy.deepcopy(master), device=torch.device(device), dtype=DTYPES[dtype])
        rows += bench_torch(towers, arch, device=device, dtype=dtype, args=args, plan=plan,
                            matmul_tflops=rates.get(dtype))
        if not args.no_numerics:
            with stage(f"{arch.name} {device} {dtype} numerics"):
                if reference is None and dtype != "fp32":
                    ref_towers = SiglipTowers(copy.deepcopy(master), device=torch.device(device), dtype=torch.float32)
                    reference = embeddings_for_numerics(ref_towers, arch, args)
                    del ref_towers
                embeds = embeddings_for_numerics(towers, arch, args)
                if dtype == "fp32":
                    reference = embeds
                else:
                    numerics.append({"arch": arch.name, "device": device, "dtype": dtype,
                                     **compare_numerics(reference, embeds, temperature=towers.temperature)})
        del towers
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
    return rows, numerics


# --- report -------------------------------------------------------------------------------------


ROW_COLUMNS = [("arch", "arch", ""), ("device", "device", ""), ("dtype", "dtype", ""), ("runtime", "runtime", ""),
               ("tower", "tower", ""), ("batch_size", "batch", "d"), ("items_per_s", "items/s", ".2f"),
               ("ms_per_item", "ms/item", ".1f"), ("achieved_tflops", "TFLOP/s", ".3f"),
               ("fraction_of_matmul", "of matmul", ".1%"), ("speedup_vs_torch_fp32", "vs torch fp32", ".2f"),
               ("anchor_ms_notes", "notes §7 ms", ""), ("calls", "calls", "d")]


def add_speedups(rows: list[dict[str, Any]]) -> None:
    """Each row's items/s over torch fp32 on the same arch, device, tower and batch (same run)."""
    base = {(r["arch"], r["device"], r["tower"], r["batch_size"]): r["items_per_s"] for r in rows
            if r["runtime"] == "torch" and r["dtype"] == "fp32"}
    for r in rows:
        r["speedup_vs_torch_fp32"] = common.ratio(r["items_per_s"], base.get((r["arch"], r["device"], r["tower"],
                                                                               r["batch_size"])))


def write_report(report: Report, rates: list[dict[str, Any]], rows: list[dict[str, Any]],
                 numerics: list[dict[str, Any]], onnx: list[dict[str, Any]]) -> None:
    add_speedups(rows)
    report.add("matmul", rates)
    report.add("rows", rows)
    report.add("numerics", numerics)
    report.add("onnx", onnx)
    report.section("Matmul rate (same run)", common.markdown_table(rates, [
        ("device", "device", ""), ("dtype", "dtype", ""), ("n", "n", "d"), ("tflops", "TFLOP/s", ".3f")]))
    report.section("Throughput", "Random weights at the real dimensions; `of matmul` = achieved FLOP rate "
                   "(GFLOPs/item from the config, notes §6) over the matmul rate of the same dtype; "
                   "`vs torch fp32` = items/s over torch fp32 at the same batch.\n\n"
                   + common.markdown_table(rows, ROW_COLUMNS))
    if numerics:
        report.section("Half precision vs fp32 (same inputs, same weights)", common.markdown_table(numerics, [
            ("arch", "arch", ""), ("device", "device", ""), ("dtype", "dtype", ""),
            ("image_cosine_min", "image cos min", ".6f"), ("text_cosine_min", "text cos min", ".6f"),
            ("logit_max_abs_diff", "max abs Δlogit", ".4f"), ("prob_max_abs_diff", "max abs Δp", ".4f"),
            ("top1_agreement", "top-1 agree", ".1%"), ("fp32_top1_margin_median", "fp32 top-1 margin", ".3f"),
            ("images", "images", "d"), ("labels", "labels", "d")]))
    if onnx:
        report.section("ONNX Runtime export", common.markdown_table(onnx, [
            ("arch", "arch", ""), ("exporter", "exporter", ""),
            ("max_abs_diff_vs_torch_fp32", "max abs Δ vs torch", ".2e"),
            ("min_cosine_vs_torch_fp32", "min cos", ".7f"), ("export_failures", "export notes", "")]))


def main() -> int:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    report = Report("model_only", smoke=args.quick, args=vars(args) | {"out_dir": str(args.out_dir)})
    archs = common.parse_archs(args.archs)
    plans, all_rates, rates = [], [], {}
    for device in args.devices.split(","):
        if device.startswith("cuda") and not torch.cuda.is_available():
            report.note(f"{device} skipped: torch.cuda.is_available() is False")
            continue
        strict_fp32(device)
        plan = plan_for(args, device)
        plans.append(plan)
        for dtype in plan.dtypes:
            with stage(f"matmul rate {device} {dtype}"):
                rate = matmul_rate(device, DTYPES[dtype], n=args.matmul_size or (2048 if device == "cpu" else 8192),
                                   min_time_s=1.0 if args.quick else 3.0)
            rates[device, dtype] = rate["tflops"]
            all_rates.append(rate)
    rows, numerics, onnx = [], [], []
    for arch in archs:
        with stage(f"build random {arch.name}"):
            master = common.random_model(arch, seed=args.seed)  # fp32 on the CPU; each run gets a copy
        for plan in plans:
            device_rates = {dtype: rate for (device, dtype), rate in rates.items() if device == plan.device}
            arch_rows, arch_numerics = bench_arch(arch, plan=plan, args=args, rates=device_rates, master=master)
            rows += arch_rows
            numerics += arch_numerics
            if plan.device == "cpu" and not args.no_onnx and "image" in args.towers:
                onnx_rows, info = bench_onnx(master, arch, args=args, plan=plan,
                                             matmul_tflops=device_rates.get("fp32"), report=report)
                rows += onnx_rows
                if info:
                    onnx.append(info)
        del master
    report.note("Inputs: realistic 640x480 JPEGs through the library's preprocessing (images), random token "
                "ids of 4-16 tokens + EOS padded to 64 (texts). Times include the host-device copies of inputs "
                "and outputs, as in the server.")
    if not args.no_numerics:
        report.note("Numerics on random weights are indicative only; re-check with trained weights.")
    write_report(report, all_rates, rows, numerics, onnx)
    report.write(args.out_dir)
    print(common.markdown_table(rows, ROW_COLUMNS))
    return 0


if __name__ == "__main__":
    sys.exit(main())
