"""The platform admin through Django's test client: every model's list (filters, search), detail and actions."""

from __future__ import annotations

import re
from dataclasses import replace
from datetime import timedelta
from io import StringIO

import pytest
from django.contrib.auth import get_user_model
from django.core.cache import cache
from django.core.management import call_command
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone
from django_celery_beat.models import PeriodicTask

from organizations.models import AuditLog, Membership, MonthlyUsage, Organization
from organizations.services import audit_record, audit_verify_chain
from organizations.tests.admin_forms import organization_change_form
from webhooks import tasks
from webhooks.models import BulkRetry, Delivery, DeliveryAttempt, Destination, Source, WebhookEvent
from webhooks.services.organization_deletion import organization_deletion_run
from webhooks.services.source_deletion import source_request_deletion
from webhooks.services.sources import ingest_url
from webhooks.tests.factories import STRIPE_SECRET, make_destination, make_source

pytestmark = pytest.mark.django_db

RECEIVER = "http://127.0.0.1:9/hooks"


@pytest.fixture
def superuser(db):
    return get_user_model().objects.create_superuser("root@hookline.example", "correct horse battery")


@pytest.fixture
def admin(client, superuser):
    client.force_login(superuser)
    return client


@pytest.fixture
def setup(organization, other_organization):
    """Two tenants, each with a source and a destination; a dead, a retrying and a delivered event."""
    source = make_source(organization, name="Acme live")
    destination, destination_secret = make_destination(organization, RECEIVER, sources=[source])
    their_source = make_source(other_organization, provider="github", secret="gh-secret-value-123", name="Globex gh")
    their_destination, _ = make_destination(other_organization, RECEIVER, sources=[their_source])
    dead = make_event(source, "evt_dead", "invoice.paid")
    retrying = make_event(source, "evt_retrying", "invoice.created")
    delivered = make_event(their_source, "gh_ok", "push")
    attempt(deliver(dead, destination, Delivery.Status.DEAD, attempts=2), 1, 500, "boom")
    attempt(deliver(retrying, destination, Delivery.Status.PENDING, attempts=1), 1, None, "connection refused")
    attempt(deliver(delivered, their_destination, Delivery.Status.SUCCEEDED, attempts=1), 1, 200, "")
    return {
        "source": source,
        "destination": destination,
        "destination_secret": destination_secret,
        "their_source": their_source,
        "their_destination": their_destination,
        "dead": dead,
        "retrying": retrying,
        "delivered": delivered,
    }


def make_event(source, provider_event_id, event_type, **extra):
    return WebhookEvent.objects.create(
        organization=source.organization,
        source=source,
        provider_event_id=provider_event_id,
        event_type=event_type,
        body=b'{"id": "%s", "object": "event", "amount": 4200}' % provider_event_id.encode(),
        headers={"Stripe-Signature": "t=1,v1=abc", "Content-Type": "application/json"},
        remote_ip="203.0.113.7",
        status=WebhookEvent.Status.PROCESSED,
        **extra,
    )


def deliver(event, destination, status, attempts):
    return Delivery.objects.create(
        organization=event.organization,
        event=event,
        destination=destination,
        status=status,
        attempt_count=attempts,
        last_status_code=500 if status == Delivery.Status.DEAD else None,
    )


def attempt(delivery, number, status, error):
    return DeliveryAttempt.objects.create(
        organization=delivery.organization,
        delivery=delivery,
        attempt_number=number,
        response_status=status,
        response_body="upstream said no" if status and status >= 500 else "",
        error=error,
        duration_ms=12,
    )


def listed(response) -> list:
    assert response.status_code == 200, response.content[:500]
    return list(response.context["cl"].result_list)


def no_secret_in(response, *secrets: str) -> bool:
    body = response.content.decode()
    return all(secret not in body for secret in secrets)


# --- Index ------------------------------------------------------------------------------------


def test_index_counts_dead_deliveries_up_to_a_cap(admin, setup, monkeypatch):
    # It ran COUNT(*) over every dead delivery of the platform, kept until retention: millions for
    # one tenant whose receiver is down for weeks, where every list stops counting at 10,001.
    from webhooks.services import platform_health

    monkeypatch.setattr(platform_health, "COUNT_CAP", 1)
    Delivery.objects.filter(event=setup["retrying"]).update(status=Delivery.Status.DEAD)  # two dead now
    cache.clear()
    with CaptureQueriesContext(connection) as queries:
        response = admin.get(reverse("admin:index"))
    counts = [q["sql"] for q in queries.captured_queries if "COUNT" in q["sql"] and "'dead'" in q["sql"]]
    assert counts and all("LIMIT 1" in sql for sql in counts)
    assert ">1+</a>" in response.content.decode()


def test_index_lists_as_paused_only_the_destinations_whose_page_says_paused(admin, setup):
    # An inactive destination keeps its paused_at, but its page (and the list's state filter) says
    # Inactive: resuming it would send nothing, so it is not one of the paused to look at.
    paused, inactive = setup["destination"], setup["their_destination"]
    Destination.objects.filter(pk__in=[paused.pk, inactive.pk]).update(paused_at=timezone.now())
    Destination.objects.filter(pk=inactive.pk).update(is_active=False)
    cache.clear()
    overview = admin.get(reverse("admin:index")).context["overview"]
    assert [d["pk"] for d in overview["paused_destinations"]] == [paused.pk]
    listed = admin.get(reverse("admin:webhooks_destination_changelist"), {"state": "paused"})
    assert [d.pk for d in listed.context["cl"].result_list] == [paused.pk]


def test_index_shows_the_platform_overview(admin, setup, organization):
    setup["their_destination"].paused_at = timezone.now()
    setup["their_destination"].pause_reason = "failing for an hour"
    setup["their_destination"].save()
    MonthlyUsage.objects.create(organization=organization, month=timezone.now().date().replace(day=1), events=150)
    organization.monthly_event_quota = 100
    organization.save()
    cache.clear()
    response = admin.get(reverse("admin:index"))
    assert response.status_code == 200
    overview = response.context["overview"]
    assert overview["events_24h_total"] == 3
    assert {row["status"]: row["count"] for row in overview["events_24h"]}["processed"] == 3
    assert response.context["processing"].deliveries_dead == 1
    assert [d["name"] for d in overview["paused_destinations"]] == ["endpoint"]
    assert [u["organization__name"] for u in overview["quota_overruns"]] == ["Acme"]
    assert overview["top_organizations"][0]["events"] == 150
    html = response.content.decode()
    assert "Hookline operations" in html and "Dead deliveries" in html and "failing for an hour" in html


# --- Events -----------------------------------------------------------------------------------

EVENTS = "admin:webhooks_webhookevent_changelist"


def test_event_list_filters(admin, setup, organization):
    url = reverse(EVENTS)
    dead, retrying, delivered = setup["dead"], setup["retrying"], setup["delivered"]
    assert set(listed(admin.get(url))) == {dead, retrying, delivered}
    assert set(listed(admin.get(url, {"organization": organization.pk}))) == {dead, retrying}
    assert set(listed(admin.get(url, {"provider": "github"}))) == {delivered}
    assert set(listed(admin.get(url, {"source": setup["source"].pk}))) == {dead, retrying}
    assert set(listed(admin.get(url, {"failed": "yes"}))) == {dead, retrying}
    assert set(listed(admin.get(url, {"failed": "no"}))) == {delivered}
    assert set(listed(admin.get(url, {"status__exact": "rejected"}))) == set()
    today = timezone.now().date()
    in_range = {"received_at_from": str(today - timedelta(days=1)), "received_at_to": str(today)}
    assert len(listed(admin.get(url, in_range))) == 3
    past = {"received_at_from": "2020-01-01", "received_at_to": "2020-01-31"}
    assert listed(admin.get(url, past)) == []
    assert len(listed(admin.get(url, {"received_at_from": "2026-13-45", "received_at_to": "soon"}))) == 3
    # Other scripts' digits are unreadable too, not 2020-01-01 to 2020-01-31 (Django's parse_date reads them).
    assert len(listed(admin.get(url, {"received_at_from": "٢٠٢٠-٠١-٠١", "received_at_to": "٢٠٢٠-٠١-٣١"}))) == 3
    # The date inputs keep the other filters when applied.
    page = admin.get(url, {"organization": organization.pk}).content.decode()
    assert 'type="date" name="received_at_from"' in page and f'name="organization" value="{organization.pk}"' in page


def test_event_list_search(admin, setup):
    url = reverse(EVENTS)
    assert listed(admin.get(url, {"q": str(setup["dead"].pk)})) == [setup["dead"]]
    assert listed(admin.get(url, {"q": "gh_ok"})) == [setup["delivered"]]
    assert set(listed(admin.get(url, {"q": "acme"}))) == {setup["dead"], setup["retrying"]}
    assert set(listed(admin.get(url, {"q": "Globex"}))) == {setup["delivered"]}
    assert listed(admin.get(url, {"q": "nothing-like-this"})) == []
    # The ids the dashboard's search takes: one a rejected request claims, a replay's webhook-id.
    rejected = WebhookEvent.objects.create(
        organization=setup["dead"].organization,
        source=setup["dead"].source,
        status="rejected",
        claimed_event_id="evt_claimed",
        rejection_code="no_matching_secret",
        body=b"{}",
    )
    assert listed(admin.get(url, {"q": "evt_claimed"})) == [rejected]
    replay = Delivery.objects.create(
        organization=setup["dead"].organization, event=setup["dead"], destination=setup["destination"], is_replay=True
    )
    assert listed(admin.get(url, {"q": replay.message_id})) == [setup["dead"]]


def count_changelist_queries(admin) -> int:
    with CaptureQueriesContext(connection) as queries:
        response = admin.get(reverse(EVENTS))
    assert response.status_code == 200
    return len(queries)


def test_event_list_runs_the_same_queries_for_one_or_a_thousand_events(admin, organization):
    source = make_source(organization)
    make_event(source, "evt_0", "invoice.paid")
    with_one = count_changelist_queries(admin)
    WebhookEvent.objects.bulk_create(
        WebhookEvent(
            organization=organization,
            source=source,
            provider_event_id=f"evt_bulk_{number}",
            event_type="invoice.paid",
            body=b"{}",
            status=WebhookEvent.Status.PROCESSED,
        )
        for number in range(999)
    )
    assert WebhookEvent.objects.count() == 1000
    with_a_thousand = count_changelist_queries(admin)
    assert with_one == with_a_thousand


def test_event_list_counts_at_most_the_cap(admin, organization, monkeypatch):
    from organizations.admin import CappedCountPaginator

    monkeypatch.setattr(CappedCountPaginator, "CAP", 5)
    source = make_source(organization)
    for number in range(8):
        make_event(source, f"evt_{number}", "invoice.paid")
    with CaptureQueriesContext(connection) as queries:
        response = admin.get(reverse(EVENTS))
    assert response.context["cl"].result_count == 6  # the cap plus one: "more than 5"
    assert "more than 5 webhook events" in response.content.decode()
    # The paginator's counts (not the list's per-row count of failed deliveries).
    counts = [query["sql"] for query in queries if query["sql"].upper().startswith("SELECT COUNT(")]
    assert counts and all("LIMIT 6" in sql for sql in counts)


def test_event_detail_shows_headers_bodies_deliveries_and_attempts(admin, setup):
    response = admin.get(reverse("admin:webhooks_webhookevent_change", args=[setup["dead"].pk]))
    assert response.status_code == 200
    html = response.content.decode()
    assert "Stripe-Signature" in html and "t=1,v1=abc" in html
    assert "&quot;amount&quot;: 4200" in html  # pretty-printed JSON
    assert "bytes</summary>" in html  # raw body
    assert "upstream said no" in html and "boom" in html and "Dead" in html
    assert 'id="retry-failed-deliveries"' in html
    assert no_secret_in(response, STRIPE_SECRET, setup["destination_secret"])
    assert admin.get(reverse("admin:webhooks_webhookevent_change", args=["not-a-uuid"])).status_code == 302


