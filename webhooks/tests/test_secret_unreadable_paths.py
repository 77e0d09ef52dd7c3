"""Every path that meets a stored secret this process cannot decrypt: no 500, nothing acknowledged
lost, a reason an operator can act on, and figures that show it (services.secret_health)."""

import base64
import io
import json
import time
from datetime import timedelta

import pytest
from cryptography.fernet import Fernet
from django.core.management import CommandError, call_command
from django.db import connection
from django.urls import reverse
from django.utils import timezone

from webhooks import fields
from webhooks.fields import MALFORMED, UNKNOWN_KEY, _fernet_for, diagnose
from webhooks.models import Delivery, DeliveryAttempt, Destination, Source, WebhookEvent
from webhooks.services import delivery as delivery_service
from webhooks.services import platform_health, processing, secret_health
from webhooks.services.destination_deletion import destination_deletion_run, destination_request_deletion
from webhooks.services.ingest import forget_cached_sources
from webhooks.services.organization_deletion import organization_deletion_run, organization_request_deletion
from webhooks.services.source_deletion import source_deletion_run, source_request_deletion

from .api_helpers import make_key
from .factories import STRIPE_SECRET, make_destination, make_source
from .signing import post_stripe
from .test_platform_health import TOKEN, parse_prometheus

pytestmark = pytest.mark.django_db

DAMAGED = "gAAAAAnot-a-token"


def foreign_token(plaintext: str = "a secret under a key nobody here has") -> str:
    """A well-formed Fernet token made with a key no process of the test has."""
    return Fernet(Fernet.generate_key()).encrypt(plaintext.encode()).decode()


def altered_token() -> str:
    """A well-formed token whose clear timestamp was altered past any date (a value changed in the
    database): its shape is a Fernet token's, its time cannot be written as a date."""
    data = bytearray(base64.urlsafe_b64decode(foreign_token()))
    data[1:9] = b"\xff" * 8
    return base64.urlsafe_b64encode(bytes(data)).decode()


def store_raw(model, pk, value: str, column: str = "secret") -> None:
    with connection.cursor() as cursor:
        cursor.execute(f"UPDATE {model._meta.db_table} SET {column} = %s WHERE id = %s", [value, pk])


@pytest.fixture(autouse=True)
def _no_scheduling(monkeypatch):
    monkeypatch.setattr(processing, "schedule_dispatch", lambda slot=0: None)
    monkeypatch.setattr(delivery_service, "schedule_dispatch", lambda slot=0: None)


# --- What a token says about itself -------------------------------------------------------------


def test_a_well_formed_token_is_told_from_a_damaged_one_and_dated():
    made_at = time.time()
    unreadable = diagnose(foreign_token())
    assert unreadable.reason == UNKNOWN_KEY and abs(unreadable.encrypted_at - made_at) < 5
    for damaged in (DAMAGED, "", "not base64 at all!", "gAAAAA" + "A" * 20):
        assert diagnose(damaged).reason == MALFORMED

    # Made after the process started: most likely a process with a new key (a rolling deploy);
    # before: this process lacks a key it needs, which no wait fixes. Both say it is inferred.
    after = unreadable.explanation(process_started_at=made_at - 60)
    before = unreadable.explanation(process_started_at=made_at + 60)
    assert "rolling deploy" in after and "waiting does not fix" not in after
    assert "waiting does not fix" in before and "NEW,OLD" in before
    assert all("does not name its key" in text for text in (after, before))
    assert "damaged" in diagnose(DAMAGED).explanation(made_at)


def test_a_token_whose_time_is_no_date_is_still_explained():
    # Its timestamp is in the clear and not authenticated until a key opens it: a value altered in
    # the database made explanation() raise (year out of range), so decrypt() raised that instead of
    # SecretNotReadable: a 500 for a request, a failed attempt counted for a delivery.
    unreadable = diagnose(altered_token())
    assert unreadable.reason == UNKNOWN_KEY and unreadable.encrypted_at is None
    assert "does not name its key" in unreadable.explanation(time.time())
    with pytest.raises(fields.SecretNotReadable):
        fields.decrypt(altered_token())


