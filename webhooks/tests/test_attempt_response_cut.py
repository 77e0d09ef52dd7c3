"""A receiver's answer longer than DELIVERY_RESPONSE_BODY_MAX_BYTES is kept cut, and said to be cut: the
event page's "Response (4096 characters)" of a 200 KB answer read as the receiver's whole answer."""

import pytest
from django.contrib.auth import get_user_model
from django.urls import reverse

from webhooks.models import Delivery, DeliveryAttempt
from webhooks.services import delivery as delivery_service
from webhooks.services import processing
from webhooks.tests.delivering import deliver_now

from .api_helpers import api_get, make_key
from .factories import make_destination, make_source
from .test_delivery import ingest

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def no_dispatch(monkeypatch):
    monkeypatch.setattr(processing, "schedule_dispatch", lambda slot=0: None)
    monkeypatch.setattr(delivery_service, "schedule_dispatch", lambda slot=0: None)


def attempt_answered(client, organization, httpserver, body: str) -> DeliveryAttempt:
    source = make_source(organization)
    make_destination(organization, httpserver.url_for("/hook"), sources=[source])
    httpserver.expect_request("/hook").respond_with_data(body, status=500)
    ingest(client, source)
    processing.process_received_events()
    deliver_now(Delivery.objects.get().pk)
    return DeliveryAttempt.objects.get()


@pytest.mark.parametrize(
    ("answer", "kept", "label", "cut"),
    [
        pytest.param(
            "x" * 5000, "x" * 100, "Response (its first 100 characters: the answer was longer)", True, id="cut"
        ),
        pytest.param("y" * 100, "y" * 100, "Response (100 characters)", False, id="whole"),
    ],
)
def test_the_event_page_and_the_api_say_whether_an_answer_was_cut(
    client, organization, owner, httpserver, settings, answer, kept, label, cut
):
    settings.DELIVERY_RESPONSE_BODY_MAX_BYTES = 100
    attempt = attempt_answered(client, organization, httpserver, answer)

    assert attempt.response_body == kept and attempt.response_truncated is cut

    client.force_login(owner)
    page = client.get(reverse("dashboard:event_detail", args=[organization.slug, attempt.delivery.event_id]))
    assert label in page.content.decode()

    _, key = make_key(organization)
    answer = api_get(client, key, f"/api/v1/deliveries/{attempt.delivery_id}").json()
    assert answer["attempts"][0]["response_truncated"] is cut


def admin_pages(client, attempt) -> list[str]:
    """The admin's event page (its deliveries' attempts), delivery page (its attempts inline) and attempt page."""
    client.force_login(get_user_model().objects.create_superuser("root@hookline.example", "correct horse battery"))
    urls = [
        reverse("admin:webhooks_webhookevent_change", args=[attempt.delivery.event_id]),
        reverse("admin:webhooks_delivery_change", args=[attempt.delivery_id]),
        reverse("admin:webhooks_deliveryattempt_change", args=[attempt.pk]),
    ]
    pages = [client.get(url) for url in urls]
    assert [page.status_code for page in pages] == [200, 200, 200]
    return [page.content.decode() for page in pages]


def test_the_admin_says_an_answer_was_cut_as_the_event_page_does(client, organization, httpserver, settings):
    # Its event page headed every attempt's answer "response (truncated)", cut or whole, and the delivery
    # page showed the kept start as the answer.
    settings.DELIVERY_RESPONSE_BODY_MAX_BYTES = 600
    attempt = attempt_answered(client, organization, httpserver, "x" * 5000)
    assert attempt.response_truncated

    event_page, delivery_page, attempt_page = admin_pages(client, attempt)
    assert "Response (its first 600 characters: the answer was longer; the first 500 shown)" in event_page
    assert "response (truncated)" not in event_page
    for page in (delivery_page, attempt_page):
        assert "Response kept" in page
        assert "its first 600 characters: the answer was longer" in page


def test_the_admin_says_an_answer_kept_whole_is_whole(client, organization, httpserver, settings):
    settings.DELIVERY_RESPONSE_BODY_MAX_BYTES = 600
    attempt = attempt_answered(client, organization, httpserver, "y" * 100)
    assert not attempt.response_truncated

    event_page, delivery_page, attempt_page = admin_pages(client, attempt)
    assert "Response (100 characters)" in event_page and "response (truncated)" not in event_page
    for page in (event_page, delivery_page, attempt_page):
        assert "the answer was longer" not in page
    assert "100 characters" in delivery_page and "100 characters" in attempt_page
