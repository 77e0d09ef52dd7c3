"""Idempotency-Key on the REST API's POSTs: a retry gets the first answer and runs nothing twice."""

import json
import os
import signal
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest
from cryptography.fernet import Fernet
from django.db import connection, connections, transaction
from django.db.models import F
from django.test import Client
from django.urls import URLPattern, get_resolver
from django.utils import timezone

from organizations.idempotency import idempotency_key_claim, idempotency_request_digest
from organizations.models import ApiKey, AuditLog, IdempotencyKey, Organization
from webhooks.api import views, views_manage
from webhooks.api.idempotency import IdempotencyKeyMixin
from webhooks.fields import _fernet_for
from webhooks.models import Delivery, DeliveryAttempt, Destination, Source
from webhooks.services import destinations, lifecycle, operations, outbound
from webhooks.services import organization_deletion as deletion

from .api_helpers import make_delivery, make_event, make_key
from .factories import make_destination, make_source
from .processes import ROOT, wait_until
from .test_api_schema import answer_as_documented

GITHUB_SOURCE = {"provider": "github", "name": "GitHub org"}


@pytest.fixture(autouse=True)
def no_broker(monkeypatch):
    monkeypatch.setattr(operations, "publish_bulk_retry", lambda job_id: None)
    monkeypatch.setattr(operations, "schedule_dispatch", lambda slot=0: None)
    monkeypatch.setattr("webhooks.services.delivery.schedule_dispatch", lambda *args, **kwargs: None)


@pytest.fixture
def key(organization):
    return make_key(organization, access=ApiKey.Access.READ_WRITE, name="ops-script")[1]


def post(client, key: str, path: str, data: dict | None = None, *, idempotency_key: str | None = "retry-me-1"):
    headers = {"HTTP_IDEMPOTENCY_KEY": idempotency_key} if idempotency_key is not None else {}
    return client.post(path, data or {}, content_type="application/json", HTTP_AUTHORIZATION=f"Bearer {key}", **headers)


def _raw_idempotency_rows() -> list[tuple]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT key, response_status, response_body FROM organizations_idempotencykey")
        return cursor.fetchall()


def test_a_retried_create_gets_the_first_answer_again_and_creates_nothing(client, organization, key):
    first = post(client, key, "/api/v1/sources", GITHUB_SOURCE)
    assert first.status_code == 201 and "Idempotent-Replayed" not in first
    again = post(client, key, "/api/v1/sources", GITHUB_SOURCE)
    assert again.status_code == 201 and again["Idempotent-Replayed"] == "true"
    # The client never got the first answer: the retry's is the same, its one-time secret included.
    assert again.json() == first.json() and again.json()["secret"]
    assert again["Location"] == first["Location"] == f"http://testserver/api/v1/sources/{first.json()['id']}"
    assert Source.objects.filter(organization=organization).count() == 1
    assert AuditLog.objects.filter(action="source.created").count() == 1
    # Without a key, nothing changes: each request runs.
    assert post(client, key, "/api/v1/sources", GITHUB_SOURCE, idempotency_key=None).status_code == 201
    assert Source.objects.filter(organization=organization).count() == 2


def test_a_query_string_is_neither_kept_nor_quoted_back(client, organization, key):
    """A POST takes no query parameters (a 400, kept for the key like any refusal), but a careless
    client may put its API key there: the key's row kept the path with its query in plain text for
    24 hours, and the 422 of the key sent again with another request quoted it back."""
    refused = post(client, key, f"/api/v1/sources?api_key={key}", GITHUB_SOURCE)
    assert refused.status_code == 400, refused.content
    assert IdempotencyKey.objects.get().request_path == "/api/v1/sources"
    assert post(client, key, f"/api/v1/sources?api_key={key}", GITHUB_SOURCE).json() == refused.json()

    other = post(client, key, "/api/v1/sources", GITHUB_SOURCE)
    assert other.status_code == 422, other.content
    assert key not in other.json()["detail"] and "api_key" not in other.json()["detail"]


def test_the_same_key_with_another_request_is_refused(client, organization, key):
    assert post(client, key, "/api/v1/sources", GITHUB_SOURCE).status_code == 201
    other_body = post(client, key, "/api/v1/sources", {**GITHUB_SOURCE, "name": "Other"})
    assert other_body.status_code == 422
    assert other_body.json()["error"] == "idempotency_key_reused"
    assert "POST /api/v1/sources" in other_body.json()["detail"]
    other_path = post(client, key, "/api/v1/destinations", {"name": "x", "url": "http://127.0.0.1:9/x"})
    assert other_path.status_code == 422
    assert Source.objects.filter(organization=organization).count() == 1
    assert not Destination.objects.filter(organization=organization).exists()


