"""Added latency of API keys, limits and usage metering per request (issue #17), and how limits behave
with two processes sharing one key database.

Part 1, latency. One process, one event loop, several apps over the same analytic fake backend
(tests/fakes.py: known embeddings, no model compute), so the differences are the gate's own cost:
  none        create_app without keys or accounts (the baseline)
  static      --api-key only (the pre-#17 gate: constant-time compare, nothing stored)
  sqlite      a stored key with every limit set (rpm, images/min, images/day, credit), checked and
              metered, usage flushed every second: SQLite in a temporary data directory
  postgresql  the same on a PostgreSQL 15 server started here (tests/postgres.py; skipped without one)
  ..., --key-cache-ttl-s 1   the same, reading the key revision at most once a second instead of per request
Sequential POST /v1/classify (one image, two labels) through httpx's ASGI transport, the configurations
interleaved request by request (rotating order) so that load on a shared machine falls on all alike.
Added latency = percentile(config) - percentile(none). Beside it, the accounts calls alone per request.

Part 2, two processes. Two apps on their own Accounts and store (own connections, caches and buckets: what
two server processes have) on one database, `--replicas 2`, a client alternating between them:
  rpm         a key with rpm=120 for `--rpm-seconds`: allowed requests vs 120 + 2/s x duration
  quota       a key with images_per_day=200, one image per request, as fast as they answer: allowed images
              (overshoot = allowed - 200; quotas are read back from the database after each 1 s flush)

    python bench/auth_overhead.py            # ~2 min on 2 cores
    python bench/auth_overhead.py --quick    # smoke
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import common
import httpx
from common import REPO, Report, stage, summarize

sys.path.insert(0, str(REPO / "tests"))
import fakes  # noqa: E402  (tests/ is on the path only from here on)
import postgres  # noqa: E402

from siglip_serve.accounts import manage  # noqa: E402
from siglip_serve.accounts.service import Accounts, RequestAccount, utcnow  # noqa: E402
from siglip_serve.accounts.types import Limits, NewKey  # noqa: E402
from siglip_serve.api.app import create_app  # noqa: E402
from siglip_serve.config import Settings  # noqa: E402
from siglip_serve.engine.engine import Engine  # noqa: E402

SECRET = "bench-secret-0123456789abcdef0123"
LIMITS = Limits(rpm=10**9, images_per_minute=10**9, images_per_day=10**9, credit_usd=10.0**9)
BODY = {"input": [fakes.image(1)], "labels": ["c1", "c2"]}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=3000, help="Requests per configuration (part 1).")
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--rpm-seconds", type=float, default=10.0, help="Duration of the two-process rpm run.")
    parser.add_argument("--quick", action="store_true", help="Smoke run: a few requests.")
    return parser.parse_args()


@contextlib.contextmanager
def databases() -> Iterator[dict[str, dict[str, Any]]]:
    """Settings of a fresh key database per backend: SQLite always, PostgreSQL when its binaries are here."""
    with tempfile.TemporaryDirectory(prefix="auth-bench-") as tmp, contextlib.ExitStack() as stack:
        found = {"sqlite": {"data_dir": f"{tmp}/sqlite", "key_secret": SECRET}}
        if postgres.find_bin_dir() is not None:
            server = stack.enter_context(postgres.postgres_server())
            found["postgresql"] = {"data_dir": f"{tmp}/pg", "key_secret": SECRET,
                                   "database_url": server.create_database("bench")}
        yield found


def new_key(settings: Settings, name: str, limits: Limits) -> str:
    store, hasher = manage.open_store(settings)
    try:
        return manage.create_key(store, hasher, NewKey(name=name, limits=limits), now=utcnow()).key
    finally:
        store.close()


@contextlib.asynccontextmanager
async def serving(settings: Settings, accounts: Accounts | None) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings, Engine({"fake": fakes.FakeBackend()}), accounts=accounts)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://bench", timeout=60) as client:
            yield client


# --- part 1: latency --------------------------------------------------------------------------------


async def latency(dbs: dict[str, dict[str, Any]], *, requests: int, warmup: int) -> dict[str, Any]:
    configs: dict[str, tuple[Settings, dict[str, str]]] = {
        "none": (Settings(model=["fake"]), {}),
        "static": (Settings(model=["fake"], api_key=["static-key"]), {"Authorization": "Bearer static-key"}),
    }
    accounts: dict[str, Accounts] = {}
    for name, db in dbs.items():
        for ttl in (0.0, 1.0):
            config = name if not ttl else f"{name}, --key-cache-ttl-s 1"
            settings = Settings(model=["fake"], key_cache_ttl_s=ttl, **db)
            key = new_key(settings, f"bench-{config}", LIMITS)
            configs[config] = (settings, {"Authorization": f"Bearer {key}"})
            accounts[config] = manage.build_accounts(settings)
    times: dict[str, list[float]] = {name: [] for name in configs}
    async with contextlib.AsyncExitStack() as stack:
        clients = {name: await stack.enter_async_context(serving(settings, accounts.get(name)))
                   for name, (settings, _) in configs.items()}
        order = list(configs)
        for i in range(warmup + requests):
            for name in order[i % len(order):] + order[:i % len(order)]:
                started = time.perf_counter()
                response = await clients[name].post("/v1/classify", json=BODY, headers=configs[name][1])
                elapsed = time.perf_counter() - started
                assert response.status_code == 200, (name, response.text)
                if i >= warmup:
                    times[name].append(elapsed)
    # After the apps' shutdown, which writes what is still buffered: every request must be there.
    metered = {}
    for name, acc in accounts.items():
        key_id = manage.find_key(acc.store, configs[name][1]["Authorization"].split("_")[0].split("-")[-1]).id
        metered[name] = sum(row.requests for row in acc.store.usage(key_id=key_id, since=acc.now().date()))
        acc.store.close()
    stats = {name: summarize([t * 1000 for t in values]) for name, values in times.items()}
    rows = []
    for name, s in stats.items():
        rows.append({"config": name, "p50_ms": s["p50"], "p99_ms": s["p99"], "mean_ms": s["mean"],
                     "added_p50_ms": s["p50"] - stats["none"]["p50"], "added_p99_ms": s["p99"] - stats["none"]["p99"]})
    return {"rows": rows, "metered_requests": metered, "requests_sent": warmup + requests}


def hot_path(dbs: dict[str, dict[str, Any]], *, requests: int) -> list[dict[str, Any]]:
    """The accounts calls of one request, alone: authenticate + admit_request (before the body), admit (after
    it), charge and finish (metering), with the flusher running."""
    rows = []
    for name, db in dbs.items():
        settings = Settings(model=["fake"], **db)
        key = new_key(settings, f"hot-{name}", LIMITS)
        accounts = manage.build_accounts(settings)
        accounts.start()
        header = f"Bearer {key}"

        def one(accounts: Accounts = accounts, header: str = header) -> None:
            principal = accounts.authenticate(header, "/v1/classify")
            accounts.admit_request(principal)
            account = RequestAccount(principal=principal, started=time.perf_counter())
            accounts.admit(account, "fake", images=1)
            accounts.charge(account, "fake", images=1, text_tokens=12)
            accounts.finish(account, route="/v1/classify", status=200)

        revision = common.time_calls(accounts.store.revision, warmup=50, iters=requests)
        whole = common.time_calls(one, warmup=50, iters=requests)
        accounts.stop()
        accounts.store.close()
        for part, values in (("revision read", revision), ("all accounts calls", whole)):
            s = summarize([t * 1e6 for t in values])
            rows.append({"database": name, "part": part, "p50_us": s["p50"], "p99_us": s["p99"]})
    return rows


# --- part 2: two processes ------------------------------------------------------------------------------


async def two_processes(db: dict[str, Any], *, rpm_seconds: float) -> dict[str, Any]:
    settings = Settings(model=["fake"], replicas=2, **db)
    rpm_key = new_key(settings, "rpm-120", Limits(rpm=120))
    quota_key = new_key(settings, "day-200", Limits(images_per_day=200))
    pair = [manage.build_accounts(settings), manage.build_accounts(settings)]
    out: dict[str, Any] = {}
    async with contextlib.AsyncExitStack() as stack:
        clients = [await stack.enter_async_context(serving(settings, acc)) for acc in pair]
        allowed, sent, started = 0, 0, time.perf_counter()
        while time.perf_counter() - started < rpm_seconds:
            response = await clients[sent % 2].post("/v1/classify", json=BODY,
                                                    headers={"Authorization": f"Bearer {rpm_key}"})
            sent += 1
            allowed += response.status_code == 200
        elapsed = time.perf_counter() - started
        out["rpm"] = {"limit": 120, "seconds": round(elapsed, 2), "sent": sent, "allowed": allowed,
                      "one_process_would_allow": round(120 + 2 * elapsed, 1)}
        images, sent = 0, 0
        started = time.perf_counter()
        while sent < 2000:
            response = await clients[sent % 2].post("/v1/classify", json=BODY,
                                                    headers={"Authorization": f"Bearer {quota_key}"})
            sent += 1
            if response.status_code == 200:
                images += 1
            elif sent > 400:  # well past the quota and refused: stop
                break
        out["quota"] = {"images_per_day": 200, "allowed_images": images, "overshoot": images - 200,
                        "seconds": round(time.perf_counter() - started, 2), "sent": sent}
    for acc in pair:
        acc.store.close()
    return out


def main() -> int:
    args = parse_args()
    if args.quick:
        args.requests, args.warmup, args.rpm_seconds = 50, 10, 2.0
    report = Report("auth_overhead", smoke=args.quick, args=vars(args))
    with databases() as dbs:
        if "postgresql" not in dbs:
            report.note("PostgreSQL binaries not found: PostgreSQL rows skipped")
        with stage("latency, interleaved"):
            result = asyncio.run(latency(dbs, requests=args.requests, warmup=args.warmup))
        report.add("latency", result)
        with stage("hot path alone"):
            hot = hot_path(dbs, requests=args.requests)
        report.add("hot_path", hot)
        multi = {}
        for name, db in dbs.items():
            with stage(f"two processes on {name}"):
                multi[name] = asyncio.run(two_processes(db, rpm_seconds=args.rpm_seconds))
        report.add("two_processes", multi)
    report.section("Added latency per request (ms), sequential /v1/classify, interleaved", common.markdown_table(
        result["rows"], [("config", "config", ""), ("p50_ms", "p50", ".3f"), ("p99_ms", "p99", ".3f"),
                         ("mean_ms", "mean", ".3f"), ("added_p50_ms", "added p50", "+.3f"),
                         ("added_p99_ms", "added p99", "+.3f")]))
    report.section("The accounts calls alone (us per request)", common.markdown_table(
        hot, [("database", "database", ""), ("part", "part", ""), ("p50_us", "p50", ".1f"), ("p99_us", "p99", ".1f")]))
    rows = [{"database": name, **{f"rpm_{k}": v for k, v in m["rpm"].items()},
             **{f"quota_{k}": v for k, v in m["quota"].items()}} for name, m in multi.items()]
    report.section("Two processes, --replicas 2, a client alternating between them", common.markdown_table(
        rows, [("database", "database", ""), ("rpm_seconds", "rpm run s", ".1f"),
               ("rpm_allowed", "rpm=120: allowed", ""),
               ("rpm_one_process_would_allow", "one process would allow", ".0f"),
               ("quota_allowed_images", "images/day=200: allowed", ""), ("quota_overshoot", "overshoot", "+d"),
               ("quota_seconds", "quota run s", ".1f")]))
    report.note(f"requests metered in the database per configuration (of {result['requests_sent']} sent): "
                f"{result['metered_requests']}")
    report.note("the machine is shared with other engineers' jobs: see the load averages; p99 is the noisiest figure")
    report.write()
    return 0


if __name__ == "__main__":
    sys.exit(main())
