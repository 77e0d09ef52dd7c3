"""Rotating source and destination secrets: atomic, safe when two happen at once, and forgotten when expired."""

import base64
import html
import json
import logging
import threading
import time
from datetime import timedelta

import pytest
from django.core.cache import cache
from django.db import OperationalError, connection, connections, transaction
from django.urls import reverse
from django.utils import timezone
from django.utils.html import strip_tags

from conftest import REDIS_DOWN_CACHES
from webhooks.models import Destination, Source, WebhookEvent
from webhooks.services import ingest, lifecycle, secret_use, sources
from webhooks.services.destinations import DestinationError, destination_rotate_secret
from webhooks.services.ingest import ingest_request
from webhooks.services.sources import source_rotate_secret

from .factories import STANDARD_SECRET, STRIPE_SECRET, make_destination, make_source
from .signing import post_stripe, standard_webhooks_headers, stripe_headers

pytestmark = pytest.mark.django_db

NEW_STRIPE_SECRET = "whsec_rotated_source_secret_1"
NEXT_STRIPE_SECRET = "whsec_rotated_source_secret_2"


def _failing_audit(**kwargs):
    raise RuntimeError("audit log unavailable")


def _raw_previous_secret(model, pk) -> str:
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT previous_secret FROM {model._meta.db_table} WHERE id = %s", [pk])
        return cursor.fetchone()[0]


def test_a_source_rotation_that_cannot_be_audited_changes_no_secret(organization, monkeypatch):
    source = make_source(organization)
    monkeypatch.setattr(sources, "audit_record", _failing_audit)
    with pytest.raises(RuntimeError):
        source_rotate_secret(source=source, new_secret=NEW_STRIPE_SECRET, overlap_seconds=3600)
    stored = Source.objects.get(pk=source.pk)
    assert stored.active_secrets() == [STRIPE_SECRET]
    assert stored.previous_secret == ""


def test_a_rotation_from_a_stale_copy_keeps_the_secret_that_was_current_as_previous(organization):
    # Two people opened the rotate page at once: the second must not bring back the first's old secret.
    first_view = make_source(organization)
    second_view = Source.objects.get(pk=first_view.pk)
    source_rotate_secret(source=first_view, new_secret=NEW_STRIPE_SECRET, overlap_seconds=3600)
    # The second learns that a rotation just happened, whose older secret would stop at once.
    with pytest.raises(sources.SourceError, match=r"ending …cret\) still works until"):
        source_rotate_secret(source=second_view, new_secret=NEXT_STRIPE_SECRET, overlap_seconds=3600)
    source_rotate_secret(source=second_view, new_secret=NEXT_STRIPE_SECRET, overlap_seconds=3600, stop_previous=True)
    assert Source.objects.get(pk=first_view.pk).active_secrets() == [NEXT_STRIPE_SECRET, NEW_STRIPE_SECRET]


def test_a_destination_rotation_from_a_stale_copy_signs_with_the_secret_that_was_current(organization):
    first_view, _ = make_destination(organization, "http://127.0.0.1:9/hook")
    second_view = Destination.objects.get(pk=first_view.pk)
    _, first_new = destination_rotate_secret(destination=first_view, overlap_seconds=3600)
    with pytest.raises(DestinationError, match="still works until"):
        destination_rotate_secret(destination=second_view, overlap_seconds=3600)
    _, second_new = destination_rotate_secret(destination=second_view, overlap_seconds=3600, stop_previous=True)
    assert Destination.objects.get(pk=first_view.pk).signing_secrets() == [second_new, first_new]


