"""Redis that hangs rather than refuses: a server that accepts connections and never answers.

Each cache call to it waits for the socket timeouts, so once one has failed the process skips Redis
for REDIS_SKIP_AFTER_FAILURE_SECONDS (config.redis_cache) and takes the "cache down" paths at once.
Counted by the connections the server accepted, never timed.
"""

import json

import pytest
from django.contrib.auth import get_user_model
from django.core import mail
from django.core.cache import cache
from django.test import Client
from django.urls import reverse
from redis.exceptions import RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from config import redis_cache
from organizations.models import AuditLog
from webhooks.models import WebhookEvent
from webhooks.services import ingest

from .api_helpers import api_get, make_key
from .factories import STRIPE_SECRET, make_source
from .signing import stripe_headers

pytestmark = pytest.mark.django_db


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch):
    fake = Clock()
    monkeypatch.setattr(redis_cache, "clock", fake)
    return fake


@pytest.fixture
def blackholed(settings, redis_blackhole, clock):
    assert settings.REDIS_SKIP_AFTER_FAILURE_SECONDS == 5.0
    caches = redis_blackhole.caches()
    # Each wait is for an answer that never comes: what is counted is how many times Redis is asked,
    # not how long one wait lasts, so a tenth of production's SOCKET_TIMEOUT (0.5 s) does.
    caches["default"]["OPTIONS"] = {**caches["default"]["OPTIONS"], "SOCKET_TIMEOUT": 0.1}
    settings.CACHES = caches
    return redis_blackhole


def after_the_interval(clock, settings):
    clock.now += settings.REDIS_SKIP_AFTER_FAILURE_SECONDS + 0.1


def cache_error(call) -> Exception:
    with pytest.raises(RedisError) as raised:  # what the callers catch, as when Redis refuses
        call()
    return raised.value


def test_one_cache_call_per_interval_waits_for_a_redis_that_does_not_answer(blackholed, clock, settings, caplog):
    assert isinstance(cache_error(lambda: cache.get("k")), RedisTimeoutError)  # waited for the socket timeout
    for call in (lambda: cache.get("k"), lambda: cache.add("k", 1), lambda: cache.incr("k"), lambda: cache.set("k", 1)):
        assert isinstance(cache_error(call), redis_cache.RedisSkipped)
    assert blackholed.connections == 1
    assert caplog.text.count("did not answer") == 1  # said once, not per call

    clock.now += settings.REDIS_SKIP_AFTER_FAILURE_SECONDS - 0.1
    assert isinstance(cache_error(lambda: cache.get("k")), redis_cache.RedisSkipped)
    assert blackholed.connections == 1

    clock.now += 0.2
    assert isinstance(cache_error(lambda: cache.get("k")), RedisTimeoutError)  # tried again…
    assert isinstance(cache_error(lambda: cache.get("k")), redis_cache.RedisSkipped)  # …and skipped again
    assert blackholed.connections == 2


def test_after_the_interval_one_caller_tries_redis_while_the_others_keep_skipping(clock, settings):
    breaker = redis_cache.Breaker("redis://example.invalid:6379/0")
    assert breaker.allow()
    breaker.failed(TimeoutError("no answer"))
    assert not breaker.allow()

    after_the_interval(clock, settings)
    assert breaker.allow()  # this caller tries…
    assert not breaker.allow()  # …and the others skip meanwhile
    breaker.succeeded()
    assert breaker.allow() and breaker.allow()


def test_a_skip_interval_of_zero_asks_redis_every_time(blackholed, settings):
    settings.REDIS_SKIP_AFTER_FAILURE_SECONDS = 0
    cache_error(lambda: cache.get("a"))
    cache_error(lambda: cache.get("b"))
    assert blackholed.connections == 2


def test_an_error_redis_answers_with_does_not_skip_it(clock):
    # Redis answered (WRONGTYPE: the key holds a string, not a set): the next calls still go to Redis.
    cache.set("text", "not a number")
    with pytest.raises(ResponseError):
        cache.sadd("text", "member")
    assert cache.get("text") == "not a number"


def stripe_post(client, source, event_id):
    body = json.dumps({"id": event_id, "object": "event", "type": "invoice.paid"})
    headers = stripe_headers(body, STRIPE_SECRET)
    return client.generic("POST", f"/in/{source.ingest_token}/", body, content_type="application/json", **headers)