def post_bytes(client, key: str, path: str, body: bytes, *, idempotency_key: str = "retry-me-1"):
    return client.post(
        path,
        body,
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {key}",
        HTTP_IDEMPOTENCY_KEY=idempotency_key,
    )


def test_the_same_json_written_another_way_is_the_same_request(client, organization, key):
    # A client library that builds the body from a dict again may order its keys or space it otherwise.
    first = post_bytes(client, key, "/api/v1/sources", b'{"provider": "github", "name": "GitHub \\u00e9"}')
    assert first.status_code == 201, first.content
    again = post_bytes(
        client, key, "/api/v1/sources", '{\n  "name":"GitHub \u00e9",\n  "provider":"github"\n}'.encode()
    )
    assert again.status_code == 201 and again.headers["Idempotent-Replayed"] == "true"
    assert again.json() == first.json()
    assert Source.objects.filter(organization=organization).count() == 1
    # Another value is another request, however close.
    other = post_bytes(client, key, "/api/v1/sources", b'{"provider": "github", "name": "GitHub e"}')
    assert other.status_code == 422 and other.json()["error"] == "idempotency_key_reused"


def test_a_body_that_is_not_json_is_compared_byte_for_byte(client, organization, key):
    # The API refuses it (400), and that answer is kept for the same bytes only.
    first = post_bytes(client, key, "/api/v1/sources", b'{"provider": "github",')
    assert first.status_code == 400
    assert (
        post_bytes(client, key, "/api/v1/sources", b'{"provider": "github",').headers["Idempotent-Replayed"] == "true"
    )
    assert post_bytes(client, key, "/api/v1/sources", b'{"provider":"github",').status_code == 422


def test_a_json_string_with_a_lone_surrogate_gets_the_apis_answer_not_a_server_error(client, organization, key):
    # JSON's \ud800 escape reads as a lone surrogate, which UTF-8 cannot encode: the API refuses
    # the value (400); written out again for the digest, it must not make the request a 500.
    body = b'{"provider": "github", "name": "GitHub \\ud800"}'
    first = post_bytes(client, key, "/api/v1/sources", body)
    assert first.status_code == 400, first.content
    again = post_bytes(client, key, "/api/v1/sources", body)
    assert again.status_code == 400 and again.headers["Idempotent-Replayed"] == "true"
    assert (
        post_bytes(client, key, "/api/v1/sources", b'{"provider": "github", "name": "GitHub \\ud801"}').status_code
        == 422
    )
    assert not Source.objects.exists()


def test_a_key_stored_with_the_raw_bytes_digest_before_still_answers_the_same_bytes(client, organization, key):
    # A key stored by the previous release (within the day it is kept) holds the digest of the raw
    # bytes; the same bytes sent again still get its answer, while the same JSON written another
    # way is refused as it was then.
    api_key = ApiKey.objects.get(organization=organization)
    raw = b'{"provider": "github", "name": "GitHub org"}'
    now = timezone.now()
    IdempotencyKey.objects.create(
        organization_id=organization.pk,
        api_key=api_key,
        key="retry-me-1",
        request_digest=idempotency_request_digest(method="POST", path="/api/v1/sources", body=raw),
        request_method="POST",
        request_path="/api/v1/sources",
        started_at=now,
        expires_at=now + timedelta(hours=IdempotencyKey.KEPT_HOURS),
        response_status=201,
        response_body='{"id": 1, "kept": true}',
        response_location="",
    )
    replayed = post_bytes(client, key, "/api/v1/sources", raw)
    assert replayed.status_code == 201 and replayed.json() == {"id": 1, "kept": True}
    assert post_bytes(client, key, "/api/v1/sources", b'{"name":"GitHub org","provider":"github"}').status_code == 422
    assert not Source.objects.exists()


@pytest.mark.parametrize("bad", ["", "x" * 256, "caf\u00e9", "tab\there"])
def test_a_malformed_key_is_a_400_and_nothing_runs(client, organization, key, bad):
    response = post(client, key, "/api/v1/sources", GITHUB_SOURCE, idempotency_key=bad)
    assert response.status_code == 400 and response.json()["error"] == "invalid_idempotency_key"
    assert not Source.objects.exists() and not IdempotencyKey.objects.exists()