def test_events_cannot_be_added_changed_or_deleted(admin, setup):
    assert admin.get(reverse("admin:webhooks_webhookevent_add")).status_code == 403
    assert admin.post(reverse("admin:webhooks_webhookevent_delete", args=[setup["dead"].pk])).status_code == 403
    assert WebhookEvent.objects.filter(pk=setup["dead"].pk).exists()


def test_retrying_several_events_asks_for_confirmation_then_retries_through_the_service(admin, setup, superuser):
    url = reverse(EVENTS)
    selection = {"action": "retry_failed_deliveries", "_selected_action": [setup["dead"].pk, setup["retrying"].pk]}
    confirmation = admin.post(url, selection)
    assert confirmation.status_code == 200
    assert "Send 2 failed deliveries again now?" in confirmation.content.decode()
    assert Delivery.objects.filter(status=Delivery.Status.DEAD).count() == 1  # nothing done yet
    assert not AuditLog.objects.filter(action="delivery.retried").exists()

    done = admin.post(url, {**selection, "confirm": "yes"}, follow=True)
    assert "2 deliveries queued for another attempt." in done.content.decode()
    assert not Delivery.objects.filter(status=Delivery.Status.DEAD).exists()
    retried = AuditLog.objects.filter(action="delivery.retried")
    assert retried.count() == 2 and {entry.actor_user_id for entry in retried} == {superuser.pk}
    action_entry = AuditLog.objects.get(action="admin.webhooks.webhookevent.action.retry_failed_deliveries")
    assert action_entry.changes["selected_count"] == 2 and action_entry.ip_address == "127.0.0.1"
    assert audit_verify_chain().ok


def test_retrying_one_event_from_its_page_needs_no_confirmation(admin, setup):
    response = admin.post(
        reverse(EVENTS), {"action": "retry_failed_deliveries", "_selected_action": [setup["dead"].pk]}
    )
    assert response.status_code == 302
    assert Delivery.objects.get(event=setup["dead"]).status == Delivery.Status.PENDING


def test_retrying_events_without_failures_says_so(admin, setup):
    response = admin.post(
        reverse(EVENTS), {"action": "retry_failed_deliveries", "_selected_action": [setup["delivered"].pk]}, follow=True
    )
    assert "No failed deliveries in the selected events." in response.content.decode()


def test_replay_offers_the_organizations_destinations_and_replays_to_the_chosen_ones(admin, setup):
    url = reverse(EVENTS)
    selection = {"action": "replay_to_destinations", "_selected_action": [setup["dead"].pk, setup["delivered"].pk]}
    page = admin.post(url, selection)
    html = page.content.decode()
    assert page.status_code == 200 and 'name="choice"' in html
    assert f'value="{setup["destination"].pk}" checked' in html  # subscribed to the event's source
    assert not Delivery.objects.filter(is_replay=True).exists()
    # "No, take me back" goes back where the action was started, filters included.
    filtered = admin.post(f"{url}?status__exact=processed", selection).content.decode()
    assert f'href="{url}?status__exact=processed" class="button cancel-link"' in filtered

    done = admin.post(url, {**selection, "confirm": "yes", "choice": [setup["destination"].pk]}, follow=True)
    assert [str(message) for message in done.context["messages"]] == ["1 replay delivery queued."]
    replays = Delivery.objects.filter(is_replay=True)
    # Only the Acme event goes to Acme's destination; Globex's event is never sent across tenants.
    assert [(d.event_id, d.destination_id) for d in replays] == [(setup["dead"].pk, setup["destination"].pk)]
    assert AuditLog.objects.filter(action="event.replayed", target_id=str(setup["dead"].pk)).exists()


def test_replay_pre_ticks_only_destinations_whose_event_type_filter_takes_the_event(admin, setup, organization):
    orders_only, _ = make_destination(organization, RECEIVER, sources=[setup["source"]], event_types=["order.*"])
    page = admin.post(
        reverse(EVENTS), {"action": "replay_to_destinations", "_selected_action": [setup["dead"].pk]}
    ).content.decode()
    assert f'value="{setup["destination"].pk}" checked' in page
    assert "Send 1 event again, as a new delivery to each chosen destination of its organization" in page
    # Offered (the operator may still choose it), but not ticked: it never takes invoice.paid.
    assert f'value="{orders_only.pk}"' in page and f'value="{orders_only.pk}" checked' not in page


def test_replay_without_a_destination_chosen_does_nothing(admin, setup):
    url = reverse(EVENTS)
    response = admin.post(
        url, {"action": "replay_to_destinations", "_selected_action": [setup["dead"].pk], "confirm": "yes"}
    )
    assert response.status_code == 200 and "Choose at least one destination." in response.content.decode()
    assert not Delivery.objects.filter(is_replay=True).exists()


# --- Deliveries and attempts ------------------------------------------------------------------


def test_delivery_list_filters_search_and_detail(admin, setup, organization):
    url = reverse("admin:webhooks_delivery_changelist")
    dead = Delivery.objects.get(event=setup["dead"])
    succeeded = Delivery.objects.get(event=setup["delivered"])
    assert len(listed(admin.get(url))) == 3
    assert listed(admin.get(url, {"status__exact": "dead"})) == [dead]
    assert len(listed(admin.get(url, {"organization": organization.pk}))) == 2
    assert listed(admin.get(url, {"destination": setup["their_destination"].pk})) == [succeeded]
    assert listed(admin.get(url, {"code": "5xx"})) == [dead]
    assert len(listed(admin.get(url, {"code": "none"}))) == 2
    assert listed(admin.get(url, {"q": str(dead.pk)})) == [dead]
    assert listed(admin.get(url, {"q": str(setup["dead"].pk)})) == [dead]  # by event id
    assert listed(admin.get(url, {"q": "not a uuid"})) == []
    detail = admin.get(reverse("admin:webhooks_delivery_change", args=[dead.pk]))
    assert detail.status_code == 200 and "upstream said no" in detail.content.decode()
    assert admin.get(reverse("admin:webhooks_delivery_add")).status_code == 403


def test_delivery_retry_action(admin, setup):
    dead = Delivery.objects.get(event=setup["dead"])
    response = admin.post(
        reverse("admin:webhooks_delivery_changelist"), {"action": "retry_deliveries", "_selected_action": [dead.pk]}
    )
    assert response.status_code == 302
    dead.refresh_from_db()
    assert dead.status == Delivery.Status.PENDING
    assert AuditLog.objects.filter(action="delivery.retried", target_id=str(dead.pk)).exists()


def test_attempt_list_filters_search_and_retry(admin, setup, organization):
    url = reverse("admin:webhooks_deliveryattempt_changelist")
    failed = DeliveryAttempt.objects.get(delivery__event=setup["dead"])
    assert len(listed(admin.get(url))) == 3
    assert listed(admin.get(url, {"code": "5xx"})) == [failed]
    assert len(listed(admin.get(url, {"organization": organization.pk}))) == 2
    assert listed(admin.get(url, {"q": str(failed.delivery_id)})) == [failed]
    assert admin.get(reverse("admin:webhooks_deliveryattempt_change", args=[failed.pk])).status_code == 200
    admin.post(url, {"action": "retry_deliveries", "_selected_action": [failed.pk]})
    assert Delivery.objects.get(pk=failed.delivery_id).status == Delivery.Status.PENDING


# --- Sources and destinations: secrets are write-only --------------------------------------------


def test_source_list_filters_search_and_detail_without_secret(admin, setup, organization):
    url = reverse("admin:webhooks_source_changelist")
    assert listed(admin.get(url, {"provider": "github"})) == [setup["their_source"]]
    assert listed(admin.get(url, {"organization": organization.pk})) == [setup["source"]]
    assert listed(admin.get(url, {"q": "globex"})) == [setup["their_source"]]
    response = admin.get(reverse("admin:webhooks_source_change", args=[setup["source"].pk]))
    html = response.content.decode()
    assert setup["source"].ingest_token in html and "hookline-copy" in html
    assert setup["source"].secret_hint in html
    assert no_secret_in(response, STRIPE_SECRET)


def source_form(source, **changes):
    return {
        "name": source.name,
        "options": "{}",
        "is_active": "on",
        "new_secret": "",
        **changes,
    }


def test_setting_a_new_source_secret_rotates_it_and_audits_without_the_value(admin, setup):
    source = setup["source"]
    url = reverse("admin:webhooks_source_change", args=[source.pk])
    response = admin.post(url, source_form(source, name="Acme live (renamed)", new_secret="whsec_brand_new_value"))
    assert response.status_code == 302, response.content[:800]
    source.refresh_from_db()
    assert source.secret == "whsec_brand_new_value" and source.previous_secret == STRIPE_SECRET
    change = AuditLog.objects.get(action="admin.webhooks.source.changed")
    assert change.changes["fields"]["name"] == ["Acme live", "Acme live (renamed)"]
    assert change.changes["fields"]["new_secret"] == "********"
    assert AuditLog.objects.filter(action="source.secret_rotated", actor_type="user").exists()
    assert "whsec_brand_new_value" not in str(list(AuditLog.objects.values_list("changes", flat=True)))


def test_source_options_are_validated_by_the_provider(admin, setup):
    source = setup["source"]
    response = admin.post(
        reverse("admin:webhooks_source_change", args=[source.pk]), source_form(source, options='{"nonsense": 1}')
    )
    assert response.status_code == 200
    assert "unknown option for stripe: “nonsense”" in response.content.decode()
    for not_an_object in ("[1, 2]", "3", '"tolerance"'):
        response = admin.post(
            reverse("admin:webhooks_source_change", args=[source.pk]), source_form(source, options=not_an_object)
        )
        assert response.status_code == 200, not_an_object  # a form error, not a 500
        assert "options must be an object" in response.content.decode()


def test_rotating_a_generated_source_secret_shows_it_once(admin, organization):
    source = make_source(organization, provider="github", secret="an-old-github-secret-1234")
    response = admin.post(
        reverse("admin:webhooks_source_changelist"), {"action": "rotate_secret", "_selected_action": [source.pk]}
    )
    source.refresh_from_db()
    # Post/redirect/get: reloading the page that shows the secret must not rotate it again.
    assert response.status_code == 302 and source.secret not in response.content.decode()
    shown = admin.get(response["Location"])
    assert shown.status_code == 200 and "no-store" in shown["Cache-Control"]
    assert source.secret in shown.content.decode()
    reloaded = admin.get(response["Location"], follow=True)
    assert source.secret not in reloaded.content.decode() and "shown only once" in reloaded.content.decode()
    assert Source.objects.get(pk=source.pk).secret == source.secret
    assert AuditLog.objects.filter(action="admin.webhooks.source.action.rotate_secret").exists()
    later = admin.get(reverse("admin:webhooks_source_change", args=[source.pk]))
    assert no_secret_in(later, source.secret)
    # A second rotation within the overlap would stop the secret the provider may still use: asked first.
    selection = {"action": "rotate_secret", "_selected_action": [source.pk]}
    asked = admin.post(reverse("admin:webhooks_source_changelist"), selection)
    assert asked.status_code == 200 and "Rotate, and stop the older secrets now" in asked.content.decode()
    assert "works until" in asked.content.decode()
    assert Source.objects.get(pk=source.pk).secret == source.secret
    rotated = admin.post(reverse("admin:webhooks_source_changelist"), {**selection, "confirm": "yes"})
    assert rotated.status_code == 302
    assert Source.objects.get(pk=source.pk).active_secrets()[1] == source.secret  # the older one stopped


def test_rotating_a_provider_given_secret_is_refused(admin, setup):
    response = admin.post(
        reverse("admin:webhooks_source_changelist"),
        {"action": "rotate_secret", "_selected_action": [setup["source"].pk]},
        follow=True,
    )
    assert "Not rotated" in response.content.decode()