def test_ingest_stores_and_answers_with_one_wait_per_interval(
    client, organization, blackholed, clock, settings, django_capture_on_commit_callbacks
):
    source = make_source(organization)

    for number in range(3):
        # The commit's callback asks the cache for the processing flag (Celery publishes only past it).
        with django_capture_on_commit_callbacks(execute=True):
            response = stripe_post(client, source, f"evt_{number}")
        assert response.status_code == 200 and response.json()["duplicate"] is False
    assert blackholed.connections == 1

    after_the_interval(clock, settings)
    with django_capture_on_commit_callbacks(execute=True):
        assert stripe_post(client, source, "evt_3").status_code == 200
    assert blackholed.connections == 2
    assert WebhookEvent.objects.filter(source=source, status=WebhookEvent.Status.RECEIVED).count() == 4


def test_rejected_requests_are_counted_with_one_wait_per_interval(
    client, organization, blackholed, clock, settings, monkeypatch
):
    # The count of rejected requests is a script run on the cache's Redis (services.rejected_records):
    # it is skipped like any other cache call, and each process counts them itself meanwhile.
    settings.INGEST_REJECTED_RECORDS_PER_MINUTE = 2
    # In one minute whatever the time the requests take (they failed in CI across a minute's end).
    monkeypatch.setattr(ingest, "rejection_clock", lambda: 1_800_000_000.0)
    source = make_source(organization)
    answers = [
        client.generic(
            "POST",
            f"/in/{source.ingest_token}/",
            "{}",
            content_type="application/json",
            HTTP_STRIPE_SIGNATURE="t=1,v1=00",
        ).status_code
        for _ in range(4)
    ]
    assert answers == [401] * 4
    assert blackholed.connections == 1
    assert WebhookEvent.objects.filter(source=source, status=WebhookEvent.Status.REJECTED).count() == 2


def test_the_api_answers_and_its_limits_still_count_with_one_wait_per_interval(
    client, organization, blackholed, clock, settings
):
    settings.API_RATE_LIMIT = "3/min"
    make_source(organization)
    _, key = make_key(organization)

    assert [api_get(client, key, "/api/v1/sources").status_code for _ in range(4)] == [200, 200, 200, 429]
    # A wrong key is counted too (per address), again without asking Redis.
    wrong_key = key[:-1] + ("A" if key[-1] != "A" else "B")
    assert api_get(client, wrong_key, "/api/v1/sources").status_code == 401
    assert blackholed.connections == 1

    after_the_interval(clock, settings)
    assert api_get(client, key, "/api/v1/sources").status_code == 429  # still counted in this process
    assert blackholed.connections == 2


def test_the_dashboard_answers_with_one_wait_per_interval(client, organization, owner, blackholed, clock, settings):
    make_source(organization)  # the overview of a tenant with a source reads the cache
    client.force_login(owner)
    for _ in range(3):
        assert client.get(reverse("dashboard:overview", args=["acme"])).status_code == 200
    assert blackholed.connections == 1

    after_the_interval(clock, settings)
    assert client.get(reverse("dashboard:overview", args=["acme"])).status_code == 200
    assert blackholed.connections == 2


def test_sign_in_is_unavailable_without_waiting_each_time(client, owner, blackholed, clock, settings):
    for _ in range(3):
        response = client.post(reverse("accounts:sign_in"), {"email": owner.email, "next": "/o/acme/"})
        assert response.status_code == 503 and "Sign-in is temporarily unavailable" in response.content.decode()
    assert mail.outbox == []
    assert blackholed.connections == 1

    after_the_interval(clock, settings)
    assert client.post(reverse("accounts:sign_in"), {"email": owner.email}).status_code == 503
    assert blackholed.connections == 2


def test_the_admin_login_counts_failures_in_the_audit_log_with_one_wait_per_interval(blackholed, settings):
    settings.SIGN_IN_CODE_MAX_ATTEMPTS = 2  # wrong passwords per address
    get_user_model().objects.create_superuser("root@hookline.example", "correct horse battery")

    def log_in(password):
        return Client().post(
            reverse("admin:login"), {"username": "root@hookline.example", "password": password, "next": "/admin/"}
        )

    assert log_in("correct horse battery").status_code == 302
    for _ in range(2):
        assert "Please enter the correct email and password" in log_in("wrong password").content.decode()
    # Past the limit even the right password is refused, as with Redis refusing connections.
    assert log_in("correct horse battery").status_code == 429
    assert AuditLog.objects.filter(action="user.sign_in_failed").count() == 2
    assert blackholed.connections == 1