# --- Background deletions -----------------------------------------------------------------------


def test_a_source_whose_secret_cannot_be_read_is_still_deleted(organization):
    # It was a SecretNotReadable in every run of the deletion task, for ever: the tenant's source
    # stayed "being deleted" and its events with it.
    source = make_source(organization)
    source_request_deletion(source=source)
    store_raw(Source, source.pk, DAMAGED)
    assert source_deletion_run(source_id=source.pk).finished
    assert not Source.objects.filter(pk=source.pk).exists()


def test_a_destination_whose_secrets_cannot_be_read_is_still_deleted(organization):
    destination, _ = make_destination(organization, "http://127.0.0.1:9/", custom_headers={"X-Api-Key": "k" * 24})
    destination_request_deletion(destination=destination)
    store_raw(Destination, destination.pk, foreign_token())
    store_raw(Destination, destination.pk, foreign_token(), column="custom_headers")
    assert destination_deletion_run(destination_id=destination.pk).finished
    assert not Destination.objects.filter(pk=destination.pk).exists()


def test_an_organization_whose_secrets_cannot_be_read_is_still_deleted(organization):
    source = make_source(organization)
    destination, _ = make_destination(organization, "http://127.0.0.1:9/", sources=[source])
    organization_request_deletion(organization=organization)
    store_raw(Source, source.pk, foreign_token())
    store_raw(Destination, destination.pk, DAMAGED)
    assert organization_deletion_run(organization_id=organization.pk).finished
    assert not Source.objects.filter(pk=source.pk).exists()
    assert not Destination.objects.filter(pk=destination.pk).exists()


# --- Deliveries -----------------------------------------------------------------------------------


@pytest.fixture
def two_tenants(organization, other_organization, httpserver):
    """One due delivery per tenant, each destination allowing a single attempt."""
    made = {}
    for org in (organization, other_organization):
        source = make_source(org)
        destination, _ = make_destination(org, httpserver.url_for(f"/{org.slug}"), sources=[source], max_attempts=1)
        WebhookEvent.objects.create(organization=org, source=source, body=b"{}")
        made[org.slug] = destination
        httpserver.expect_request(f"/{org.slug}").respond_with_data("ok")
    assert processing.process_event_batch() == 2
    return {slug: Delivery.objects.get(destination=destination) for slug, destination in made.items()}


@pytest.mark.parametrize("stored", ["foreign", "damaged", "altered"])
def test_a_delivery_whose_secret_cannot_be_read_waits_unsent_and_keeps_its_attempts(
    two_tenants, httpserver, settings, stored
):
    # It was a failed attempt: with the keys wrong for a while, every delivery used up its retries
    # and went dead (here at once: one attempt allowed), and the destination's circuit breaker
    # paused it and mailed its tenant that their receiver fails.
    settings.CIRCUIT_BREAKER_FAILURES = 1
    settings.CIRCUIT_BREAKER_PERIOD_SECONDS = 0
    bad = two_tenants["acme"]
    store_raw(
        Destination, bad.destination_id, {"foreign": foreign_token(), "altered": altered_token()}.get(stored, DAMAGED)
    )
    before = timezone.now()

    assert delivery_service.dispatch_due_deliveries(max_seconds=5, linger_seconds=0) == 1

    two_tenants["globex"].refresh_from_db()
    assert two_tenants["globex"].status == Delivery.Status.SUCCEEDED
    bad.refresh_from_db()
    assert bad.status == Delivery.Status.PENDING and bad.claimed_at is None and bad.attempt_count == 0
    assert bad.next_attempt_at >= before + timedelta(seconds=delivery_service.UNSENT_RETRY_SECONDS)
    assert bad.last_error.startswith("not sent: the destination's signing secret")
    assert not DeliveryAttempt.objects.filter(delivery=bad).exists()
    destination = Destination.objects.defer("secret").get(pk=bad.destination_id)
    assert destination.consecutive_failures == 0 and destination.paused_at is None
    assert [request.path for request, _ in httpserver.log] == ["/globex"]
    assert secret_health.shared().counts == {("delivery", MALFORMED if stored == "damaged" else UNKNOWN_KEY): 1}

    # Once the keys can read it again (here: a new secret stored), it is sent as any other.
    Delivery.objects.filter(pk=bad.pk).update(next_attempt_at=timezone.now())
    store_raw(Destination, bad.destination_id, fields.encrypt("whsec_" + "A" * 32))
    assert delivery_service.dispatch_due_deliveries(max_seconds=5, linger_seconds=0) == 1
    bad.refresh_from_db()
    assert bad.status == Delivery.Status.SUCCEEDED and bad.attempt_count == 1


