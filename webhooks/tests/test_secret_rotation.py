"""Rotating source and destination secrets: atomic, safe when two happen at once, and forgotten when expired."""

import threading
from datetime import timedelta

import pytest
from django.db import connection, connections
from django.utils import timezone

from webhooks.models import Destination, Source
from webhooks.services import lifecycle, sources
from webhooks.services.destinations import DestinationError, destination_rotate_secret
from webhooks.services.sources import source_rotate_secret

from .factories import STRIPE_SECRET, make_destination, make_source

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
