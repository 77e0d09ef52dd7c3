"""A redirect a destination answers is not followed, and its error says where it points (its origin,
or another path on the same host), where "update the URL" left the tenant to find out to what."""

import pytest

from webhooks.models import Delivery
from webhooks.services import delivery as delivery_service
from webhooks.services import processing
from webhooks.tests.delivering import deliver_now

from .factories import make_destination, make_source
from .test_delivery import ingest

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def no_dispatch(monkeypatch):
    monkeypatch.setattr(processing, "schedule_dispatch", lambda slot=0: None)
    monkeypatch.setattr(delivery_service, "schedule_dispatch", lambda slot=0: None)


@pytest.mark.parametrize(
    ("status", "location", "said"),
    [
        # The usual two: the receiver moved to HTTPS, or wants the path with a slash. Only the origin is
        # named: the path of a destination's URL is hidden from members, who read this error too.
        (308, "https://{host}/hook", "HTTP 308: redirects are not followed (it points to https://{host}/…)"),
        (301, "/hook/", "HTTP 301: redirects are not followed (it points to another path on the same host)"),
        (
            302,
            "http://login.example.com/sso?token=abc",
            "HTTP 302: redirects are not followed (it points to http://login.example.com/…)",
        ),
    ],
)
def test_a_redirect_names_where_it_points_without_its_path(client, organization, httpserver, status, location, said):
    host = f"{httpserver.host}:{httpserver.port}"
    source = make_source(organization)
    make_destination(organization, httpserver.url_for("/hook"), sources=[source])
    httpserver.expect_request("/hook").respond_with_data(
        "", status=status, headers={"Location": location.format(host=host)}
    )
    ingest(client, source)
    processing.process_received_events()

    delivery = deliver_now(Delivery.objects.get().pk)

    assert delivery.status == Delivery.Status.DEAD
    assert delivery.last_error == said.format(host=host) + "; update the URL"


def test_a_redirect_without_a_location_is_said_as_before(client, organization, httpserver):
    source = make_source(organization)
    make_destination(organization, httpserver.url_for("/hook"), sources=[source])
    httpserver.expect_request("/hook").respond_with_data("", status=301)
    ingest(client, source)
    processing.process_received_events()

    delivery = deliver_now(Delivery.objects.get().pk)

    assert delivery.last_error == "HTTP 301: redirects are not followed; update the URL"