def test_send_puts_back_a_delivery_whose_deferred_secret_cannot_be_read(two_tenants):
    # A destination read without its secrets (as some paths do) reads them only when sending.
    bad = two_tenants["acme"]
    store_raw(Destination, bad.destination_id, DAMAGED)
    delivery = Delivery.objects.select_related("event").get(pk=bad.pk)
    delivery.destination = Destination.objects.defer("secret").get(pk=bad.destination_id)
    result = delivery_service.send(delivery)
    assert result.unsent_reason and "damaged" in result.unsent_reason and not result.headers


# --- What operators see ---------------------------------------------------------------------------


def test_an_unreadable_source_secret_shows_in_readyz_metrics_and_the_processing_health(
    client, organization, settings, caplog
):
    settings.METRICS_TOKEN = TOKEN
    source = make_source(organization, secret=STRIPE_SECRET)
    token = foreign_token(STRIPE_SECRET)
    store_raw(Source, source.pk, token)
    forget_cached_sources()
    body = json.dumps({"id": "evt_unreadable", "type": "invoice.paid"})

    assert client.get("/readyz").json()["status"] == "ok"
    response = post_stripe(client, source, body, STRIPE_SECRET)
    assert response.status_code == 503 and not WebhookEvent.objects.filter(source=source).exists()

    ready = client.get("/readyz")
    assert ready.status_code == 200  # still serving: the other sources' webhooks are accepted
    assert ready.json()["status"] == "degraded"
    words = ready.json()["checks"]["secrets"]
    assert words.startswith("degraded: a stored secret could not be decrypted")
    assert "for ingest" in words and "well-formed Fernet token" in words and "rolling deploy" in words
    # Anyone may ask /readyz: neither this machine's name nor when the secret was set.
    assert secret_health.PROCESS_NAME not in words and " UTC" not in words

    samples = parse_prometheus(client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}").content.decode())
    failures = {
        dict(labels)["place"] + "/" + dict(labels)["reason"]: value
        for (name, labels), value in samples.items()
        if name == "hookline_secret_decrypt_failures_total"
    }
    assert failures["ingest/unknown_key"] == 1
    assert sum(failures.values()) == 1 and len(failures) == len(secret_health.PLACES) * 2  # zeros too
    assert samples[("hookline_secret_decrypt_failure_recent", ())] == 1

    health = platform_health.processing_health()
    assert health.verdict != platform_health.OK
    [reason] = [reason for reason in health.reasons if reason.startswith("a stored secret could not be decrypted")]
    assert f"for ingest, by process {secret_health.PROCESS_NAME}" in reason and " UTC" in reason
    assert health.as_dict()["secrets_unreadable"]["counts"] == [
        {"place": "ingest", "reason": "unknown_key", "count": 1}
    ]

    # Never the token nor the secret, anywhere an operator looks.
    shown = [words, *health.reasons, json.dumps(health.as_dict()), *(r.getMessage() for r in caplog.records)]
    assert not any(token in text or STRIPE_SECRET in text or token[10:40] in text for text in shown)

    # Past the window, this process is ready again; the count stays.
    settings.HEALTH_SECRET_UNREADABLE_SECONDS = 0
    assert client.get("/readyz").json()["status"] == "ok"
    assert secret_health.shared().counts == {("ingest", UNKNOWN_KEY): 1} and not secret_health.shared().recent