def test_destination_list_detail_and_secret_rotation(admin, setup, organization):
    destination = setup["destination"]
    url = reverse("admin:webhooks_destination_changelist")
    assert listed(admin.get(url, {"organization": organization.pk})) == [destination]
    assert listed(admin.get(url, {"q": "globex"})) == [setup["their_destination"]]
    detail = admin.get(reverse("admin:webhooks_destination_change", args=[destination.pk]))
    assert detail.status_code == 200 and no_secret_in(detail, setup["destination_secret"])
    rotated = admin.post(url, {"action": "rotate_secret", "_selected_action": [destination.pk]}, follow=True)
    destination.refresh_from_db()
    assert destination.secret != setup["destination_secret"] and destination.secret in rotated.content.decode()
    assert AuditLog.objects.filter(action="destination.secret_rotated").exists()


def destination_form(destination, **changes):
    return {
        "name": destination.name,
        "url": destination.url,
        "timeout_seconds": destination.timeout_seconds,
        "max_concurrency": destination.max_concurrency,
        "rate_limit_per_second": "",
        "is_active": "on",
        "new_secret": "",
        "subscriptions-TOTAL_FORMS": "0",
        "subscriptions-INITIAL_FORMS": "0",
        **changes,
    }


def test_destination_new_secret_must_be_a_standard_webhooks_secret(admin, setup):
    destination = setup["destination"]
    url = reverse("admin:webhooks_destination_change", args=[destination.pk])
    response = admin.post(
        url, destination_form(destination, name="Renamed with a bad secret", new_secret="not base64 at all")
    )
    page = response.content.decode()
    assert response.status_code == 200 and "errornote" in page and "whsec_" in page  # the form says why
    assert "changed successfully" not in page
    destination.refresh_from_db()
    assert destination.secret == setup["destination_secret"] and destination.name != "Renamed with a bad secret"
    good = "whsec_" + "A" * 44
    admin.post(url, destination_form(destination, new_secret=good))
    destination.refresh_from_db()
    assert destination.secret == good


def test_destination_url_is_checked(admin, setup, settings):
    settings.ALLOW_PRIVATE_DESTINATIONS = False
    destination = setup["destination"]
    response = admin.post(
        reverse("admin:webhooks_destination_change", args=[destination.pk]),
        destination_form(destination, url="http://169.254.169.254/latest"),
    )
    assert response.status_code == 200 and "private or reserved" in response.content.decode()


@pytest.mark.parametrize("timeout", ["-1", "0", "1000"])
def test_destination_timeout_out_of_bounds_is_refused(admin, setup, timeout):
    destination = setup["destination"]
    response = admin.post(
        reverse("admin:webhooks_destination_change", args=[destination.pk]),
        destination_form(destination, timeout_seconds=timeout),
    )
    assert response.status_code == 200 and "errornote" in response.content.decode()
    destination.refresh_from_db()
    assert destination.timeout_seconds == 15.0


def test_destination_pause_and_resume_actions(admin, setup):
    destination = setup["destination"]
    url = reverse("admin:webhooks_destination_changelist")
    admin.post(url, {"action": "pause", "_selected_action": [destination.pk]})
    destination.refresh_from_db()
    assert destination.paused_at is not None
    assert listed(admin.get(url, {"state": "paused"})) == [destination]
    admin.post(url, {"action": "resume", "_selected_action": [destination.pk]})
    destination.refresh_from_db()
    assert destination.paused_at is None
    assert AuditLog.objects.filter(action__in=["destination.paused", "destination.resumed"]).count() == 2


def test_pausing_a_paused_and_resuming_a_running_destination_is_nothing_to_do(
    admin, setup, organization, other_organization
):
    url = reverse("admin:webhooks_destination_changelist")
    paused, running = setup["destination"], setup["their_destination"]
    reason = "paused automatically after 3 consecutive failed attempts since 2026-01-01 00:00 UTC"
    paused_at = timezone.now() - timedelta(hours=1)
    Destination.objects.filter(pk=paused.pk).update(paused_at=paused_at, pause_reason=reason)
    failing_since = timezone.now() - timedelta(minutes=5)
    Destination.objects.filter(pk=running.pk).update(consecutive_failures=2, failing_since=failing_since)
    waiting = Delivery.objects.get(event=setup["retrying"])
    retry_at = timezone.now() + timedelta(minutes=30)
    Delivery.objects.filter(pk=waiting.pk).update(destination=running, next_attempt_at=retry_at)

    response = admin.post(url, {"action": "pause", "_selected_action": [paused.pk]}, follow=True)
    shown = " ".join(str(message) for message in response.context["messages"])
    assert "Nothing to do" in shown and "paused already" in shown and "Paused;" not in shown
    paused.refresh_from_db()
    assert paused.paused_at == paused_at and paused.pause_reason == reason  # the breaker's reason is kept
    (entry,) = action_entries("destination", "pause").values()
    assert entry.organization_id == organization.pk
    assert entry.changes["outcome"] == "nothing to do" and "done" not in entry.changes
    assert entry.changes["nothing_to_do"] == [
        {"item": f"destination {paused.pk}", "reason": "the destination is paused already"}
    ]

    response = admin.post(url, {"action": "resume", "_selected_action": [running.pk]}, follow=True)
    shown = " ".join(str(message) for message in response.context["messages"])
    assert "Nothing to do" in shown and "not paused" in shown and "Resumed;" not in shown
    running.refresh_from_db()
    assert running.consecutive_failures == 2 and running.failing_since == failing_since  # the breaker still counts
    assert Delivery.objects.get(pk=waiting.pk).next_attempt_at == retry_at  # its backoff is kept
    (entry,) = action_entries("destination", "resume").values()
    assert entry.organization_id == other_organization.pk
    assert entry.changes["outcome"] == "nothing to do" and "done" not in entry.changes
    assert not AuditLog.objects.filter(action__in=["destination.paused", "destination.resumed"]).exists()
    assert audit_log_verifies()


def test_pausing_a_running_and_a_paused_destination_together_says_which_was_paused(
    admin, setup, organization, other_organization
):
    url = reverse("admin:webhooks_destination_changelist")
    running, paused = setup["destination"], setup["their_destination"]
    Destination.objects.filter(pk=paused.pk).update(paused_at=timezone.now(), pause_reason="paused by hand")
    response = admin.post(url, {"action": "pause", "_selected_action": [running.pk, paused.pk]}, follow=True)
    shown = [str(message) for message in response.context["messages"]]
    assert any(message.startswith("Paused;") and running.name in message for message in shown)
    assert any(message.startswith("Nothing to do") and paused.name in message for message in shown)
    entries = action_entries("destination", "pause")
    assert entries[organization.pk].changes["outcome"] == "done"
    assert entries[other_organization.pk].changes["outcome"] == "nothing to do"
    assert AuditLog.objects.filter(action="destination.paused").count() == 1


# --- Organizations and users --------------------------------------------------------------------


def test_organization_list_detail_usage_and_links(admin, setup, organization):
    MonthlyUsage.objects.create(organization=organization, month=timezone.now().date().replace(day=1), events=42)
    url = reverse("admin:organizations_organization_changelist")
    assert listed(admin.get(url, {"q": "glob"})) == [Organization.objects.get(slug="globex")]
    assert len(listed(admin.get(url, {"plan__exact": "free"}))) == 2
    html = admin.get(reverse("admin:organizations_organization_change", args=[organization.pk])).content.decode()
    assert "42" in html and "owner@acme.example" in html  # usage and the members inline
    for name in ("source", "destination", "webhookevent"):
        assert f"{reverse(f'admin:webhooks_{name}_changelist')}?organization={organization.pk}" in html


def organization_form(organization, **changes):
    return organization_change_form(organization, **changes)


def test_changing_an_organization_is_audited_with_before_and_after(admin, organization, superuser):
    url = reverse("admin:organizations_organization_change", args=[organization.pk])
    response = admin.post(url, organization_form(organization, plan="business", monthly_event_quota=500000))
    assert response.status_code == 302, (
        response.context["adminform"].form.errors,
        [f.errors for fs in response.context["inline_admin_formsets"] for f in fs.formset.forms],
        [fs.formset.non_form_errors() for fs in response.context["inline_admin_formsets"]],
    )
    entry = AuditLog.objects.get(action="admin.organizations.organization.changed")
    assert entry.changes["fields"]["plan"] == ["free", "business"]
    assert entry.changes["fields"]["monthly_event_quota"] == [100000, 500000]
    assert entry.organization_id == organization.pk and entry.actor_user_id == superuser.pk
    assert audit_verify_chain().ok


def test_deleting_an_organization_keeps_and_extends_its_audit_trail(admin, setup, organization, superuser):
    url = reverse("admin:organizations_organization_delete", args=[organization.pk])
    response = admin.post(url, {"post": "yes"})
    assert response.status_code == 302
    asked = AuditLog.objects.get(action="organization.deletion_requested")
    assert asked.actor_user_id == superuser.pk and asked.target_id == str(organization.pk)
    organization_deletion_run(organization_id=organization.pk)  # the background part (see test_organization_deletion)
    assert not Organization.objects.filter(pk=organization.pk).exists()
    deleted = AuditLog.objects.get(action="organization.deleted")
    assert deleted.organization_label == "Acme" and deleted.target_id == str(organization.pk)
    assert AuditLog.objects.filter(organization_id=organization.pk, action="organization.created").exists()
    assert audit_verify_chain().ok


def test_user_admin_is_email_based_with_memberships(admin, owner, organization):
    url = reverse("admin:accounts_user_changelist")
    assert listed(admin.get(url, {"q": "owner@acme"})) == [owner]
    assert owner in listed(admin.get(url, {"is_staff__exact": "0"}))
    html = admin.get(reverse("admin:accounts_user_change", args=[owner.pk])).content.decode()
    assert 'name="email"' in html and 'name="username"' not in html
    assert "memberships-0-organization" in html
    response = admin.post(
        reverse("admin:accounts_user_add"),
        {
            "email": "new-admin@hookline.example",
            "password1": "a long enough passphrase 42",
            "password2": "a long enough passphrase 42",
            "memberships-TOTAL_FORMS": "1",
            "memberships-INITIAL_FORMS": "0",
            "memberships-0-organization": organization.pk,
            "memberships-0-role": "admin",
        },
    )
    assert response.status_code == 302, (
        response.context["adminform"].form.errors,
        [f.errors for fs in response.context["inline_admin_formsets"] for f in fs.formset.forms],
        [fs.formset.non_form_errors() for fs in response.context["inline_admin_formsets"]],
    )
    created = get_user_model().objects.get(email="new-admin@hookline.example")
    assert Membership.objects.get(user=created).role == "admin"
    entry = AuditLog.objects.get(action="admin.accounts.user.added")
    assert entry.target_id == str(created.pk)
    assert "passphrase" not in str(entry.changes)


def test_deleting_a_user_with_audit_entries_works(admin, owner):
    response = admin.post(reverse("admin:accounts_user_delete", args=[owner.pk]), {"post": "yes"})
    assert response.status_code == 302
    assert not get_user_model().objects.filter(pk=owner.pk).exists()
    assert AuditLog.objects.filter(action="admin.accounts.user.deleted", target_label=owner.email).exists()


def test_bulk_delete_action_audits_each_row(admin, setup):
    source = setup["their_source"]
    url = reverse("admin:webhooks_destination_changelist")
    response = admin.post(
        url, {"action": "delete_selected", "_selected_action": [setup["their_destination"].pk], "post": "yes"}
    )
    assert response.status_code == 302
    # Asked for through the service, audited there (its rows go in the background: destination_deletion).
    assert Destination.objects.get(pk=setup["their_destination"].pk).being_deleted
    entry = AuditLog.objects.get(action="destination.deletion_requested")
    assert entry.target_id == str(setup["their_destination"].pk) and entry.actor_user is not None
    assert Source.objects.filter(pk=source.pk).exists()