@pytest.mark.django_db(transaction=True)
def test_concurrent_rotations_wait_for_each_other(organization, monkeypatch):
    """The second rotation waits for the first's row lock, then keeps the first's new secret as previous."""
    source = make_source(organization)
    first_holds_lock, release_first = threading.Event(), threading.Event()
    real_audit = sources.audit_record
    errors = []

    def audit_then_wait(**kwargs):
        real_audit(**kwargs)
        if threading.current_thread().name == "first":
            first_holds_lock.set()
            release_first.wait(10)

    monkeypatch.setattr(sources, "audit_record", audit_then_wait)

    def rotate(new_secret):
        try:
            source_rotate_secret(
                source=Source.objects.get(pk=source.pk), new_secret=new_secret, overlap_seconds=3600, stop_previous=True
            )
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)
        finally:
            connections.close_all()

    first = threading.Thread(target=rotate, args=(NEW_STRIPE_SECRET,), name="first")
    first.start()
    assert first_holds_lock.wait(10)
    second = threading.Thread(target=rotate, args=(NEXT_STRIPE_SECRET,), name="second")
    second.start()
    second.join(0.5)
    assert second.is_alive(), "the second rotation did not wait for the first one's lock"
    release_first.set()
    first.join(10)
    second.join(10)
    assert not errors
    assert Source.objects.get(pk=source.pk).active_secrets() == [NEXT_STRIPE_SECRET, NEW_STRIPE_SECRET]


def test_expired_previous_secrets_are_erased_and_live_ones_kept(organization, monkeypatch):
    expired_source, live_source = make_source(organization, name="expired"), make_source(organization, name="live")
    source_rotate_secret(source=expired_source, new_secret=NEW_STRIPE_SECRET, overlap_seconds=60)
    source_rotate_secret(source=live_source, new_secret=NEW_STRIPE_SECRET, overlap_seconds=3600)
    expired_destination, _ = make_destination(organization, "http://127.0.0.1:9/hook")
    live_destination, _ = make_destination(organization, "http://127.0.0.1:9/other")
    destination_rotate_secret(destination=expired_destination, overlap_seconds=60)
    _, live_new = destination_rotate_secret(destination=live_destination, overlap_seconds=3600)
    no_overlap = make_source(organization, name="no overlap")
    source_rotate_secret(source=no_overlap, new_secret=NEW_STRIPE_SECRET, overlap_seconds=0)

    assert lifecycle.forget_expired_previous_secrets(now=timezone.now() + timedelta(minutes=2)) == 2

    for model, pk in ((Source, expired_source.pk), (Destination, expired_destination.pk)):
        stored = model.objects.get(pk=pk)
        assert (stored.previous_secret, stored.previous_secret_expires_at) == ("", None)
        assert _raw_previous_secret(model, pk) == ""  # gone from the table, not only hidden
    assert Source.objects.get(pk=live_source.pk).active_secrets() == [NEW_STRIPE_SECRET, STRIPE_SECRET]
    assert len(Destination.objects.get(pk=live_destination.pk).signing_secrets()) == 2
    assert Destination.objects.get(pk=live_destination.pk).signing_secrets()[0] == live_new
    # Nothing left to erase: a second run changes nothing.
    assert lifecycle.forget_expired_previous_secrets(now=timezone.now() + timedelta(minutes=2)) == 0


def test_the_scheduled_task_erases_expired_previous_secrets(organization, settings):
    from webhooks import tasks

    entry = settings.CELERY_BEAT_SCHEDULE["hookline-forget-expired-secrets"]
    assert entry["task"] == tasks.forget_expired_previous_secrets.name
    source = make_source(organization)
    source_rotate_secret(source=source, new_secret=NEW_STRIPE_SECRET, overlap_seconds=3600)
    Source.objects.filter(pk=source.pk).update(previous_secret_expires_at=timezone.now() - timedelta(seconds=1))
    assert tasks.forget_expired_previous_secrets.apply().get() == 1
    assert _raw_previous_secret(Source, source.pk) == ""


def test_rotating_to_the_current_secret_is_refused(organization):
    source = make_source(organization)
    with pytest.raises(sources.SourceError, match="current secret"):
        source_rotate_secret(source=source, new_secret=STRIPE_SECRET, overlap_seconds=3600)
    assert Source.objects.get(pk=source.pk).previous_secret == ""


