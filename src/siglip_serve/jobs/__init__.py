"""Offline jobs over many images: `siglip-serve embed` (issue #14, section 1).

Nothing heavy is imported here or in `jobs.cli`, so that `siglip-serve --help` stays fast: torch,
pyarrow and lancedb are imported only when a job runs.
"""
