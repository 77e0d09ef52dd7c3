"""Pages that read deliveries, events, attempts, destinations and sources answer while one row's
stored secret cannot be decrypted by this server's keys: they do not need it, so they do not load it."""

import pytest
from django.contrib.auth import get_user_model
from django.test import Client
from django.urls import reverse

from organizations.models import ApiKey
from webhooks.models import Delivery, Destination, Source

from .api_helpers import api_get, make_delivery, make_event, make_key
from .factories import make_destination, make_source
from .test_secret_unreadable_paths import foreign_token, store_raw

pytestmark = pytest.mark.django_db


@pytest.fixture
def admin_client(db):
    staff = Client(raise_request_exception=False)
    staff.force_login(get_user_model().objects.create_superuser("root@hookline.example", "correct horse battery"))
    return staff


@pytest.fixture
def unreadable(organization):
    source = make_source(organization)
    destination, _ = make_destination(
        organization, "http://127.0.0.1:9/hook", sources=[source], custom_headers={"X-Api-Key": "k" * 24}
    )
    event = make_event(source)
    delivery = make_delivery(event, destination, status=Delivery.Status.DEAD, attempts=1)
    for column in ("secret", "previous_secret", "custom_headers"):
        store_raw(Destination, destination.pk, foreign_token(), column)
    for column in ("secret", "previous_secret"):
        store_raw(Source, source.pk, foreign_token(), column)
    return {"source": source, "destination": destination, "event": event, "delivery": delivery}


ADMIN_PAGES = [
    ("admin:webhooks_delivery_changelist", None),
    ("admin:webhooks_delivery_change", "delivery"),
    ("admin:webhooks_deliveryattempt_changelist", None),
    ("admin:webhooks_deliveryattempt_change", "attempt"),
    ("admin:webhooks_webhookevent_changelist", None),
    ("admin:webhooks_webhookevent_change", "event"),
    ("admin:webhooks_destination_changelist", None),
    ("admin:webhooks_destination_change", "destination"),
    ("admin:webhooks_source_changelist", None),
    ("admin:webhooks_source_change", "source"),
    ("admin:webhooks_bulkretry_changelist", None),
    ("admin:index", None),
]


@pytest.mark.parametrize(("name", "what"), ADMIN_PAGES)
def test_the_admin_pages_answer_while_a_secret_cannot_be_decrypted(admin_client, unreadable, name, what):
    # The deliveries list (and every list or page naming a destination or a source, or offering them
    # as a filter) loaded the secrets with the rows: one no key decrypts made it 503, the very list an
    # operator opens to see what is wrong.
    if what == "attempt":
        args = [unreadable["delivery"].attempts.get().pk]
    else:
        args = [unreadable[what].pk] if what else []
    response = admin_client.get(reverse(name, args=args))
    assert response.status_code == 200, response.content[:400]
    if name.endswith("_changelist") and "bulkretry" not in name:
        assert response.context["cl"].result_count == 1


def test_the_admin_lists_filtered_by_the_destination_or_source_answer_too(admin_client, unreadable):
    destination, source = unreadable["destination"], unreadable["source"]
    deliveries = admin_client.get(reverse("admin:webhooks_delivery_changelist"), {"destination": destination.pk})
    assert deliveries.status_code == 200 and list(deliveries.context["cl"].result_list) == [unreadable["delivery"]]
    events = admin_client.get(reverse("admin:webhooks_webhookevent_changelist"), {"source": source.pk})
    assert events.status_code == 200 and [event.pk for event in events.context["cl"].result_list] == [
        unreadable["event"].pk
    ]


def test_the_source_admin_page_says_the_previous_secret_cannot_be_decrypted(admin_client, unreadable):
    # The one field of the page that reads a secret (the rotation's overlap) says it cannot, rather than
    # the page answering 503.
    page = admin_client.get(reverse("admin:webhooks_source_change", args=[unreadable["source"].pk]))
    assert page.status_code == 200
    assert (
        "the stored secret cannot be decrypted with this server&#x27;s FIELD_ENCRYPTION_KEYS" in page.content.decode()
    )


@pytest.mark.parametrize(
    ("name", "what"),
    [
        ("overview", None),
        ("events", None),
        ("event_detail", "event"),
        ("sources", None),
        ("source_rejected", "source"),
        ("destinations", None),
        ("destination_bulk_retries", "destination"),
    ],
)
def test_the_dashboard_lists_answer_while_a_secret_cannot_be_decrypted(
    client, owner, organization, unreadable, name, what
):
    # The sources' and destinations' lists (and the polled bulk retries of a destination's page)
    # loaded every row's secrets, which they never show: one no key decrypts made them 503.
    client.force_login(owner)
    client.raise_request_exception = False
    args = [organization.slug] + ([unreadable[what].pk] if what else [])
    response = client.get(reverse(f"dashboard:{name}", args=args))
    assert response.status_code == 200, response.content[:400]
    if name in ("sources", "destinations"):
        assert unreadable["source" if name == "sources" else "destination"].name in response.content.decode()


@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/events",
        "/api/v1/events/{event}",
        "/api/v1/deliveries",
        "/api/v1/deliveries/{delivery}",
        "/api/v1/sources",
        "/api/v1/sources/{source}",
        "/api/v1/destinations",
        "/api/v1/destinations/{destination}",
    ],
)
def test_the_api_reads_answer_while_a_secret_cannot_be_decrypted(client, organization, unreadable, path):
    # Already so (they defer the secrets): kept here beside the pages, so that none of them regresses.
    client.raise_request_exception = False
    _, key = make_key(organization, access=ApiKey.Access.READ_ONLY)
    response = api_get(client, key, path.format(**{name: row.pk for name, row in unreadable.items()}))
    assert response.status_code == 200, response.content[:400]