def test_secrets_in_stored_answers_are_encrypted(client, organization, key):
    source = post(client, key, "/api/v1/sources", GITHUB_SOURCE, idempotency_key="src").json()
    destination = post(
        client, key, "/api/v1/destinations", {"name": "Billing", "url": "http://127.0.0.1:9/b"}, idempotency_key="dst"
    ).json()
    rotated = post(client, key, f"/api/v1/destinations/{destination['id']}/rotate_secret", idempotency_key="rot")
    secrets = [source["secret"], destination["secret"], rotated.json()["secret"]]
    rows = _raw_idempotency_rows()
    assert len(rows) == 3 and all(status in (200, 201) for _, status, _ in rows)
    for _, _, body in rows:
        assert body.startswith("gAAAA")  # a Fernet token
        assert not any(secret in body for secret in secrets)
        assert "Billing" not in body and "GitHub org" not in body
    replayed = post(client, key, f"/api/v1/destinations/{destination['id']}/rotate_secret", idempotency_key="rot")
    assert replayed["Idempotent-Replayed"] == "true" and replayed.json()["secret"] == secrets[2]


def test_a_retry_on_a_process_without_the_key_of_the_stored_answer_is_a_503_to_retry(
    client, organization, key, settings, caplog
):
    # A rolling deploy of FIELD_ENCRYPTION_KEYS=NEW,OLD: the first POST is answered (and its answer
    # stored under NEW) by a process with the new list, its retry lands on one with OLD alone.
    old_key, new_key = settings.FIELD_ENCRYPTION_KEYS[0], Fernet.generate_key().decode()
    settings.FIELD_ENCRYPTION_KEYS = [new_key, old_key]
    _fernet_for.cache_clear()
    created = post(client, key, "/api/v1/sources", GITHUB_SOURCE, idempotency_key="src")
    assert created.status_code == 201

    settings.FIELD_ENCRYPTION_KEYS = [old_key]
    _fernet_for.cache_clear()
    unhandled = Client(raise_request_exception=False)
    on_old_process = post(unhandled, key, "/api/v1/sources", GITHUB_SOURCE, idempotency_key="src")
    assert on_old_process.status_code == 503 and on_old_process.json()["error"] == "stored_answer_unreadable"
    assert on_old_process["Retry-After"]
    assert Source.objects.count() == 1  # not run again
    # Told to the operator with its reason, as a page's 503 is: a process whose keys stay wrong
    # answers every such retry 503, and "Service Unavailable" alone in its log does not say why.
    assert any(
        record.levelname == "ERROR" and "FIELD_ENCRYPTION_KEYS" in record.getMessage() for record in caplog.records
    )

    settings.FIELD_ENCRYPTION_KEYS = [new_key, old_key]
    _fernet_for.cache_clear()
    on_new_process = post(client, key, "/api/v1/sources", GITHUB_SOURCE, idempotency_key="src")
    assert on_new_process["Idempotent-Replayed"] == "true" and on_new_process.json() == created.json()


def test_refusals_are_kept_too_but_server_errors_free_the_key(client, organization, key, monkeypatch):
    refused = post(client, key, "/api/v1/sources", {"provider": "nosuch", "name": "x"})
    assert refused.status_code == 400
    again = post(client, key, "/api/v1/sources", {"provider": "nosuch", "name": "x"})
    assert again.status_code == 400 and again["Idempotent-Replayed"] == "true" and again.json() == refused.json()

    def broken(**kwargs):
        raise RuntimeError("the database went away")

    monkeypatch.setattr(views_manage, "source_create", broken)
    unhandled = Client(raise_request_exception=False)
    assert post(unhandled, key, "/api/v1/sources", GITHUB_SOURCE, idempotency_key="k2").status_code == 500
    assert not IdempotencyKey.objects.filter(key="k2").exists()
    monkeypatch.undo()
    retried = post(client, key, "/api/v1/sources", GITHUB_SOURCE, idempotency_key="k2")
    assert retried.status_code == 201 and "Idempotent-Replayed" not in retried


