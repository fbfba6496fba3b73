"""Keys, limits and usage over HTTP (issue #17), against SQLite and a real PostgreSQL.

In-process over the analytic fake backend (which counts what reached it), with injected clocks where a
limit refills; then a live server for what only a process can show: kill -9 loses at most the usage
batches not yet written (counted by batch numbers, not by the clock), and a new server keeps keys and usage.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import signal
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import fakes
import httpx
import pytest
from fakes import FakeBackend
from live import HTTP_TIMEOUT_S, LiveServer, assert_error
from postgres import postgres  # noqa: F401  (the session fixture)
from sqlalchemy import select

from siglip_serve.accounts import manage
from siglip_serve.accounts.schema import UsageEventRow
from siglip_serve.accounts.types import Limits, NewKey
from siglip_serve.api.app import create_app
from siglip_serve.cli import main
from siglip_serve.config import Settings
from siglip_serve.engine.engine import Engine

GUARD_S = 120.0
SECRET = "integration-test-secret-0123456789"
NOW = dt.datetime(2026, 5, 6, 7, 8, 9)


class Clock:
    def __init__(self) -> None:
        self.t = 500.0

    def __call__(self) -> float:
        return self.t

    def now(self) -> dt.datetime:
        return NOW + dt.timedelta(seconds=self.t - 500.0)


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, Any]:
    """Settings of one fresh key database."""
    url = None if request.param == "sqlite" else request.getfixturevalue("postgres").create_database()
    return {"data_dir": str(tmp_path / "data"), "database_url": url, "key_secret": SECRET}


def add_key(database: dict[str, Any], name: str, **spec: Any) -> str:
    """A key made as `siglip-serve keys create` makes it: on the database, not through a server."""
    store, hasher = manage.open_store(Settings(**database))
    try:
        return manage.create_key(store, hasher, NewKey(name=name, **spec), now=dt.datetime.now(dt.UTC)
                                 .replace(tzinfo=None)).key
    finally:
        store.close()


def events_in(database: dict[str, Any]) -> list[UsageEventRow]:
    store, _ = manage.open_store(Settings(**database))
    try:
        with store.engine.connect() as connection:
            return list(connection.execute(select(UsageEventRow)))
    finally:
        store.close()


def run_app(database: dict[str, Any], test: Callable[[httpx.AsyncClient, FakeBackend], Awaitable[Any]], *,
            clock: Clock | None = None, **settings: Any) -> Any:
    """The app with its accounts over `database`, from startup to shutdown (which writes the last usage)."""
    backend = FakeBackend()
    config = Settings(model=["fake"], **database, **settings)
    accounts = manage.build_accounts(config, **({"clock": clock, "now": clock.now} if clock else {}))
    app = create_app(config, Engine({"fake": backend}), accounts=accounts)

    async def run() -> Any:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://testserver", timeout=GUARD_S) as c:
                return await test(c, backend)

    try:
        return asyncio.run(asyncio.wait_for(run(), GUARD_S))
    finally:
        accounts.store.close()


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def classify(images: int) -> dict[str, Any]:
    return {"input": [fakes.image(k % 4) for k in range(images)], "labels": ["c0", "c1"]}


# --- metering ---------------------------------------------------------------------------------------


def test_200_concurrent_requests_over_three_keys_are_metered_exactly(database: dict[str, Any]) -> None:
    keys = [add_key(database, f"app-{i}") for i in range(3)]
    calls = [(keys[i % 3], "/v1/classify", classify(1 + i % 3)) if i % 2 else
             (keys[i % 3], "/v1/embeddings", {"input": [f"c{i % 5} text", {"image": fakes.image(2)}]})
             for i in range(200)]

    async def test(client: httpx.AsyncClient, backend: FakeBackend) -> list[httpx.Response]:
        return await asyncio.gather(*(client.post(path, json=body, headers=bearer(key)) for key, path, body in calls))

    responses = run_app(database, test)
    assert [r.status_code for r in responses] == [200] * 200
    expected: dict[str, list[int]] = {}
    for (key, _, _), response in zip(calls, responses, strict=True):
        usage = response.json()["usage"]
        sums = expected.setdefault(key.split("_")[0].removeprefix("sk-ss-"), [0, 0, 0])
        sums[0] += 1
        sums[1] += usage["images"]
        sums[2] += usage["text_tokens"]
    rows = events_in(database)
    assert sorted(row.request_id for row in rows) == sorted(r.headers["x-request-id"] for r in responses)
    store, _ = manage.open_store(Settings(**database))
    try:
        by_key = {}
        for record in store.list():
            day = store.usage(key_id=record.id, since=NOW.date() - dt.timedelta(days=3650))
            by_key[record.prefix] = [sum(r.requests for r in day), sum(r.images for r in day),
                                     sum(r.text_tokens for r in day)]
    finally:
        store.close()
    assert by_key == expected and sum(v[0] for v in by_key.values()) == 200


def test_a_restart_keeps_keys_and_usage(database: dict[str, Any]) -> None:
    key = add_key(database, "survivor")

    async def before(client: httpx.AsyncClient, backend: FakeBackend) -> list[dict[str, Any]]:
        return [(await client.post("/v1/classify", json=classify(2), headers=bearer(key))).json()["usage"]
                for _ in range(3)]

    async def after(client: httpx.AsyncClient, backend: FakeBackend) -> dict[str, Any]:
        report = (await client.get("/v1/usage", headers=bearer(key))).json()
        assert (await client.post("/v1/classify", json=classify(1), headers=bearer(key))).status_code == 200
        return report

    usages = run_app(database, before)
    for used in usages:  # the example prices: $0.235 per 1,000 images, $0.02 per million text tokens
        assert used["cost_usd"] == pytest.approx(used["images"] * 0.235 / 1000 + used["text_tokens"] * 0.02 / 1e6)
    report = run_app(database, after)
    assert [(row["requests"], row["images"]) for row in report["data"]] == [(3, 6)]
    assert report["data"][0]["cost_usd"] == pytest.approx(sum(used["cost_usd"] for used in usages))
    assert report["total_cost_usd"] == report["data"][0]["cost_usd"]
    key_rows = [row for row in events_in(database) if row.key_name == "survivor"]
    assert (len(key_rows), sum(row.images for row in key_rows)) == (5, 7)  # and the /v1/usage request itself


# --- keys ---------------------------------------------------------------------------------------------


def test_a_revoked_key_is_refused_on_the_next_request(database: dict[str, Any], capsys: pytest.CaptureFixture) -> None:
    by_cli, by_api = add_key(database, "by-cli"), add_key(database, "by-api")
    admin = add_key(database, "root", admin=True)
    where = ["--data-dir", database["data_dir"], "--key-secret", SECRET]
    where += ["--database-url", database["database_url"]] if database["database_url"] else []

    async def test(client: httpx.AsyncClient, backend: FakeBackend) -> None:
        for key in (by_cli, by_api):
            assert (await client.post("/v1/classify", json=classify(1), headers=bearer(key))).status_code == 200
        assert await asyncio.to_thread(main, ["keys", "revoke", by_cli.split("_")[0], *where]) == 0
        error = assert_error(await client.post("/v1/classify", json=classify(1), headers=bearer(by_cli)), 401)
        assert error["type"] == "authentication_error" and "revoked" in error["message"]
        prefix = by_api.split("_")[0]
        revoked = await client.delete(f"/v1/admin/keys/{prefix}", headers=bearer(admin))
        assert revoked.status_code == 200 and revoked.json()["revoked_at"]
        assert_error(await client.post("/v1/classify", json=classify(1), headers=bearer(by_api)), 401)

    run_app(database, test)
    capsys.readouterr()


def test_a_wrong_key_never_matches_by_its_prefix_alone(database: dict[str, Any]) -> None:
    key = add_key(database, "real")
    prefix = key.split("_")[0]

    async def test(client: httpx.AsyncClient, backend: FakeBackend) -> None:
        for token in (prefix, f"{prefix}_", f"{prefix}_{'A' * 43}", key[:-1] + ("B" if key[-1] == "A" else "A")):
            error = assert_error(await client.post("/v1/classify", json=classify(1), headers=bearer(token)), 401)
            assert error["message"] == "invalid API key"
        assert (await client.post("/v1/classify", json=classify(1), headers=bearer(key))).status_code == 200

    run_app(database, test)


def test_keys_limits_and_quotas_are_decided_before_the_body(database: dict[str, Any]) -> None:
    limited = add_key(database, "limited", limits=Limits(rpm=1))
    broke = add_key(database, "broke", limits=Limits(credit_usd=0.0))
    broken = {"content": b"{not json", "headers": {"Content-Type": "application/json"}}

    async def test(client: httpx.AsyncClient, backend: FakeBackend) -> None:
        assert_error(await client.post("/v1/classify", **broken), 401)
        assert assert_error(await client.post("/v1/classify", content=b"{not json", headers={
            **broken["headers"], **bearer(limited)}), 400)["code"] == "invalid_json"  # its one request this minute
        assert assert_error(await client.post("/v1/classify", content=b"{not json", headers={
            **broken["headers"], **bearer(limited)}), 429)["code"] == "rate_limit_exceeded"
        assert assert_error(await client.post("/v1/classify", content=b"{not json", headers={
            **broken["headers"], **bearer(broke)}), 429)["code"] == "insufficient_quota"
        assert backend.prepared == [] and backend.tokenized == []

    run_app(database, test)


# --- limits ---------------------------------------------------------------------------------------------


def test_rate_limit_429_with_a_retry_after_after_which_the_request_passes(database: dict[str, Any]) -> None:
    images, requests = (add_key(database, "images-4", limits=Limits(images_per_minute=4)),
                        add_key(database, "rpm-2", limits=Limits(rpm=2)))
    clock = Clock()

    async def test(client: httpx.AsyncClient, backend: FakeBackend) -> None:
        for _ in range(2):
            assert (await client.post("/v1/classify", json=classify(1), headers=bearer(images))).status_code == 200
        refused = await client.post("/v1/classify", json=classify(3), headers=bearer(images))  # 2 images left
        error = assert_error(refused, 429)
        assert error["code"] == "rate_limit_exceeded" and error["type"] == "rate_limit_error"
        assert refused.headers["retry-after"] == "15" and len(backend.prepared) == 2  # 1 more image: 15 s
        clock.t += 14
        assert_error(await client.post("/v1/classify", json=classify(3), headers=bearer(images)), 429)
        clock.t += 1
        assert (await client.post("/v1/classify", json=classify(3), headers=bearer(images))).status_code == 200
        for _ in range(2):
            assert (await client.post("/v1/classify", json=classify(1), headers=bearer(requests))).status_code == 200
        over = await client.post("/v1/classify", json=classify(1), headers=bearer(requests))
        assert assert_error(over, 429)["code"] == "rate_limit_exceeded" and over.headers["retry-after"] == "30"
        clock.t += 30
        assert (await client.post("/v1/classify", json=classify(1), headers=bearer(requests))).status_code == 200

    run_app(database, test, clock=clock)


def test_quota_exhausted_is_insufficient_quota_before_any_work(database: dict[str, Any]) -> None:
    key = add_key(database, "daily", limits=Limits(images_per_day=3))

    async def test(client: httpx.AsyncClient, backend: FakeBackend) -> None:
        assert (await client.post("/v1/classify", json=classify(2), headers=bearer(key))).status_code == 200
        error = assert_error(await client.post("/v1/classify", json=classify(2), headers=bearer(key)), 429)
        assert (error["code"], error["type"]) == ("insufficient_quota", "insufficient_quota")
        assert len(backend.prepared) == 2
        assert (await client.post("/v1/embeddings", json={"input": [{"image": fakes.image(1)}]},
                                  headers=bearer(key))).status_code == 200
        assert_error(await client.post("/v1/embeddings", json={"input": ["c1"]}, headers=bearer(key)), 429)
        assert len(backend.prepared) == 3

    run_app(database, test)


# --- admin routes, usage, models, metrics ------------------------------------------------------------


def test_admin_routes_usage_and_cost(database: dict[str, Any]) -> None:
    admin = add_key(database, "root", admin=True)

    async def test(client: httpx.AsyncClient, backend: FakeBackend) -> None:
        made = await client.post("/v1/admin/keys", headers=bearer(admin), json={
            "name": "app", "models": ["fake"], "expires": "30d", "limits": {"rpm": 100, "credit_usd": 5}})
        assert made.status_code == 201, made.text
        created = made.json()
        key = created["key"]
        assert key.startswith(created["prefix"] + "_") and created["limits"]["credit_usd"] == 5
        listed = (await client.get("/v1/admin/keys", headers=bearer(admin))).json()["data"]
        assert [k["name"] for k in listed] == ["root", "app"] and all("key" not in k for k in listed)
        assert_error(await client.get("/v1/admin/keys", headers=bearer(key)), 403)
        used = (await client.post("/v1/classify", json=classify(3), headers=bearer(key))).json()["usage"]
        assert used["cost_usd"] == pytest.approx(3 * 0.5 / 1000 + used["text_tokens"] * 2 / 1e6)
        assert_error(await client.get("/v1/usage?key=all", headers=bearer(key)), 403)

    run_app(database, test, model_price=["fake=0.5:2"])

    async def usage(client: httpx.AsyncClient, backend: FakeBackend) -> None:
        everyone = (await client.get("/v1/usage?key=all", headers=bearer(admin))).json()["data"]
        assert {(row["model"], row["images"]) for row in everyone} >= {("fake", 3)}
        own = (await client.get("/v1/usage", headers=bearer(admin))).json()
        assert all(row["images"] == 0 for row in own["data"])  # the admin's own requests used no images

    run_app(database, usage)


def test_models_show_what_the_model_pages_show(database: dict[str, Any]) -> None:
    async def test(client: httpx.AsyncClient, backend: FakeBackend) -> dict[str, Any]:
        return (await client.get("/v1/models")).json()["data"][0]

    card = run_app(database, test)
    assert card["task"] == "zero-shot-image-classification" and card["input_resolution"] == "4x4"
    assert card["architecture"] == "SigLIP ViT/2 (width 8)" and card["parameters"] is None
    assert card["pricing"] == {"currency": "USD", "per_1k_images": 0.235, "per_1m_text_tokens": 0.02, "example": True}


def test_prometheus_counts_per_key_name_with_bounded_labels(database: dict[str, Any]) -> None:
    keys = [add_key(database, f"tenant-{i}") for i in range(3)]

    async def test(client: httpx.AsyncClient, backend: FakeBackend) -> str:
        for key in keys:
            assert (await client.post("/v1/classify", json=classify(1), headers=bearer(key))).status_code == 200
        return (await client.get("/metrics")).text

    text = run_app(database, test, metrics_max_keys=2)
    lines = {line for line in text.splitlines() if line.startswith("siglip_key_images_total")}
    assert lines == {'siglip_key_images_total{key="tenant-0"} 1.0', 'siglip_key_images_total{key="tenant-1"} 1.0',
                     'siglip_key_images_total{key="other"} 1.0'}


# --- a real process: kill -9 and restart ------------------------------------------------------------------


def test_kill_9_loses_only_the_batches_not_written_and_a_restart_keeps_the_rest(
        database: dict[str, Any], siglip1_dir: Path, tmp_path: Path) -> None:
    key = add_key(database, "steady")
    args = ["--data-dir", database["data_dir"], "--key-secret", SECRET]
    args += ["--database-url", database["database_url"]] if database["database_url"] else []
    server = LiveServer({"tiny": siglip1_dir}, args, tmp_path / "first.log")
    answered: list[str] = []
    unexpected: list[str] = []  # a thread's failed assert would not fail the test: collected, checked below
    stop = threading.Event()

    def traffic() -> None:
        with httpx.Client(base_url=server.url, timeout=HTTP_TIMEOUT_S, headers=bearer(key)) as client:
            while not stop.is_set():
                try:
                    response = client.post("/v1/embeddings", json={"input": ["a photo of a cat"]})
                except httpx.HTTPError:
                    return  # the server is gone
                if response.status_code != 200:
                    unexpected.append(response.text)
                    return
                answered.append(response.headers["x-request-id"])

    threads = [threading.Thread(target=traffic) for _ in range(4)]
    try:
        server.wait_healthy()
        for thread in threads:
            thread.start()
        process = _wait_for_flushes(database, answered, at_least=3)
        os.kill(server.pid, signal.SIGKILL)  # while the threads keep sending
        server.proc.wait(30)
    finally:
        stop.set()
        for thread in threads:
            if thread.is_alive():
                thread.join(HTTP_TIMEOUT_S)
        server.kill()
    assert unexpected == []
    stored = {row.request_id for row in events_in(database)}
    flushed = _flushed(database, process)
    assert flushed == list(range(1, len(flushed) + 1))  # written in order, whole batches
    lost = [request_id for request_id in answered if request_id not in stored]
    assert all(_batch(request_id) <= flushed[-1] for request_id in stored)
    assert {_batch(request_id) for request_id in lost} <= {flushed[-1] + 1, flushed[-1] + 2}, (flushed, lost)
    assert len(answered) > len(lost) and all(request_id.startswith(f"req_{process}_") for request_id in stored)

    async def after_the_crash(client: httpx.AsyncClient, backend: FakeBackend) -> dict[str, Any]:
        report = (await client.get("/v1/usage", headers=bearer(key))).json()
        assert (await client.post("/v1/embeddings", json={"input": ["c1"]}, headers=bearer(key))).status_code == 200
        return report

    report = run_app(database, after_the_crash)  # a new server on the same database: the key, and its usage
    assert sum(row["requests"] for row in report["data"]) == len(stored)


def _batch(request_id: str) -> int:
    return int(request_id.split("_")[2])


def _flushed(database: dict[str, Any], process: str) -> list[int]:
    store, _ = manage.open_store(Settings(**database))
    try:
        return store.flushed(process)
    finally:
        store.close()


def _wait_for_flushes(database: dict[str, Any], answered: list[str], *, at_least: int) -> str:
    """The server's process id, once it has written `at_least` batches (polls the database, not the clock)."""
    store, _ = manage.open_store(Settings(**database))
    try:
        for _ in range(3000):
            if answered:
                process = answered[0].split("_")[1]
                if len(store.flushed(process)) >= at_least:
                    return process
            threading.Event().wait(0.02)
    finally:
        store.close()
    raise AssertionError(f"no {at_least} usage flushes; {len(answered)} requests answered")