def test_a_bulk_delete_that_fails_leaves_no_deleted_entry_and_the_destination_active(admin, setup, monkeypatch):
    from django.db import DatabaseError

    from webhooks.services import destination_deletion

    def failing_audit(**kwargs):
        raise DatabaseError("canceling statement due to lock timeout")

    monkeypatch.setattr(destination_deletion, "audit_record", failing_audit)
    destination = setup["their_destination"]
    with pytest.raises(DatabaseError):
        admin.post(
            reverse("admin:webhooks_destination_changelist"),
            {"action": "delete_selected", "_selected_action": [destination.pk], "post": "yes"},
        )
    destination.refresh_from_db()
    assert destination.is_active and not destination.being_deleted
    assert not AuditLog.objects.filter(action__endswith="destination.deleted").exists()


# --- Audit log ----------------------------------------------------------------------------------


def test_audit_log_list_filters_search_and_detail(admin, setup, organization, superuser):
    admin.post(reverse(EVENTS), {"action": "retry_failed_deliveries", "_selected_action": [setup["dead"].pk]})
    url = reverse("admin:organizations_auditlog_changelist")
    everything = listed(admin.get(url))
    assert len(everything) == AuditLog.objects.count()
    by_org = listed(admin.get(url, {"organization": organization.pk}))
    assert by_org and all(entry.organization_id == organization.pk for entry in by_org)
    by_actor = listed(admin.get(url, {"actor": superuser.pk}))
    assert by_actor and all(entry.actor_user_id == superuser.pk for entry in by_actor)
    assert all(entry.actor_type == "system" for entry in listed(admin.get(url, {"actor": "system"})))
    assert [entry.action for entry in listed(admin.get(url, {"action": "delivery.retried"}))] == ["delivery.retried"]
    today = str(timezone.now().date())
    assert len(listed(admin.get(url, {"created_at_from": today, "created_at_to": today}))) == len(everything)
    assert listed(admin.get(url, {"created_at_to": "2020-01-01"})) == []
    found = listed(admin.get(url, {"q": "endpoint"}))
    assert found and all("endpoint" in entry.target_label for entry in found)
    entry = AuditLog.objects.get(action="delivery.retried")
    detail = admin.get(reverse("admin:organizations_auditlog_change", args=[entry.pk]))
    assert detail.status_code == 200 and entry.entry_hash in detail.content.decode()
    delivery_url = reverse("admin:webhooks_delivery_change", args=[entry.target_id])
    assert delivery_url in admin.get(url, {"action": "delivery.retried"}).content.decode()
    assert admin.get(reverse("admin:organizations_auditlog_add")).status_code == 403
    assert admin.post(reverse("admin:organizations_auditlog_delete", args=[entry.pk])).status_code == 403


def test_audit_log_verify_button(admin, organization):
    response = admin.get(reverse("admin:organizations_auditlog_verify"), follow=True)
    assert "The audit log verifies" in response.content.decode()


def test_audit_log_verify_button_counts_one_entry_as_one(admin, monkeypatch):
    chain = audit_verify_chain()
    monkeypatch.setattr("organizations.admin.audit_verify_chain", lambda: replace(chain, checked=1))
    response = admin.get(reverse("admin:organizations_auditlog_verify"), follow=True)
    [message] = [str(message) for message in response.context["messages"]]
    assert message.startswith("The audit log verifies: 1 entry chains correctly (head ")


# --- Periodic tasks -----------------------------------------------------------------------------


def test_periodic_tasks_are_installed_idempotently_and_editable_with_audit(admin, settings):
    call_command("install_periodic_tasks")
    call_command("install_periodic_tasks")
    names = set(PeriodicTask.objects.values_list("name", flat=True))
    assert set(settings.CELERY_BEAT_SCHEDULE) <= names
    assert PeriodicTask.objects.filter(name="hookline-sweep").count() == 1
    url = reverse("admin:django_celery_beat_periodictask_changelist")
    assert "hookline-retention" in admin.get(url).content.decode()
    task = PeriodicTask.objects.get(name="hookline-retention")
    admin.post(url, {"action": "disable_tasks", "_selected_action": [task.pk]})
    task.refresh_from_db()
    assert not task.enabled
    assert AuditLog.objects.filter(action="admin.django_celery_beat.periodictask.action.disable_tasks").exists()
    # Installing again keeps an admin's decision to switch a task off.
    call_command("install_periodic_tasks")
    task.refresh_from_db()
    assert not task.enabled


def test_installing_the_periodic_tasks_words_their_schedules_the_same_every_time():
    """A new interval printed "every 5.0 seconds", the same one read back "every 5 seconds"."""
    first, again = StringIO(), StringIO()
    call_command("install_periodic_tasks", stdout=first)
    call_command("install_periodic_tasks", stdout=again)
    assert "hookline-dead-letter-digests: webhooks.tasks.send_dead_letter_digests every 5 min (created)" in (
        first.getvalue()
    )
    assert first.getvalue().replace("(created)", "(up to date)") == again.getvalue()


def test_no_admin_page_ever_shows_a_secret(admin, setup):
    secrets = [STRIPE_SECRET, "gh-secret-value-123", setup["destination_secret"]]
    pages = [
        reverse("admin:index"),
        reverse("admin:webhooks_source_changelist"),
        reverse("admin:webhooks_destination_changelist"),
        reverse("admin:webhooks_source_change", args=[setup["their_source"].pk]),
        reverse("admin:webhooks_destination_change", args=[setup["their_destination"].pk]),
        reverse("admin:organizations_auditlog_changelist"),
    ]
    for page in pages:
        response = admin.get(page)
        assert response.status_code == 200, page
        assert no_secret_in(response, *secrets), page
    assert re.search(r"…\w{4}", admin.get(pages[1]).content.decode())


def test_retrying_every_event_matching_a_filter_keeps_the_filter_through_confirmation(admin, setup, organization):
    url = reverse(EVENTS) + f"?organization={organization.pk}&failed=yes"
    selection = {"action": "retry_failed_deliveries", "select_across": "1", "_selected_action": [setup["dead"].pk]}
    confirmation = admin.post(url, selection)
    html = confirmation.content.decode()
    assert "Send 2 failed deliveries again now?" in html
    assert f'action="{url.replace("&", "&amp;")}"' in html
    admin.post(url, {**selection, "confirm": "yes"})
    assert not Delivery.objects.filter(status=Delivery.Status.DEAD).exists()
    assert Delivery.objects.get(event=setup["delivered"]).status == Delivery.Status.SUCCEEDED


def test_every_registered_model_lists_searches_and_opens(admin, setup, organization, superuser):
    from django.contrib import admin as django_admin
    from django.contrib.auth.models import Group

    from webhooks.services.operations import bulk_retry_start

    Group.objects.create(name="operators")
    bulk_retry_start(organization=organization, filters={}, actor=superuser)
    call_command("install_periodic_tasks")
    for model, model_admin in django_admin.site._registry.items():
        opts = model._meta
        changelist = reverse(f"admin:{opts.app_label}_{opts.model_name}_changelist")
        assert admin.get(changelist).status_code == 200, changelist
        if model_admin.search_fields:
            assert admin.get(changelist, {"q": "acme"}).status_code == 200, changelist
        first = model.objects.order_by("pk").first()
        if first is not None:
            change = reverse(f"admin:{opts.app_label}_{opts.model_name}_change", args=[first.pk])
            assert admin.get(change).status_code == 200, change


def test_extreme_dates_and_deeply_nested_bodies_never_fail_a_page(admin, setup):
    events = reverse("admin:webhooks_webhookevent_changelist")
    for params in (
        {"received_at_from": "0001-01-01"},
        {"received_at_to": "9999-12-31"},
        {"received_at_from": "1969-12-31"},
    ):
        assert admin.get(events, params).status_code == 200, params
    audit = reverse("admin:organizations_auditlog_changelist")
    assert admin.get(audit, {"created_at_to": "9999-12-31"}).status_code == 200
    nested = make_event(setup["source"], "evt_nested", "invoice.paid")
    WebhookEvent.objects.filter(pk=nested.pk).update(body=b"[" * 5000)  # deeper than Python's JSON parser goes
    assert admin.get(reverse("admin:webhooks_webhookevent_change", args=[nested.pk])).status_code == 200


def test_subscriptions_are_shown_but_not_rerouted_from_the_destination_page(admin, setup):
    page = admin.get(reverse("admin:webhooks_destination_change", args=[setup["destination"].pk])).content.decode()
    assert "Acme live" in page
    assert 'name="subscriptions-0-source"' not in page  # no field to point it at another tenant's source


def test_a_source_secret_its_provider_refuses_saves_nothing(admin, setup):
    source = setup["source"]  # Stripe: secrets are whsec_…
    url = reverse("admin:webhooks_source_change", args=[source.pk])
    response = admin.post(url, source_form(source, name="Renamed with a bad secret", new_secret="not-a-stripe-secret"))
    page = response.content.decode()
    assert response.status_code == 200 and "errornote" in page and "changed successfully" not in page
    source.refresh_from_db()
    assert source.secret == STRIPE_SECRET and source.name != "Renamed with a bad secret"


def test_event_list_puts_status_and_failures_before_the_long_ids_and_shortens_provider_ids(admin, setup):
    long_id = "sha256:" + "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
    make_event(setup["source"], long_id, "invoice.paid")
    response = admin.get(reverse(EVENTS))
    assert response.status_code == 200
    html = response.content.decode()
    columns = re.findall(r'<th scope="col" class="[^"]*\bcolumn-(\w+)', html)
    assert columns == [
        "received_at",
        "status_with_reason",
        "failed_deliveries",
        "organization",
        "source",
        "shown_event_type",
        "short_provider_event_id",
        "id",
        "duplicate_count",
    ]
    assert "column-provider" not in html  # the source already names its provider
    assert f'title="{long_id}">sha256:9f86d08…f00a08</span>' in html
    assert f">{long_id}<" not in html  # never in full in a cell
    assert ">evt_dead<" in html  # short ids are shown as they are
    # The row still links to the event.
    assert reverse("admin:webhooks_webhookevent_change", args=[setup["dead"].pk]) in html


# --- Staff without change permissions -------------------------------------------------------------


def staff_account(email: str, *codenames: str):
    """A staff account (not superuser) holding only the permissions named by codename."""
    from django.contrib.auth.models import Permission

    user = get_user_model().objects.create_user(email, "staff horse battery", is_staff=True)
    user.user_permissions.add(*Permission.objects.filter(codename__in=codenames))
    return user


@pytest.fixture
def viewer(client, db):
    """A staff account that may only look at sources, destinations, events, deliveries and attempts."""
    views = ["view_source", "view_destination", "view_webhookevent", "view_delivery", "view_deliveryattempt"]
    client.force_login(staff_account("viewer@hookline.example", *views))
    return client


def test_view_only_staff_run_no_action_that_changes_anything(viewer, setup):
    """Rotating a secret (and seeing the new one), pausing, retrying and replaying need more than view."""
    destination, source, dead = setup["destination"], setup["source"], setup["dead"]
    before = (Destination.objects.get(pk=destination.pk).secret, Source.objects.get(pk=source.pk).secret)
    entries = AuditLog.objects.count()
    tried = [
        ("admin:webhooks_destination_changelist", "rotate_secret", destination.pk),
        ("admin:webhooks_destination_changelist", "pause", destination.pk),
        ("admin:webhooks_source_changelist", "rotate_secret", source.pk),
        (EVENTS, "retry_failed_deliveries", dead.pk),
        (EVENTS, "replay_to_destinations", dead.pk),
        ("admin:webhooks_delivery_changelist", "retry_deliveries", Delivery.objects.get(event=dead).pk),
    ]
    for changelist, action, pk in tried:
        page = viewer.get(reverse(changelist))
        assert page.status_code == 200
        form = page.context["action_form"]  # None when no action is left at all
        offered = [value for value, _ in form.fields["action"].choices] if form else []
        assert action not in offered, (changelist, action)
        data = {"action": action, "_selected_action": [pk], "confirm": "yes", "choice": [destination.pk]}
        response = viewer.post(reverse(changelist), data, follow=True)
        assert "whsec_" not in response.content.decode(), (changelist, action)
    assert (Destination.objects.get(pk=destination.pk).secret, Source.objects.get(pk=source.pk).secret) == before
    assert Destination.objects.get(pk=destination.pk).paused_at is None
    assert Delivery.objects.get(event=dead).status == Delivery.Status.DEAD
    assert Delivery.objects.filter(event=dead).count() == 1
    assert AuditLog.objects.count() == entries
    detail = viewer.get(reverse("admin:webhooks_webhookevent_change", args=[dead.pk])).content.decode()
    assert "retry-failed-deliveries" not in detail and "replay-to-destinations" not in detail


