"""Peak and settled RSS of a live server under requests that amplify memory (issue #13), before
and after the fixes, each case in a fresh server.

Cases, all against `siglip-serve serve` (demo model, float32, CPU) on 127.0.0.1:
  (a) bomb-url   one image URL whose response is ~600 bytes of stacked gzip (gzip of gzip of
                 512 MiB of zeros), served by a loopback server in this script (--allow-private-urls)
  (b) big-labels /v1/classify with 60 unique labels of 1,000,000 characters each (~60 MB body)
  (c) prompts    /v1/classify with 16 templates x 2,048 labels (32,768 prompts)
  (d) big-pngs   four concurrent /v1/classify requests, each one 8000x8000 PNG (64 MP, inside the
                 default 64 MP limit; a few hundred KB each), sent 3 times (--png-rounds) so that
                 memory kept from one round to the next shows
Case (d) also runs with Pillow's block size forced to its default (16 MiB) and to 64 MiB through
``PILLOW_BLOCK_SIZE``, which shows what `siglip_serve.memory.configure_image_memory` does whether
or not the server calls it.

"before" is a server run from a git worktree of `--before-ref` (PYTHONPATH=<worktree>/src, made with
`git worktree add --detach` when missing); "after" is this working tree. Per run: RSS when idle
(after a warm-up request), the peak while the case runs (VmHWM, reset first through
/proc/PID/clear_refs, and VmRSS sampled every 10 ms), and RSS `--settle-s` seconds after the last
response. Linux only.

A second part decodes one large JPEG in fresh processes, full size vs `draft` to the model's
input size, and reports time and peak RSS (is decoding straight to the model's size worth it?).

    python bench/memory_bounds.py                 # ~10 min on 2 cores
    python bench/memory_bounds.py --sides after   # only the working tree (e.g. after engine changes)
    python bench/memory_bounds.py --quick         # smoke: smaller inputs
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import gzip
import json
import os
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import common
import httpx
import loadgen
import numpy as np
from common import Report, stage

CASES = ("bomb-url", "big-labels", "prompts", "big-pngs")
LABEL_ALPHABET = np.frombuffer(b"abcdefghijklmnopqrstuvwxyz     ", dtype=np.uint8)  # ~1 space in 6


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="Smoke run: small inputs, short settle.")
    parser.add_argument("--cases", default=",".join(CASES), help=f"Comma-separated subset of {', '.join(CASES)}.")
    parser.add_argument("--sides", default="before,after", help="before, after or both.")
    # da34da5's parent: da34da5 itself (new settings, engine not yet updated) fails to start a server.
    parser.add_argument("--before-ref", default="7739468", help="Git ref of the 'before' server.")
    parser.add_argument("--before-src", type=Path, default=None,
                        help="A src/ directory for the 'before' server (default: a worktree of --before-ref).")
    parser.add_argument("--model", default="siglip-demo-shapes")
    parser.add_argument("--bomb-mib", type=int, default=512, help="Zeros inside the stacked gzip, in MiB.")
    parser.add_argument("--big-labels", type=int, default=60)
    parser.add_argument("--label-chars", type=int, default=1_000_000)
    parser.add_argument("--templates", type=int, default=16)
    parser.add_argument("--labels", type=int, default=2048)
    parser.add_argument("--png-side", type=int, default=8000)
    parser.add_argument("--pngs", type=int, default=4)
    parser.add_argument("--png-rounds", type=int, default=3, help="Times the concurrent PNG requests are sent.")
    parser.add_argument("--block-variants", default="16m,64m",
                        help="PILLOW_BLOCK_SIZE values for extra big-pngs runs on each side ('' for none).")
    parser.add_argument("--settle-s", type=float, default=5.0)
    parser.add_argument("--request-timeout-s", type=float, default=900.0)
    parser.add_argument("--probe-jpeg", default="4000x3000", help="WxH of the JPEG for the decode probe; '' skips.")
    parser.add_argument("--probe-draft-size", type=int, default=224, help="draft size: a 224 checkpoint's input.")
    parser.add_argument("--probe-repeats", type=int, default=5)
    parser.add_argument("--out-dir", type=Path, default=common.RESULTS_DIR)
    parser.add_argument("--probe", choices=("full", "draft"), help=argparse.SUPPRESS)  # child mode
    parser.add_argument("--probe-path", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.bomb_mib, args.big_labels, args.label_chars = 64, 4, 100_000
        args.templates, args.labels, args.png_side, args.pngs = 2, 64, 2000, 2
        args.settle_s, args.probe_jpeg, args.probe_repeats = 1.0, "1600x1200", 2
    return args


# --- /proc ----------------------------------------------------------------------------------------


def proc_status_mb(pid: int, key: str) -> float | None:
    """A kB field of /proc/PID/status (VmRSS, VmHWM) in MiB; None once the process is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(f"{key}:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def reset_peak(pid: int) -> bool:
    """Reset VmHWM to the current RSS (proc(5), /proc/PID/clear_refs: "5"; Linux >= 4.0)."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
        return True
    except OSError:
        return False


class RssSampler:
    """The largest VmRSS of `pid` seen every `interval_s`, as a fallback and a check on VmHWM."""

    def __init__(self, pid: int, interval_s: float = 0.01) -> None:
        self.pid, self.interval_s, self.max_mb = pid, interval_s, 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            rss = proc_status_mb(self.pid, "VmRSS")
            if rss is not None:
                self.max_mb = max(self.max_mb, rss)
            self._stop.wait(self.interval_s)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


# --- inputs ---------------------------------------------------------------------------------------


def stacked_gzip_bomb(mib: int) -> bytes:
    """gzip(gzip(`mib` MiB of zeros)), compressed a MiB at a time (never all in memory)."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)  # wbits 31: gzip framing
    zeros = b"\0" * (1024 * 1024)
    inner = b"".join(compressor.compress(zeros) for _ in range(mib)) + compressor.flush()
    return gzip.compress(inner, compresslevel=9)


def big_png(side: int, seed: int) -> bytes:
    """A flat-coloured side x side RGB PNG with a few rectangles: 64 MP compresses to a few hundred KB."""
    path = common.CACHE_DIR / "images" / f"flat-{side}x{side}-seed{seed}.png"
    if path.is_file():
        return path.read_bytes()
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    image = Image.new("RGB", (side, side), tuple(int(c) for c in rng.integers(0, 256, 3)))
    draw = ImageDraw.Draw(image)
    for _ in range(8):
        x0, y0 = (int(v) for v in rng.integers(0, side * 3 // 4, 2))
        draw.rectangle((x0, y0, x0 + side // 5, y0 + side // 5), fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    image.save(tmp, format="PNG", compress_level=9)
    tmp.replace(path)
    return path.read_bytes()


def small_png() -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 30, 40)).save(buffer, format="PNG")
    return buffer.getvalue()


def big_labels(count: int, chars: int) -> list[str]:
    """`count` distinct labels of `chars` random lowercase words (deterministic)."""
    rng = np.random.default_rng(13)
    return [f"{index} " + LABEL_ALPHABET[rng.integers(0, LABEL_ALPHABET.size, chars - len(f"{index} "))]
            .tobytes().decode("ascii") for index in range(count)]


def classify_body(images: list[bytes] | list[str], labels: list[str], templates: list[str] | None = None) -> bytes:
    inputs = [item if isinstance(item, str) else "data:image/png;base64," + base64.b64encode(item).decode()
              for item in images]
    payload: dict[str, Any] = {"input": inputs, "labels": labels}
    if templates is not None:
        payload["hypothesis_template"] = templates
    return json.dumps(payload, separators=(",", ":")).encode()


class BombServer:
    """A loopback HTTP server answering every GET with the bomb, `Content-Encoding: gzip, gzip`."""

    def __init__(self, body: bytes) -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the name http.server dispatches to
                self.send_response(200)
                self.send_header("Content-Type", "image/png")
                self.send_header("Content-Encoding", "gzip, gzip")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                with contextlib.suppress(OSError):
                    self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/bomb.png"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> BombServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


# --- one run: a fresh server, one case ------------------------------------------------------------


@contextlib.contextmanager
def environ(changes: dict[str, str | None]) -> Iterator[None]:
    """Temporarily set (or, with None, unset) environment variables; the server inherits them."""
    saved = {key: os.environ.get(key) for key in changes}
    try:
        for key, value in changes.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


async def send_all(url: str, bodies: list[bytes], timeout_s: float) -> list[tuple[int | str, str]]:
    """POST the bodies at once; (status, first 300 characters of an error) for each."""
    async with httpx.AsyncClient(timeout=timeout_s, limits=httpx.Limits(max_connections=len(bodies))) as client:
        async def one(body: bytes) -> tuple[int | str, str]:
            try:
                response = await client.post(url, content=body, headers={"content-type": "application/json"})
            except httpx.HTTPError as exc:
                return type(exc).__name__, str(exc)[:300]
            if response.status_code == 200:
                return 200, ""
            try:
                return response.status_code, str(response.json()["error"]["message"])[:300]
            except (ValueError, KeyError, TypeError):
                return response.status_code, response.text[:300]

        return list(await asyncio.gather(*(one(body) for body in bodies)))


def run_case(args: argparse.Namespace, *, side: str, case: str, bodies: list[bytes], src: Path | None,
             block_size: str | None, warm_body: bytes, rounds: int = 1) -> dict[str, Any]:
    port = loadgen.free_port()
    command = [sys.executable, "-m", "siglip_serve.cli", "serve", "--model", args.model, "--host", "127.0.0.1",
               "--port", str(port), "--device", "cpu", "--dtype", "float32", "--log-level", "warning",
               "--allow-private-urls", "--request-timeout-s", str(int(args.request_timeout_s))]
    changes = {"PYTHONPATH": str(src) if src is not None else None, "PILLOW_BLOCK_SIZE": block_size}
    row: dict[str, Any] = {"side": side, "case": case, "pillow_block_size": block_size or "(server's)",
                           "request_mb": round(sum(len(b) for b in bodies) / 1e6, 2), "requests": len(bodies),
                           "rounds": rounds}
    with environ(changes):
        server = loadgen.ServerProcess(command, port=port, name=f"memory-{side}-{case}")
    with server:
        server.wait_healthy(timeout_s=300)
        pid = server.proc.pid
        loadgen.post(f"{server.url}/v1/classify", warm_body)  # lazy initialisation is not the case's cost
        time.sleep(1.0)
        row["idle_mb"] = proc_status_mb(pid, "VmRSS")
        row["startup_peak_mb"] = proc_status_mb(pid, "VmHWM")
        row["hwm_reset"] = reset_peak(pid)
        started = time.perf_counter()
        with RssSampler(pid) as sampler:
            results = []
            for _ in range(rounds):  # rounds show memory kept from one round to the next
                results += asyncio.run(send_all(f"{server.url}/v1/classify", bodies, args.request_timeout_s))
            row["seconds"] = round(time.perf_counter() - started, 2)
            hwm = proc_status_mb(pid, "VmHWM") if row["hwm_reset"] else None
            time.sleep(args.settle_s)
        row["peak_mb"] = max(v for v in (hwm, sampler.max_mb) if v is not None)
        row["sampled_peak_mb"] = sampler.max_mb
        row["settled_mb"] = proc_status_mb(pid, "VmRSS")
        row["alive"] = server.proc.poll() is None
        row["statuses"] = sorted({str(status) for status, _ in results})
        row["message"] = next((message for _, message in results if message), "")
        if not row["alive"]:
            row["message"] = row["message"] or server.log_tail(300)
    for key in ("peak_mb", "settled_mb"):
        if row.get(key) is not None and row.get("idle_mb") is not None:
            row[key.replace("_mb", "_over_idle_mb")] = row[key] - row["idle_mb"]
    print(f"  {side:6} {case:10} block={row['pillow_block_size']:11} idle {row['idle_mb']:.0f} MiB, peak "
          f"{row['peak_mb']:.0f}, settled {row['settled_mb'] or 0:.0f}, HTTP {row['statuses']}, {row['seconds']} s",
          file=sys.stderr, flush=True)
    return row


def before_src(args: argparse.Namespace) -> Path:
    if args.before_src is not None:
        return args.before_src
    sha = subprocess.run(["git", "rev-parse", "--short", args.before_ref], cwd=common.REPO, check=True,
                         capture_output=True, text=True).stdout.strip()
    tree = Path("/tmp") / f"siglip-serve-before-{sha}"
    if not (tree / "src" / "siglip_serve").is_dir():
        subprocess.run(["git", "worktree", "add", "--detach", str(tree), sha], cwd=common.REPO, check=True)
    return tree / "src"


# --- decoding straight to the model's size (JPEG draft) -------------------------------------------


def probe_child(args: argparse.Namespace) -> None:
    """Child mode: decode the JPEG `--probe-repeats` times in this fresh process; JSON to stdout."""
    from PIL import Image

    from siglip_serve.preprocess.images import ImageTransform, prepare_image

    data = args.probe_path.read_bytes()
    size = args.probe_draft_size
    transform = ImageTransform(height=size, width=size, resample=Image.Resampling.BICUBIC)
    draft = size if args.probe == "draft" else None
    idle = proc_status_mb(os.getpid(), "VmRSS")
    times = []
    for _ in range(args.probe_repeats):
        started = time.perf_counter()
        prepare_image(data, transform, draft_size=draft)
        times.append(time.perf_counter() - started)
    print(json.dumps({"times_s": times, "idle_mb": idle, "peak_mb": proc_status_mb(os.getpid(), "VmHWM")}))


def decode_probe(args: argparse.Namespace) -> list[dict[str, Any]]:
    width, height = (int(v) for v in args.probe_jpeg.split("x"))
    data = common.photo_jpeg(width, height)
    path = common.CACHE_DIR / "images" / f"photo-{width}x{height}-seed0-q90.jpg"
    rows = []
    for mode in ("full", "draft"):
        out = subprocess.run([sys.executable, __file__, "--probe", mode, "--probe-path", str(path),
                              "--probe-draft-size", str(args.probe_draft_size),
                              "--probe-repeats", str(args.probe_repeats)],
                             check=True, capture_output=True, text=True, cwd=common.REPO)
        result = json.loads(out.stdout.strip().splitlines()[-1])
        stats = common.summarize(result["times_s"][1:] or result["times_s"])  # the first call warms up
        rows.append({"mode": mode, "jpeg": args.probe_jpeg, "jpeg_kb": round(len(data) / 1024),
                     "draft_size": args.probe_draft_size if mode == "draft" else None,
                     "ms_p50": stats["p50"] * 1e3, "ms_min": stats["min"] * 1e3,
                     "peak_over_idle_mb": result["peak_mb"] - result["idle_mb"], "times_s": result["times_s"]})
    return rows


# --- main -----------------------------------------------------------------------------------------


def summary_rows(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (case, Pillow block size): before and after side by side."""
    table: dict[tuple[str, str], dict[str, Any]] = {}
    for run in runs:
        row = table.setdefault((run["case"], run["pillow_block_size"]),
                               {"case": run["case"], "block": run["pillow_block_size"]})
        side = run["side"]
        row[f"{side}_idle"], row[f"{side}_peak"], row[f"{side}_settled"] = (
            run["idle_mb"], run["peak_mb"], run["settled_mb"])
        row[f"{side}_http"] = ", ".join(run["statuses"])
    return list(table.values())


def findings(runs: list[dict[str, Any]], probe: list[dict[str, Any]]) -> str:
    """What the tables say, in words, from this run's numbers."""
    lines = []
    by = {(r["side"], r["case"], r["pillow_block_size"]): r for r in runs}
    pairs = [(side, by.get((side, "big-pngs", "16m")), by.get((side, "big-pngs", "64m")))
             for side in ("before", "after")]
    pairs = [(side, small, large) for side, small, large in pairs if small and large]
    if pairs:
        lines.append("- Big PNGs, Pillow's default 16 MiB blocks -> 64 MiB blocks: " + "; ".join(
            f"{side}: kept {small['settled_over_idle_mb']:.0f} -> {large['settled_over_idle_mb']:.0f} MiB "
            f"after the requests, peak {small['peak_over_idle_mb']:.0f} -> {large['peak_over_idle_mb']:.0f} MiB "
            "over idle" for side, small, large in pairs) + ". The mechanism (glibc mallopt(3), M_MMAP_THRESHOLD): "
            "a freed mmap-ed chunk raises the dynamic mmap threshold up to 32 MiB, so later 16 MiB blocks come "
            "from the decode threads' heaps, which are trimmed only at their top; blocks over 32 MiB are always "
            "mmap-ed and unmapped when freed. The retained memory sits in each decode thread's arena (malloc(3)), "
            "so it also lets the peak exceed what the pixel budget allows.")
    full = next((row for row in probe if row["mode"] == "full"), None)
    draft = next((row for row in probe if row["mode"] == "draft"), None)
    if full and draft:
        lines.append(
            f"- Decoding straight to the model's size: `draft` decodes the {full['jpeg']} JPEG "
            f"{full['ms_p50'] / draft['ms_p50']:.1f}x faster ({full['ms_p50']:.0f} vs {draft['ms_p50']:.0f} ms) "
            f"with a peak of {draft['peak_over_idle_mb']:.0f} instead of {full['peak_over_idle_mb']:.0f} MiB over "
            "idle. Its pixels differ from a full decode (bench/decode.py gives the effect on embeddings), so "
            "it stays an opt-in (`--jpeg-draft`). Pillow implements `draft` for JPEG only (Pillow docs, "
            "Image.draft); for PNG and the other formats, `Image.reduce` works on the decoded image, so it "
            "saves neither the decode's time nor its memory (and is not exact either): the pixel budget is "
            "their bound.")
    return "\n".join(lines) if lines else "(no paired runs)"


def main() -> int:
    args = parse_args()
    if args.probe is not None:
        probe_child(args)
        return 0
    report = Report("memory_bounds", smoke=args.quick,
                    args={k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()})
    cases = [c for c in args.cases.split(",") if c]
    sides = [s for s in args.sides.split(",") if s]
    blocks = [b for b in args.block_variants.split(",") if b]
    src_of = {"after": None}
    if "before" in sides:
        src_of["before"] = before_src(args)
        report.add("before", {"ref": args.before_ref, "src": str(src_of["before"])})
    report.add("after", {"head": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=common.REPO,
                                                capture_output=True, text=True).stdout.strip(),
                         "dirty": bool(subprocess.run(["git", "status", "--porcelain", "src"], cwd=common.REPO,
                                                      capture_output=True, text=True).stdout.strip())})
    warm = classify_body([small_png()], ["a red circle", "a blue square"])
    bomb = stacked_gzip_bomb(args.bomb_mib)
    report.add("bomb", {"bytes": len(bomb), "inflated_mib": args.bomb_mib})
    runs: list[dict[str, Any]] = []
    with BombServer(bomb) as bomb_server:
        for case in cases:
            with stage(f"inputs for {case}"):
                if case == "bomb-url":
                    bodies = [classify_body([bomb_server.url], ["a red circle"])]
                elif case == "big-labels":
                    bodies = [classify_body([small_png()], big_labels(args.big_labels, args.label_chars))]
                elif case == "prompts":
                    templates = [f"template {t}: a photo of {{}}." for t in range(args.templates)]
                    bodies = [classify_body([small_png()], common.make_labels(args.labels), templates)]
                elif case == "big-pngs":
                    bodies = [classify_body([big_png(args.png_side, seed)], ["a red circle"])
                              for seed in range(args.pngs)]
                    report.add("png_bytes", [len(big_png(args.png_side, seed)) for seed in range(args.pngs)])
                else:
                    raise SystemExit(f"unknown case {case!r}")
            variants = [None, *blocks] if case == "big-pngs" else [None]
            for block in variants:
                for side in sides:
                    with stage(f"{side}: {case}" + (f" PILLOW_BLOCK_SIZE={block}" if block else "")):
                        runs.append(run_case(args, side=side, case=case, bodies=bodies, src=src_of[side],
                                             block_size=block, warm_body=warm,
                                             rounds=args.png_rounds if case == "big-pngs" else 1))
    report.add("runs", runs)
    mb = ".0f"
    columns = [("case", "case", ""), ("block", "PILLOW_BLOCK_SIZE", "")]
    for side in sides:
        columns += [(f"{side}_idle", f"{side} idle MiB", mb), (f"{side}_peak", f"{side} peak MiB", mb),
                    (f"{side}_settled", f"{side} settled MiB", mb), (f"{side}_http", f"{side} HTTP", "")]
    report.section("Server RSS per case (fresh server each)", common.markdown_table(summary_rows(runs), columns)
                   + f"\n\nBomb: {len(bomb)} bytes on the wire, {args.bomb_mib} MiB inflated. "
                   f"Settled: {args.settle_s:g} s after the last response. '(server's)': PILLOW_BLOCK_SIZE unset.")
    report.section("Every run", common.markdown_table(runs, [
        ("side", "side", ""), ("case", "case", ""), ("pillow_block_size", "block", ""),
        ("request_mb", "request MB", ".2f"), ("rounds", "rounds", ""), ("idle_mb", "idle", mb), ("peak_mb", "peak", mb),
        ("peak_over_idle_mb", "peak - idle", mb), ("settled_over_idle_mb", "settled - idle", mb),
        ("seconds", "s", ".1f"), ("statuses", "HTTP", ""), ("message", "first error", "")]))
    if args.probe_jpeg:
        with stage(f"decode probe {args.probe_jpeg}"):
            probe = decode_probe(args)
        report.add("decode_probe", probe)
        report.section("Decoding a large JPEG: full size vs draft (fresh process each)", common.markdown_table(
            probe, [("mode", "decode", ""), ("jpeg", "JPEG", ""), ("jpeg_kb", "KB", ""),
                    ("draft_size", "draft size", ""), ("ms_p50", "ms p50", ".0f"), ("ms_min", "ms min", ".0f"),
                    ("peak_over_idle_mb", "peak RSS over idle, MiB", ".0f")]))
    report.section("Findings", findings(runs, report.data.get("decode_probe", [])))
    report.write(args.out_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
