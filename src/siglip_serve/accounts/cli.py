"""`siglip-serve keys create|list|revoke|usage`: key administration on the command line.

The same functions as the `/v1/admin/keys` routes (accounts.manage), straight on the database the server
uses (--data-dir / --database-url / --key-secret, or their environment variables). Changes reach running
servers on their next request (they read the key revision on every request). SQLAlchemy is imported only
when a command runs, so `siglip-serve --help` stays fast.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from typing import Any

from siglip_serve.config import ENV_PREFIX, Settings

DATABASE_SETTINGS = ("data_dir", "database_url", "key_secret")


def add_keys_arguments(parser: argparse.ArgumentParser) -> None:
    common = argparse.ArgumentParser(add_help=False)
    for name in DATABASE_SETTINGS:
        field = Settings.model_fields[name]
        common.add_argument("--" + name.replace("_", "-"), dest=name, default=None,
                            help=f"{field.description} [env {ENV_PREFIX}{name.upper()}]")
    common.add_argument("--json", action="store_true", help="Print JSON instead of a table.")
    commands = parser.add_subparsers(dest="keys_command", required=True)

    create = commands.add_parser("create", parents=[common], help="Create a key; it is printed once.")
    create.add_argument("name", help="A name for the key (shown in lists, usage and metrics).")
    create.add_argument("--admin", action="store_true", help="May use /v1/admin/* and read every key's usage.")
    create.add_argument("--expires", default=None, help="A duration from now (30d, 12h, 2w) or an ISO date (UTC).")
    create.add_argument("--models", default=None, help="Comma-separated served model names it may use (default all).")
    create.add_argument("--routes", default=None,
                        help="Comma-separated path prefixes it may use, e.g. /v1/classify (default all).")
    create.add_argument("--rpm", type=int, default=None, help="Requests per minute.")
    create.add_argument("--images-per-minute", type=int, default=None)
    create.add_argument("--images-per-day", type=int, default=None, help="Images per UTC day.")
    create.add_argument("--credit-usd", type=float, default=None, help="Lifetime budget at the configured prices.")

    listing = commands.add_parser("list", parents=[common], help="List keys (prefixes only, never the keys).")
    listing.add_argument("--all", action="store_true", help="Include revoked keys.")

    revoke = commands.add_parser("revoke", parents=[common], help="Revoke a key; servers refuse it at once.")
    revoke.add_argument("key", help="The key's id or prefix (as listed).")

    usage = commands.add_parser("usage", parents=[common], help="Usage and cost by UTC day and model.")
    usage.add_argument("key", nargs="?", default="all", help="A key id or prefix, or all (default).")
    usage.add_argument("--days", type=int, default=30, help="Days back from today, today included (default 30).")


def run_keys(args: argparse.Namespace) -> int:
    from siglip_serve.accounts import manage
    from siglip_serve.accounts.service import utcnow

    settings = Settings(**{name: getattr(args, name) for name in DATABASE_SETTINGS if getattr(args, name)})
    store, hasher = manage.open_store(settings)
    try:
        now = utcnow()
        if args.keys_command == "create":
            created = manage.create_key(store, hasher, new_key_from(args, now), now=now)
            row = {**record_row(created.record), "key": created.key}
            if args.json:
                print(json.dumps(row, indent=2))
            else:
                print(f"created key {created.record.id} ({created.record.name}):\n\n    {created.key}\n\n"
                      "Store it now: only its hash is kept, it cannot be shown again.")
            return 0
        if args.keys_command == "list":
            rows = [record_row(r) for r in store.list(include_revoked=args.all)]
            _print(rows, args.json, ("id", "prefix", "name", "admin", "expires_at", "revoked_at", "limits"))
            return 0
        if args.keys_command == "revoke":
            record = manage.revoke_key(store, args.key, now=now)
            _print([record_row(record)], args.json, ("id", "prefix", "name", "revoked_at"))
            return 0
        key_id = None if args.key == "all" else manage.find_key(store, args.key).id
        rows = [usage_row(r) for r in manage.usage_of(store, key_id, days=args.days, today=now.date())]
        _print(rows, args.json, ("day", "key_id", "model", "requests", "errors", "images", "text_tokens", "cost_usd"))
        if not args.json:
            print(f"total cost: ${sum(r['cost_usd'] for r in rows):.6f}")
        return 0
    finally:
        store.close()


def new_key_from(args: argparse.Namespace, now: Any) -> Any:
    from siglip_serve.accounts import manage
    from siglip_serve.accounts.types import Limits, NewKey

    def split(text: str | None) -> tuple[str, ...] | None:
        return None if text is None else tuple(part.strip() for part in text.split(",") if part.strip())

    return NewKey(name=args.name, admin=args.admin, expires_at=manage.parse_expiry(args.expires, now),
                  models=split(args.models), routes=split(args.routes),
                  limits=Limits(rpm=args.rpm, images_per_minute=args.images_per_minute,
                                images_per_day=args.images_per_day, credit_usd=args.credit_usd))


def record_row(record: Any) -> dict[str, Any]:
    from siglip_serve.accounts.keys import shown_prefix

    limits = {k: v for k, v in vars(record.limits).items() if v is not None}
    return {"id": record.id, "prefix": shown_prefix(record.prefix), "name": record.name, "admin": record.admin,
            "created_at": _iso(record.created_at), "expires_at": _iso(record.expires_at),
            "revoked_at": _iso(record.revoked_at), "models": record.models, "routes": record.routes, "limits": limits}


def usage_row(row: Any) -> dict[str, Any]:
    return {"day": row.day.isoformat(), "key_id": row.key_id, "model": row.model, "requests": row.requests,
            "errors": row.errors, "images": row.images, "text_tokens": row.text_tokens,
            "cost_usd": round(row.cost_usd, 9)}


def _iso(when: Any) -> str | None:
    return None if when is None else when.isoformat(timespec="seconds") + "Z"


def _print(rows: list[dict[str, Any]], as_json: bool, columns: Sequence[str]) -> None:
    if as_json:
        print(json.dumps(rows, indent=2, default=list))
        return
    def cell(value: Any) -> str:
        if isinstance(value, dict):
            return " ".join(f"{k}={v}" for k, v in value.items()) or "-"
        return "-" if value is None else str(value)
    table = [list(columns)] + [[cell(row[c]) for c in columns] for row in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(columns))]
    for line in table:
        print("  ".join(text.ljust(width) for text, width in zip(line, widths, strict=True)).rstrip())
