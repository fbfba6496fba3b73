"""Server settings, each declared once.

The declaration gives the type, default and help; the environment variable is
``SIGLIP_SERVE_<NAME>`` and the CLI flag ``--<name-with-dashes>`` (see
`cli.add_settings_arguments`). Precedence: CLI flag, then environment, then default.
"""

from __future__ import annotations

import os
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, field_validator
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
    dtype: str = Field("auto", description="auto (float32: exact; see README for when bfloat16 is faster), "
                       "float32, float16 or bfloat16.")
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
        "memory (RGB is 4 bytes per pixel; compositing alpha needs up to 12)."))
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
    data_dir: str = Field(default_factory=lambda: default_data_dir(), description=(
        "Where collections live: a LanceDB database, one Lance table per collection (DIR/NAME.lance), so "
        "`siglip-serve embed ... --out DIR/NAME` makes collection NAME. A local path or an object-store URI "
        "(s3://, gs://, az://). Default: $XDG_DATA_HOME/siglip-serve, else ~/.local/share/siglip-serve."))
    max_collection_items: int = Field(256, ge=1, description="Most items in one collection ingest request.")
    max_top_k: int = Field(1000, ge=1, description="Largest top_k of a collection search.")
    thumbnail_px: int = Field(128, ge=0, le=1024, description=(
        "Longest side of the JPEG thumbnail stored with each image ingested into a collection (returned by "
        "searches with with_thumbnails, shown by the playground). 0: store none."))
    ann_index_threshold: int = Field(20_000, ge=0, description=(
        "Items at which a collection gets an ANN index (IVF_HNSW_SQ, built in the background after an ingest); "
        "below it every search is exact. 0: never automatically (POST /v1/collections/NAME/index still builds one)."))
    max_feature_floats: int = Field(8 * 1024 * 1024, ge=1, description=(
        "Most floats one /v1/vision/features response holds (images x patches x width; a NaFlex image counted at "
        "its patch budget); over it: 413 before any work. The default passes 9 so400m-384 images (729 x 1152 "
        "floats, 3.4 MB each as float32) or 55 base-224 ones (196 x 768)."))

    # --- keys, limits and usage (accounts/) ---
    database_url: str | None = Field(None, description=(
        "Database of API keys and usage (SQLAlchemy URL). Default: SQLite in DATA_DIR/accounts.sqlite3, for one "
        "machine. Several machines sharing keys and usage: postgresql://USER:PASSWORD@HOST/DB (psycopg 3)."))
    key_secret: SecretStr | None = Field(None, description=(
        "Secret of the keyed hashes (HMAC-SHA256) of stored API keys; prefer the environment variable. Default: "
        "DATA_DIR/key-secret, made on first use. Every process sharing a database needs the same secret."))
    replicas: int = Field(1, ge=1, description=(
        "Server processes or replicas sharing the key database: each enforces 1/N of every key's per-minute "
        "limits (rate limits are counted per process; quotas are shared through the database)."))
    key_cache_ttl_s: float = Field(0.0, ge=0, le=60, description=(
        "0: read the key revision on every request, so a key revoked anywhere is refused on its next request. "
        "N > 0: read it at most every N s (saves a database round trip per request on PostgreSQL; a key revoked "
        "by another process is refused within N s; revocations through this server stay immediate)."))
    usage_flush_interval_s: float = Field(1.0, gt=0, le=60, description=(
        "How often metered usage is written to the database; a crash loses at most about this much."))
    price_per_1k_images: float = Field(0.235, ge=0, description=(
        "USD per 1,000 images for usage costs and credit. The default is an EXAMPLE (the model pages' "
        "estimate), not a real price: set your own."))
    price_per_1m_text_tokens: float = Field(0.02, ge=0, description=(
        "USD per million text tokens for usage costs and credit. The default is an EXAMPLE: set your own."))
    model_price: Annotated[list[str], NoDecode] = Field(default_factory=list, description=(
        "Price of one served model: NAME=USD_PER_1K_IMAGES[:USD_PER_1M_TEXT_TOKENS]; repeat for several "
        "(the environment variable takes a comma-separated list). Others use the two prices above."))
    metrics_max_keys: int = Field(50, ge=0, description=(
        "API key names with their own label in the Prometheus per-key counters; further keys count as 'other'."))

    # --- the CPU runtime (models/runtime_choice.py, models/openvino_backend.py) ---
    backend: Literal["torch", "openvino", "auto"] = Field("auto", description=(
        "Runtime of the towers: torch; openvino (both towers converted to OpenVINO, CPU only, fixed-resolution "
        "checkpoints; needs the cpu-fast extra); auto (openvino where it applies: the CPU, OpenVINO installed, a "
        "fixed-resolution checkpoint; torch elsewhere, e.g. GPUs and NaFlex). auto, the default, rests on "
        "bench/results/openvino_cpu.md: OpenVINO float32 was faster than torch float32 in every condition measured "
        "and equal to it within 1e-6. The first start converts the model (cached, see --openvino-cache-dir)."))
    quantize: Literal["none", "int8-weights", "int8"] = Field("none", description=(
        "OpenVINO only: int8-weights (NNCF weight compression, data-free) or int8 (weights and activations of the "
        "vision tower, calibrated on --calibration images). Each is checked against float32 at conversion; "
        "below --quantize-min-cosine it falls back a step (int8 -> int8-weights -> none)."))
    calibration: str | None = Field(None, description=(
        "Directory of images to calibrate --quantize int8 on (every fifth is held out for the check). "
        "Default: a synthetic photo-like set, which says nothing about your images."))
    quantize_min_cosine: float = Field(0.995, ge=0, le=1, description=(
        "Least cosine vs float32 on held-out inputs at which a quantized tower is served."))
    openvino_cache_dir: str | None = Field(None, description=(
        "Where converted OpenVINO models are cached, keyed by checkpoint content and options. "
        "Default: $XDG_CACHE_HOME/siglip-serve/openvino, else ~/.cache/siglip-serve/openvino."))

    # --- Ray Serve replicas (scaling/serve_app.py; needs the ray extra) ---
    ray: bool = Field(False, description=(
        "Serve through Ray Serve: --replicas copies of this server (each with its own engine) behind Serve's "
        "proxy on --host/--port, or --autoscale MIN:MAX of them."))
    ray_address: str | None = Field(None, description=(
        "Ray cluster to join (e.g. 'auto' or HOST:6379); default: start a local one that lives as long as "
        "this command."))
    autoscale: str | None = Field(None, pattern=r"^\d+:\d+$", description=(
        "With --ray: MIN:MAX replicas, scaled by Serve on --target-ongoing-requests (instead of --replicas). "
        "Per-key rate limits are then divided by MAX."))
    ray_num_cpus: float = Field(1.0, ge=0, description="With --ray: CPUs reserved per replica (torch threads).")
    ray_num_gpus: float = Field(0.0, ge=0, description=(
        "With --ray: GPUs per replica (1 for a GPU each; a fraction shares one GPU between replicas)."))
    max_ongoing_requests: int = Field(64, ge=1, description=(
        "With --ray: requests Serve lets into one replica at once; the rest wait in Serve's queue. Keep it "
        "above max_batch_size so that the replica's batcher sees full batches."))
    target_ongoing_requests: float = Field(16.0, gt=0, description=(
        "With --autoscale: ongoing requests per replica Serve aims for when it adds or removes replicas."))
    ray_metrics_dir: str | None = Field(None, description=(
        "With --ray: each replica also serves its own Prometheus metrics on a free port of its node and writes "
        "a file_sd target file (REPLICA.json) into this directory for Prometheus to discover. Default: none "
        "(GET /metrics through Serve shows the replica that answers it)."))

    @field_validator("model", "api_key", mode="before")
    @classmethod
    def _split_commas(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("model_price", mode="before")
    @classmethod
    def _split_price_commas(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value


def default_data_dir() -> str:
    """$XDG_DATA_HOME/siglip-serve, else ~/.local/share/siglip-serve (the XDG base directory spec's default)."""
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return os.path.join(base, "siglip-serve")


def default(name: str) -> Any:
    """The declared default of a setting: the one place other layers take their defaults from."""
    return Settings.model_fields[name].get_default(call_default_factory=True)


def parse_model_entry(entry: str) -> tuple[str, str]:
    """'NAME=SPEC' -> (NAME, SPEC); a bare SPEC is served under its own name."""
    name, sep, spec = entry.partition("=")
    if sep and name and spec and "/" not in name:
        return name, spec
    return entry, entry
