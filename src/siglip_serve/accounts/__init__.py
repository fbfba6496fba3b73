"""API keys, limits and usage metering (issue #17): the hosted-API side of siglip-serve.

- `types`: the plain types and the two storage interfaces, `KeyStore` and `UsageSink`.
- `keys`: the key format, keyed hashes (HMAC-SHA256) and the server secret.
- `schema`, `migrations`, `db`, `store`: one SQLAlchemy 2 schema, Alembic migrations run at startup,
  SQLite in the data directory or PostgreSQL; `SqlAccountStore` implements both interfaces.
- `limits`: token buckets per key (per process) and quotas (shared through the database).
- `metering`: buffered usage written every second in numbered batches; per-key Prometheus counters.
- `pricing`: prices per model from settings. `service.Accounts`: what the HTTP gate and routes call.
- `manage`: opening the database and key administration, shared by `siglip-serve keys` and /v1/admin/keys.

Only `db` and `store` import SQLAlchemy, and nothing here imports torch.
"""

from siglip_serve.accounts.types import KeyRecord, KeyStore, Limits, NewKey, UsageEvent, UsageRow, UsageSink

__all__ = ["KeyRecord", "KeyStore", "Limits", "NewKey", "UsageEvent", "UsageRow", "UsageSink"]