def test_failures_while_the_cache_is_down_are_shared_once_it_answers(monkeypatch):
    real_add = secret_health._add

    def down(key, count):
        raise ConnectionError("Redis is down")

    monkeypatch.setattr(secret_health, "_add", down)
    secret_health.note_unreadable("delivery", diagnose(DAMAGED))
    assert secret_health.this_process().recent and secret_health.shared().counts == {}

    monkeypatch.setattr(secret_health, "_add", real_add)
    secret_health.note_unreadable("delivery", diagnose(DAMAGED))
    assert secret_health.shared().counts == {("delivery", MALFORMED): 2}


@pytest.mark.parametrize(
    ("stored", "said", "noticed"),
    [
        # Made now: after this process started, most likely by one with a key being deployed.
        ("foreign", "If a new encryption key is being deployed", "Nothing is lost, and nothing needs replacing"),
        ("damaged", "damaged and cannot be decrypted", "the stored value is damaged, and no key will ever read it"),
    ],
)
def test_a_page_and_an_api_call_say_which_it_likely_is(client, owner, organization, stored, said, noticed):
    # It always said a new key was being deployed, also for a value no key will ever read.
    from django.test import RequestFactory

    from webhooks.views.one_look import SecretNotReadableMiddleware

    destination, _ = make_destination(organization, "http://127.0.0.1:9/", custom_headers={"X-Api-Key": "k" * 24})
    token = foreign_token() if stored == "foreign" else DAMAGED
    for column in ("secret", "custom_headers"):
        store_raw(Destination, destination.pk, token, column)
    client.force_login(owner)
    client.raise_request_exception = False

    # The destination's own page opens and says which (it was this 503: test_unreadable_secret_tenant_pages).
    page = client.get(reverse("dashboard:destination_detail", args=["acme", destination.pk]))
    assert page.status_code == 200 and noticed in page.content.decode()
    reason = UNKNOWN_KEY if stored == "foreign" else MALFORMED
    assert secret_health.shared().counts == {("dashboard", reason): 2}  # its secret and its custom headers

    # What still needs such a secret answers 503, a page's words or the API's JSON.
    with pytest.raises(fields.SecretNotReadable) as raised:
        fields.decrypt(token)
    middleware = SecretNotReadableMiddleware(lambda request: None)
    answer = middleware.process_exception(RequestFactory().get("/o/acme/"), raised.value)
    assert answer.status_code == 503 and said in answer.content.decode()
    api = middleware.process_exception(RequestFactory().get("/api/v1/destinations"), raised.value)
    assert api.status_code == 503 and said in json.loads(api.content)["detail"]


def test_the_processing_health_says_what_an_unreadable_secret_stops_as_the_pages_do(client, owner, organization):
    # It said "its pages answer 503" after the pages had been made to open and say so themselves.
    destination, _ = make_destination(organization, "http://127.0.0.1:9/")
    store_raw(Destination, destination.pk, DAMAGED)
    client.force_login(owner)
    page = client.get(reverse("dashboard:destination_detail", args=["acme", destination.pk]))
    assert page.status_code == 200

    [reason] = [
        reason
        for reason in platform_health.processing_health().reasons
        if reason.startswith("a stored secret could not be decrypted")
    ]
    assert "answer 503" not in reason.split("ingest for such a source answers 503")[1]
    assert reason.endswith("its deliveries wait unsent, and its pages say so (they open, showing it unreadable)")


