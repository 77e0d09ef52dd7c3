"""Small points left open: the admin's times to the second and in UTC, GitHub's delivery header as
GitHub spells it, bounded source secrets, ids in ASCII digits only, the event page announcing an
event with no deliveries."""

import html
import io
import json
import re
from datetime import UTC, datetime

import pytest
from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command
from django.test import Client
from django.urls import reverse

from organizations.models import ApiKey, AuditLog, Organization
from webhooks.models import Delivery, DeliveryAttempt, Destination, Source, WebhookEvent
from webhooks.services import processing
from webhooks.services.delivery import build_request_headers
from webhooks.services.destinations import DestinationError, destination_rotate_secret

from .api_helpers import api_get, make_delivery, make_event, make_key
from .dashboard_helpers import ingest_stripe
from .factories import make_destination, make_source

pytestmark = pytest.mark.django_db

RECEIVER = "http://127.0.0.1:9/hooks"
MOMENT = datetime(2026, 3, 4, 20, 42, 17, tzinfo=UTC)
SHOWN = "2026-03-04 20:42:17 UTC"


@pytest.fixture
def staff_client(db):
    staff = Client()
    staff.force_login(get_user_model().objects.create_superuser("root@hookline.example", "correct horse battery"))
    return staff


# --- 1. The admin's times: to the second, and in UTC, on lists and change pages alike -----------------


def test_every_admin_list_and_change_page_gives_times_to_the_second_in_utc(organization, owner, staff_client):
    source = make_source(organization)
    destination, _ = make_destination(organization, RECEIVER, sources=[source])
    event = make_event(source, received_at=MOMENT)
    delivery = make_delivery(event, destination)
    attempt = DeliveryAttempt.objects.get(delivery=delivery)
    key, _ = make_key(organization)
    Source.objects.filter(pk=source.pk).update(created_at=MOMENT)
    Destination.objects.filter(pk=destination.pk).update(created_at=MOMENT, paused_at=MOMENT)
    Delivery.objects.filter(pk=delivery.pk).update(created_at=MOMENT, next_attempt_at=MOMENT)
    DeliveryAttempt.objects.filter(pk=attempt.pk).update(started_at=MOMENT)
    Organization.objects.filter(pk=organization.pk).update(created_at=MOMENT)
    ApiKey.objects.filter(pk=key.pk).update(created_at=MOMENT)
    get_user_model().objects.filter(pk=owner.pk).update(date_joined=MOMENT)

    pages = {
        "webhooks_webhookevent": event.pk,
        "webhooks_delivery": delivery.pk,
        "webhooks_deliveryattempt": attempt.pk,
        "webhooks_source": source.pk,
        "webhooks_destination": destination.pk,
        "organizations_organization": organization.pk,
        "organizations_apikey": key.pk,
        "accounts_user": owner.pk,
    }
    for name, pk in pages.items():
        listed = staff_client.get(reverse(f"admin:{name}_changelist")).content.decode()
        assert SHOWN in listed, name
        # A source's page shows no time; a user's dates are a superuser's to edit, in date and time inputs.
        if name not in ("webhooks_source", "accounts_user"):
            changed = staff_client.get(reverse(f"admin:{name}_change", args=[pk])).content.decode()
            assert SHOWN in changed, name
    # The audit log is append-only (its rows cannot be back-dated): its newest entry, as it was written.
    audit = AuditLog.objects.filter(organization=organization).first()
    written = audit.created_at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    assert written in staff_client.get(reverse("admin:organizations_auditlog_changelist")).content.decode()
    assert written in staff_client.get(reverse("admin:organizations_auditlog_change", args=[audit.pk])).content.decode()


# --- 2. GitHub's headers as GitHub spells them --------------------------------------------------------

GITHUB_DELIVERY = "72d3162e-cc78-11e3-81ab-4c9367dc0958"