def test_each_organization_and_each_api_key_has_its_own_keys(client, organization, other_organization, key):
    other_key = make_key(other_organization, access=ApiKey.Access.READ_WRITE)[1]
    second_key_same_org = make_key(organization, access=ApiKey.Access.READ_WRITE, name="other script")[1]
    ours = post(client, key, "/api/v1/sources", GITHUB_SOURCE)
    theirs = post(client, other_key, "/api/v1/sources", GITHUB_SOURCE)
    assert theirs.status_code == 201 and "Idempotent-Replayed" not in theirs
    assert theirs.json()["id"] != ours.json()["id"] and theirs.json()["secret"] != ours.json()["secret"]
    assert Source.objects.filter(organization=other_organization).count() == 1
    # Another script of the same organization that happens to pick the same key is not answered with ours.
    assert "Idempotent-Replayed" not in post(client, second_key_same_org, "/api/v1/sources", GITHUB_SOURCE)
    assert Source.objects.filter(organization=organization).count() == 2


def test_expired_keys_are_purged_by_the_retention_run_and_run_again(client, organization, key):
    post(client, key, "/api/v1/sources", GITHUB_SOURCE, idempotency_key="old")
    post(client, key, "/api/v1/sources", {**GITHUB_SOURCE, "name": "Fresh"}, idempotency_key="fresh")
    IdempotencyKey.objects.filter(key="old").update(expires_at=timezone.now() - timedelta(seconds=1))
    lifecycle.purge_expired_events()
    assert list(IdempotencyKey.objects.values_list("key", flat=True)) == ["fresh"]
    assert "Idempotent-Replayed" not in post(client, key, "/api/v1/sources", GITHUB_SOURCE, idempotency_key="old")
    assert Source.objects.filter(organization=organization).count() == 3


def test_an_expired_key_not_yet_purged_is_as_new(client, organization, key):
    post(client, key, "/api/v1/sources", GITHUB_SOURCE)
    IdempotencyKey.objects.update(expires_at=timezone.now() - timedelta(seconds=1))
    assert "Idempotent-Replayed" not in post(client, key, "/api/v1/sources", GITHUB_SOURCE)
    assert Source.objects.filter(organization=organization).count() == 2


def test_a_retried_delivery_retry_and_bulk_retry_run_once(client, organization, key):
    source = make_source(organization)
    destination, _ = make_destination(organization, "http://127.0.0.1:9/b", sources=[source])
    delivery = make_delivery(make_event(source), destination)
    path = f"/api/v1/deliveries/{delivery.pk}/retry"
    first = post(client, key, path, idempotency_key="one")
    assert first.status_code == 202
    assert post(client, key, path, idempotency_key="one").json() == first.json()
    assert Delivery.objects.get(pk=delivery.pk).manual_attempts == 1
    assert AuditLog.objects.filter(action__contains="retr").count() == 1

    other = make_delivery(make_event(source), destination)
    job = post(client, key, "/api/v1/deliveries/retry", {"destination": destination.pk}, idempotency_key="bulk")
    assert job.status_code == 202
    # Without the key this would be a 409 (a job for the same deliveries is queued): a retry of
    # the request that started it gets that job again.
    again = post(client, key, "/api/v1/deliveries/retry", {"destination": destination.pk}, idempotency_key="bulk")
    assert again.status_code == 202 and again.json() == job.json() and again["Location"] == job["Location"]
    assert DeliveryAttempt.objects.filter(delivery=other).count() == 1


def test_every_post_endpoint_takes_the_key():
    posts = [
        pattern.callback.view_class
        for pattern in get_resolver("webhooks.api.urls").url_patterns
        if isinstance(pattern, URLPattern) and hasattr(getattr(pattern.callback, "view_class", None), "post")
    ]
    assert len(posts) == 10  # replay, retry, bulk retry, pause, resume, send_waiting_now, 2 creates, 2 rotates
    assert all(issubclass(view, IdempotencyKeyMixin) for view in posts)


def test_organization_deletion_counts_and_deletes_them(client, organization, other_organization, key):
    other_key = make_key(other_organization, access=ApiKey.Access.READ_WRITE)[1]
    post(client, key, "/api/v1/sources", GITHUB_SOURCE)
    post(client, other_key, "/api/v1/sources", GITHUB_SOURCE)
    contents = {kind.kind: kind.count for kind in deletion.organization_contents(organization=organization)}
    assert contents["API idempotency keys"] == 1
    deletion.organization_request_deletion(organization=organization)
    run = deletion.organization_deletion_run(organization_id=organization.pk)
    assert run.finished and run.deleted["API idempotency keys"] == 1
    assert list(IdempotencyKey.objects.values_list("organization_id", flat=True)) == [other_organization.pk]


# --- Concurrency: decided by the unique constraint, each request on its own connection ---------------


def _in_thread(work):
    def run(*args):
        try:
            return work(*args)
        finally:
            connections.close_all()  # this thread's connection: the test database is dropped after

    return run


