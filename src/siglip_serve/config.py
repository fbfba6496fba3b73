"""Server settings, each declared once.

The declaration gives the type, default and help; the environment variable is
``SIGLIP_SERVE_<NAME>`` and the CLI flag ``--<name-with-dashes>`` (see
`cli.add_settings_arguments`). Precedence: CLI flag, then environment, then default.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from siglip_serve.demo import DEMO_MODEL_NAME

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
    max_queue_size: int = Field(1024, ge=1, description=(
        "Items (images and uncached texts) admitted per model at once, from fetch to forward; a request that "
        "cannot be admitted whole gets 429 at once. A request larger than this waits for an idle model."))
    request_timeout_s: float = Field(60.0, gt=0, description="Deadline of a request; past it the answer is 504.")
    label_cache_bytes: int = Field(128 * 1024 * 1024, ge=0, description=(
        "Bytes of text embeddings (with their hashed keys) kept in the LRU label cache; 0 turns it off."))
    api_key: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Accepted bearer API key; repeat for several. None set: no authentication.",
    )
    allow_private_urls: bool = Field(
        False, description="Let image URLs resolve to loopback, private or link-local addresses."
    )
    fetch_timeout_s: float = Field(10.0, gt=0, description="Timeout for fetching one image URL.")
    max_image_bytes: int = Field(20 * 1024 * 1024, ge=1, description="Largest image file, fetched or inline.")
    max_image_pixels: int = Field(64_000_000, ge=1, description=(
        "Largest image (width x height), checked from its header before decoding; 64 MP passes an 8000x8000 "
        "photo and stops decompression bombs."))
    max_decode_pixels: int = Field(128_000_000, ge=1, description=(
        "Pixels being decoded at once across all requests; further decodes wait their turn. Bounds decode "
        "memory (about 6 bytes per pixel while converting to RGB)."))
    max_request_bytes: int = Field(64 * 1024 * 1024, ge=1, description="Largest request body; over it: 413.")
    max_inputs: int = Field(256, ge=1, description="Most inputs (images or texts) in one request.")
    max_labels: int = Field(2048, ge=1, description="Most candidate labels in one classify request.")
    max_documents: int = Field(1024, ge=1, description="Most documents in one rerank request.")
    max_templates: int = Field(16, ge=1, description="Most hypothesis templates in one classify request.")
    max_prompts: int = Field(4096, ge=1, description=(
        "Most prompts (templates x labels) in one classify request; each is one text encoding when not cached."))
    max_text_chars: int = Field(2048, ge=1, description=(
        "Longest label, template or text in characters (a text is cut to the model's 64 tokens anyway)."))
    header_timeout_s: float = Field(10.0, gt=0, description=(
        "Time a client has to send a request's headers, counted from the connection or the previous response; "
        "past it the connection is closed."))
    body_timeout_s: float = Field(60.0, gt=0, description="Time a client has to send a request body; past it: 408.")
    keep_alive_timeout_s: float = Field(5.0, gt=0, description="Idle keep-alive connections are closed after this.")
    max_connections: int = Field(512, ge=1, description="Concurrent connections; more are answered 503.")
    max_header_bytes: int = Field(8192, ge=256, description="Longest header line; longer: 431.")
    max_url_bytes: int = Field(8192, ge=256, description="Longest request target (path and query); longer: 414.")
    protect_docs_and_metrics: bool = Field(False, description=(
        "With API keys set, also require a key for /metrics, /docs, /redoc and /openapi.json (/health stays open)."))
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


def default(name: str) -> Any:
    """The declared default of a setting: the one place other layers take their defaults from."""
    return Settings.model_fields[name].get_default(call_default_factory=True)


def parse_model_entry(entry: str) -> tuple[str, str]:
    """'NAME=SPEC' -> (NAME, SPEC); a bare SPEC is served under its own name."""
    name, sep, spec = entry.partition("=")
    if sep and name and spec and "/" not in name:
        return name, spec
    return entry, entry