def test_githubs_headers_are_stored_shown_and_forwarded_as_github_spells_them(client, organization, owner):
    # GitHub's documented example (secret "It's a Secret to Everybody", payload "Hello, World!"). A WSGI
    # server hands the names over as HTTP_X_GITHUB_DELIVERY: their case is gone before Django sees them.
    source = make_source(organization, provider="github", secret="It's a Secret to Everybody")
    destination, _ = make_destination(organization, RECEIVER, sources=[source])
    response = client.generic(
        "POST",
        f"/in/{source.ingest_token}/",
        "Hello, World!",
        content_type="application/json",
        HTTP_X_HUB_SIGNATURE_256="sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17",
        HTTP_X_GITHUB_EVENT="ping",
        HTTP_X_GITHUB_DELIVERY=GITHUB_DELIVERY,
        HTTP_X_GITHUB_HOOK_ID="292430182",
    )
    assert response.status_code == 200, response.content
    event = WebhookEvent.objects.get(pk=response.json()["id"])
    assert event.headers["X-GitHub-Delivery"] == GITHUB_DELIVERY
    assert event.headers["X-GitHub-Event"] == "ping"
    assert event.headers["X-GitHub-Hook-ID"] == "292430182"
    assert "X-Github-Delivery" not in event.headers

    # An event stored before, with Django's spelling, is shown and sent on with GitHub's too.
    older = make_event(
        source, headers={"X-Github-Delivery": "older-guid", "X-Github-Event": "ping", "Content-Type": "text/plain"}
    )
    client.force_login(owner)
    for shown, guid in ((event, GITHUB_DELIVERY), (older, "older-guid")):
        page = client.get(reverse("dashboard:event_detail", args=[organization.slug, shown.pk])).content.decode()
        assert "X-GitHub-Delivery" in page and "X-GitHub-Event" in page
        assert "X-Github-" not in page
        delivery = Delivery.objects.create(organization=organization, event=shown, destination=destination)
        sent = build_request_headers(delivery, 1700000000)
        assert sent["X-GitHub-Delivery"] == guid
        assert sent["X-GitHub-Event"] == "ping"
        assert not [name for name in sent if name.startswith("X-Github-")]
    _, key = make_key(organization)
    answer = api_get(Client(), key, f"/api/v1/events/{older.pk}")
    assert answer.status_code == 200, answer.content
    assert "X-GitHub-Delivery" in json.dumps(answer.json()) and "X-Github-" not in json.dumps(answer.json())


# --- 3. A source's (or destination's) secret has a length bound -------------------------------------

# A whole file pasted where the secret goes: refused with the reason, never stored nor echoed.
HUGE_SECRET = "whsec_" + "A" * 5000
AT_THE_BOUND = "whsec_" + "B" * (1024 - 6)


def test_a_huge_source_secret_is_refused_with_its_reason_everywhere_one_is_given(client, organization, owner, tmp_path):
    reason = "at most 1,024 are accepted"
    client.force_login(owner)
    page = client.post(
        reverse("dashboard:source_create", args=[organization.slug, "stripe"]),
        {"name": "Pasted a file", "secret": HUGE_SECRET, "option_tolerance": "300"},
    )
    assert page.status_code == 200 and reason in page.content.decode()
    assert HUGE_SECRET not in page.content.decode()

    source = make_source(organization, provider="github", secret="a-github-secret-of-old")
    page = client.post(
        reverse("dashboard:source_rotate", args=[organization.slug, source.pk]),
        {"new_secret": HUGE_SECRET, "overlap_seconds": "3600"},
    )
    assert page.status_code == 200 and reason in page.content.decode()
    assert Source.objects.get(pk=source.pk).secret == "a-github-secret-of-old"

    _, key = make_key(organization)
    api = Client()
    created = api.post(
        "/api/v1/sources",
        {"name": "Pasted a file", "provider": "github", "secret": HUGE_SECRET},
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {key}",
    )
    assert created.status_code == 400 and reason in created.json()["fields"]["secret"][0], created.content
    rotated = api.post(
        f"/api/v1/sources/{source.pk}/rotate_secret",
        {"secret": HUGE_SECRET},
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {key}",
    )
    assert rotated.status_code == 400 and reason in rotated.json()["fields"]["secret"][0], rotated.content
    assert not Source.objects.filter(name="Pasted a file").exists()

    pasted = tmp_path / "secret.txt"
    pasted.write_text(HUGE_SECRET)
    with pytest.raises(CommandError, match=reason):
        call_command(
            *("create_source", "--org", organization.slug, "--provider", "stripe", "--name", "Pasted a file"),
            *("--secret-file", str(pasted)),
            stdout=io.StringIO(),
            stderr=io.StringIO(),
        )
    # The bound itself is allowed: generous for any provider's real secret.
    assert make_source(organization, provider="stripe", secret=AT_THE_BOUND).secret == AT_THE_BOUND


def test_a_huge_destination_secret_is_refused_with_its_reason(organization):
    destination, _ = make_destination(organization, RECEIVER)
    with pytest.raises(DestinationError, match="at most 1,024 are accepted"):
        destination_rotate_secret(destination=destination, new_secret="whsec_" + "QUFB" * 1300)
    good = "whsec_" + "QUFB" * 254  # 1,022 characters, 762 bytes of key
    assert destination_rotate_secret(destination=destination, new_secret=good)[1] == good


# --- 4. Ids are ASCII digits: "٣" or "３" is not an id, anywhere one is read -------------------------

ARABIC_INDIC = str.maketrans("0123456789", "٠١٢٣٤٥٦٧٨٩")
FULLWIDTH = str.maketrans("0123456789", "０１２３４５６７８９")


