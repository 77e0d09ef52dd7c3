"""Small tenant-facing points a trial and an audit found: each one what a tenant saw, and what it
should have been."""

import re

import pytest
from django.contrib.auth import get_user_model
from django.urls import reverse

from organizations.models import ApiKey
from webhooks.models import Delivery
from webhooks.providers.registry import PROVIDERS
from webhooks.services.provider_docs import render_provider_docs
from webhooks.services.text import visible_text

from .api_helpers import make_delivery, make_event, make_key
from .factories import make_destination, make_source

pytestmark = pytest.mark.django_db


@pytest.fixture
def key(organization):
    return make_key(organization, access=ApiKey.Access.READ_WRITE)[1]


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/api/v1/deliveries/bulk_retry"),
        ("POST", "/api/v1/events/replay_all"),
        ("DELETE", "/api/v1/bulk_retries/latest"),
        ("POST", "/api/v1/sources/rotate"),
        ("PUT", "/api/v1/destinations/pause_all/"),
    ],
)
def test_a_mistyped_path_where_an_id_goes_is_the_api_s_404_not_a_405(client, key, method, path):
    # "deliveries/bulk_retry" was read as a delivery's id, and a POST there answered 405 (method not
    # allowed), as if the path existed and only the method were wrong.
    response = client.generic(
        method,
        path,
        "{}",
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {key}",
        HTTP_IDEMPOTENCY_KEY="k1",
    )
    assert response.status_code == 404, response.content
    assert response.json()["error"] == "not_found"


def test_a_method_a_real_object_does_not_take_is_still_a_405(client, key, organization):
    source = make_source(organization)
    destination, _ = make_destination(organization, "http://127.0.0.1:9/hook", sources=[source])
    delivery = make_delivery(make_event(source), destination, status=Delivery.Status.DEAD)
    response = client.post(
        f"/api/v1/deliveries/{delivery.pk}",
        "{}",
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {key}",
        HTTP_IDEMPOTENCY_KEY="k2",
    )
    assert response.status_code == 405, response.content
    # Without a key, the refusal is still the 401 first: no path is told apart to a stranger.
    assert client.post("/api/v1/deliveries/bulk_retry", "{}", content_type="application/json").status_code == 401


def _id_search(client, owner, text: str) -> str:
    client.force_login(owner)
    return client.get(reverse("dashboard:events", args=["acme"]), {"q": text}).content.decode()


def _replays_notice(page: str) -> str | None:
    found = re.search(r'<p id="id-search-replays">(.*?)</p>', page, re.S)
    return found.group(1) if found else None


def test_the_notice_on_replays_counted_by_body_names_every_source_that_counts_them(client, owner, organization):
    # The events list's word on a request counted as a duplicate by its signed content named GitHub,
    # Bitbucket and Linear only, by a flag of the provider class: not a Shopify source merging
    # identical bodies, nor a Generic HMAC source taking its id from a header, which count them too.
    make_source(organization, provider="shopify", secret="shpss_client_secret", merge_identical_bodies=True)
    make_source(
        organization, provider="generic_hmac", secret="a shared secret", header="X-Signature", event_id_header="X-Id"
    )
    notice = _replays_notice(_id_search(client, owner, "evt_nobody_has"))
    assert notice is not None
    assert "Generic HMAC or Shopify source" in notice


def test_no_notice_for_sources_whose_options_keep_every_id(client, owner, organization):
    make_source(organization, provider="shopify", secret="shpss_client_secret")  # merging is off by default
    make_source(organization, provider="generic_hmac", secret="a shared secret", header="X-Signature")
    assert _replays_notice(_id_search(client, owner, "evt_nobody_has")) is None


def test_the_providers_doc_names_the_sources_counting_by_signed_content_from_the_registry():
    intro = render_provider_docs().split("Redeliveries are recognised")[0]
    for provider in PROVIDERS.values():
        counts = provider.dedupes_on_signed_content or provider.docs_signed_content_when
        assert (provider.label in intro) == bool(counts), provider.label
    assert "Generic HMAC with an event id header configured" in " ".join(intro.split())


REVERSED = "invoice.\u202ediap"  # shown as "invoice.paid" by a browser: the override reverses what follows
ISOLATED_ID = "evt_\u2066123\u2069\u200f"


def test_an_event_type_and_id_with_bidirectional_controls_show_them_escaped_in_the_admin(client, organization):
    # The admin showed them as they came: an override made one event type read as another.
    source = make_source(organization)
    event = make_event(source, event_type=REVERSED, provider_event_id=ISOLATED_ID)
    client.force_login(get_user_model().objects.create_superuser("root@hookline.example", "correct horse battery"))

    listed = client.get(reverse("admin:webhooks_webhookevent_changelist")).content.decode()
    shown = client.get(reverse("admin:webhooks_webhookevent_change", args=[event.pk])).content.decode()

    for page in (listed, shown):
        assert "invoice.\\u202ediap" in page
        assert "\u202e" not in page and "\u2066" not in page and "\u200f" not in page
    assert "evt_\\u2066123\\u2069\\u200f" in shown
    event.refresh_from_db()
    assert (event.event_type, event.provider_event_id) == (REVERSED, ISOLATED_ID)  # stored exactly


def test_visible_text_escapes_the_bidirectional_controls_and_keeps_other_text():
    for control in ("\u202a", "\u202b", "\u202c", "\u202d", "\u202e", "\u2066", "\u2067", "\u2068", "\u2069"):
        assert visible_text(f"a{control}b") == f"a\\u{ord(control):04x}b"
    assert visible_text("a\u200eb\u200fc") == "a\\u200eb\\u200fc"
    assert visible_text("commande.payée 注文") == "commande.payée 注文"
