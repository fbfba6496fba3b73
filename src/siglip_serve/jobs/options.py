"""What `siglip-serve embed` can be asked to do: the job's options, on Ray or not.

Each field is declared once, here, with its default and its help (`option`); the command's flags are
generated from these fields (`option_flags.py`). The model choice is declared with classify's
(`command_options.py`); the URL limits are the server's settings of the same names (`config.py`), defaults
and help included. Free of torch, so that `embed --help` does not load it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from siglip_serve.command_options import model_option, setting_help, setting_option
from siglip_serve.config import default
from siglip_serve.option_flags import comma_list, non_negative_float, option, positive_float, positive_int
from siglip_serve.preprocess.fetch import FetchPolicy
from siglip_serve.templates import DEFAULT_TEMPLATE


@dataclass
class EmbedOptions:
    sources: list[str] = option(
        positional=True, metavar="SOURCE",
        help="A directory (recursive), a glob ('photos/**/*.jpg', quoted) or a manifest (.jsonl, .csv, .parquet) with "
             "an image column (path relative to the manifest, or http(s) URL), optional id and text columns; its "
             "other columns are kept as metadata.")
    out: str = option(help="DIR/NAME: LanceDB table NAME in database DIR (stored as DIR/NAME.lance); FILE.parquet: "
                           "one Parquet file. A rerun with the same --out resumes.")
    model: str = model_option()
    device: str = setting_option("device")
    dtype: str = setting_option("dtype")
    batch_size: int = option(32, parse=positive_int, help="Images per model call.")
    workers: int | None = option(None, parse=positive_int, none_means="one per core, at most 8",
                                 help="Decoding threads.")
    format: str | None = option(None, choices=("lance", "parquet"),
                                none_means="parquet when --out ends in .parquet, else lance",
                                help="Output format.")
    image_column: str = option("image", help="Manifest column with the image.")
    id_column: str = option("id", help="Manifest column with the id (without it the image value is the id).")
    text_column: str | None = option(None, none_means="none", help="Manifest column to embed as text "
                                                                   "(text_embedding).")
    labels: list[str] | None = option(
        None, parse=comma_list, metavar="LABELS", none_means="no tagging",
        help='Comma-separated labels for zero-shot tagging, e.g. "cat,dog,car": adds labels and scores (sigmoid '
             f'probabilities, template "{DEFAULT_TEMPLATE}").')
    top_k: int | None = option(None, parse=positive_int, none_means="all labels",
                               help="Keep only the best K labels per image.")
    half: bool = option(False, help="Store embeddings as float16 (half the size).")
    jpeg_draft: bool = option(False, help="Decode large JPEGs at reduced scale (several times faster; cosine "
                                          ">0.9999 to the full decode, see bench/results/decode.md).")
    quiet: bool = option(False, help="No progress bar (the summary line is still printed).")
    commit_rows: int = option(1024, flag="--commit-every", parse=positive_int, metavar="ROWS",
                              help="Commit after this many rows; a kill loses at most the uncommitted rows.")
    commit_seconds: float = option(60.0, parse=non_negative_float, metavar="SECONDS",
                                   help="Also commit at least this often.")
    # Set from UrlOptions by the command, or given directly by library callers: not a flag of its own.
    policy: FetchPolicy = field(default_factory=FetchPolicy)


@dataclass(frozen=True)
class UrlOptions:
    """How manifest URLs are fetched: `EmbedOptions.policy` from flags."""

    allow_private_urls: bool = option(default("allow_private_urls"), help=setting_help("allow_private_urls"))
    fetch_timeout: float = option(default("fetch_timeout_s"), parse=positive_float,
                                  metavar="SECONDS", help=setting_help("fetch_timeout_s", ", in seconds"))

    def policy(self) -> FetchPolicy:
        return FetchPolicy(allow_private=self.allow_private_urls, timeout_s=self.fetch_timeout)


@dataclass
class RayOptions:
    """`siglip-serve embed --ray`: where and how wide the job runs (scaling/data_job.py)."""

    address: str | None = option(None, flag="--ray-address", none_means="a local cluster for this job",
                                 help="Cluster to join (e.g. auto or HOST:6379).")
    actors: int = option(1, parse=positive_int, help="Model actors (the actor pool's size).")
    gpus_per_actor: float = option(0.0, parse=non_negative_float, help="GPUs per actor (a fraction shares a GPU).")
    cpus_per_actor: float = option(1.0, parse=non_negative_float, help="CPUs per actor, also its torch threads "
                                                                       "(at least 1).")
    decode_cpus: float = option(1.0, parse=non_negative_float, help="CPUs per decode task; its decoding threads "
                                                                    "are max(1, int(this)).")
