"""Keys, limits and metering below HTTP, against SQLite and a real PostgreSQL (tests/postgres.py starts one).

Time is injected: a fake monotonic clock for the token buckets and a fake UTC "now" for expiry and days,
so every limit is checked exactly, with no sleeping and no wall-clock margins.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import hmac
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from postgres import postgres  # noqa: F401  (the session fixture)
from prometheus_client import CollectorRegistry
from sqlalchemy import select, text

from siglip_serve.accounts import manage
from siglip_serve.accounts.keys import KeyHasher, new_key, prefix_of
from siglip_serve.accounts.metering import KeyMetrics, UsageMeter
from siglip_serve.accounts.pricing import Pricing
from siglip_serve.accounts.schema import VERSION_TABLE, ApiKey, Base
from siglip_serve.accounts.service import Accounts, RequestAccount
from siglip_serve.accounts.store import SqlAccountStore
from siglip_serve.accounts.types import Limits, NewKey, UsageEvent
from siglip_serve.errors import (
    AccountsConfigError,
    AuthenticationError,
    PermissionDeniedError,
    QuotaExceededError,
    RateLimitExceededError,
)

SECRET = b"0123456789abcdef0123456789abcdef"
DAY = dt.datetime(2026, 3, 4, 12, 0, 0)
PRICING = Pricing.parse(per_1k_images=1.0, per_1m_text_tokens=10.0, model_prices=["big=2:20"])


class Clock:
    """A monotonic clock and a UTC wall clock that move only when told."""

    def __init__(self) -> None:
        self.t = 1000.0
        self.wall = DAY

    def __call__(self) -> float:
        return self.t

    def now(self) -> dt.datetime:
        return self.wall

    def advance(self, seconds: float) -> None:
        self.t += seconds
        self.wall += dt.timedelta(seconds=seconds)


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'accounts.sqlite3'}"
    return request.getfixturevalue("postgres").create_database()


@pytest.fixture
def store(url: str) -> Iterator[SqlAccountStore]:
    opened = SqlAccountStore.open(url)
    opened.check_secret(KeyHasher(SECRET).fingerprint())
    yield opened
    opened.close()


_OPENED: list[SqlAccountStore] = []


@pytest.fixture(autouse=True)
def _close_stores() -> Iterator[None]:
    yield
    while _OPENED:
        _OPENED.pop().close()


def accounts_over(url: str, clock: Clock, **options: object) -> Accounts:
    """An Accounts as one server process would have it, on its own store (its own connections and caches)."""
    opened = SqlAccountStore.open(url)
    _OPENED.append(opened)
    hasher = KeyHasher(SECRET)
    opened.check_secret(hasher.fingerprint())
    return Accounts(opened, hasher, pricing=PRICING, clock=clock, now=clock.now, **options)  # type: ignore[arg-type]


def add_key(accounts: Accounts, name: str = "k", **spec: object) -> str:
    return manage.create_key(accounts.store, accounts.hasher, NewKey(name=name, **spec), now=accounts.now()).key


def request(accounts: Accounts, key: str, path: str = "/v1/classify") -> RequestAccount:
    """What the gate does before the body."""
    principal = accounts.authenticate(f"Bearer {key}", path)
    accounts.admit_request(principal)
    return RequestAccount(principal=principal, started=0.0)


def answered(accounts: Accounts, account: RequestAccount, *, model: str = "m", images: int = 0,
             text_tokens: int = 0) -> str:
    """What the route and the gate do after the engine answered."""
    accounts.charge(account, model, images=images, text_tokens=text_tokens)
    return accounts.finish(account, route="/v1/classify", status=200)


# --- schema and migrations ------------------------------------------------------------------------


def test_the_migrations_make_exactly_the_schema_of_the_models(store: SqlAccountStore) -> None:
    with store.engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True, "version_table": VERSION_TABLE})
        assert compare_metadata(context, Base.metadata) == []
        assert connection.scalar(text(f"SELECT version_num FROM {VERSION_TABLE}")) == "0001"
    assert store.revision() == 0


def test_processes_starting_together_migrate_once(url: str) -> None:
    errors: list[BaseException] = []

    def start() -> None:
        try:
            SqlAccountStore.open(url).close()
        except BaseException as exc:  # collected: a thread's exception would be lost
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    reopened = SqlAccountStore.open(url)
    assert reopened.revision() == 0
    reopened.close()


def test_a_database_refuses_a_server_with_another_secret(store: SqlAccountStore) -> None:
    with pytest.raises(AccountsConfigError, match="another key secret"):
        store.check_secret(KeyHasher(b"another secret, 32 bytes long!!!").fingerprint())


# --- keys -----------------------------------------------------------------------------------------


def test_only_a_keyed_hash_of_the_key_is_stored(url: str) -> None:
    accounts = accounts_over(url, Clock())
    key = add_key(accounts, "shown-once")
    with accounts.store.engine.connect() as connection:
        row = connection.execute(select(ApiKey)).one()
    assert key not in json.dumps([str(value) for value in row])
    assert row.key_hash == hmac.new(SECRET, key.encode(), hashlib.sha256).hexdigest()
    assert row.prefix == prefix_of(key) and key.startswith(f"sk-ss-{row.prefix}_")
    assert not any(key in str(value) for value in dataclasses.astuple(accounts.store.list()[0]))


def test_a_wrong_key_never_matches_by_its_prefix_alone(url: str) -> None:
    accounts = accounts_over(url, Clock())
    key = add_key(accounts)
    prefix = prefix_of(key)
    other, _ = new_key()
    last = key[-1]
    wrong = [
        key[:-1] + ("A" if last != "A" else "B"),  # one character off
        f"sk-ss-{prefix}_" + other.split("_", 1)[1],  # the right prefix, another key's secret part
        f"sk-ss-{prefix}",  # the prefix alone
        prefix,
        key + "x",
    ]
    for token in wrong:
        with pytest.raises(AuthenticationError, match="invalid API key"):
            accounts.authenticate(f"Bearer {token}", "/v1/classify")
    assert accounts.authenticate(f"Bearer {key}", "/v1/classify").name == "k"


def test_a_key_revoked_by_another_process_is_refused_on_its_next_request(url: str) -> None:
    clock = Clock()
    server, admin = accounts_over(url, clock), accounts_over(url, clock)
    key = add_key(admin, "soon-revoked")
    assert server.authenticate(f"Bearer {key}", "/v1/embeddings").name == "soon-revoked"  # now cached
    manage.revoke_key(admin.store, prefix_of(key), now=clock.now())
    with pytest.raises(AuthenticationError, match="revoked"):
        server.authenticate(f"Bearer {key}", "/v1/embeddings")


def test_with_a_key_cache_ttl_another_process_revocation_takes_up_to_the_ttl(url: str) -> None:
    clock = Clock()
    server, admin = accounts_over(url, clock, key_cache_ttl_s=5.0), accounts_over(url, clock)
    key, other = add_key(admin, "a"), add_key(admin, "b")
    for token in (key, other):
        server.authenticate(f"Bearer {token}", "/v1/embeddings")
    manage.revoke_key(admin.store, prefix_of(key), now=clock.now())
    clock.advance(4.9)
    server.authenticate(f"Bearer {key}", "/v1/embeddings")  # the revision was read 4.9 s ago
    clock.advance(0.1)
    with pytest.raises(AuthenticationError, match="revoked"):
        server.authenticate(f"Bearer {key}", "/v1/embeddings")
    manage.revoke_key(server.store, prefix_of(other), now=clock.now())
    server.invalidate()  # revoked through this process (its admin routes): refused at once
    with pytest.raises(AuthenticationError, match="revoked"):
        server.authenticate(f"Bearer {other}", "/v1/embeddings")


def test_an_expired_key_is_refused_from_its_expiry_on(url: str) -> None:
    clock = Clock()
    accounts = accounts_over(url, clock)
    key = add_key(accounts, expires_at=manage.parse_expiry("1h", clock.now()))
    accounts.authenticate(f"Bearer {key}", "/v1/classify")
    clock.advance(3599)
    accounts.authenticate(f"Bearer {key}", "/v1/classify")
    clock.advance(1)
    with pytest.raises(AuthenticationError, match="expired"):
        accounts.authenticate(f"Bearer {key}", "/v1/classify")


def test_a_server_is_open_until_a_key_exists_and_static_keys_keep_working(url: str) -> None:
    clock = Clock()
    server = accounts_over(url, clock, static_keys=["static-1"])
    open_server = accounts_over(url, clock)
    assert open_server.authenticate("", "/v1/classify").name == "anonymous"
    with pytest.raises(AuthenticationError, match="missing"):
        server.authenticate("", "/v1/classify")
    assert server.authenticate("Bearer static-1", "/v1/classify").name == "static"
    key = add_key(server)
    with pytest.raises(AuthenticationError, match="missing"):  # the first stored key closes the open server
        open_server.authenticate("", "/v1/classify")
    assert open_server.authenticate(f"Bearer {key}", "/v1/classify").name == "k"


def test_routes_models_and_admin_routes_per_key(url: str) -> None:
    accounts = accounts_over(url, Clock())
    key = add_key(accounts, routes=("/v1/classify",), models=("m",))
    admin = add_key(accounts, "root", admin=True)
    account = request(accounts, key, "/v1/classify")
    for path in ("/v1/models", "/v1/usage"):
        accounts.authenticate(f"Bearer {key}", path)
    for path in ("/v1/embeddings", "/v1/classifyx", "/v1/admin/keys"):
        with pytest.raises(PermissionDeniedError):
            accounts.authenticate(f"Bearer {key}", path)
    accounts.admit(account, "m", images=1)
    with pytest.raises(PermissionDeniedError, match="model 'other'"):
        accounts.admit(account, "other", images=1)
    accounts.authenticate(f"Bearer {admin}", "/v1/admin/keys")


# --- rate limits ------------------------------------------------------------------------------------


def test_requests_per_minute_retry_after_is_exactly_when_the_request_passes(url: str) -> None:
    clock = Clock()
    accounts = accounts_over(url, clock)
    key = add_key(accounts, limits=Limits(rpm=2))
    request(accounts, key)
    request(accounts, key)
    with pytest.raises(RateLimitExceededError) as refused:
        request(accounts, key)
    assert refused.value.code == "rate_limit_exceeded" and refused.value.retry_after_s == 30
    clock.advance(29.9)
    with pytest.raises(RateLimitExceededError):
        request(accounts, key)
    clock.advance(0.1)
    request(accounts, key)


def test_images_per_minute_are_checked_before_the_body_and_charged_after(url: str) -> None:
    clock = Clock()
    accounts = accounts_over(url, clock)
    key = add_key(accounts, limits=Limits(images_per_minute=6))
    accounts.admit(request(accounts, key), "m", images=4)
    with pytest.raises(RateLimitExceededError) as refused:  # 2 left, 3 asked: 1 more needs 10 s
        accounts.admit(request(accounts, key), "m", images=3)
    assert refused.value.retry_after_s == 10
    accounts.admit(request(accounts, key), "m", images=2)
    with pytest.raises(RateLimitExceededError) as empty:  # nothing left: refused before the body
        request(accounts, key)
    assert empty.value.retry_after_s == 10
    with pytest.raises(RateLimitExceededError, match="can never pass"):
        accounts.admit(RequestAccount(accounts.authenticate(f"Bearer {key}", "/v1/classify"), 0.0), "m", images=7)
    clock.advance(30)
    accounts.admit(request(accounts, key), "m", images=3)


def test_replicas_each_enforce_their_share_of_the_per_minute_limits(url: str) -> None:
    accounts = accounts_over(url, Clock(), replicas=2)
    key = add_key(accounts, limits=Limits(rpm=10))
    for _ in range(5):
        request(accounts, key)
    with pytest.raises(RateLimitExceededError) as refused:
        request(accounts, key)
    assert refused.value.retry_after_s == 12  # 5 per minute in this process


# --- quotas -------------------------------------------------------------------------------------------


def test_images_per_day_before_and_after_the_body_and_again_the_next_day(url: str) -> None:
    clock = Clock()
    accounts = accounts_over(url, clock)
    key = add_key(accounts, limits=Limits(images_per_day=5))
    first = request(accounts, key)
    accounts.admit(first, "m", images=3)
    with pytest.raises(QuotaExceededError) as refused:  # 3 reserved (not answered yet) + 3 > 5
        accounts.admit(request(accounts, key), "m", images=3)
    assert refused.value.code == "insufficient_quota"
    answered(accounts, first, images=3)
    second = request(accounts, key)
    accounts.admit(second, "m", images=2)
    with pytest.raises(QuotaExceededError, match="5 of its 5 images"):  # before the body, 2 still reserved
        request(accounts, key)
    answered(accounts, second, images=2)
    accounts.meter.flush()
    with pytest.raises(QuotaExceededError):  # the same once the usage is in the database
        request(accounts, key)
    clock.advance(12 * 3600)  # past midnight UTC
    accounts.admit(request(accounts, key), "m", images=5)


def test_credit_counts_images_before_the_work_and_text_after(url: str) -> None:
    accounts = accounts_over(url, Clock())
    key = add_key(accounts, limits=Limits(credit_usd=0.01))  # 10 images at $1 per 1,000
    account = request(accounts, key)
    accounts.admit(account, "m", images=8)
    answered(accounts, account, images=8, text_tokens=100)  # $0.008 + $0.001
    with pytest.raises(QuotaExceededError, match="would cost"):
        accounts.admit(request(accounts, key), "m", images=2)
    accounts.admit(request(accounts, key), "m", images=1)


def test_quotas_are_shared_through_the_database(url: str) -> None:
    clock = Clock()
    one, two = accounts_over(url, clock), accounts_over(url, clock)
    key = add_key(one, limits=Limits(images_per_day=4))
    request(two, key)  # `two` knows the key and its (empty) usage
    account = request(one, key)
    accounts_admit_answer(one, account, images=3)
    one.meter.flush()
    two.meter.flush()  # each flush reads the keys' sums again, whoever wrote them
    with pytest.raises(QuotaExceededError):
        two.admit(request(two, key), "m", images=2)


def accounts_admit_answer(accounts: Accounts, account: RequestAccount, *, images: int) -> None:
    accounts.admit(account, "m", images=images)
    answered(accounts, account, images=images)


# --- usage ----------------------------------------------------------------------------------------------


def test_usage_is_written_in_numbered_batches_named_by_request_ids(url: str) -> None:
    accounts = accounts_over(url, Clock())
    key = add_key(accounts)
    meter = accounts.meter
    ids = [answered(accounts, request(accounts, key), images=1) for _ in range(3)]
    meter.flush()
    meter.flush()  # nothing new: no empty batch
    ids += [answered(accounts, request(accounts, key), model="big", images=2, text_tokens=50)]
    meter.flush()
    assert [i.rsplit("_", 2)[1] for i in ids] == ["1", "1", "1", "2"]
    assert all(i.startswith(f"req_{meter.process}_") for i in ids)
    assert accounts.store.flushed(meter.process) == [1, 2]
    rows = {(r.model, r.requests, r.images, r.text_tokens) for r in manage.usage_of(accounts.store, None, days=1,
                                                                                       today=DAY.date())}
    assert rows == {("m", 3, 3, 0), ("big", 1, 2, 50)}
    assert sum(r.cost_usd for r in accounts.store.usage(key_id=1, since=DAY.date())) == pytest.approx(
        3 * 0.001 + 2 * 0.002 + 50 * 20 / 1e6)


def test_a_batch_that_cannot_be_written_is_retried_under_its_number(url: str, store: SqlAccountStore) -> None:
    class Flaky:
        def __init__(self) -> None:
            self.fail = True

        def write(self, process: str, seq: int, events: list[UsageEvent]) -> None:
            if self.fail:
                raise ConnectionError("database down")
            store.write(process, seq, events)

    sink = Flaky()
    meter = UsageMeter(sink, interval_s=1.0)  # type: ignore[arg-type]
    event = UsageEvent("", 0, "anonymous", "m", "/v1/classify", 200, 1, 0, 0.0, 1.0, DAY)
    first = meter.record(event)
    assert meter.flush() == 0
    second = meter.record(event)
    sink.fail = False
    assert meter.flush() == 2
    assert (first.split("_")[2], second.split("_")[2]) == ("1", "2")
    assert store.flushed(meter.process) == [1, 2]


def test_usage_sums_by_key_day_and_model(store: SqlAccountStore) -> None:
    def event(request_id: str, key_id: int, day: int, model: str, images: int, status: int = 200) -> UsageEvent:
        return UsageEvent(request_id, key_id, f"key{key_id}", model, "/v1/embeddings", status, images, 10,
                          images * 0.5, 3.0, DAY + dt.timedelta(days=day))

    store.write("p", 1, [event("a", 1, 0, "m", 2), event("b", 1, 0, "m", 3), event("c", 2, 0, "m", 1)])
    store.write("p", 2, [event("d", 1, 1, "m", 4), event("e", 1, 1, "n", 0, status=500)])
    rows = [(r.key_id, r.day.day, r.model, r.requests, r.errors, r.images, r.text_tokens, r.cost_usd)
            for r in store.usage(key_id=1, since=DAY.date())]
    assert rows == [(1, 4, "m", 2, 0, 5, 20, 2.5), (1, 5, "m", 1, 0, 4, 10, 2.0), (1, 5, "n", 1, 1, 0, 10, 0.0)]
    spent = store.spent([1, 2, 3], day=(DAY + dt.timedelta(days=1)).date())
    assert (spent[1].images_today, spent[1].cost_usd) == (4, 4.5)
    assert (spent[2].images_today, spent[3].images_today, spent[3].cost_usd) == (0, 0, 0.0)


# --- prices, metrics, the command line ----------------------------------------------------------


def test_prices_per_model_and_the_example_default() -> None:
    pricing = Pricing.parse(per_1k_images=0.235, per_1m_text_tokens=0.02, model_prices=["big=0.5", "text=0:1"])
    assert pricing.cost("any", images=1000, text_tokens=1_000_000) == pytest.approx(0.255)
    assert pricing.cost("big", images=2, text_tokens=0) == pytest.approx(0.001)
    assert pricing.of("text").per_1m_text_tokens == 1.0
    assert pricing.is_example("any") and not pricing.is_example("big")
    for bad in ("big", "=1", "big=x", "big=-1"):
        with pytest.raises(AccountsConfigError):
            Pricing.parse(per_1k_images=1, per_1m_text_tokens=1, model_prices=[bad])


def test_prometheus_key_labels_are_bounded() -> None:
    metrics = KeyMetrics(CollectorRegistry(), max_keys=2)
    for name in ("a", "b", "c", "d", "a"):
        metrics.observe(UsageEvent("", 1, name, "m", "/v1/classify", 200, 1, 0, 0.0, 1.0, DAY))
    samples = {s.labels["key"]: s.value for s in metrics.images.collect()[0].samples if s.name.endswith("_total")}
    assert samples == {"a": 2.0, "b": 1.0, "other": 2.0}


def test_the_keys_command(url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from siglip_serve.cli import main

    where = ["--data-dir", str(tmp_path), "--database-url", url, "--key-secret", SECRET.decode()]
    assert main(["keys", "create", "cli-key", "--rpm", "5", "--models", "a,b", "--expires", "2w", "--json",
                 *where]) == 0
    created = json.loads(capsys.readouterr().out)
    assert created["key"].startswith(created["prefix"] + "_") and created["limits"] == {"rpm": 5}
    assert created["models"] == ["a", "b"] and created["expires_at"]
    assert main(["keys", "list", *where]) == 0
    listed = capsys.readouterr().out
    assert created["prefix"] in listed and created["key"] not in listed
    assert main(["keys", "revoke", created["prefix"], *where]) == 0
    assert "revoked_at" in capsys.readouterr().out
    assert main(["keys", "list", "--json", *where]) == 0
    assert json.loads(capsys.readouterr().out) == []
    assert main(["keys", "list", "--all", "--json", *where]) == 0
    assert json.loads(capsys.readouterr().out)[0]["revoked_at"]
    assert main(["keys", "usage", "--json", *where]) == 0
    assert json.loads(capsys.readouterr().out) == []
    assert main(["keys", "revoke", "999", *where]) == 2
    assert "no key '999'" in capsys.readouterr().err


def test_the_keys_command_refuses_what_the_admin_route_refuses(url: str, tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    from siglip_serve.cli import main

    where = ["--data-dir", str(tmp_path), "--database-url", url, "--key-secret", SECRET.decode()]
    for flags, named in ((["--rpm", "0"], "--rpm"), (["--credit-usd", "-1"], "--credit-usd"),
                         (["--images-per-minute", "0"], "--images-per-minute")):
        assert main(["keys", "create", "bad", *flags, *where]) == 2
        assert capsys.readouterr().err.startswith(f"error: {named}: Input should be greater than or equal to")
    assert main(["keys", "create", "", *where]) == 2
    assert capsys.readouterr().err.startswith("error: name: String should have at least 1 character")
    assert main(["keys", "list", "--all", "--json", *where]) == 0
    assert json.loads(capsys.readouterr().out) == []
    assert main(["keys", "create", "ok", "--images-per-day", "0", "--routes", "/v1/classify, /v1/embeddings",
                 "--admin", "--json", *where]) == 0
    created = json.loads(capsys.readouterr().out)
    assert (created["limits"], created["routes"], created["admin"]) == (
        {"images_per_day": 0}, ["/v1/classify", "/v1/embeddings"], True)


def test_model_cards_show_what_the_model_pages_show() -> None:
    from siglip_serve.api.model_cards import model_card
    from siglip_serve.backend import ModelInfo

    so400m = ModelInfo(name="google/siglip-so400m-patch14-384", family="siglip", format="hf", image_size=384,
                       patch_size=14, embed_dim=1152, text_length=64, tokens_per_image=729, device="cpu")
    naflex = ModelInfo(name="google/siglip2-so400m-patch16-naflex", family="siglip2", format="hf-naflex",
                       image_size=None, patch_size=16, embed_dim=1152, text_length=64, tokens_per_image=256,
                       device="cpu", max_num_patches=256)
    local = dataclasses.replace(so400m, name="/models/my-finetune")
    pricing = Pricing.parse(per_1k_images=0.235, per_1m_text_tokens=0.02, model_prices=["naflex=0.5:0.1"])
    card = model_card("so400m", so400m, pricing)
    assert (card.architecture, card.input_resolution, card.parameters, card.license) == (
        "SigLIP ViT-So400m/14", "384x384", 878_000_000, "Apache-2.0")
    assert card.pricing.per_1k_images == 0.235 and card.pricing.example
    card = model_card("naflex", naflex, pricing)
    assert (card.architecture, card.input_resolution) == ("SigLIP 2 ViT-So400m/16",
                                                          "NaFlex: up to 256 patches of 16x16")
    assert (card.pricing.per_1k_images, card.pricing.per_1m_text_tokens, card.pricing.example) == (0.5, 0.1, False)
    card = model_card("mine", local, pricing)
    assert card.parameters is None and card.license is None and card.task == "zero-shot-image-classification"
