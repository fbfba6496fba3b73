"""Server settings, each declared once.

The declaration gives the type, default and help; the environment variable is
``SIGLIP_SERVE_<NAME>`` and the CLI flag ``--<name-with-dashes>`` (see
`cli.add_settings_arguments`). Precedence: CLI flag, then environment, then default.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from siglip_serve.demo import DEMO_MODEL_NAME
from siglip_serve.preprocess.images import DEFAULT_MAX_PIXELS

ENV_PREFIX = "SIGLIP_SERVE_"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid", frozen=True)

    model: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: [DEMO_MODEL_NAME],
        description="Checkpoint to serve: SPEC or NAME=SPEC (a local directory, a hub id, or siglip-demo-shapes, "
        "the small demo model in the package). Repeat for several models; the environment variable takes a "
        "comma-separated list.",
    )
    host: str = Field("127.0.0.1", description="Address to listen on.")
    port: int = Field(8000, ge=0, le=65535, description="Port to listen on.")
    device: str = Field("auto", description="auto (CUDA when present), cpu, cuda or cuda:N.")
    dtype: str = Field("auto", description="auto (bfloat16 on CPUs with native bf16, else float32), float32, "
                       "float16 or bfloat16.")
    max_batch_size: int = Field(32, ge=1, description="Most items one model forward takes.")
    max_wait_ms: float = Field(0.0, ge=0, description=(
        "How long a batch waits for more items before it asks for the device (0: not at all; items that "
        "arrive while the device is busy join the next batch anyway)."))
    max_queue_size: int = Field(1024, ge=1, description="Items waiting per tower before new requests get 429.")
    request_timeout_s: float = Field(60.0, gt=0, description="Deadline of a request; past it the answer is 504.")
    label_cache_size: int = Field(20_000, ge=0, description="Text embeddings kept in the LRU label cache.")
    api_key: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Accepted bearer API key; repeat for several. None set: no authentication.",
    )
    allow_private_urls: bool = Field(
        False, description="Let image URLs resolve to loopback, private or link-local addresses."
    )
    fetch_timeout_s: float = Field(10.0, gt=0, description="Timeout for fetching one image URL.")
    max_image_bytes: int = Field(20 * 1024 * 1024, ge=1, description="Largest image file, fetched or inline.")
    max_image_pixels: int = Field(DEFAULT_MAX_PIXELS, ge=1, description="Largest decoded image (width x height).")
    max_request_bytes: int = Field(64 * 1024 * 1024, ge=1, description="Largest request body; over it: 413.")
    max_inputs: int = Field(256, ge=1, description="Most inputs (images or texts) in one request.")
    max_labels: int = Field(2048, ge=1, description="Most candidate labels in one classify request.")
    max_documents: int = Field(1024, ge=1, description="Most documents in one rerank request.")
    jpeg_draft: bool = Field(
        False, description="Decode large JPEGs at 1/2-1/8 scale in the DCT domain (faster; pixels differ slightly)."
    )
    compile: bool = Field(False, description=(
        "torch.compile the towers for batch sizes padded to powers of two (CUDA graphs on a GPU); "
        "every size is compiled at startup, which takes minutes."))
    decode_workers: int = Field(4, ge=1, description="Threads that fetch, decode and preprocess images.")
    torch_threads: int | None = Field(None, ge=1, description="torch intra-op threads (default: torch's).")
    log_level: str = Field("info", description="Log level: debug, info, warning or error.")

    @field_validator("model", "api_key", mode="before")
    @classmethod
    def _split_commas(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value


def parse_model_entry(entry: str) -> tuple[str, str]:
    """'NAME=SPEC' -> (NAME, SPEC); a bare SPEC is served under its own name."""
    name, sep, spec = entry.partition("=")
    if sep and name and spec and "/" not in name:
        return name, spec
    return entry, entry