def test_an_id_in_other_digits_than_ascii_is_not_an_id(client, organization, owner, staff_client):
    source = make_source(organization)
    destination, _ = make_destination(organization, RECEIVER, sources=[source])
    event = make_event(source)
    delivery = make_delivery(event, destination)
    other_event_id = str(event.pk).translate(ARABIC_INDIC)
    other_delivery_id = str(delivery.pk).translate(FULLWIDTH)
    assert other_event_id != str(event.pk)  # a UUID has digits

    _, key = make_key(organization)
    api = Client()
    for path, params, field in (
        ("/api/v1/events", {"source": str(source.pk).translate(ARABIC_INDIC)}, "source"),
        ("/api/v1/events", {"destination": str(destination.pk).translate(FULLWIDTH)}, "destination"),
        ("/api/v1/deliveries", {"destination": str(destination.pk).translate(ARABIC_INDIC)}, "destination"),
        ("/api/v1/deliveries", {"event": other_event_id}, "event"),
    ):
        answer = api_get(api, key, path, **params)
        assert answer.status_code == 400, (params, answer.content)
        assert "is not an id" in answer.json()["fields"][field][0]
    assert api_get(api, key, f"/api/v1/events/{other_event_id}").status_code == 404
    assert api_get(api, key, f"/api/v1/deliveries/{other_delivery_id}").status_code == 404
    assert api_get(api, key, f"/api/v1/events/{event.pk}").status_code == 200  # as written, it is found

    client.force_login(owner)
    events = reverse("dashboard:events", args=[organization.slug])
    for searched in (other_event_id, other_delivery_id):
        page = client.get(events, {"q": searched})
        assert page.status_code == 200 and str(event.pk) not in page.content.decode()
    assert str(event.pk) in client.get(events, {"q": str(event.pk)}).content.decode()
    new_destination = reverse("dashboard:destination_create", args=[organization.slug])
    page = client.get(new_destination, {"source": "²"})  # a digit to isdigit(), not to int()
    assert page.status_code == 200

    for name, searched in (("webhookevent", other_event_id), ("delivery", other_delivery_id)):
        page = staff_client.get(reverse(f"admin:webhooks_{name}_changelist"), {"q": searched})
        assert page.status_code == 200 and f"/{event.pk}/" not in page.content.decode()
        assert f"/{delivery.pk}/change/" not in page.content.decode()
    attempts = staff_client.get(reverse("admin:webhooks_deliveryattempt_changelist"), {"q": other_delivery_id})
    assert attempts.status_code == 200 and f"/{delivery.pk}/change/" not in attempts.content.decode()
    page = staff_client.get(reverse("admin:webhooks_webhookevent_change", args=[other_event_id]))
    assert page.status_code == 302  # "doesn't exist", back to the list


def test_an_event_id_pasted_with_spaces_around_it_opens_its_admin_page(organization, staff_client):
    # parse_event_id takes an id with blanks around it (a pasted one); the admin then looked up the
    # text as given, which the query refused: a 500 instead of the event.
    event = make_event(make_source(organization))
    for pasted in (f" {event.pk}", f"{event.pk} ", f"\t{event.pk}"):
        page = staff_client.get(reverse("admin:webhooks_webhookevent_change", args=[pasted]))
        assert page.status_code == 200, pasted
        assert str(event.pk) in page.content.decode()


# --- 5. The event page says when an event was processed into no delivery at all -------------------------


def _follow(client, shown: str):
    """The event page's poll, as its deliveries section (in the HTML ``shown``) asks for it."""
    url = html.unescape(re.search(r'hx-get="([^"]*follow=page)"', shown).group(1))
    return client.get(url, HTTP_HX_REQUEST="true", HTTP_HX_TARGET="event-deliveries")


def _said(section: str) -> str:
    return re.search(r'<p id="event-deliveries-status" hx-swap-oob="innerHTML">(.*?)</p>', section, re.S).group(1)


@pytest.mark.django_db(transaction=True)
def test_the_event_page_says_when_an_event_is_processed_into_no_delivery(client, organization, owner, monkeypatch):
    monkeypatch.setattr(processing, "schedule_dispatch", lambda slot=0: None)
    client.force_login(owner)
    source = make_source(organization)
    # A destination of the source whose payload filter leaves this event out, for the second case.
    make_destination(
        organization, RECEIVER, sources=[source], payload_filters=[{"path": "note", "op": "equals", "value": "kept"}]
    )
    other = make_source(organization, name="Unsubscribed")

    cases = ((other, "Processed: no destination subscribes to this source for invoice.paid."),)
    cases += ((source, "Processed: not sent to any destination; see why below."),)
    for sent_to, expected in cases:
        event_id = ingest_stripe(client, sent_to, f"evt_nowhere_{sent_to.pk}", note="left out")
        page = client.get(reverse("dashboard:event_detail", args=[organization.slug, event_id])).content.decode()
        assert "Not processed yet" in page and "follow=page" in page
        processing.process_received_events()
        assert WebhookEvent.objects.get(pk=event_id).status == WebhookEvent.Status.PROCESSED
        section = _follow(client, page)
        assert section.status_code == 200
        assert _said(section.content.decode()) == expected
        assert "follow=page" not in section.content.decode()  # nothing more to follow