def test_staff_given_the_change_permissions_run_the_actions(client, setup):
    codenames = ["view_destination", "change_destination", "view_webhookevent", "change_delivery", "add_delivery"]
    client.force_login(staff_account("operator@hookline.example", *codenames))
    destination, dead = setup["destination"], setup["dead"]
    client.post(
        reverse("admin:webhooks_destination_changelist"), {"action": "pause", "_selected_action": [destination.pk]}
    )
    assert Destination.objects.get(pk=destination.pk).paused_at is not None
    client.post(reverse(EVENTS), {"action": "retry_failed_deliveries", "_selected_action": [dead.pk]})
    assert Delivery.objects.get(event=dead).status == Delivery.Status.PENDING
    detail = client.get(reverse("admin:webhooks_webhookevent_change", args=[dead.pk])).content.decode()
    assert "retry-failed-deliveries" in detail and "replay-to-destinations" in detail


def test_the_platform_overview_is_shown_only_to_staff_who_may_view_what_it_counts(client, setup):
    """Tenants' names, paused destinations and their reasons are not for a staff account without permissions."""
    from django.contrib.auth.models import Permission

    setup["their_destination"].paused_at = timezone.now()
    setup["their_destination"].pause_reason = "failing for an hour"
    setup["their_destination"].save()
    user = staff_account("bare@hookline.example")
    client.force_login(user)
    response = client.get(reverse("admin:index"))
    assert response.status_code == 200
    html = response.content.decode()
    assert "platform-overview" not in html and "failing for an hour" not in html and "Globex" not in html

    codenames = ["view_organization", "view_webhookevent", "view_delivery", "view_destination"]
    user.user_permissions.add(*Permission.objects.filter(codename__in=codenames))
    client.force_login(get_user_model().objects.get(pk=user.pk))  # permissions are cached on the user
    assert "failing for an hour" in client.get(reverse("admin:index")).content.decode()


def test_memberships_changed_inline_are_audited_in_their_organization_with_before_and_after(
    admin, organization, owner, member, other_organization
):
    """Making someone owner from a user's admin page is a change to the organization: its own log says so."""
    membership = Membership.objects.get(user=member)
    response = admin.post(
        reverse("admin:accounts_user_change", args=[member.pk]),
        {
            "email": member.email,
            "full_name": "",
            "is_active": "on",
            "date_joined_0": member.date_joined.strftime("%Y-%m-%d"),
            "date_joined_1": member.date_joined.strftime("%H:%M:%S"),
            "memberships-TOTAL_FORMS": "2",
            "memberships-INITIAL_FORMS": "1",
            "memberships-0-id": membership.pk,
            "memberships-0-user": member.pk,
            "memberships-0-organization": organization.pk,
            "memberships-0-role": "owner",
            "memberships-1-user": member.pk,
            "memberships-1-organization": other_organization.pk,
            "memberships-1-role": "admin",
        },
    )
    assert response.status_code == 302, response.context["adminform"].form.errors
    assert Membership.objects.get(pk=membership.pk).role == "owner"

    changed = AuditLog.objects.get(action="admin.organizations.membership.changed")
    assert changed.organization == organization and changed.target_id == str(membership.pk)
    assert changed.changes["fields"]["role"] == ["member", "owner"]
    added = AuditLog.objects.get(action="admin.organizations.membership.added")
    assert added.organization == other_organization and added.changes["fields"]["role"] == "admin"

    response = admin.post(
        reverse("admin:accounts_user_change", args=[member.pk]),
        {
            "email": member.email,
            "full_name": "",
            "is_active": "on",
            "date_joined_0": member.date_joined.strftime("%Y-%m-%d"),
            "date_joined_1": member.date_joined.strftime("%H:%M:%S"),
            "memberships-TOTAL_FORMS": "2",
            "memberships-INITIAL_FORMS": "2",
            **{
                f"memberships-{index}-{name}": value
                for index, row in enumerate(Membership.objects.filter(user=member).order_by("pk"))
                for name, value in (
                    ("id", row.pk),
                    ("user", member.pk),
                    ("organization", row.organization_id),
                    ("role", row.role),
                )
            },
            "memberships-1-DELETE": "on",
        },
    )
    assert response.status_code == 302
    removed = AuditLog.objects.get(action="admin.organizations.membership.deleted")
    assert removed.organization == other_organization and removed.changes["fields"]["role"] == "admin"
    assert not Membership.objects.filter(user=member, organization=other_organization).exists()
    assert audit_verify_chain().ok

    # The tenant sees it in its own audit log.
    admin.force_login(owner)
    assert (
        "admin.organizations.membership.changed"
        in admin.get(reverse("dashboard:audit", args=["acme"])).content.decode()
    )


def test_staff_who_may_change_users_cannot_grant_privileges_or_touch_superusers(client, db):
    from django.contrib.auth.models import Group, Permission

    superuser = get_user_model().objects.create_superuser("root@hookline.example", "root horse battery")
    codenames = ["view_user", "change_user", "delete_user", "view_group", "change_group"]
    operator = staff_account("helpdesk@hookline.example", *codenames)
    client.force_login(operator)

    own_url = reverse("admin:accounts_user_change", args=[operator.pk])
    page = client.get(own_url)
    assert page.status_code == 200
    assert 'name="is_superuser"' not in page.content.decode() and 'name="user_permissions"' not in page.content.decode()
    client.post(
        own_url,
        {
            "email": operator.email,
            "full_name": "Help desk",
            "is_active": "on",
            "is_staff": "on",
            "is_superuser": "on",
            "user_permissions": [p.pk for p in Permission.objects.all()],
            "last_login_0": "",
            "last_login_1": "",
            "date_joined_0": "2026-12-01",
            "date_joined_1": "00:00:00",
            "memberships-TOTAL_FORMS": "0",
            "memberships-INITIAL_FORMS": "0",
        },
    )
    operator.refresh_from_db()
    assert not operator.is_superuser and operator.user_permissions.count() == len(codenames)

    # A superuser's account is read-only to them: no password reset, no deactivation, no deletion.
    assert client.get(reverse("admin:auth_user_password_change", args=[superuser.pk])).status_code in (403, 404)
    client.post(reverse("admin:accounts_user_change", args=[superuser.pk]), {"email": "mine@evil.example"})
    assert client.post(reverse("admin:accounts_user_delete", args=[superuser.pk]), {"post": "yes"}).status_code == 403
    superuser.refresh_from_db()
    assert superuser.email == "root@hookline.example" and superuser.is_active

    # Nor another staff account: its email is its sign-in.
    colleague = staff_account("ops@hookline.example")
    client.post(reverse("admin:accounts_user_change", args=[colleague.pk]), {"email": "mine@evil.example"})
    assert client.get(reverse("admin:auth_user_password_change", args=[colleague.pk])).status_code in (403, 404)
    colleague.refresh_from_db()
    assert colleague.email == "ops@hookline.example"
    tenant = get_user_model().objects.create_user("tenant@acme.example", "tenant horse battery")
    assert client.get(reverse("admin:accounts_user_change", args=[tenant.pk])).status_code == 200  # their job

    # Groups carry permissions: only superusers change them.
    group = Group.objects.create(name="helpdesk")
    operator.groups.add(group)
    client.post(reverse("admin:auth_group_change", args=[group.pk]), {"name": "helpdesk", "permissions": [1, 2, 3]})
    assert group.permissions.count() == 0


def user_form(user, **changes) -> dict:
    """The user change form as the admin page posts it, with the user's memberships unchanged."""
    memberships = list(Membership.objects.filter(user=user).order_by("pk"))
    form = {
        "email": user.email,
        "full_name": user.full_name,
        "is_active": "on",
        "date_joined_0": user.date_joined.strftime("%Y-%m-%d"),
        "date_joined_1": user.date_joined.strftime("%H:%M:%S"),
        "memberships-TOTAL_FORMS": str(len(memberships)),
        "memberships-INITIAL_FORMS": str(len(memberships)),
    }
    for index, row in enumerate(memberships):
        form.update(
            {
                f"memberships-{index}-id": row.pk,
                f"memberships-{index}-user": user.pk,
                f"memberships-{index}-organization": row.organization_id,
                f"memberships-{index}-role": row.role,
            }
        )
    return {**form, **changes}


def test_staff_who_may_change_users_cannot_change_a_tenants_sign_in_email(client, owner):
    """Sign-in is by a link or code sent to the address: changing it would hand them the account."""
    operator = staff_account("helpdesk@hookline.example", "view_user", "change_user", "add_user")
    client.force_login(operator)
    url = reverse("admin:accounts_user_change", args=[owner.pk])

    page = client.get(url).content.decode()
    assert 'name="email"' not in page and "owner@acme.example" in page  # shown, read-only
    response = client.post(url, user_form(owner, email="mine@evil.example", full_name="Olive Owner"))
    assert response.status_code == 302, response.context["adminform"].form.errors
    owner.refresh_from_db()
    assert owner.email == "owner@acme.example"
    assert owner.full_name == "Olive Owner"  # the rest of their job still works
    changed = AuditLog.objects.get(action="admin.accounts.user.changed", actor_user=operator)
    assert changed.changes["fields"]["full_name"] == ["", "Olive Owner"] and "email" not in changed.changes["fields"]
    assert not AuditLog.objects.filter(action="admin.accounts.user.email_changed").exists()

    # A new account's address is its own: adding users still takes one.
    assert 'name="email"' in client.get(reverse("admin:accounts_user_add")).content.decode()


def test_a_superuser_changes_a_tenants_email_and_it_is_audited_for_the_platform_and_the_tenant(
    admin, superuser, owner, organization, other_organization
):
    Membership.objects.create(user=owner, organization=other_organization, role="member")
    url = reverse("admin:accounts_user_change", args=[owner.pk])
    assert 'name="email"' in admin.get(url).content.decode()

    response = admin.post(url, user_form(owner, email="olive@acme.example"))

    assert response.status_code == 302, response.context["adminform"].form.errors
    owner.refresh_from_db()
    assert owner.email == "olive@acme.example"
    platform_entry = AuditLog.objects.get(action="admin.accounts.user.changed")
    assert platform_entry.actor_user == superuser and platform_entry.target_id == str(owner.pk)
    assert platform_entry.changes["fields"]["email"] == ["owner@acme.example", "olive@acme.example"]
    tenant_entries = AuditLog.objects.filter(action="admin.accounts.user.email_changed").order_by("pk")
    assert [entry.organization for entry in tenant_entries] == [organization, other_organization]
    for entry in tenant_entries:
        assert entry.actor_user == superuser and entry.target_id == str(owner.pk)
        assert entry.changes["fields"]["email"] == ["owner@acme.example", "olive@acme.example"]
    assert audit_verify_chain().ok

    # The organization's own log says so, in words.
    admin.force_login(owner)
    assert "changed the sign-in email of" in admin.get(reverse("dashboard:audit", args=["acme"])).content.decode()


# --- Redis down -----------------------------------------------------------------------------------


@pytest.fixture
def cache_down(settings):
    """The cache is a django_redis cache on a port where nothing listens, with the production timeouts."""
    settings.CACHES = {
        "default": {
            "BACKEND": "django_redis.cache.RedisCache",
            "LOCATION": "redis://127.0.0.1:1/0",
            "KEY_PREFIX": "hookline",
            "OPTIONS": {"SOCKET_CONNECT_TIMEOUT": 0.25, "SOCKET_TIMEOUT": 0.5},
        }
    }


