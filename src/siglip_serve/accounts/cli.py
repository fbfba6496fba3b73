"""`siglip-serve keys create|list|revoke|usage`: key administration on the command line.

The same functions as the `/v1/admin/keys` routes (accounts.manage), straight on the database the server
uses (--data-dir / --database-url / --key-secret, or their environment variables). Changes reach running
servers on their next request (they read the key revision on every request). SQLAlchemy is imported only
when a command runs, so `siglip-serve --help` stays fast.
"""

from __future__ import annotations

import argparse
import json
import typing
from collections.abc import Sequence
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from siglip_serve.api.protocol import KeyCreateRequest
from siglip_serve.config import ENV_PREFIX, Settings
from siglip_serve.errors import InvalidParameterError

DATABASE_SETTINGS = ("data_dir", "database_url", "key_secret")
Request = TypeVar("Request", bound=BaseModel)


def add_keys_arguments(parser: argparse.ArgumentParser) -> None:
    common = argparse.ArgumentParser(add_help=False)
    for name in DATABASE_SETTINGS:
        field = Settings.model_fields[name]
        common.add_argument("--" + name.replace("_", "-"), dest=name, default=None,
                            help=f"{field.description} [env {ENV_PREFIX}{name.upper()}]")
    common.add_argument("--json", action="store_true", help="Print JSON instead of a table.")
    commands = parser.add_subparsers(dest="keys_command", required=True)

    create = commands.add_parser("create", parents=[common], help="Create a key; it is printed once.")
    add_request_flags(create, KeyCreateRequest)

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
            created = manage.create_key(store, hasher, request_from(args, KeyCreateRequest).new_key(now), now=now)
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


def add_request_flags(parser: argparse.ArgumentParser, model: type[BaseModel]) -> None:
    """A flag per field of an admin API request model, so that the command and `POST /v1/admin/keys` share one
    declaration: its description is the help, a required field is positional, a bool is a switch, a list is
    comma-separated, and a nested model's fields are flags of their own (`--rpm` for `limits.rpm`)."""
    for name, field in model.model_fields.items():
        kind = _flag_type(field.annotation)
        if isinstance(kind, type) and issubclass(kind, BaseModel):
            add_request_flags(parser, kind)
        elif field.is_required():
            parser.add_argument(name, help=field.description)
        elif kind is bool:
            parser.add_argument(_flag(name), dest=name, action="store_true", help=field.description)
        elif kind is list:
            parser.add_argument(_flag(name), dest=name, type=_comma_list, default=None,
                                help=f"{field.description} Comma-separated.")
        else:
            parser.add_argument(_flag(name), dest=name, type=kind, default=None, help=field.description)


def request_from(args: argparse.Namespace, model: type[Request]) -> Request:
    """The request `add_request_flags` declared, validated as the route validates it (bounds included)."""
    try:
        return model.model_validate(_values(args, model))
    except ValidationError as exc:
        error = exc.errors()[0]
        name = str(error["loc"][-1])
        positional = name in model.model_fields and model.model_fields[name].is_required()
        raise InvalidParameterError(error["msg"], param=name if positional else _flag(name)) from None


def _values(args: argparse.Namespace, model: type[BaseModel]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for name, field in model.model_fields.items():
        kind = _flag_type(field.annotation)
        if isinstance(kind, type) and issubclass(kind, BaseModel):
            values[name] = _values(args, kind)
        elif getattr(args, name) is not None:
            values[name] = getattr(args, name)
    return values


def _flag_type(annotation: Any) -> Any:
    """`int | None` -> int, `list[str] | None` -> list, a model -> the model."""
    kinds = [kind for kind in typing.get_args(annotation) if kind is not type(None)] or [annotation]
    return typing.get_origin(kinds[0]) or kinds[0]


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _comma_list(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


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
