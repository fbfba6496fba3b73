"""The baseline: what a user would write without siglip-serve.

transformers' `pipeline("zero-shot-image-classification")` behind a plain FastAPI endpoint, one
request at a time through the pipeline (a lock: pipelines are not documented as thread-safe, and
concurrent torch calls would only oversubscribe the cores), with the pipeline's recommended
settings: `hypothesis_template="This is a photo of {}."` (the pipeline's default and the SigLIP
model cards). Image embeddings the same way: the pipeline's image processor and
`model.get_image_features`.

    python bench/baseline_app.py --model DIR --port 8100       # run by http_e2e.py as a subprocess

Facts about the pipeline (transformers 5.23, `pipelines/zero_shot_image_classification.py`),
also reported by GET /info:
- For `model_type` containing "siglip" it tokenizes with `padding="max_length", max_length=64,
  truncation=True` (64 is hard-coded, not read from the config) and scores with a sigmoid.
- `SiglipTokenizer.model_input_names` is ["input_ids", "attention_mask"], so the pipeline passes an
  attention mask to `SiglipModel`, which SigLIP's text tower was not trained with (notes §2).
  `tokenizer_kwargs` is accepted by `preprocess` but never routed to it by `_sanitize_parameters`,
  so a caller cannot turn that off through the pipeline.
- Without torchvision, `pipeline(...)` itself picks `SiglipImageProcessorPil` (the image processor
  auto class falls back to the PIL backend); `use_fast=False` or passing
  `image_processor=SiglipImageProcessorPil.from_pretrained(DIR)` gives the same class.
"""

from __future__ import annotations

import argparse
import base64
import io
import threading
from typing import Any

import torch
import uvicorn
from fastapi import FastAPI
from PIL import Image
from pydantic import BaseModel

TEMPLATE = "This is a photo of {}."


class ClassifyBody(BaseModel):
    image: str  # base64 image bytes, as our /v1/classify takes them
    labels: list[str]
    hypothesis_template: str = TEMPLATE


class EmbedBody(BaseModel):
    image: str


def load_pipeline(model_dir: str, *, device: str, explicit_image_processor: bool) -> Any:
    from transformers import SiglipImageProcessorPil, pipeline

    kwargs: dict[str, Any] = {}
    if explicit_image_processor:
        kwargs["image_processor"] = SiglipImageProcessorPil.from_pretrained(model_dir)
    return pipeline("zero-shot-image-classification", model=model_dir, device=device, dtype=torch.float32,
                    **kwargs)


def pipeline_facts(pipe: Any) -> dict[str, Any]:
    tokenized = pipe.tokenizer(["This is a photo of a cat."], padding="max_length", max_length=64, truncation=True,
                               return_tensors="pt")
    return {
        "image_processor": type(pipe.image_processor).__name__,
        "tokenizer": type(pipe.tokenizer).__name__,
        "tokenizer_outputs": sorted(tokenized.keys()),
        "passes_attention_mask": "attention_mask" in tokenized,
        "pipeline_padding": "max_length, max_length=64, truncation=True (model_type contains 'siglip')",
        "attn_implementation": getattr(pipe.model.config, "_attn_implementation", None),
        "model_dtype": str(pipe.model.dtype),
        "torch_threads": torch.get_num_threads(),
    }


def create_app(pipe: Any) -> FastAPI:
    app = FastAPI(title="baseline: transformers zero-shot pipeline")
    lock = threading.Lock()

    def open_image(data: str) -> Image.Image:
        return Image.open(io.BytesIO(base64.b64decode(data)))  # decoded lazily, inside the pipeline

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/info")
    def info() -> dict[str, Any]:
        return pipeline_facts(pipe)

    # Plain `def` endpoints: FastAPI runs them in its thread pool; the lock serializes the model.
    @app.post("/classify")
    def classify(body: ClassifyBody) -> list[dict[str, Any]]:
        image = open_image(body.image)
        with lock:
            return pipe(image, candidate_labels=body.labels, hypothesis_template=body.hypothesis_template)

    @app.post("/embed")
    def embed(body: EmbedBody) -> dict[str, list[float]]:
        image = open_image(body.image).convert("RGB")
        with lock, torch.inference_mode():
            inputs = pipe.image_processor(images=[image], return_tensors="pt").to(pipe.device)
            embeds = pipe.model.get_image_features(**inputs).pooler_output
            embeds = torch.nn.functional.normalize(embeds.float(), dim=-1)
        return {"embedding": embeds[0].cpu().tolist()}

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="Checkpoint directory.")
    parser.add_argument("--port", type=int, default=8100)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's).")
    parser.add_argument("--explicit-image-processor", action="store_true",
                        help="Pass image_processor=SiglipImageProcessorPil.from_pretrained(DIR) explicitly.")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    pipe = load_pipeline(args.model, device=args.device, explicit_image_processor=args.explicit_image_processor)
    uvicorn.run(create_app(pipe), host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