def test_an_idempotent_answer_that_cannot_be_read_is_counted_as_such(client, organization, settings):
    from organizations.models import IdempotencyKey

    key = make_key(organization)[1]
    created = client.post(
        "/api/v1/destinations",
        {"name": "App", "url": "http://127.0.0.1:9/hooks"},
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {key}",
        HTTP_IDEMPOTENCY_KEY="create-app",
    )
    assert created.status_code == 201, created.content
    stored = IdempotencyKey.objects.get(key="create-app")
    store_raw(IdempotencyKey, stored.pk, foreign_token(), column="response_body")

    again = client.post(
        "/api/v1/destinations",
        {"name": "App", "url": "http://127.0.0.1:9/hooks"},
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {key}",
        HTTP_IDEMPOTENCY_KEY="create-app",
    )
    assert again.status_code == 503 and again.json()["error"] == "stored_answer_unreadable"
    assert "if it lasts, this server's keys are wrong" in again.json()["detail"]
    assert Destination.objects.filter(name="App").count() == 1  # not run again
    assert secret_health.shared().counts == {("idempotency", UNKNOWN_KEY): 1}


# --- Checking the keys: rotate_encryption_keys --verify ---------------------------------------------


def raw_secrets() -> list[str]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT secret FROM webhooks_source ORDER BY id")
        return [row[0] for row in cursor.fetchall()]


def run_command(*args) -> tuple[dict, bool]:
    out = io.StringIO()
    try:
        call_command("rotate_encryption_keys", "--json", *args, stdout=out)
        failed = False
    except CommandError:
        failed = True
    return json.loads(out.getvalue()), failed


def test_verify_counts_what_the_keys_read_writes_nothing_and_fails_when_some_cannot_be_read(
    organization, other_organization, settings
):
    old_key, new_key = settings.FIELD_ENCRYPTION_KEYS[0], Fernet.generate_key().decode()
    readable = make_source(organization)
    settings.FIELD_ENCRYPTION_KEYS = [new_key, old_key]
    _fernet_for.cache_clear()
    make_source(organization)  # under the new key
    lost = make_source(other_organization)
    store_raw(Source, lost.pk, foreign_token())
    damaged = make_source(other_organization)
    store_raw(Source, damaged.pk, DAMAGED)
    before = raw_secrets()

    result, failed = run_command("--verify", "--batch-size", "1")
    assert failed
    sources = result["verified"]["webhooks.Source"]
    assert (sources["rows"], sources["under_newest_key"], sources["under_older_key"]) == (4, 1, 1)
    assert (sources["unknown_key"], sources["malformed"]) == (1, 1)
    assert sources["unreadable_rows"] == [
        {"pk": lost.pk, "organization_id": other_organization.pk},
        {"pk": damaged.pk, "organization_id": other_organization.pk},
    ]
    assert result["unreadable"] == 2
    assert raw_secrets() == before

    # One organization's rows, and a bounded sample.
    ours, failed = run_command("--verify", "--org", organization.slug)
    assert not failed and ours["verified"]["webhooks.Source"]["rows"] == 2 and ours["unreadable"] == 0
    sample, _ = run_command("--verify", "--limit", "1")
    assert sample["verified"]["webhooks.Source"]["rows"] == 1
    assert sample["verified"]["webhooks.Source"]["under_older_key"] == 1  # the oldest row: readable.pk
    assert readable.pk < lost.pk

    # Not a health failure: the command's answer says it.
    assert secret_health.shared().counts == {} and not secret_health.this_process().recent


def test_verify_in_words_says_what_to_do(organization, settings):
    make_source(organization)
    out = io.StringIO()
    call_command("rotate_encryption_keys", "--verify", stdout=out)
    assert "webhooks.Source: 1 row, 1 secret: 1 under the newest key" in out.getvalue()  # "1 secrets" before
    assert out.getvalue().rstrip().endswith("Every secret can be read, and all are under the newest key.")

    store_raw(Source, Source.objects.get().pk, foreign_token())
    out = io.StringIO()
    with pytest.raises(CommandError, match="1 stored secrets cannot be read"):
        call_command("rotate_encryption_keys", "--verify", stdout=out)
    assert "under no key configured" in out.getvalue() and "Fernet tokens do not say which key" in out.getvalue()