def test_rotating_a_source_or_destination_deleted_meanwhile_is_a_clear_error(organization):
    from webhooks.services.destinations import DestinationError

    source = make_source(organization)
    destination, _ = make_destination(organization, "http://127.0.0.1:9/hook")
    stale_source, stale_destination = Source.objects.get(pk=source.pk), Destination.objects.get(pk=destination.pk)
    source.delete()
    destination.delete()
    with pytest.raises(sources.SourceError, match="deleted"):
        source_rotate_secret(source=stale_source, new_secret=NEW_STRIPE_SECRET)
    with pytest.raises(DestinationError, match="deleted"):
        destination_rotate_secret(destination=stale_destination)


# --- Which secret verifies requests during the overlap -------------------------------------------


@pytest.fixture
def rotated(organization):
    """A Stripe source rotated to NEW_STRIPE_SECRET, STRIPE_SECRET still verifying for an hour."""
    source = make_source(organization)
    source_rotate_secret(source=source, new_secret=NEW_STRIPE_SECRET, overlap_seconds=3600)
    return source


@pytest.fixture(autouse=True)
def _fresh_secret_match_memory():
    # Each process remembers its records for a minute; each test is a process starting afresh.
    secret_use.forget_recorded_secret_matches()
    yield
    secret_use.forget_recorded_secret_matches()


def _stripe_body(event_id: str) -> str:
    return json.dumps({"id": event_id, "object": "event", "type": "invoice.paid"})


def _stripe_signature(body: str, secret: str) -> dict[str, str]:
    """The header as the ingest service receives it (the test client's take HTTP_ names)."""
    return {"Stripe-Signature": stripe_headers(body, secret)["HTTP_STRIPE_SIGNATURE"]}


def _matched_times(source) -> tuple:
    stored = Source.objects.get(pk=source.pk)
    return stored.secret_last_matched_at, stored.previous_secret_last_matched_at


def _source_page(client, owner, source) -> str:
    client.force_login(owner)
    response = client.get(reverse("dashboard:source_detail", args=["acme", source.pk]))
    assert response.status_code == 200
    return _text(response)


def _text(response) -> str:
    """The page as read: times are <time> elements, and sentences run across lines of the template."""
    return " ".join(html.unescape(strip_tags(response.content.decode())).split())


def test_the_source_page_says_which_secret_last_verified_a_request(client, owner, rotated):
    page = _source_page(client, owner, rotated)
    assert "The previous secret (ending …cret) has not matched any request since the rotation." in page
    assert "The current secret has not matched any request since the rotation." in page

    before = timezone.now()
    assert post_stripe(client, rotated, _stripe_body("evt_old_secret"), STRIPE_SECRET).status_code == 200
    current_at, previous_at = _matched_times(rotated)
    assert current_at is None and before <= previous_at <= timezone.now()
    page = _source_page(client, owner, rotated)
    assert "The previous secret (ending …cret) last matched a request just now." in page
    assert "The current secret has not matched any request since the rotation." in page

    # The provider switched three minutes later.
    Source.objects.filter(pk=rotated.pk).update(previous_secret_last_matched_at=previous_at - timedelta(minutes=3))
    before = timezone.now()
    assert post_stripe(client, rotated, _stripe_body("evt_new_secret"), NEW_STRIPE_SECRET).status_code == 200
    current_at, previous_at_now = _matched_times(rotated)
    assert before <= current_at <= timezone.now()
    assert previous_at_now == previous_at - timedelta(minutes=3)
    page = _source_page(client, owner, rotated)
    assert "The previous secret (ending …cret) last matched a request 3 min ago." in page
    assert "The current secret last matched a request just now." in page


def test_standard_webhooks_requests_signed_with_either_secret_are_told_apart(client, organization):
    new_secret = "whsec_" + base64.b64encode(b"n" * 32).decode()
    source = make_source(organization, provider="standard_webhooks", secret=STANDARD_SECRET)
    source_rotate_secret(source=source, new_secret=new_secret, overlap_seconds=3600)

    body = '{"type": "user.created", "data": {}}'
    old = client.generic(
        "POST",
        f"/in/{source.ingest_token}/",
        body,
        content_type="application/json",
        **standard_webhooks_headers(body, STANDARD_SECRET, "msg_signed_with_the_previous_secret"),
    )
    assert old.status_code == 200
    current_at, previous_at = _matched_times(source)
    assert current_at is None and previous_at is not None

    new = client.generic(
        "POST",
        f"/in/{source.ingest_token}/",
        body,
        content_type="application/json",
        **standard_webhooks_headers(body, new_secret, "msg_signed_with_the_new_secret"),
    )
    assert new.status_code == 200
    current_at, previous_at_after = _matched_times(source)
    assert current_at is not None and previous_at_after == previous_at


