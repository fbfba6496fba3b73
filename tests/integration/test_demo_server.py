"""`siglip-serve serve` with no --model serves the shipped demo model, and it knows its shapes.

The retrieval bar of the issue is checked here end to end: for 48 images, one per
(color, shape), each "a {color} {shape}" query ranks its own image first through /v1/rerank
for at least 85% of the queries. The images are drawn by bench/heldout_shapes.py (code that
shares nothing with the training generator), "clean" preset: one filled shape on white or light gray.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from heldout_generator import heldout_shapes
from live import b64, live_server

from siglip_serve.demo import DEMO_MODEL_NAME
from siglip_serve.training.evaluate import combo_label

SEED = 3_000_017


def one_per_combo(seed: int) -> list:
    """48 clean drawings from bench/heldout_shapes.py, one per (color, shape)."""
    return heldout_shapes.held_out_images(48, preset="clean", seed=seed)


def png_bytes(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def demo_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    log = tmp_path_factory.mktemp("logs") / "demo.log"
    with live_server({}, ["--dtype", "auto"], log) as server:  # no --model at all; the default dtype
        yield server.url


@pytest.fixture(scope="module")
def http(demo_server: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=demo_server, timeout=120) as client:
        yield client


def test_the_default_model_is_the_demo(http: httpx.Client) -> None:
    models = [m["id"] for m in http.get("/v1/models").json()["data"]]
    assert models == [DEMO_MODEL_NAME]


def test_classify_names_color_and_shape(http: httpx.Client) -> None:
    samples = one_per_combo(SEED)[:12]
    labels = sorted({combo_label(s.color, s.shape) for s in samples})
    body = {"input": [b64(png_bytes(s.image)) for s in samples], "labels": labels}
    response = http.post("/v1/classify", json=body)
    assert response.status_code == 200, response.text
    predicted = [row["prediction"] for row in response.json()["data"]]
    truth = [combo_label(s.color, s.shape) for s in samples]
    assert sum(p == t for p, t in zip(predicted, truth, strict=True)) >= 11, list(zip(predicted, truth, strict=True))


def test_text_to_image_recall_at_1_through_rerank(http: httpx.Client) -> None:
    samples = one_per_combo(SEED)
    documents = [{"image": b64(png_bytes(s.image))} for s in samples]
    hits = 0
    for index, sample in enumerate(samples):
        body = {"query": combo_label(sample.color, sample.shape), "documents": documents, "top_n": 1}
        response = http.post("/v1/rerank", json=body)
        assert response.status_code == 200, response.text
        hits += response.json()["results"][0]["index"] == index
    assert hits / len(samples) >= 0.85, f"recall@1 {hits}/{len(samples)}"


def test_console_classify_works_offline_without_a_model_flag(tmp_path: Path) -> None:
    sample = next(s for s in one_per_combo(SEED + 1) if (s.color, s.shape) == ("red", "circle"))
    path = tmp_path / "shape.png"
    sample.image.save(path)
    script = shutil.which("siglip-serve", path=str(Path(sys.executable).parent)) or shutil.which("siglip-serve")
    assert script is not None
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIGLIP_SERVE_")}
    env["HF_HUB_OFFLINE"] = "1"
    completed = subprocess.run([script, "classify", str(path), "--labels", "red circle,blue square", "--json"],
                               capture_output=True, text=True, env=env, timeout=120, check=False)
    assert completed.returncode == 0, completed.stderr
    predictions = json.loads(completed.stdout)[0]["predictions"]
    assert predictions[0]["label"] == "red circle" and predictions[0]["score"] > 0.5 > predictions[1]["score"]
