"""Shared helpers for the benchmarks in bench/: machine description, real-size random checkpoints,
realistic JPEGs, timing and percentile statistics, JSON + markdown results.

Figures are measured by these scripts, never asserted in pytest. Random weights at the real
dimensions cost the same FLOPs as the real checkpoints (shared notes §6), so speed is real;
numerics (bf16 vs fp32, draft decoding) on random weights are indicative only.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import importlib
import io
import json
import os
import platform
import shutil
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
RESULTS_DIR = REPO / "bench" / "results"
# Built checkpoints (~0.8-4.5 GB each) and images are cached here across runs.
CACHE_DIR = Path(os.environ.get("SIGLIP_SERVE_BENCH_CACHE", "~/.cache/siglip-serve-bench")).expanduser()
CHECKPOINT_FORMAT_VERSION = 1  # bump when the way checkpoints are built changes


# --- architectures ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Arch:
    """The dimensions of one seed checkpoint (shared notes §6; config.json of each hub checkpoint)."""

    name: str
    checkpoint: str  # the hub checkpoint whose shapes these are
    image_size: int
    patch_size: int
    width: int
    depth: int
    heads: int
    mlp: int
    vocab: int
    resample: int  # PIL filter id: 3 bicubic (SigLIP 1), 2 bilinear (SigLIP 2)
    hidden_act: str
    params_m: float  # from notes §6, checked against the built model
    gflops_table: float  # notes §6, per image
    text_length: int = 64

    @property
    def family(self) -> str:
        return "siglip2" if self.vocab > 100_000 else "siglip"

    @property
    def patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2  # so400m/14 at 384: 27x27, the conv drops 6 px

    def siglip_config(self) -> dict[str, Any]:
        common = {"hidden_size": self.width, "intermediate_size": self.mlp, "num_hidden_layers": self.depth,
                  "num_attention_heads": self.heads, "layer_norm_eps": 1e-6, "hidden_act": self.hidden_act}
        return {
            # bos/eos in the real config.json are unused CLIP leftovers; None avoids transformers' warning.
            "text_config": {**common, "vocab_size": self.vocab, "max_position_embeddings": self.text_length,
                            "projection_size": self.width, "bos_token_id": None, "eos_token_id": None},
            "vision_config": {**common, "image_size": self.image_size, "patch_size": self.patch_size},
        }


ARCHS: dict[str, Arch] = {a.name: a for a in (
    # timm/ViT-B-16-SigLIP = google/siglip-base-patch16-224's weights; open_clip runs it with exact
    # erf GELU (notes §4), which is what an open_clip checkpoint mapped onto HF modules uses.
    Arch("base-224", "timm/ViT-B-16-SigLIP", 224, 16, 768, 12, 12, 3072, 32_000, 3, "gelu", 203.2, 35),
    Arch("base-512", "google/siglip-base-patch16-512", 512, 16, 768, 12, 12, 3072, 32_000, 3,
         "gelu_pytorch_tanh", 203.8, 216),
    Arch("large-384", "google/siglip-large-patch16-384", 384, 16, 1024, 24, 16, 4096, 32_000, 3,
         "gelu_pytorch_tanh", 652.5, 384),
    Arch("so400m-384", "google/siglip-so400m-patch14-384", 384, 14, 1152, 27, 16, 4304, 32_000, 3,
         "gelu_pytorch_tanh", 878.0, 670),
    # Same towers as so400m-384; only the text vocabulary (Gemma, 256k) differs.
    Arch("siglip2-so400m-384", "google/siglip2-so400m-patch14-384", 384, 14, 1152, 27, 16, 4304, 256_000, 2,
         "gelu_pytorch_tanh", 1136.0, 670),
)}


def parse_archs(text: str) -> list[Arch]:
    names = list(ARCHS) if text == "all" else [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in ARCHS]
    if unknown:
        raise SystemExit(f"unknown arch {unknown}; choose from {', '.join(ARCHS)} or 'all'")
    return [ARCHS[n] for n in names]


def tower_gflops(*, tokens: int, width: int, depth: int, mlp: int, patch_dim: int = 0) -> float:
    """Forward GFLOPs (2 x multiply-adds) of a ViT-style tower on `tokens` tokens.

    Per layer: q,k,v,o projections 4·N·D², attention scores and values 2·N²·D, MLP 2·N·D·F.
    Plus the patch embedding (N·patch_dim·D). LayerNorm, softmax and GELU are ignored (<1%).
    """
    per_layer = 4 * tokens * width**2 + 2 * tokens**2 * width + 2 * tokens * width * mlp
    return 2 * (depth * per_layer + tokens * patch_dim * width) / 1e9


def image_gflops(arch: Arch) -> float:
    """Vision tower GFLOPs per image, including the MAP head (probe attends over N patches, then an MLP)."""
    n, d = arch.patches, arch.width
    body = tower_gflops(tokens=n, width=d, depth=arch.depth, mlp=arch.mlp, patch_dim=3 * arch.patch_size**2)
    head_macs = 2 * n * d * d + 2 * d * d + 2 * n * d + 2 * d * arch.mlp  # k,v over N; q,o; attention; MLP
    return body + 2 * head_macs / 1e9


def text_gflops(arch: Arch) -> float:
    """Text tower GFLOPs per text (always the full 64 positions: no mask, notes §2), plus its head."""
    return tower_gflops(tokens=arch.text_length, width=arch.width, depth=arch.depth, mlp=arch.mlp) \
        + 2 * arch.width**2 / 1e9


# --- random checkpoints at real dimensions ------------------------------------------------------


def tiny_checkpoints() -> Any:
    """tests/tiny_checkpoints.py: the project's way to build HF-layout checkpoints and tokenizers."""
    tests_dir = str(REPO / "tests")
    if tests_dir not in sys.path:
        sys.path.insert(0, tests_dir)
    return importlib.import_module("tiny_checkpoints")