def test_a_rotation_stopped_by_a_damaged_secret_says_so_and_is_counted(organization):
    source = make_source(organization)
    store_raw(Source, source.pk, DAMAGED)
    with pytest.raises(CommandError, match="not a well-formed Fernet token"):
        call_command("rotate_encryption_keys", stdout=io.StringIO())
    assert secret_health.shared().counts == {("rotation", MALFORMED): 1}


# --- A tenant's way out of a damaged secret: deleting what holds it ---------------------------------


@pytest.mark.parametrize("how", ["dashboard", "api"])
def test_a_destination_whose_secret_is_damaged_can_still_be_deleted_by_its_tenant(
    client, owner, organization, monkeypatch, how
):
    # Its secret can be read by no key, so it cannot be rotated (the rotation keeps the old one for
    # its overlap): deleting it was a 503 too, leaving the tenant nothing to do.
    from webhooks import tasks

    monkeypatch.setattr(tasks.delete_destination, "apply_async", lambda *a, **k: None)
    destination, _ = make_destination(organization, "http://127.0.0.1:9/")
    store_raw(Destination, destination.pk, DAMAGED)
    client.raise_request_exception = False
    if how == "dashboard":
        client.force_login(owner)
        response = client.post(reverse("dashboard:destination_delete", args=["acme", destination.pk]))
        assert response.status_code == 302, response.content[:300]
    else:
        response = client.delete(
            f"/api/v1/destinations/{destination.pk}", HTTP_AUTHORIZATION=f"Bearer {make_key(organization)[1]}"
        )
        assert response.status_code == 202, response.content[:300]
    assert Destination.objects.filter(pk=destination.pk, deletion_requested_at__isnull=False).exists()


@pytest.mark.parametrize("how", ["dashboard", "api"])
def test_a_source_whose_secret_is_damaged_can_still_be_deleted_by_its_tenant(
    client, owner, organization, monkeypatch, how
):
    from webhooks import tasks

    monkeypatch.setattr(tasks.delete_source, "apply_async", lambda *a, **k: None)
    source = make_source(organization)
    store_raw(Source, source.pk, DAMAGED)
    client.raise_request_exception = False
    if how == "dashboard":
        client.force_login(owner)
        response = client.post(reverse("dashboard:source_delete", args=["acme", source.pk]))
        assert response.status_code == 302, response.content[:300]
    else:
        response = client.delete(
            f"/api/v1/sources/{source.pk}", HTTP_AUTHORIZATION=f"Bearer {make_key(organization)[1]}"
        )
        assert response.status_code == 202, response.content[:300]
    assert Source.objects.filter(pk=source.pk, deletion_requested_at__isnull=False).exists()


def test_a_bulk_retry_for_a_destination_whose_secret_this_process_cannot_read_is_still_queued(
    client, organization, monkeypatch
):
    # Queuing needs no secret (the deliveries wait unsent until a worker can read it): it was a 503.
    from organizations.models import ApiKey
    from webhooks.services import operations

    from .api_helpers import api_post, make_delivery, make_event

    monkeypatch.setattr(operations, "publish_bulk_retry", lambda job_id: None)
    source = make_source(organization)
    destination, _ = make_destination(organization, "http://127.0.0.1:9/", sources=[source])
    make_delivery(make_event(source), destination)
    store_raw(Destination, destination.pk, foreign_token())
    key = make_key(organization, access=ApiKey.Access.READ_WRITE)[1]

    response = api_post(client, key, "/api/v1/deliveries/retry", {"destination": destination.pk})

    assert response.status_code == 202, response.content[:300]