def test_the_admin_source_page_says_it_too(client, rotated):
    from django.contrib.auth import get_user_model

    client.force_login(get_user_model().objects.create_superuser("root@hookline.example", "correct horse battery"))
    assert post_stripe(client, rotated, _stripe_body("evt_old_secret"), STRIPE_SECRET).status_code == 200
    page = _text(client.get(reverse("admin:webhooks_source_change", args=[rotated.pk])))
    assert "Since the rotation" in page
    assert "The previous secret (ending …cret) last matched a request just now." in page
    assert "The current secret has not matched any request since the rotation." in page
    assert STRIPE_SECRET not in page and NEW_STRIPE_SECRET not in page


def test_outside_an_overlap_nothing_is_noted_or_shown(client, owner, organization):
    source = make_source(organization)
    outcome = ingest_request(
        token=source.ingest_token,
        body=_stripe_body("evt_no_rotation").encode(),
        headers=_stripe_signature(_stripe_body("evt_no_rotation"), STRIPE_SECRET),
    )
    assert outcome.status_code == 200
    assert outcome.after_answer is None  # the usual request carries no bookkeeping at all
    assert _matched_times(source) == (None, None)
    assert "since the rotation" not in _source_page(client, owner, source)


def test_the_answer_is_ready_before_anything_is_noted(rotated):
    body = _stripe_body("evt_answer_first")
    outcome = ingest_request(
        token=rotated.ingest_token, body=body.encode(), headers=_stripe_signature(body, STRIPE_SECRET)
    )
    assert outcome.status_code == 200
    assert _matched_times(rotated) == (None, None)  # nothing done while the answer was being made
    outcome.after_answer()
    assert _matched_times(rotated)[1] is not None


def test_a_rotation_clears_what_was_noted_about_the_secrets_it_replaced(client, rotated):
    post_stripe(client, rotated, _stripe_body("evt_old"), STRIPE_SECRET)
    post_stripe(client, rotated, _stripe_body("evt_new"), NEW_STRIPE_SECRET)
    assert None not in _matched_times(rotated)
    source_rotate_secret(
        source=Source.objects.get(pk=rotated.pk),
        new_secret=NEXT_STRIPE_SECRET,
        overlap_seconds=3600,
        stop_previous=True,
    )
    assert _matched_times(rotated) == (None, None)


def test_a_copy_of_the_source_from_before_a_rotation_credits_no_secret(client, rotated):
    # Each web process verifies with its copy of a source for a few seconds: one from before a second
    # rotation still takes NEW_STRIPE_SECRET for the current one, which the row no longer does.
    stale_copy = ingest.source_for_token(rotated.ingest_token)
    source_rotate_secret(
        source=Source.objects.get(pk=rotated.pk),
        new_secret=NEXT_STRIPE_SECRET,
        overlap_seconds=3600,
        stop_previous=True,
    )
    ingest._source_cache[rotated.ingest_token] = (time.monotonic() + 60, stale_copy)

    assert post_stripe(client, rotated, _stripe_body("evt_stale_copy"), NEW_STRIPE_SECRET).status_code == 200
    assert _matched_times(rotated) == (None, None)
    ingest.forget_cached_sources()
    assert post_stripe(client, rotated, _stripe_body("evt_fresh_copy"), NEW_STRIPE_SECRET).status_code == 200
    assert _matched_times(rotated)[1] is not None  # now rightly the previous secret's match


