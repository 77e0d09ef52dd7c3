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


def expired_sessions(organization, count: int, now) -> None:
    from django.contrib.sessions.models import Session

    Session.objects.bulk_create(
        Session(session_key=f"expired{n:033d}", session_data="", expire_date=now - timedelta(seconds=1))
        for n in range(count)
    )


def expired_signature_bindings(organization, count: int, now) -> None:
    from webhooks.models import SignatureNonce

    source = make_source(organization)
    old = now - timedelta(seconds=SignatureNonce.KEPT_SECONDS + SignatureNonce.CLOCK_SKEW_SECONDS + 60)
    SignatureNonce.objects.bulk_create(
        SignatureNonce(source=source, nonce_digest=f"{n:064x}", body_digest="b", created_at=old) for n in range(count)
    )


def forgotten_event_keys(organization, count: int, now) -> None:
    from webhooks.models import PurgedEventKey

    source = make_source(organization)
    PurgedEventKey.objects.bulk_create(
        PurgedEventKey(
            source=source,
            event_id_digest=f"{n:064x}",
            original_id=n + 1,
            received_at=now - timedelta(days=40),
            forget_after=now - timedelta(seconds=1),
        )
        for n in range(count)
    )


def expired_idempotency_keys(organization, count: int, now) -> None:
    from organizations.models import IdempotencyKey

    from .api_helpers import make_key

    api_key, _ = make_key(organization)
    IdempotencyKey.objects.bulk_create(
        IdempotencyKey(
            organization=organization,
            api_key=api_key,
            key=f"retry-{n}",
            request_digest="d" * 64,
            request_method="POST",
            request_path="/api/v1/sources",
            expires_at=now - timedelta(seconds=1),
        )
        for n in range(count)
    )


def _model_of(make_rows):
    from django.contrib.sessions.models import Session

    from organizations.models import IdempotencyKey
    from webhooks.models import PurgedEventKey, SignatureNonce

    return {
        expired_sessions: Session,
        expired_signature_bindings: SignatureNonce,
        forgotten_event_keys: PurgedEventKey,
        expired_idempotency_keys: IdempotencyKey,
    }[make_rows]


@pytest.mark.parametrize(
    "make_rows", [expired_sessions, expired_signature_bindings, forgotten_event_keys, expired_idempotency_keys]
)
def test_a_backlog_in_the_cleanup_before_the_organizations_stops_the_run_after_its_time(organization, make_rows):
    # The cleanup before the organizations had no bound: a backlog of one kind took the run past
    # Celery's time limits, killed every hour at the same place before any organization's turn.
    now = timezone.now()
    make_rows(organization, 5, now)
    expired_events(organization, 1)
    model = _model_of(make_rows)

    # A time already out: each run deletes one batch, then hands over.
    run = lifecycle.retention_run(batch_size=2, max_seconds=0, now=now)
    assert (run.deleted, run.finished, run.stopped_in_cleanup, run.stopped_at) == (0, False, True, None)
    assert (model.objects.count(), left(organization)) == (3, 1)

    run = lifecycle.retention_run(batch_size=2, max_seconds=0, now=now)
    assert (run.stopped_in_cleanup, model.objects.count(), left(organization)) == (True, 1, 1)

    # The last, partial batch also ends past the time: the organizations' batch would be a second one.
    run = lifecycle.retention_run(batch_size=2, max_seconds=0, now=now)
    assert (run.stopped_in_cleanup, model.objects.count(), left(organization)) == (True, 0, 1)

    # Nothing left in the cleanup: the organizations take their turn.
    run = lifecycle.retention_run(batch_size=2, max_seconds=0, now=now)
    assert (run.deleted, run.stopped_in_cleanup, left(organization)) == (1, False, 0)


def test_a_cleanup_kind_that_ended_past_the_time_leaves_the_next_kinds_to_the_next_run(organization):
    from django.contrib.sessions.models import Session

    from webhooks.models import SignatureNonce

    now = timezone.now()
    expired_signature_bindings(organization, 1, now)  # less than a batch: the kind ends with it
    expired_sessions(organization, 1, now)

    run = lifecycle.retention_run(batch_size=2, max_seconds=0, now=now)
    assert run.stopped_in_cleanup
    assert (SignatureNonce.objects.count(), Session.objects.count()) == (0, 1)

    run = lifecycle.retention_run(batch_size=2, max_seconds=0, now=now)
    assert (run.stopped_in_cleanup, Session.objects.count()) == (True, 0)

    # Nothing left to delete: a run with its time out still goes through to the end.
    run = lifecycle.retention_run(batch_size=2, max_seconds=0, now=now)
    assert (run.finished, run.stopped_in_cleanup, run.stopped_at) == (True, False, None)


def test_the_task_stopped_in_the_cleanup_publishes_the_next_run_from_the_same_organizations(
    organization, settings, published
):
    from django.contrib.sessions.models import Session

    expired_sessions(organization, 3, timezone.now())
    settings.RETENTION_BATCH_SIZE = 2
    settings.RETENTION_RUN_SECONDS = 0

    # A run published by one that stopped on an organization passes its place on, not the first.
    assert tasks.purge_expired_events(organization.pk) == 0
    assert published == [(organization.pk,)]
    assert Session.objects.count() == 1

    assert tasks.purge_expired_events(organization.pk) == 0
    assert published == [(organization.pk,), (organization.pk,)]
    assert Session.objects.count() == 0

    # An hourly run (from the first organization) stopped in the cleanup publishes one from the first too.
    expired_sessions(organization, 3, timezone.now())
    assert tasks.purge_expired_events() == 0
    assert published[-1] == (None,)

    published.clear()
    assert tasks.purge_expired_events(organization.pk) == 0  # the last session, past the time
    assert tasks.purge_expired_events(organization.pk) == 0  # nothing left anywhere
    assert published == [(organization.pk,)]  # the first published the second; the second none
