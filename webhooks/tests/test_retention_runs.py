"""The retention purge's runs: bounded in time, handing over to the next, one at a time."""

from __future__ import annotations

from datetime import timedelta

import pytest
from celery.exceptions import SoftTimeLimitExceeded
from django.utils import timezone

from webhooks import tasks
from webhooks.models import WebhookEvent
from webhooks.services import lifecycle

from .factories import make_source


@pytest.fixture
def published(monkeypatch):
    """Runs published for a worker, noted instead of sent."""
    sent = []
    monkeypatch.setattr(tasks.purge_expired_events, "apply_async", lambda *a, **k: sent.append(k or a))
    monkeypatch.setattr(lifecycle, "schedule_once", lambda flag, ttl, task: sent.append(task.args) or True)
    return sent


def expired_events(organization, count: int) -> None:
    source = make_source(organization)
    WebhookEvent.objects.bulk_create(
        WebhookEvent(
            organization=organization,
            source=source,
            body=b"{}",
            status=WebhookEvent.Status.PROCESSED,
            received_at=timezone.now() - timedelta(days=400),
        )
        for _ in range(count)
    )


def left(organization) -> int:
    return WebhookEvent.objects.filter(organization=organization).count()


def test_a_run_stops_after_its_time_and_the_next_starts_with_the_organizations_after_it(
    organization, other_organization
):
    # One run an hour with no bound was killed by Celery's time limit halfway through a backlog,
    # every hour at the same place: a tenant's backlog held every run, and the next ones waited.
    expired_events(organization, 5)
    expired_events(other_organization, 5)
    first, second = sorted((organization, other_organization), key=lambda o: o.pk)

    run = lifecycle.retention_run(batch_size=2, max_seconds=0)
    assert (run.deleted, run.finished, run.stopped_at) == (2, False, first.pk)
    assert (left(first), left(second)) == (3, 5)

    # The next run takes its turn with the organization after the one its predecessor stopped on.
    run = lifecycle.retention_run(batch_size=2, max_seconds=0, start_after=run.stopped_at)
    assert (run.deleted, run.stopped_at) == (2, second.pk)
    assert (left(first), left(second)) == (3, 3)

    run = lifecycle.retention_run(batch_size=2, start_after=run.stopped_at)
    assert (run.deleted, run.finished, run.stopped_at) == (6, True, None)
    assert (left(first), left(second)) == (0, 0)


def test_a_run_whose_time_ran_out_stops_between_organizations_too(organization, other_organization):
    # The time was looked at only after a full batch: organizations with less than a batch each
    # (each with its keys' wait) went on past it until Celery's soft limit ended the run, and the
    # next hourly run started again with the first organization, never reaching the last ones.
    expired_events(organization, 1)
    expired_events(other_organization, 1)
    first, second = sorted((organization, other_organization), key=lambda o: o.pk)

    run = lifecycle.retention_run(batch_size=2, max_seconds=0)
    assert (run.deleted, run.finished, run.stopped_at) == (1, False, first.pk)
    assert (left(first), left(second)) == (0, 1)

    run = lifecycle.retention_run(batch_size=2, max_seconds=0, start_after=run.stopped_at)
    assert (run.deleted, run.finished, run.stopped_at) == (1, False, second.pk)
    assert (left(first), left(second)) == (0, 0)

    # Organizations with nothing to delete take no turn of their own: the chain of runs ends.
    run = lifecycle.retention_run(batch_size=2, max_seconds=0, start_after=run.stopped_at)
    assert (run.deleted, run.finished, run.stopped_at) == (0, True, None)


def test_the_task_publishes_the_next_run_when_its_time_runs_out_and_none_once_done(organization, settings, published):
    expired_events(organization, 3)
    settings.RETENTION_BATCH_SIZE = 2
    settings.RETENTION_RUN_SECONDS = 0

    assert tasks.purge_expired_events() == 2
    assert published == [(organization.pk,)]

    assert tasks.purge_expired_events(organization.pk) == 1
    assert published == [(organization.pk,)]  # nothing left: no next run
    assert left(organization) == 0


def test_a_run_publishes_the_next_even_while_the_flag_of_its_own_publication_stands(organization, settings):
    # The flag a run was published under must not keep it from publishing the next one, however
    # short RETENTION_RUN_SECONDS is against the flag's lifetime.
    from unittest import mock

    expired_events(organization, 5)
    settings.RETENTION_BATCH_SIZE = 2
    settings.RETENTION_RUN_SECONDS = 0
    with mock.patch.object(tasks.purge_expired_events, "apply_async") as sent:
        tasks.purge_expired_events()
        tasks.purge_expired_events(organization.pk)
    assert [call.args[0] for call in sent.call_args_list] == [(organization.pk,), (organization.pk,)]


def test_a_run_while_another_holds_the_purge_does_nothing(organization, published):
    # A run published by one whose time ran out may start while the hourly one runs.
    from django.db import connections

    expired_events(organization, 2)
    other = connections.create_connection("default")  # the other run's session
    try:
        with other.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_lock(%s)", [lifecycle._RETENTION_RUN_LOCK])
        run = lifecycle.retention_run()
        assert (run.busy, run.deleted, left(organization)) == (True, 0, 2)
        with other.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_unlock(%s)", [lifecycle._RETENTION_RUN_LOCK])
    finally:
        other.close()
    assert lifecycle.retention_run().deleted == 2


def test_the_tasks_time_limit_is_not_taken_for_one_organizations_trouble(organization, other_organization, monkeypatch):
    # Caught as an organization's failure, the soft time limit let the run go on to the next
    # organization, which the hard limit then killed in the middle of a batch.
    expired_events(organization, 1)
    expired_events(other_organization, 1)

    def out_of_time(*args):
        raise SoftTimeLimitExceeded()

    monkeypatch.setattr(lifecycle, "_purge_organization", out_of_time)
    with pytest.raises(SoftTimeLimitExceeded):
        lifecycle.purge_expired_events()


def test_signature_bindings_past_their_age_are_deleted_in_batches_of_the_purge_size(organization):
    # An hour's bindings (one per Mailgun or PayPal request) come of age together each run.
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from webhooks.models import SignatureNonce

    source = make_source(organization)
    now = timezone.now()
    old = now - timedelta(seconds=SignatureNonce.KEPT_SECONDS + SignatureNonce.CLOCK_SKEW_SECONDS + 60)
    SignatureNonce.objects.bulk_create(
        SignatureNonce(source=source, nonce_digest=f"{n:064x}", body_digest="b", created_at=old if n < 5 else now)
        for n in range(6)
    )
    with CaptureQueriesContext(connection) as queries:
        lifecycle.purge_expired_events(batch_size=2, now=now)
    deletes = [q["sql"] for q in queries if q["sql"].startswith('DELETE FROM "webhooks_signaturenonce"')]
    assert len(deletes) == 3, deletes  # 2 + 2 + 1
    assert list(SignatureNonce.objects.values_list("nonce_digest", flat=True)) == [f"{5:064x}"]


def test_expired_sessions_are_deleted_and_live_ones_kept(db):
    from django.contrib.sessions.backends.db import SessionStore
    from django.contrib.sessions.models import Session

    expired, live = SessionStore(), SessionStore()
    for store in (expired, live):
        store["signed_in"] = True
        store.create()
    Session.objects.filter(pk=expired.session_key).update(expire_date=timezone.now() - timedelta(seconds=1))

    lifecycle.purge_expired_events()
    assert list(Session.objects.values_list("pk", flat=True)) == [live.session_key]