@pytest.mark.django_db(transaction=True)
def test_a_request_sent_again_while_the_first_runs_is_a_409_and_the_first_runs_once(organization, key, monkeypatch):
    started, release = threading.Event(), threading.Event()
    real_create = views_manage.source_create

    def slow_create(**kwargs):
        started.set()
        assert release.wait(30)
        return real_create(**kwargs)

    monkeypatch.setattr(views_manage, "source_create", slow_create)
    with ThreadPoolExecutor(max_workers=1) as pool:
        first = pool.submit(_in_thread(lambda: post(Client(), key, "/api/v1/sources", GITHUB_SOURCE)))
        assert started.wait(30)
        during = post(Client(), key, "/api/v1/sources", GITHUB_SOURCE)
        release.set()
        first = first.result()
    assert during.status_code == 409 and during.json()["error"] == "idempotency_key_in_progress"
    assert during["Retry-After"] == "1"
    assert first.status_code == 201
    after = post(Client(), key, "/api/v1/sources", GITHUB_SOURCE)
    assert after["Idempotent-Replayed"] == "true" and after.json() == first.json()
    assert Source.objects.filter(organization=organization).count() == 1


@pytest.mark.django_db(transaction=True)
def test_identical_requests_sent_at_once_create_one_source(organization, key):
    barrier = threading.Barrier(6)

    @_in_thread
    def send(_):
        client = Client()
        barrier.wait()
        return post(client, key, "/api/v1/sources", GITHUB_SOURCE)

    with ThreadPoolExecutor(max_workers=6) as pool:
        answers = list(pool.map(send, range(6)))
    statuses = sorted(answer.status_code for answer in answers)
    assert Source.objects.filter(organization=organization).count() == 1
    assert set(statuses) <= {201, 409} and statuses.count(201) >= 1
    created = [answer for answer in answers if answer.status_code == 201]
    assert sum("Idempotent-Replayed" not in answer for answer in created) == 1
    assert len({answer.json()["id"] for answer in created}) == 1


@pytest.mark.django_db(transaction=True)
def test_a_key_whose_request_was_lost_is_taken_over_after_a_while(organization, key):
    # As a worker killed mid-request leaves it: still marked running, and nothing it did committed
    # (its transaction went with its connection; see the test with a real killed process below).
    claim = idempotency_key_claim(
        api_key=ApiKey.objects.get(organization=organization),
        key="retry-me-1",
        method="POST",
        path="/api/v1/sources",
        body=json.dumps(GITHUB_SOURCE).encode(),
        now=timezone.now() - timedelta(seconds=IdempotencyKey.ABANDONED_AFTER_SECONDS + 1),
    )
    assert claim.response_status is None
    taken_over = post(Client(), key, "/api/v1/sources", GITHUB_SOURCE)
    assert taken_over.status_code == 201 and "Idempotent-Replayed" not in taken_over
    assert Source.objects.filter(organization=organization).count() == 1
    IdempotencyKey.objects.update(response_status=None, started_at=timezone.now())
    assert post(Client(), key, "/api/v1/sources", GITHUB_SOURCE).status_code == 409


@pytest.mark.django_db(transaction=True)
def test_a_request_sent_while_the_first_holds_its_uncommitted_effect_is_a_409_and_a_failure_frees_the_key(
    organization, key, monkeypatch
):
    done, release = threading.Event(), threading.Event()
    real_create = views_manage.source_create

    def created_then_fails(**kwargs):
        real_create(**kwargs)
        done.set()
        assert release.wait(30)
        raise RuntimeError("failed after the effect")

    monkeypatch.setattr(views_manage, "source_create", created_then_fails)
    with ThreadPoolExecutor(max_workers=1) as pool:
        first = pool.submit(
            _in_thread(lambda: post(Client(raise_request_exception=False), key, "/api/v1/sources", GITHUB_SOURCE))
        )
        assert done.wait(30)
        during = post(Client(), key, "/api/v1/sources", GITHUB_SOURCE)  # answered at once, not held up
        assert not Source.objects.exists()  # the first's source is not committed yet
        release.set()
        first = first.result()
    assert during.status_code == 409 and during.json()["error"] == "idempotency_key_in_progress"
    assert first.status_code == 500
    assert not Source.objects.exists() and not IdempotencyKey.objects.exists()
    monkeypatch.undo()
    retried = post(Client(), key, "/api/v1/sources", GITHUB_SOURCE)
    assert retried.status_code == 201 and Source.objects.filter(organization=organization).count() == 1