def test_the_admin_index_computes_the_overview_without_the_cache(admin, setup, cache_down, caplog):
    response = admin.get(reverse("admin:index"))
    assert response.status_code == 200
    assert response.context["overview"]["events_24h_total"] == 3
    assert "cache unavailable" in caplog.text


def test_the_audit_log_lists_its_action_filter_without_the_cache(admin, setup, organization, cache_down, caplog):
    audit_record(action="destination.paused", organization=organization, target=setup["destination"])
    response = admin.get(reverse("admin:organizations_auditlog_changelist"))
    assert response.status_code == 200
    assert "destination.paused" in response.content.decode()
    assert "cache unavailable" in caplog.text


def test_event_list_shows_a_red_failure_count_only_for_events_with_failed_deliveries(admin, setup, organization):
    second, _ = make_destination(organization, RECEIVER, sources=[setup["source"]])
    deliver(setup["dead"], second, Delivery.Status.PENDING, attempts=2)  # a second failure of the same event
    html = admin.get(reverse(EVENTS)).content.decode()
    cells = dict(
        re.findall(
            r'<a href="[^"]*/([0-9a-f-]{36})/change/[^"]*">.*?<td class="field-failed_deliveries">(.*?)</td>', html
        )
    )
    assert cells[str(setup["dead"].pk)] == '<strong class="hookline-bad">2 failed</strong>'
    assert cells[str(setup["retrying"].pk)] == '<strong class="hookline-bad">1 failed</strong>'
    assert cells[str(setup["delivered"].pk)] == ""  # healthy: nothing to look at, and no red cross
    assert "icon-no.svg" not in html and "icon-yes.svg" not in html


def test_retrying_deliveries_of_a_paused_destination_says_they_wait_for_the_resume(admin, setup):
    destination = setup["destination"]
    destination.paused_at = timezone.now()
    destination.save(update_fields=["paused_at"])
    dead = Delivery.objects.get(event=setup["dead"])
    response = admin.post(
        reverse("admin:webhooks_delivery_changelist"),
        {"action": "retry_deliveries", "_selected_action": [dead.pk]},
        follow=True,
    )
    shown = [str(message) for message in response.context["messages"]]
    assert shown == [
        f"1 delivery queued for another attempt; it waits until its paused destination is resumed ({destination})."
    ]
    dead.refresh_from_db()
    assert dead.status == Delivery.Status.PENDING
    # Asked about several, the confirmation says it before anything is done.
    both = Delivery.objects.filter(event__in=[setup["dead"], setup["retrying"]])
    Delivery.objects.filter(pk=dead.pk).update(status=Delivery.Status.DEAD)
    page = admin.post(
        reverse("admin:webhooks_delivery_changelist"),
        {"action": "retry_deliveries", "_selected_action": [d.pk for d in both]},
    )
    assert "2 of them belong to paused destinations and wait until those are resumed." in page.content.decode()


def test_retrying_two_deliveries_one_of_them_to_a_paused_destination_speaks_of_one(admin, setup, organization):
    paused, _ = make_destination(organization, RECEIVER, sources=[setup["source"]])
    paused.paused_at = timezone.now()
    paused.save(update_fields=["paused_at"])
    held = deliver(setup["retrying"], paused, Delivery.Status.DEAD, attempts=2)
    selection = {
        "action": "retry_deliveries",
        "_selected_action": [Delivery.objects.get(event=setup["dead"]).pk, held.pk],
    }
    url = reverse("admin:webhooks_delivery_changelist")
    asked = admin.post(url, selection).content.decode()
    assert (
        "Send 2 failed deliveries again now? 1 of them belongs to a paused destination and waits until it is " in asked
    )
    done = admin.post(url, {**selection, "confirm": "yes"}, follow=True)
    assert [str(message) for message in done.context["messages"]] == [
        f"2 deliveries queued for another attempt; 1 of them waits until its paused destination is resumed ({paused})."
    ]


def test_retrying_deliveries_of_active_destinations_says_nothing_of_pauses(admin, setup):
    dead = Delivery.objects.get(event=setup["dead"])
    response = admin.post(
        reverse("admin:webhooks_delivery_changelist"),
        {"action": "retry_deliveries", "_selected_action": [dead.pk]},
        follow=True,
    )
    assert [str(message) for message in response.context["messages"]] == ["1 delivery queued for another attempt."]


def test_retrying_a_suspended_organizations_deliveries_says_they_wait_until_it_is_active_again(admin, setup):
    # An operator suspends a tenant, then retries its dead deliveries: "queued" alone read as "on
    # their way", and nothing was sent until the tenant was reactivated.
    organization = setup["destination"].organization
    Organization.objects.filter(pk=organization.pk).update(is_active=False)
    url = reverse("admin:webhooks_delivery_changelist")
    both = [d.pk for d in Delivery.objects.filter(event__in=[setup["dead"], setup["retrying"]])]
    asked = admin.post(url, {"action": "retry_deliveries", "_selected_action": both}).content.decode()
    assert "2 of them belong to suspended organizations and wait until those are active again." in asked
    done = admin.post(url, {"action": "retry_deliveries", "_selected_action": both, "confirm": "yes"}, follow=True)
    assert [str(message) for message in done.context["messages"]] == [
        "2 deliveries queued for another attempt; 2 of them wait until their suspended organization is active "
        f"again ({organization.name})."
    ]
    page = admin.get(reverse("admin:webhooks_destination_change", args=[setup["destination"].pk])).content.decode()
    assert "<strong>Sending</strong>" not in page
    assert "its organization is suspended; its deliveries wait until it is active again" in page


def test_bulk_retrying_a_suspended_organizations_destination_says_its_deliveries_wait(admin, setup):
    destination = setup["destination"]
    Organization.objects.filter(pk=destination.organization_id).update(is_active=False)
    url = reverse("admin:webhooks_destination_changelist")
    selection = {"action": "retry_dead_deliveries", "_selected_action": [destination.pk]}
    asked = admin.post(url, selection).content.decode()
    assert f"{destination.organization.name} · {destination.name}: 1 dead (organization suspended)" in asked
    done = admin.post(url, {**selection, "confirm": "yes"}, follow=True)
    shown = [str(message) for message in done.context["messages"]]
    assert shown[1] == (
        "Their organization is suspended, so their deliveries are queued but sent only once it is active again: "
        f"{destination.organization.name} · {destination}."
    )


def test_an_organization_being_deleted_gets_no_retries(admin, setup, superuser):
    organization = setup["destination"].organization
    Organization.objects.filter(pk=organization.pk).update(is_active=False, deletion_requested_at=timezone.now())
    dead = Delivery.objects.get(event=setup["dead"])
    response = admin.post(
        reverse("admin:webhooks_delivery_changelist"),
        {"action": "retry_deliveries", "_selected_action": [dead.pk]},
        follow=True,
    )
    assert [str(message) for message in response.context["messages"]] == [
        f"Not retried: {dead.pk}: its organization is being deleted: nothing more is sent"
    ]
    dead.refresh_from_db()
    assert dead.status == Delivery.Status.DEAD
    admin.post(
        reverse("admin:webhooks_destination_changelist"),
        {"action": "retry_dead_deliveries", "confirm": "yes", "_selected_action": [setup["destination"].pk]},
    )
    assert not BulkRetry.objects.exists()


def test_the_retry_confirmations_do_not_say_an_organization_being_deleted_waits(admin, setup):
    # An organization being deleted is inactive too, but its deliveries are refused, not held: the
    # confirmations said they waited "until it is active again", and then nothing was retried.
    destination = setup["destination"]
    Organization.objects.filter(pk=destination.organization_id).update(
        is_active=False, deletion_requested_at=timezone.now()
    )
    both = [d.pk for d in Delivery.objects.filter(event__in=[setup["dead"], setup["retrying"]])]
    asked = admin.post(
        reverse("admin:webhooks_delivery_changelist"), {"action": "retry_deliveries", "_selected_action": both}
    ).content.decode()
    assert "active again" not in asked
    assert "2 of them belong to organizations being deleted and are not retried." in asked
    asked = admin.post(
        reverse("admin:webhooks_destination_changelist"),
        {"action": "retry_dead_deliveries", "_selected_action": [destination.pk]},
    ).content.decode()
    assert (
        f"{destination.organization.name} · {destination.name}: 1 dead (organization being deleted: not retried)"
        in (asked)
    )
    assert "(organization suspended)" not in asked


# --- An operator answering a tenant: find a webhook by any id or URL, see why it failed, act on it
# from its own page; lists whose queries stay bounded on large tables.


def event_page(event) -> str:
    return reverse("admin:webhooks_webhookevent_change", args=[event.pk])


def statements_on(queries, table: str) -> list[str]:
    return [query["sql"] for query in queries if f'FROM "{table}"' in query["sql"]]


# --- Finding it --------------------------------------------------------------------------------


def test_searching_events_by_an_id_filters_on_the_event_row_alone(admin, setup):
    """The organization's slug and name are looked up first: inside the OR they made PostgreSQL walk
    every event and test each one against the organization it joined."""
    with CaptureQueriesContext(connection) as queries:
        found = listed(admin.get(reverse(EVENTS), {"q": "evt_dead"}))
    assert found == [setup["dead"]]
    on_events = statements_on(queries, "webhooks_webhookevent")
    assert on_events
    for sql in on_events:
        assert '"organizations_organization"."slug" =' not in sql
        assert 'UPPER("organizations_organization"."name")' not in sql


def test_searching_events_by_an_organization_still_lists_its_events(admin, setup, organization):
    with CaptureQueriesContext(connection) as queries:
        found = listed(admin.get(reverse(EVENTS), {"q": "ACME"}))  # the name, in any case
    assert set(found) == {setup["dead"], setup["retrying"]}
    assert any(f'"organization_id" IN ({organization.pk})' in sql for sql in [q["sql"] for q in queries])
    assert set(listed(admin.get(reverse(EVENTS), {"q": "globex"}))) == {setup["delivered"]}


def test_the_capped_count_reads_only_event_ids(admin, setup):
    """The per-row count of failed deliveries is for the rows shown, not for every counted row."""
    with CaptureQueriesContext(connection) as queries:
        listed(admin.get(reverse(EVENTS), {"failed": "yes"}))
    counts = [query["sql"] for query in queries if query["sql"].upper().startswith("SELECT COUNT(")]
    assert counts
    for sql in counts:
        counted = sql.split(" WHERE ", 1)[0]
        assert "webhooks_delivery" not in counted  # the filter's EXISTS may name it; the selected columns not
        assert "ORDER BY" not in sql


def test_the_attempt_list_pages_newest_first_without_joining_deliveries(admin, setup):
    newest = attempt(Delivery.objects.get(event=setup["dead"]), 2, 500, "boom again")
    with CaptureQueriesContext(connection) as queries:
        rows = listed(admin.get(reverse("admin:webhooks_deliveryattempt_changelist")))
    assert rows[0] == newest
    for sql in statements_on(queries, "webhooks_deliveryattempt"):
        assert 'JOIN "webhooks_delivery"' not in sql


def test_a_rejected_request_shows_its_reason_in_the_event_list(admin, setup):
    rejected = WebhookEvent.objects.create(
        organization=setup["dead"].organization,
        source=setup["dead"].source,
        status=WebhookEvent.Status.REJECTED,
        claimed_event_id="evt_forged",
        rejection_code="no_matching_secret",
        rejection_detail="the v1 signature does not match",
        body=b"{}",
    )
    response = admin.get(reverse(EVENTS), {"status__exact": "rejected"})
    assert listed(response) == [rejected]
    html = response.content.decode()
    assert "(no_matching_secret)" in html and 'title="the v1 signature does not match"' in html


def test_the_event_page_names_the_webhook_id_each_destination_received(admin, setup):
    replay = Delivery.objects.create(
        organization=setup["dead"].organization, event=setup["dead"], destination=setup["destination"], is_replay=True
    )
    html = admin.get(event_page(setup["dead"])).content.decode()
    # A retry keeps the event's id; a replay has its own, which its receiver saw.
    assert f'<code class="hookline-webhook-id">{setup["dead"].pk}</code>' in html
    assert f'<code class="hookline-webhook-id">{replay.pk}</code>' in html