def test_matches_are_noted_at_most_once_a_minute_per_secret(client, rotated):
    post_stripe(client, rotated, _stripe_body("evt_1"), STRIPE_SECRET)
    first = _matched_times(rotated)[1]
    # This process remembers it recorded; another process is stopped by the cache; without
    # either, by the UPDATE's own condition.
    for forget in (
        (),
        (secret_use.forget_recorded_secret_matches,),
        (secret_use.forget_recorded_secret_matches, cache.clear),
    ):
        for step in forget:
            step()
        post_stripe(client, rotated, _stripe_body(f"evt_again_{len(forget)}"), STRIPE_SECRET)
        assert _matched_times(rotated)[1] == first
    # A minute on, it is noted again.
    Source.objects.filter(pk=rotated.pk).update(previous_secret_last_matched_at=first - timedelta(seconds=61))
    secret_use.forget_recorded_secret_matches()
    cache.clear()
    post_stripe(client, rotated, _stripe_body("evt_later"), STRIPE_SECRET)
    assert _matched_times(rotated)[1] > first


def test_with_redis_down_ingest_answers_and_the_match_is_still_noted(client, rotated, settings):
    settings.CACHES = REDIS_DOWN_CACHES
    response = post_stripe(client, rotated, _stripe_body("evt_redis_down"), STRIPE_SECRET)
    assert response.status_code == 200
    assert WebhookEvent.objects.filter(provider_event_id="evt_redis_down").exists()
    assert _matched_times(rotated)[1] is not None  # fail open: the UPDATE's condition still bounds it


def test_a_failing_record_never_fails_the_answer(client, rotated, monkeypatch):
    class BrokenTransactions:
        @staticmethod
        def atomic():
            raise OperationalError("the database went away after the answer")

    monkeypatch.setattr(secret_use, "transaction", BrokenTransactions)
    response = post_stripe(client, rotated, _stripe_body("evt_record_fails"), STRIPE_SECRET)
    assert response.status_code == 200 and response.json()["duplicate"] is False
    assert WebhookEvent.objects.filter(provider_event_id="evt_record_fails").exists()
    assert _matched_times(rotated) == (None, None)


@pytest.mark.django_db(transaction=True)
def test_a_record_never_waits_for_a_locked_source_row(organization, caplog):
    source = make_source(organization)
    source_rotate_secret(source=source, new_secret=NEW_STRIPE_SECRET, overlap_seconds=3600)
    holding, release = threading.Event(), threading.Event()

    def hold_the_row():  # as a rotation or an admin's save does, for as long as its transaction lasts
        try:
            with transaction.atomic():
                Source.objects.select_for_update().get(pk=source.pk)
                holding.set()
                release.wait(10)
        finally:
            connections.close_all()

    holder = threading.Thread(target=hold_the_row)
    holder.start()
    assert holding.wait(10)
    try:
        with connection.cursor() as cursor:  # were the row waited for, this fails the test rather than hang it
            cursor.execute("SET lock_timeout = '5s'")
        with caplog.at_level(logging.WARNING, logger="webhooks.services.secret_use"):
            secret_use.record_secret_match(
                source_id=source.pk, source_version=source.updated_at, previous=True, matched_at=timezone.now()
            )
    finally:
        release.set()
        holder.join(10)
        with connection.cursor() as cursor:
            cursor.execute("RESET lock_timeout")
    assert not caplog.records  # skipped at once, not given up on after a lock timeout
    assert _matched_times(source) == (None, None)


@pytest.mark.django_db(transaction=True)
def test_hooklines_own_test_events_do_not_count_as_the_provider_switching(
    client, owner, rotated, live_server, settings
):
    # They are signed with the current secret whatever the provider uses: counted, one would have
    # the tenant stop the previous secret while the provider still signs with it.
    from webhooks.services.source_testing import source_send_test_event

    settings.PUBLIC_BASE_URL = live_server.url
    result = source_send_test_event(source=Source.objects.get(pk=rotated.pk))
    assert result.response.status == 200 and result.event is not None
    assert result.event.headers.get("Hookline-Test-Event") == "true"  # kept, and forwarded with the event
    assert _matched_times(rotated) == (None, None)
    assert "The current secret has not matched any request since the rotation." in _source_page(client, owner, rotated)

    # The provider's own request with the current secret still counts.
    assert post_stripe(client, rotated, _stripe_body("evt_provider_new"), NEW_STRIPE_SECRET).status_code == 200
    assert _matched_times(rotated)[0] is not None