@pytest.mark.django_db(transaction=True)
def test_a_request_taken_over_while_it_still_runs_commits_nothing_and_the_retry_does_it_once(
    organization, key, monkeypatch
):
    # The first is thought lost (it ran past ABANDONED_AFTER_SECONDS) but still runs: of the two,
    # only the one holding the key when it stores its answer commits.
    done, release = threading.Event(), threading.Event()
    real_create = views_manage.source_create

    def first_one_slow(**kwargs):
        created = real_create(**kwargs)
        if not done.is_set():
            done.set()
            assert release.wait(30)
        return created

    monkeypatch.setattr(views_manage, "source_create", first_one_slow)
    send = _in_thread(lambda: post(Client(), key, "/api/v1/sources", GITHUB_SOURCE))
    with ThreadPoolExecutor(max_workers=2) as pool:
        first = pool.submit(send)
        assert done.wait(30)
        long_ago = timezone.now() - timedelta(seconds=IdempotencyKey.ABANDONED_AFTER_SECONDS + 1)
        IdempotencyKey.objects.update(started_at=long_ago)
        retry = pool.submit(send)
        # The retry has taken the key over (it then waits for the audit chain the first holds).
        assert wait_until(lambda: IdempotencyKey.objects.get().started_at > long_ago, timeout=30)
        release.set()
        first, retry = first.result(), retry.result()
    assert first.status_code == 409 and first.json()["error"] == "idempotency_key_in_progress"
    assert "took over" in first.json()["detail"] and first["Retry-After"] == "1"
    document = Client().get("/api/v1/schema").json()
    answer_as_documented(document, first, "/api/v1/sources", "POST")
    assert retry.status_code == 201 and "Idempotent-Replayed" not in retry
    assert Source.objects.filter(organization=organization).count() == 1
    assert AuditLog.objects.filter(action="source.created").count() == 1
    again = post(Client(), key, "/api/v1/sources", GITHUB_SOURCE)
    assert again["Idempotent-Replayed"] == "true" and again.json() == retry.json()


# --- A server error after the effect: the key must never let a retry do it again ---------------------


def _fail_after_the_effect(monkeypatch, module):
    """The request's effect is done (the service returned); what comes after it fails, a 500."""

    def broken(path):
        raise RuntimeError("failed after the effect")

    monkeypatch.setattr(module, "absolute_url", broken)


@pytest.mark.django_db(transaction=True)
def test_a_server_error_after_the_source_was_created_does_not_create_it_again(organization, key, monkeypatch):
    _fail_after_the_effect(monkeypatch, views_manage)
    assert post(Client(raise_request_exception=False), key, "/api/v1/sources", GITHUB_SOURCE).status_code == 500
    monkeypatch.undo()
    retried = post(Client(), key, "/api/v1/sources", GITHUB_SOURCE)
    # The 500 left nothing done (the creation went with it), so the retry runs, once.
    assert retried.status_code == 201 and "Idempotent-Replayed" not in retried
    assert Source.objects.filter(organization=organization).count() == 1
    assert AuditLog.objects.filter(action="source.created").count() == 1
    assert post(Client(), key, "/api/v1/sources", GITHUB_SOURCE)["Idempotent-Replayed"] == "true"


@pytest.mark.django_db(transaction=True)
def test_a_server_error_after_a_replay_does_not_replay_it_again(organization, key, monkeypatch):
    source = make_source(organization)
    destination, _ = make_destination(organization, "http://127.0.0.1:9/b", sources=[source])
    event = make_event(source)
    _fail_after_the_effect(monkeypatch, views)
    path = f"/api/v1/events/{event.pk}/replay"
    body = {"destination": destination.pk}
    assert post(Client(raise_request_exception=False), key, path, body).status_code == 500
    monkeypatch.undo()
    assert post(Client(), key, path, body).status_code == 202
    assert post(Client(), key, path, body)["Idempotent-Replayed"] == "true"
    assert Delivery.objects.filter(event=event, is_replay=True).count() == 1
    assert AuditLog.objects.filter(action="event.replayed").count() == 1


def _kill_the_connection_when_the_answer_is_stored(execute, sql, params, many, context):
    """The database connection drops just as the request's answer is being kept for its key."""
    if sql.startswith(f'UPDATE "{IdempotencyKey._meta.db_table}"') and "response_status" in sql:
        context["cursor"].execute("SELECT pg_terminate_backend(pg_backend_pid())")
    return execute(sql, params, many, context)