def quiet() -> None:
    """No progress bars or config warnings from transformers / huggingface_hub in benchmark output."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    from transformers.utils import logging as transformers_logging

    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()


def random_model(arch: Arch, *, seed: int = 0) -> Any:
    """A transformers SiglipModel (SDPA attention) with random weights at `arch`'s dimensions.

    LayerNorms perturbed and logit_scale/bias set as in tests/tiny_checkpoints.py, so nothing is
    degenerate. Checks the parameter count against notes §6.
    """
    quiet()
    model = tiny_checkpoints().random_siglip_model(arch.siglip_config(), seed=seed)
    params_m = sum(p.numel() for p in model.parameters()) / 1e6
    if abs(params_m - arch.params_m) > 0.01 * arch.params_m:
        raise RuntimeError(f"{arch.name}: built {params_m:.1f}M parameters, notes §6 say {arch.params_m}M")
    return model


def checkpoint_dir(arch: Arch, *, seed: int = 0) -> Path:
    """A cached HF-layout checkpoint directory for `arch` (random weights, trained tokenizer).

    Built once (about a minute and 0.8 GB for base; 3.5-4.5 GB for so400m) under CACHE_DIR,
    in a temporary directory renamed into place, so an interrupted build is never reused.
    """
    final = CACHE_DIR / "checkpoints" / f"{arch.name}-seed{seed}-v{CHECKPOINT_FORMAT_VERSION}"
    if (final / "config.json").is_file() and (final / "model.safetensors").is_file():
        return final
    tc = tiny_checkpoints()
    building = final.with_name(final.name + f".building-{os.getpid()}")
    shutil.rmtree(building, ignore_errors=True)
    building.mkdir(parents=True)
    print(f"building a random {arch.name} checkpoint in {final} ...", file=sys.stderr, flush=True)
    random_model(arch, seed=seed).save_pretrained(building)
    tc.write_json(building / "preprocessor_config.json",
                  tc.preprocessor_config(image_size=arch.image_size, resample=arch.resample))
    if arch.family == "siglip":  # google/siglip-* layout: spiece.model (tokenizer's vocab < the model's)
        tc.train_sentencepiece(building)
        specials = {"eos_token": "</s>", "pad_token": "</s>", "unk_token": "<unk>"}
        config = {**specials, "tokenizer_class": "SiglipTokenizer", "model_max_length": arch.text_length,
                  "do_lower_case": True}
    else:  # google/siglip2-*-patch14-384 layout: Gemma-style tokenizer.json
        tc.train_gemma_style_tokenizer(building)
        specials = {"bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>", "unk_token": "<unk>"}
        config = {**specials, "tokenizer_class": "GemmaTokenizer", "model_max_length": arch.text_length,
                  "add_bos_token": False, "add_eos_token": True, "padding_side": "right"}
    tc.write_json(building / "special_tokens_map.json", specials)
    tc.write_json(building / "tokenizer_config.json", config)
    tc.write_json(building / "bench_checkpoint.json", {"arch": asdict(arch), "seed": seed})
    shutil.rmtree(final, ignore_errors=True)
    building.rename(final)
    return final


# --- inputs -------------------------------------------------------------------------------------


def photo_like(width: int, height: int, *, seed: int = 0) -> Any:
    """A deterministic photo-like RGB image: 1/f ("pink") multi-scale colour noise, a few soft-edged
    shapes, a vignette and mild sensor noise, so JPEG sizes and decode costs resemble photographs
    (q90: roughly 1-2 bits/pixel) rather than flat colour or white noise."""
    from PIL import Image, ImageDraw, ImageFilter

    rng = np.random.default_rng(seed)
    canvas = np.zeros((height, width, 3), np.float32)
    for octave in range(1, 8):  # amplitude ~ 1/f over octaves 2..128 cells across
        cells = 2**octave
        small = rng.normal(0, 1, (max(2, cells * height // width), cells, 3)).astype(np.float32)
        layer = np.stack([np.asarray(Image.fromarray(small[..., c], "F").resize((width, height), Image.BICUBIC))
                          for c in range(3)], axis=-1)
        canvas += layer * (60.0 / octave)
    canvas += np.asarray([120, 110, 95], np.float32)  # a warm mean, like daylight photos
    image = Image.fromarray(np.clip(canvas, 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(image)
    for _ in range(6):  # objects with edges: JPEG's hard case
        x0, y0 = int(rng.integers(0, width * 3 // 4)), int(rng.integers(0, height * 3 // 4))
        x1, y1 = x0 + int(rng.integers(width // 10, width // 3)), y0 + int(rng.integers(height // 10, height // 3))
        colour = tuple(int(c) for c in rng.integers(20, 235, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x0, y0, x1, y1), fill=colour)
    image = image.filter(ImageFilter.GaussianBlur(radius=max(width, height) / 1600))  # lens softness
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    vignette = 1 - 0.35 * (((xx / width - 0.5) ** 2 + (yy / height - 0.5) ** 2) * 2)
    pixels = np.asarray(image, np.float32) * vignette[..., None] + rng.normal(0, 3, (height, width, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")


def photo_jpeg(width: int, height: int, *, seed: int = 0, quality: int = 90) -> bytes:
    """JPEG bytes of `photo_like` (4:2:0, as cameras and PIL's default), cached on disk."""
    path = CACHE_DIR / "images" / f"photo-{width}x{height}-seed{seed}-q{quality}.jpg"
    if path.is_file():
        return path.read_bytes()
    buffer = io.BytesIO()
    photo_like(width, height, seed=seed).save(buffer, format="JPEG", quality=quality)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_bytes(buffer.getvalue())
    tmp.replace(path)
    return buffer.getvalue()


ADJECTIVES = ("red", "blue", "green", "small", "large", "old", "young", "wooden", "metal", "striped", "spotted",
              "wet", "dry", "bright", "dark", "furry", "shiny", "broken", "fresh", "wild")
NOUNS = ("cat", "dog", "car", "bird", "tree", "house", "bicycle", "boat", "train", "flower", "apple", "banana",
         "pizza", "chair", "table", "clock", "phone", "book", "airplane", "horse", "sheep", "cow", "bus",
         "mountain", "river", "beach", "bridge", "guitar", "lamp", "shoe", "hat", "kite", "bottle", "cup",
         "bear", "zebra", "giraffe", "elephant", "truck", "fence", "window", "door", "street", "field",
         "forest", "snow", "rock", "sandwich", "cake", "robot")


def make_labels(count: int, *, salt: str = "") -> list[str]:
    """`count` distinct, deterministic labels like "striped zebra" (1,000 = 20 adjectives x 50 nouns).

    `salt` makes every string distinct from the unsalted set (cold label cache)."""
    labels = [f"{a} {n}" for n in NOUNS for a in ADJECTIVES]
    labels += [f"{a} {b} {n}" for n in NOUNS for a in ADJECTIVES for b in ADJECTIVES if a != b]
    if count > len(labels):
        raise ValueError(f"at most {len(labels)} labels")
    return [f"{label} {salt}" if salt else label for label in labels[:count]]


# --- timing and statistics ----------------------------------------------------------------------


def time_calls(fn: Callable[[], Any], *, warmup: int, iters: int, min_time_s: float = 0.0,
               sync: Callable[[], None] = lambda: None, max_time_s: float | None = None) -> list[float]:
    """Seconds per call: `warmup` untimed calls, then at least `iters` timed calls and `min_time_s`
    seconds (whichever is longer), stopping early only past `max_time_s` (at least one call)."""
    for _ in range(warmup):
        fn()
    sync()
    times: list[float] = []
    started = time.perf_counter()
    while True:
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
        elapsed = time.perf_counter() - started
        if max_time_s is not None and elapsed >= max_time_s:
            break
        if len(times) >= iters and elapsed >= min_time_s:
            break
    return times


def summarize(values: Sequence[float]) -> dict[str, float]:
    """count, mean, min, max and p50/p95/p99 (linear interpolation, numpy's default)."""
    if not values:
        return {"count": 0}
    array = np.asarray(values, dtype=np.float64)
    p50, p95, p99 = np.percentile(array, [50, 95, 99])
    return {"count": int(array.size), "mean": float(array.mean()), "min": float(array.min()),
            "max": float(array.max()), "p50": float(p50), "p95": float(p95), "p99": float(p99)}


def ratio(ours: float | None, baseline: float | None) -> float | None:
    if ours is None or baseline is None or baseline == 0:
        return None
    return ours / baseline


# --- the machine --------------------------------------------------------------------------------


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def cpu_flags(wanted: Sequence[str] = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16",
                                         "amx_tile")) -> list[str]:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                present = set(line.split(":", 1)[1].split())
                return [flag for flag in wanted if flag in present]
    return []