def test_deliveries_are_found_by_their_destination_url(admin, setup):
    theirs = setup["their_destination"]
    Destination.objects.filter(pk=theirs.pk).update(url="http://127.0.0.1:9/globex")
    url = reverse("admin:webhooks_delivery_changelist")
    ours = set(Delivery.objects.filter(destination=setup["destination"]))
    assert len(ours) == 2
    assert set(listed(admin.get(url, {"q": f"  {setup['destination'].url} "}))) == ours
    assert set(listed(admin.get(url, {"q": "http://127.0.0.1:9/globex"}))) == set(theirs.deliveries.all())
    assert listed(admin.get(url, {"q": "https://nowhere.example/hooks"})) == []


def test_a_destination_page_links_to_its_deliveries(admin, setup):
    destination = setup["destination"]
    html = admin.get(reverse("admin:webhooks_destination_change", args=[destination.pk])).content.decode()
    deliveries = reverse("admin:webhooks_delivery_changelist")
    assert f'href="{deliveries}?destination={destination.pk}&amp;status__exact=dead"' in html
    dead = listed(admin.get(deliveries, {"destination": destination.pk, "status__exact": "dead"}))
    assert dead == [Delivery.objects.get(event=setup["dead"])]


# --- Acting from an event's page ----------------------------------------------------------------


def test_retrying_from_an_event_page_comes_back_to_it(admin, setup):
    event = setup["dead"]
    response = admin.post(
        reverse(EVENTS),
        {"action": "retry_failed_deliveries", "_selected_action": [event.pk], "return_to_object": event.pk},
    )
    assert response.status_code == 302 and response["Location"] == event_page(event)
    assert Delivery.objects.get(event=event).status == Delivery.Status.PENDING
    shown = admin.get(response["Location"])
    assert [str(message) for message in shown.context["messages"]] == ["1 delivery queued for another attempt."]


def test_replaying_from_an_event_page_asks_then_comes_back_to_it(admin, setup):
    event = setup["dead"]
    start = {"action": "replay_to_destinations", "_selected_action": [event.pk], "return_to_object": event.pk}
    asked = admin.post(reverse(EVENTS), start)
    html = asked.content.decode()
    assert asked.status_code == 200
    assert f'<input type="hidden" name="return_to_object" value="{event.pk}">' in html
    assert f'href="{event_page(event)}" class="button cancel-link"' in html  # "No, take me back"
    done = admin.post(reverse(EVENTS), {**start, "confirm": "yes", "choice": [setup["destination"].pk]})
    assert done.status_code == 302 and done["Location"] == event_page(event)
    assert Delivery.objects.filter(event=event, is_replay=True).count() == 1


def test_an_action_on_other_rows_than_the_page_it_names_goes_back_to_the_list(admin, setup):
    # return_to_object is honoured only for the one event selected: a list action stays on the list.
    response = admin.post(
        reverse(EVENTS) + "?failed=yes",
        {
            "action": "retry_failed_deliveries",
            "_selected_action": [setup["dead"].pk],
            "return_to_object": setup["retrying"].pk,
        },
    )
    assert response.status_code == 302 and response["Location"] == reverse(EVENTS) + "?failed=yes"


# --- A destination's dead letters, in bulk ------------------------------------------------------


def test_retrying_every_dead_delivery_of_a_destination_starts_a_bulk_retry(admin, setup, superuser):
    destination = setup["destination"]
    url = reverse("admin:webhooks_destination_changelist")
    selection = {"action": "retry_dead_deliveries", "confirm": "yes", "_selected_action": [destination.pk]}
    response = admin.post(url, selection, follow=True)
    job = BulkRetry.objects.get()
    assert job.organization == destination.organization and job.filters == {"destination": destination.pk}
    assert job.total == 1 and job.requested_by == superuser
    shown = [str(message) for message in response.context["messages"]]
    assert shown == [f"Bulk retry started for {destination.organization.name} · {destination} (1 dead delivery)."]
    assert AuditLog.objects.filter(action="deliveries.bulk_retry_requested", actor_user_id=superuser.pk).exists()
    # One job at a time per destination: a second request is refused with the reason.
    again = admin.post(url, selection, follow=True)
    assert BulkRetry.objects.count() == 1
    assert "already queued" in " ".join(str(message) for message in again.context["messages"])


def test_a_bulk_retry_started_from_the_admin_says_how_many_it_leaves_out(admin, setup, monkeypatch):
    monkeypatch.setattr(tasks.delete_source, "apply_async", lambda *a, **k: None)
    destination = setup["destination"]
    doomed = make_source(destination.organization, name="Old live")
    deliver(make_event(doomed, "evt_doomed", "invoice.paid"), destination, Delivery.Status.DEAD, attempts=1)
    source_request_deletion(source=doomed)
    response = admin.post(
        reverse("admin:webhooks_destination_changelist"),
        {"action": "retry_dead_deliveries", "confirm": "yes", "_selected_action": [destination.pk]},
        follow=True,
    )
    assert (BulkRetry.objects.get().total, BulkRetry.objects.get().left_out) == (2, 1)
    shown = [str(message) for message in response.context["messages"]]
    assert shown == [
        f"Bulk retry started for {destination.organization.name} · {destination}"
        " (1 dead delivery, 1 left out: their source is being deleted)."
    ]


def test_a_destination_without_dead_deliveries_starts_no_bulk_retry(admin, setup):
    response = admin.post(
        reverse("admin:webhooks_destination_changelist"),
        {"action": "retry_dead_deliveries", "confirm": "yes", "_selected_action": [setup["their_destination"].pk]},
        follow=True,
    )
    assert not BulkRetry.objects.exists()
    assert "nothing to retry" in " ".join(str(message) for message in response.context["messages"])


# --- Creating a source in the admin -------------------------------------------------------------

SOURCES = "admin:webhooks_source_changelist"


def add_source(admin, organization, provider, name, secret="", options="{}"):
    return admin.post(
        reverse("admin:webhooks_source_add"),
        {"organization": organization.pk, "provider": provider, "name": name, "options": options, "secret": secret},
    )


def test_a_source_added_in_the_admin_with_the_providers_secret_verifies_its_webhooks(admin, organization, client):
    response = add_source(admin, organization, "stripe", "Billing", secret=STRIPE_SECRET)
    assert response.status_code == 302 and response["Location"] == reverse(SOURCES)
    source = Source.objects.get(name="Billing")
    assert source.organization == organization and source.provider == "stripe" and source.secret == STRIPE_SECRET
    # Created by the service: its entry and the admin's, neither with the secret.
    entries = AuditLog.objects.filter(target_type="webhooks.Source", target_id=str(source.pk)).order_by("id")
    assert [entry.action for entry in entries] == ["source.created", "admin.webhooks.source.added"]
    assert all(STRIPE_SECRET not in str(entry.changes) for entry in entries)
    # The ingest URL takes a webhook signed with that secret by Stripe's own package.
    body = '{"id": "evt_admin_made", "object": "event", "type": "invoice.paid"}'
    from webhooks.tests.signing import post_stripe

    assert post_stripe(client, source, body, STRIPE_SECRET).status_code == 200
    assert WebhookEvent.objects.get(source=source).provider_event_id == "evt_admin_made"


def test_a_source_whose_secret_hookline_issues_shows_it_once_on_its_own_page(admin, organization):
    response = add_source(admin, organization, "shared_token", "Internal")
    source = Source.objects.get(name="Internal")
    assert source.secret and response.status_code == 302 and source.secret not in response.content.decode()
    shown = admin.get(response["Location"])
    assert source.secret in shown.content.decode() and "no-store" in shown["Cache-Control"]
    assert source.secret not in admin.get(response["Location"], follow=True).content.decode()


def test_a_new_source_secret_shown_in_the_admin_comes_with_the_ingest_url_the_provider_asks_for_with_it(
    admin, organization
):
    # GitHub's form asks for the Payload URL and the Secret together: the admin's one look showed the
    # secret alone (a comment said "with the source's ingest URL"), so the operator had to look it up.
    added = add_source(admin, organization, "github", "GitHub org")
    source = Source.objects.get(name="GitHub org")
    shown = admin.get(added["Location"]).content.decode()
    assert source.secret in shown and ingest_url(source) in shown
    other = make_source(organization, name="Other", provider="github", secret="an-old-github-secret-1234")
    rotated = admin.post(reverse(SOURCES), {"action": "rotate_secret", "_selected_action": [source.pk, other.pk]})
    shown = admin.get(rotated["Location"]).content.decode()
    for each in Source.objects.filter(pk__in=[source.pk, other.pk]):
        assert each.secret in shown and ingest_url(each) in shown
    # A destination has no ingest URL: its secret stands alone, as before.
    destination, _ = make_destination(organization, "http://127.0.0.1:9/hooks", sources=[source])
    rotated = admin.post(
        reverse("admin:webhooks_destination_changelist"),
        {"action": "rotate_secret", "_selected_action": [destination.pk]},
    )
    destination.refresh_from_db()
    shown = admin.get(rotated["Location"]).content.decode()
    assert destination.secret in shown and "its ingest URL" not in shown


def test_a_source_whose_provider_shows_the_secret_later_is_added_without_one_and_says_so(admin, organization):
    response = add_source(admin, organization, "stripe", "Later")
    assert response.status_code == 302
    source = Source.objects.get(name="Later")
    assert source.secret == ""
    shown = [str(message) for message in admin.get(response["Location"]).context["messages"]]
    assert any("refuses every request until its signing secret is set" in message for message in shown)


def test_the_source_list_says_a_source_waits_for_its_secret_rather_than_that_it_receives(admin, organization):
    # Every request to it is refused: "receiving" would send the operator looking elsewhere.
    add_source(admin, organization, "stripe", "Later")
    make_source(organization, name="Live")
    listing = admin.get(reverse("admin:webhooks_source_changelist")).content.decode()
    (later,) = [row for row in listing.split("<tr")[1:] if ">Later</a>" in row]
    (live,) = [row for row in listing.split("<tr")[1:] if ">Live</a>" in row]
    assert '<td class="field-state">waiting for its secret</td>' in later
    assert '<td class="field-state">receiving</td>' in live


def test_a_source_secret_or_options_its_provider_refuses_add_nothing(admin, organization):
    refused = add_source(admin, organization, "standard_webhooks", "Svix", secret="not-a-whsec-secret")
    assert refused.status_code == 200 and refused.context["adminform"].form.errors["secret"]
    bad_options = add_source(admin, organization, "generic_hmac", "Hmac", options='{"algorithm": "md0"}')
    assert bad_options.status_code == 200 and bad_options.context["adminform"].form.errors["options"]
    assert not Source.objects.exists()
    assert "not-a-whsec-secret" not in refused.content.decode()


def test_staff_without_the_add_permission_cannot_add_a_source(client, organization):
    from django.contrib.auth.models import Permission

    staff = get_user_model().objects.create_user("support@hookline.example", "a long password 1", is_staff=True)
    staff.user_permissions.add(Permission.objects.get(codename="view_source"))
    client.force_login(staff)
    assert client.get(reverse("admin:webhooks_source_add")).status_code == 403
    assert add_source(client, organization, "shared_token", "Sneaky").status_code == 403
    assert not Source.objects.exists()


# --- Reading the audit log ----------------------------------------------------------------------