@pytest.mark.django_db(transaction=True)
def test_a_connection_lost_while_the_answer_is_stored_leaves_nothing_done_and_the_key_free(organization, key):
    with connection.execute_wrapper(_kill_the_connection_when_the_answer_is_stored):
        lost = post(Client(raise_request_exception=False), key, "/api/v1/sources", GITHUB_SOURCE)
    assert lost.status_code == 500
    connection.close()  # the test's own handle on the killed connection
    assert not Source.objects.exists()  # the creation was in the transaction that died
    retried = post(Client(), key, "/api/v1/sources", GITHUB_SOURCE)
    assert retried.status_code == 201 and "Idempotent-Replayed" not in retried
    assert Source.objects.filter(organization=organization).count() == 1


KILLED_MID_REQUEST = """
import os, signal
from django.test import Client
from django.test.utils import setup_test_environment
from webhooks.api import views_manage

def die(path):
    os.kill(os.getpid(), signal.SIGKILL)  # a worker killed (OOM, deploy) once the source is created

setup_test_environment()
views_manage.absolute_url = die
Client().post("/api/v1/sources", {source}, content_type="application/json",
              HTTP_AUTHORIZATION="Bearer {token}", HTTP_IDEMPOTENCY_KEY="retry-me-1")
"""


@pytest.mark.django_db(transaction=True)
def test_a_key_whose_worker_was_killed_after_the_effect_is_taken_over_without_doing_it_twice(organization, key):
    db = connection.settings_dict
    url = f"postgres://{db['USER']}@{db['HOST'] or 'localhost'}:{db['PORT'] or 5432}/{db['NAME']}"
    script = KILLED_MID_REQUEST.format(source=GITHUB_SOURCE, token=key)
    killed = subprocess.run(
        [sys.executable, "manage.py", "shell", "-c", script],
        cwd=ROOT,
        env={**os.environ, "DATABASE_URL": url},
        capture_output=True,
        timeout=120,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert IdempotencyKey.objects.get().response_status is None  # left marked running
    assert post(Client(), key, "/api/v1/sources", GITHUB_SOURCE).status_code == 409
    # Five minutes on, a retry takes the key over: what the killed request did, it does not do again.
    IdempotencyKey.objects.update(
        started_at=F("started_at") - timedelta(seconds=IdempotencyKey.ABANDONED_AFTER_SECONDS + 1)
    )
    taken_over = post(Client(), key, "/api/v1/sources", GITHUB_SOURCE)
    assert taken_over.status_code == 201 and "Idempotent-Replayed" not in taken_over
    assert Source.objects.filter(organization=organization).count() == 1


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("idempotency_key", [None, "create-it"])
def test_a_destination_whose_source_is_deleted_meanwhile_is_a_409_with_the_key_or_without(
    organization, key, monkeypatch, idempotency_key
):
    # With the key the creation's transaction is the request's: the source's foreign key, deferred,
    # must still be checked before the answer, or the commit after it fails as a 500.
    source = make_source(organization)
    real_lock = destinations.lock_sources_against_deletion

    def source_deleted_meanwhile(source_ids):
        # Just before the creation locks its sources against deletion: once locked, a deletion waits
        # for the creation's commit (and here, deleted from the creation's thread, for ever).
        with ThreadPoolExecutor(max_workers=1) as other:  # on its own connection, committed
            other.submit(_in_thread(lambda: Source.objects.filter(pk=source.pk).delete())).result()
        return real_lock(source_ids)

    monkeypatch.setattr(destinations, "lock_sources_against_deletion", source_deleted_meanwhile)
    body = {"name": "Billing", "url": "http://127.0.0.1:9/b", "sources": [source.pk]}
    answer = post(Client(), key, "/api/v1/destinations", body, idempotency_key=idempotency_key)
    assert answer.status_code == 409 and answer.json()["error"] == "conflict", answer.content
    assert not Destination.objects.exists()
    if idempotency_key:  # a refusal, kept for the key like any other
        assert IdempotencyKey.objects.get().response_status == 409


@pytest.mark.django_db(transaction=True)
def test_a_server_error_once_committed_is_answered_with_the_kept_answer_on_retry(organization, key, monkeypatch):
    # What runs once the transaction has committed (what it asks of the workers) fails: the replay
    # and its answer are committed, so the retry gets that answer rather than replaying again.
    source = make_source(organization)
    destination, _ = make_destination(organization, "http://127.0.0.1:9/b", sources=[source])
    event = make_event(source)

    def after_the_commit_fails():
        raise RuntimeError("failed once committed")

    monkeypatch.setattr(operations, "schedule_dispatch", after_the_commit_fails)
    path, body = f"/api/v1/events/{event.pk}/replay", {"destination": destination.pk}
    assert post(Client(raise_request_exception=False), key, path, body).status_code == 500
    retried = post(Client(), key, path, body)
    assert retried.status_code == 202 and retried["Idempotent-Replayed"] == "true"
    assert Delivery.objects.filter(event=event, is_replay=True).count() == 1
    assert retried.json()["id"] == str(Delivery.objects.get(event=event, is_replay=True).pk)


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("idempotency_key", [None, "create-it"])
def test_a_destination_s_url_is_looked_up_before_its_organization_s_row_is_locked(
    organization, key, monkeypatch, idempotency_key
):
    # The lookup may wait on a DNS server up to 10 s. Under the organization's row lock (taken to
    # count its destinations) it held up whatever locks that row meanwhile: its suspension or
    # deletion, the admin's change of its limits, every other destination created for it.
    looking_up, answer_dns = threading.Event(), threading.Event()
    real_getaddrinfo = outbound.socket.getaddrinfo

    def slow_dns(host, *args, **kwargs):
        if host == "slow-dns.example":
            looking_up.set()
            assert answer_dns.wait(30)
            host = "127.0.0.1"
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(outbound.socket, "getaddrinfo", slow_dns)
    outbound.forget_resolved_hosts()
    body = {"name": "Billing", "url": "http://slow-dns.example:9/b"}
    with ThreadPoolExecutor(max_workers=1) as pool:
        created = pool.submit(
            _in_thread(lambda: post(Client(), key, "/api/v1/destinations", body, idempotency_key=idempotency_key))
        )
        try:
            assert looking_up.wait(30)
            with transaction.atomic(), connection.cursor() as cursor:
                cursor.execute("SET LOCAL lock_timeout = '1s'")
                # As organization_set_active and the deletion's request lock it (a DatabaseError if held).
                Organization.objects.select_for_update(no_key=True).get(pk=organization.pk)
        finally:
            answer_dns.set()
        created = created.result()
    assert created.status_code == 201, created.content
    assert Destination.objects.filter(organization=organization).count() == 1


def test_a_url_check_refused_while_the_organization_s_lookups_wait_is_a_429_to_retry_and_not_kept(
    client, organization, key, monkeypatch
):
    # Refused at once because the organization's earlier lookups still wait on their DNS: nothing is
    # wrong with the request, and the same request succeeds once they end. As a 400 it read as a
    # fault of the URL, and it was kept for the key: the retry got the refusal again for 24 hours.
    dns_answers = threading.Event()
    real_getaddrinfo = outbound.socket.getaddrinfo

    def slow_dns(host, *args, **kwargs):
        if host.endswith(".slow-zone.example"):  # answers (the loopback) once the test lets it
            assert dns_answers.wait(30)
            host = "127.0.0.1"
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(outbound.socket, "getaddrinfo", slow_dns)
    outbound.forget_resolved_hosts()
    try:
        for number in range(outbound.MAX_URL_CHECK_LOOKUPS_PER_ORGANIZATION):  # given up on, still waiting
            with pytest.raises(outbound.DestinationNotAllowed, match="within"):
                outbound.resolve_destination(
                    f"http://h{number}.slow-zone.example:9/", timeout=0.05, organization_id=organization.pk
                )
        body = {"name": "Billing", "url": "http://next.slow-zone.example:9/b"}
        refused = post(client, key, "/api/v1/destinations", body)
    finally:
        dns_answers.set()
    assert refused.status_code == 429, refused.content
    assert refused.json()["error"] == "lookups_busy"
    assert "try again" in refused.json()["detail"]
    assert int(refused["Retry-After"]) >= 1
    document = client.get("/api/v1/schema").json()
    answer_as_documented(document, refused, "/api/v1/destinations", "POST")
    assert "lookups_busy" in document["paths"]["/api/v1/destinations"]["post"]["responses"]["429"]["description"]
    assert not IdempotencyKey.objects.exists() and not Destination.objects.exists()
    assert wait_until(lambda: organization.pk not in outbound._lookups_by_organization, timeout=30)
    retried = post(client, key, "/api/v1/destinations", body)
    assert retried.status_code == 201 and "Idempotent-Replayed" not in retried, retried.content