def machine() -> dict[str, Any]:
    """What the figures were measured on; load average shows whether the machine was quiet."""
    import PIL
    import PIL.features
    import torch
    import transformers

    info: dict[str, Any] = {
        "cpu_model": cpu_model(),
        "cpu_flags": cpu_flags(),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "load_average_1_5_15": [round(x, 2) for x in os.getloadavg()],
        "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "transformers": transformers.__version__,
        "numpy": np.__version__,
        "pillow": PIL.__version__,
        "libjpeg_turbo": PIL.features.version_feature("libjpeg_turbo"),
        "cuda": torch.version.cuda if torch.cuda.is_available() else None,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    with contextlib.suppress(ImportError):
        import onnxruntime

        info["onnxruntime"] = onnxruntime.__version__
    return info


# --- results ------------------------------------------------------------------------------------


Column = tuple[str, str, str]  # (key in the row, header, format spec such as ".1f"; "" for str())


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[Column]) -> str:
    def cell(value: Any, spec: str) -> str:
        if value is None:
            return "-"
        if spec and isinstance(value, int | float):
            return format(value, spec)
        if isinstance(value, list | tuple):
            value = "; ".join(map(str, value))
        return str(value).replace("|", "\\|")

    lines = ["| " + " | ".join(header for _, header, _ in columns) + " |",
             "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(cell(row.get(key), spec) for key, _, spec in columns) + " |" for row in rows]
    return "\n".join(lines)


def machine_markdown(info: dict[str, Any]) -> str:
    rows = [{"key": key, "value": ", ".join(map(str, value)) if isinstance(value, list) else value}
            for key, value in info.items()]
    return markdown_table(rows, [("key", "machine", ""), ("value", "", "")])


@dataclass
class Report:
    """One benchmark's output: bench/results/<name>.json and <name>.md."""

    name: str
    smoke: bool
    args: dict[str, Any]
    started: float = 0.0

    def __post_init__(self) -> None:
        self.started = time.time()
        self.machine_at_start = machine()
        self.sections: list[str] = []
        self.data: dict[str, Any] = {}
        self.notes: list[str] = []

    def add(self, key: str, value: Any) -> None:
        self.data[key] = value

    def section(self, title: str, body: str) -> None:
        self.sections.append(f"## {title}\n\n{body}\n")

    def note(self, text: str) -> None:
        print(f"note: {text}", file=sys.stderr, flush=True)
        self.notes.append(text)

    def write(self, out_dir: Path = RESULTS_DIR) -> tuple[Path, Path]:
        out_dir.mkdir(parents=True, exist_ok=True)
        finished = time.time()
        payload = {
            "name": self.name,
            "smoke": self.smoke,
            "smoke_warning": "SMOKE RUN (--quick): proves the script works; not a measurement" if self.smoke
            else None,
            "started_utc": dt.datetime.fromtimestamp(self.started, dt.UTC).isoformat(timespec="seconds"),
            "duration_s": round(finished - self.started, 1),
            "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
            "args": self.args,
            "machine": self.machine_at_start,
            "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
            **self.data,
            "notes": self.notes,
        }
        json_path, md_path = out_dir / f"{self.name}.json", out_dir / f"{self.name}.md"
        json_path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
        banner = ("> **SMOKE RUN** (`--quick`): a few iterations on a shared machine, to prove the script "
                  "works. Not a measurement.\n\n" if self.smoke else "")
        notes = "## Notes\n\n" + "\n".join(f"- {n}" for n in self.notes) + "\n" if self.notes else ""
        md = (f"# {self.name}\n\n{banner}`{payload['command']}` — {payload['started_utc']}, "
              f"{payload['duration_s']} s; load average at start "
              f"{self.machine_at_start['load_average_1_5_15']}, at end {payload['load_average_at_end']}\n\n"
              + "\n".join(self.sections) + "\n" + notes + "\n" + machine_markdown(self.machine_at_start) + "\n")
        md_path.write_text(md)
        print(f"wrote {json_path} and {md_path}", file=sys.stderr)
        return json_path, md_path


@contextlib.contextmanager
def stage(label: str) -> Iterator[None]:
    """Print how long a stage took (to stderr), so long runs show progress."""
    print(f"[{time.strftime('%H:%M:%S')}] {label} ...", file=sys.stderr, flush=True)
    started = time.perf_counter()
    yield
    print(f"[{time.strftime('%H:%M:%S')}] {label}: {time.perf_counter() - started:.1f} s", file=sys.stderr,
          flush=True)