def test_the_audit_log_shows_before_and_after_and_finds_an_actor_by_email(admin, organization, superuser, owner):
    url = reverse("admin:organizations_organization_change", args=[organization.pk])
    assert admin.post(url, organization_form(organization, plan="business", retention_days=14)).status_code == 302
    audit = reverse("admin:organizations_auditlog_changelist")
    listing = admin.get(audit, {"action": "admin.organizations.organization.changed"})
    html = listing.content.decode()
    assert "plan: free → business" in html and "retention_days: 30 → 14" in html
    entry = AuditLog.objects.get(action="admin.organizations.organization.changed")
    detail = admin.get(reverse("admin:organizations_auditlog_change", args=[entry.pk])).content.decode()
    assert "<li><code>plan: free → business</code></li>" in detail
    # Who did it, by address (any case): the superuser's entries, not the tenant owner's.
    found = listed(admin.get(audit, {"q": superuser.email.upper()}))
    assert entry in found and all(item.actor_user_id == superuser.pk for item in found)
    audit_record(action="organization.updated", organization=organization, actor=owner, changes={})
    theirs = listed(admin.get(audit, {"q": owner.email}))
    assert theirs and all(item.actor_label == owner.email for item in theirs)


def test_audit_change_lines_keep_secrets_masked_and_long_values_short():
    from organizations.admin import change_lines

    lines = change_lines(
        {"fields": {"secret": "********", "name": ["a", "b"]}, "summary": [{"changed": {}}], "notes": "x" * 200}
    )
    assert lines[:2] == ["secret: ********", "name: a → b"]
    assert lines[2].startswith("notes: xxx") and lines[2].endswith("…") and len(lines[2]) < 100


def test_a_dead_delivery_is_retried_from_its_own_page_which_names_its_webhook_id(admin, setup):
    dead = Delivery.objects.get(event=setup["dead"])
    page = admin.get(reverse("admin:webhooks_delivery_change", args=[dead.pk])).content.decode()
    assert 'id="retry-delivery"' in page and str(setup["dead"].pk) in page  # the webhook-id: the event's id
    response = admin.post(
        reverse("admin:webhooks_delivery_changelist"),
        {"action": "retry_deliveries", "_selected_action": [dead.pk], "return_to_object": dead.pk},
    )
    assert response.status_code == 302
    assert response["Location"] == reverse("admin:webhooks_delivery_change", args=[dead.pk])
    dead.refresh_from_db()
    assert dead.status == Delivery.Status.PENDING
    # Nothing to retry on a delivered one: no button.
    delivered = Delivery.objects.get(event=setup["delivered"])
    page = admin.get(reverse("admin:webhooks_delivery_change", args=[delivered.pk])).content.decode()
    assert 'id="retry-delivery"' not in page


def test_deliveries_are_found_by_any_id_the_event_search_takes(admin, setup):
    url = reverse("admin:webhooks_delivery_changelist")
    dead = Delivery.objects.get(event=setup["dead"])
    replay = Delivery.objects.create(
        organization=dead.organization, event=setup["dead"], destination=setup["destination"], is_replay=True
    )
    # The provider's id (Stripe's evt_…, a GitHub delivery GUID): every delivery of that event.
    assert set(listed(admin.get(url, {"q": "evt_dead"}))) == {dead, replay}
    assert listed(admin.get(url, {"q": "gh_ok"})) == [Delivery.objects.get(event=setup["delivered"])]
    # A delivery's own id (a replay's webhook-id): that delivery alone.
    assert listed(admin.get(url, {"q": str(replay.pk)})) == [replay]
    with CaptureQueriesContext(connection) as queries:
        listed(admin.get(url, {"q": "evt_dead"}))
    for sql in statements_on(queries, "webhooks_delivery"):
        assert "webhooks_webhookevent" not in sql.split(" FROM ", 1)[1]  # ids first, no join or subquery


# --- The audit entries of admin actions: whose rows, and what happened ----------------------------

AUDIT_LOG = "admin:organizations_auditlog_changelist"


def action_entries(model: str, action: str) -> dict:
    """The entries of one admin action, by organization id (None: written without one)."""
    entries = AuditLog.objects.filter(action=f"admin.webhooks.{model}.action.{action}")
    by_organization = {entry.organization_id: entry for entry in entries}
    assert len(by_organization) == entries.count(), "one entry per organization"
    return by_organization


def audit_log_verifies() -> bool:
    from io import StringIO

    out = StringIO()
    call_command("verify_audit_log", stdout=out)  # raises CommandError when the chain is broken
    return audit_verify_chain().ok


def test_an_action_on_two_organizations_events_writes_an_entry_in_each_with_its_own_events(
    admin, setup, organization, other_organization
):
    dead, delivered = setup["dead"], setup["delivered"]  # Acme's has a dead delivery; Globex's none
    dead_delivery = Delivery.objects.get(event=dead)
    response = admin.post(
        reverse(EVENTS), {"action": "retry_failed_deliveries", "_selected_action": [dead.pk, delivered.pk]}
    )
    assert response.status_code == 302
    entries = action_entries("webhookevent", "retry_failed_deliveries")
    assert set(entries) == {organization.pk, other_organization.pk}
    acme, globex = entries[organization.pk], entries[other_organization.pk]
    assert acme.organization_label == "Acme" and globex.organization_label == "Globex"
    assert acme.changes["selected"] == [str(dead.pk)] and acme.changes["selected_count"] == 1
    assert acme.changes["outcome"] == "done" and acme.changes["done"] == [f"delivery {dead_delivery.pk}"]
    # Globex's event had nothing to retry: its entry says so instead of claiming a retry.
    assert globex.changes["selected"] == [str(delivered.pk)]
    assert globex.changes["outcome"] == "nothing to do"
    assert globex.changes["reason"] == "no failed deliveries in the selected events"
    assert "done" not in globex.changes
    # Each organization's audit log (the admin's filter) shows its own entry, and only that one.
    listing = listed(admin.get(reverse(AUDIT_LOG), {"organization": other_organization.pk}))
    assert globex in listing and acme not in listing
    assert audit_log_verifies()


def test_a_retry_with_nothing_to_retry_is_audited_as_nothing_to_do(admin, setup, other_organization):
    admin.post(reverse(EVENTS), {"action": "retry_failed_deliveries", "_selected_action": [setup["delivered"].pk]})
    (entry,) = action_entries("webhookevent", "retry_failed_deliveries").values()
    assert entry.organization_id == other_organization.pk
    assert entry.changes["outcome"] == "nothing to do" and "done" not in entry.changes


def test_rotating_a_stripe_source_is_audited_as_refused_with_the_reason(admin, setup, organization, other_organization):
    stripe_source, github_source = setup["source"], setup["their_source"]  # Stripe issues its secret
    response = admin.post(
        reverse(SOURCES), {"action": "rotate_secret", "_selected_action": [stripe_source.pk, github_source.pk]}
    )
    assert response.status_code == 302
    github_source.refresh_from_db()
    stripe_source.refresh_from_db()
    assert stripe_source.secret == STRIPE_SECRET  # not rotated
    entries = action_entries("source", "rotate_secret")
    refused, rotated = entries[organization.pk], entries[other_organization.pk]
    assert refused.changes["outcome"] == "refused" and "done" not in refused.changes
    (refusal,) = refused.changes["refused"]
    assert (
        refusal["item"] == f"source {stripe_source.pk}" and "Stripe gives you the signing secret" in refusal["reason"]
    )
    assert rotated.changes["outcome"] == "done" and rotated.changes["done"] == [f"source {github_source.pk}"]
    # Neither the new secret nor the one Stripe issued is in any entry.
    stored = " ".join(str(entry.changes) for entry in AuditLog.objects.all())
    assert github_source.secret not in stored and STRIPE_SECRET not in stored and "gh-secret-value-123" not in stored
    assert audit_log_verifies()


def test_a_bulk_retry_without_dead_deliveries_is_audited_as_nothing_to_do(
    admin, setup, organization, other_organization
):
    admin.post(
        reverse("admin:webhooks_destination_changelist"),
        {
            "action": "retry_dead_deliveries",
            "confirm": "yes",
            "_selected_action": [setup["destination"].pk, setup["their_destination"].pk],
        },
    )
    job = BulkRetry.objects.get()
    entries = action_entries("destination", "retry_dead_deliveries")
    started, idle = entries[organization.pk], entries[other_organization.pk]
    assert started.changes["outcome"] == "done"
    assert started.changes["done"] == [f"destination {setup['destination'].pk}: bulk retry {job.pk}"]
    assert idle.changes["outcome"] == "nothing to do" and "done" not in idle.changes
    (nothing,) = idle.changes["nothing_to_do"]
    assert nothing == {
        "item": f"destination {setup['their_destination'].pk}",
        "reason": "no delivery matches: there is nothing to retry",
    }
    # A second request while the first job waits is refused, with the reason.
    admin.post(
        reverse("admin:webhooks_destination_changelist"),
        {"action": "retry_dead_deliveries", "confirm": "yes", "_selected_action": [setup["destination"].pk]},
    )
    latest = AuditLog.objects.filter(action="admin.webhooks.destination.action.retry_dead_deliveries").first()
    assert latest.organization_id == organization.pk and latest.changes["outcome"] == "refused"
    assert "already queued" in latest.changes["refused"][0]["reason"]
    assert audit_log_verifies()


def test_an_action_on_all_matching_rows_counts_each_organizations_rows(admin, setup, organization, other_organization):
    admin.post(
        reverse("admin:webhooks_destination_changelist") + "?state=sending",
        {"action": "pause", "select_across": "1", "_selected_action": [setup["destination"].pk]},
    )
    entries = action_entries("destination", "pause")
    assert set(entries) == {organization.pk, other_organization.pk}
    for organization_id, destination in (
        (organization.pk, "destination"),
        (other_organization.pk, "their_destination"),
    ):
        changes = entries[organization_id].changes
        assert changes["select_across"] is True and changes["selected_count"] == 1
        assert changes["filters"] == "state=sending"
        assert changes["outcome"] == "done" and changes["done"] == [f"destination {setup[destination].pk}"]


def test_an_action_on_rows_of_no_organization_is_audited_without_one(admin):
    call_command("install_periodic_tasks")
    task = PeriodicTask.objects.get(name="hookline-retention")
    admin.post(
        reverse("admin:django_celery_beat_periodictask_changelist"),
        {"action": "disable_tasks", "_selected_action": [task.pk]},
    )
    entry = AuditLog.objects.get(action="admin.django_celery_beat.periodictask.action.disable_tasks")
    assert entry.organization_id is None and entry.changes["selected"] == [str(task.pk)]


def test_an_actions_outcome_reads_as_lists_not_as_before_and_after():
    from organizations.admin import change_lines

    lines = change_lines({"outcome": "done", "done": ["delivery a", "delivery b"], "selected": ["1", "2"]})
    assert 'done: ["delivery a", "delivery b"]' in lines and not any("→" in line for line in lines)


def test_a_selection_of_organizations_is_grouped_by_each_organization_itself(rf, organization, other_organization):
    from django.contrib import admin as django_admin

    organization_admin = django_admin.site._registry[Organization]
    request = rf.post("/", {"_selected_action": [organization.pk, other_organization.pk]})
    grouped = organization_admin._selection_by_organization(request, Organization.objects.all(), select_across=False)
    assert grouped == {
        organization.pk: {"selected": [str(organization.pk)], "selected_count": 1},
        other_organization.pk: {"selected": [str(other_organization.pk)], "selected_count": 1},
    }
    across = organization_admin._selection_by_organization(request, Organization.objects.all(), select_across=True)
    assert across == {organization.pk: {"selected_count": 1}, other_organization.pk: {"selected_count": 1}}


@pytest.mark.parametrize(
    "url",
    [
        "/admin/webhooks/webhookevent/?organization=%C2%B2",
        "/admin/webhooks/webhookevent/?source=%C2%B2",
        "/admin/webhooks/source/?organization=%C2%B2",
        "/admin/webhooks/delivery/?destination=%C2%B2",
        "/admin/webhooks/bulkretry/?destination=%C2%B2",
        "/admin/organizations/auditlog/?actor=%C2%B2",
        "/admin/organizations/auditlog/?organization=%C2%B2",
    ],
)
def test_a_filter_id_of_digits_int_refuses_is_no_filter_not_a_500(admin, setup, url):
    # "²" passes str.isdigit(), and int() refuses it.
    assert admin.get(url).status_code == 200
