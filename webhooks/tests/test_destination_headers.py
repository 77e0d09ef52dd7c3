"""Custom headers of a destination: sent with every attempt, stored encrypted, never shown, logged or
audited after they are set, and the same checks from the dashboard, the REST API, the admin and
create_destination."""

import base64
import io
import json
import logging

import pytest
from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command
from django.db import connection
from django.urls import reverse
from django.utils import timezone
from standardwebhooks.webhooks import Webhook

from organizations.models import ApiKey, AuditLog
from webhooks.models import Delivery, DeliveryAttempt, Destination
from webhooks.services import delivery as delivery_service
from webhooks.services import processing
from webhooks.services.destination_headers import (
    CUSTOM_HEADER_MASKED,
    CustomHeaderError,
    merge_custom_headers,
    parse_header_file,
    parse_header_lines,
)
from webhooks.services.destinations import (
    DestinationError,
    destination_create,
    destination_set_custom_headers,
    destination_update,
)
from webhooks.tests.delivering import deliver_now

from .api_helpers import api_get, api_patch, api_post, make_key
from .factories import STRIPE_SECRET, make_destination, make_source
from .signing import stripe_headers

pytestmark = pytest.mark.django_db

# Values distinctive enough that finding one anywhere is a leak, not a coincidence.
GATEWAY_TOKEN = "Bearer gw-7Qx2ZsecretA1b2"
API_KEY_VALUE = "key-Vb93LmnopqrstC3d4"
BODY = '{"id":"evt_custom_headers","object":"event","type":"invoice.paid"}'


@pytest.fixture(autouse=True)
def dispatches(monkeypatch):
    """Tests drive the services directly; dispatcher scheduling is counted instead of queued."""
    monkeypatch.setattr(processing, "schedule_dispatch", lambda slot=0: None)
    monkeypatch.setattr(delivery_service, "schedule_dispatch", lambda slot=0: None)


def _raw_custom_headers_column(destination_id: int) -> str:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT custom_headers, custom_header_hints::text FROM webhooks_destination WHERE id = %s", [destination_id]
        )
        return " ".join(cursor.fetchone())


def _all_audit_text() -> str:
    return json.dumps(list(AuditLog.objects.values("action", "changes")), default=str)


def _no_value_in(text: str, *values: str) -> bool:
    return not any(value in text for value in values) and not any(value.split()[-1] in text for value in values)


def _deliver_one(client, source, **provider_headers) -> Delivery:
    response = client.generic(
        "POST",
        f"/in/{source.ingest_token}/",
        BODY,
        content_type="application/json",
        **stripe_headers(BODY, STRIPE_SECRET),
        **provider_headers,
    )
    assert response.status_code == 200, response.content
    assert processing.process_received_events() == 1
    delivery = Delivery.objects.get()
    deliver_now(delivery.pk)
    return delivery


# --- Delivery ---------------------------------------------------------------------------------


def test_custom_headers_arrive_replace_the_provider_s_and_the_signature_still_verifies(
    client, organization, owner, httpserver, caplog
):
    caplog.set_level(logging.DEBUG)
    source = make_source(organization)
    destination, secret = make_destination(
        organization,
        httpserver.url_for("/hook"),
        sources=[source],
        custom_headers={"Authorization": GATEWAY_TOKEN, "X-Api-Key": API_KEY_VALUE},
    )
    httpserver.expect_oneshot_request("/hook", method="POST").respond_with_data("ok", status=200)

    # The provider sent an X-Api-Key of its own: the tenant's replaces it, in whatever case it came.
    delivery = _deliver_one(client, source, HTTP_X_API_KEY="from-the-provider")

    request, _ = httpserver.log[0]
    assert request.headers["Authorization"] == GATEWAY_TOKEN
    assert request.headers.get_all("X-Api-Key") == [API_KEY_VALUE]
    assert "Stripe-Signature" in request.headers  # the provider's other headers still travel along
    assert Webhook(secret).verify(request.get_data(), dict(request.headers))["id"] == "evt_custom_headers"
    delivery.refresh_from_db()
    assert delivery.status == Delivery.Status.SUCCEEDED

    # Recorded masked, for everyone: the attempt's stored headers hold no value.
    attempt = DeliveryAttempt.objects.get()
    recorded = {name.lower(): value for name, value in attempt.request_headers.items()}
    assert recorded["authorization"] == CUSTOM_HEADER_MASKED and recorded["x-api-key"] == CUSTOM_HEADER_MASKED
    assert _no_value_in(json.dumps(attempt.request_headers), GATEWAY_TOKEN, API_KEY_VALUE)

    # Nowhere it could be read: the REST API (a read-write key sees signatures), the owner's event
    # page, the admin's, show_event, the audit log, the log, the raw column.
    _, key = make_key(organization, access=ApiKey.Access.READ_WRITE)
    event_id = str(delivery.event_id)
    for path in (f"/api/v1/events/{event_id}", f"/api/v1/deliveries/{delivery.pk}", "/api/v1/destinations"):
        response = api_get(client, key, path)
        assert response.status_code == 200 and _no_value_in(response.content.decode(), GATEWAY_TOKEN, API_KEY_VALUE)
    assert CUSTOM_HEADER_MASKED in api_get(client, key, f"/api/v1/events/{event_id}").content.decode()
    client.force_login(owner)
    page = client.get(reverse("dashboard:event_detail", args=[organization.slug, event_id]))
    assert page.status_code == 200 and CUSTOM_HEADER_MASKED in page.content.decode()
    assert _no_value_in(page.content.decode(), GATEWAY_TOKEN, API_KEY_VALUE)
    superuser = get_user_model().objects.create_superuser("root@hookline.example", "correct horse battery")
    client.force_login(superuser)
    admin_page = client.get(reverse("admin:webhooks_webhookevent_change", args=[event_id]))
    assert admin_page.status_code == 200 and _no_value_in(admin_page.content.decode(), GATEWAY_TOKEN, API_KEY_VALUE)
    out = io.StringIO()
    call_command("show_event", event_id, "--body", stdout=out)
    assert _no_value_in(out.getvalue(), GATEWAY_TOKEN, API_KEY_VALUE)
    assert _no_value_in(_all_audit_text(), GATEWAY_TOKEN, API_KEY_VALUE)
    assert _no_value_in(caplog.text, GATEWAY_TOKEN, API_KEY_VALUE)
    assert _no_value_in(_raw_custom_headers_column(destination.pk), GATEWAY_TOKEN, API_KEY_VALUE)
    assert _raw_custom_headers_column(destination.pk).startswith("gAAAA")  # a Fernet token


def test_a_destination_without_custom_headers_sends_as_before(client, organization, httpserver):
    source = make_source(organization)
    _, secret = make_destination(organization, httpserver.url_for("/hook"), sources=[source])
    httpserver.expect_oneshot_request("/hook", method="POST").respond_with_data("ok", status=200)
    _deliver_one(client, source, HTTP_X_API_KEY="from-the-provider")
    request, _ = httpserver.log[0]
    assert request.headers["X-Api-Key"] == "from-the-provider" and "Authorization" not in request.headers
    assert Webhook(secret).verify(request.get_data(), dict(request.headers))


def test_a_send_test_event_reaches_the_destination_with_its_headers(client, organization, owner, httpserver):
    """The dashboard's test sender posts to the source; the delivery it makes is an ordinary one."""
    from webhooks.services.source_testing import source_send_test_event

    source = make_source(organization)
    make_destination(
        organization, httpserver.url_for("/hook"), sources=[source], custom_headers={"X-Api-Key": API_KEY_VALUE}
    )
    httpserver.expect_oneshot_request("/hook", method="POST").respond_with_data("ok", status=200)

    def post_through_test_client(url, *, body, headers, timeout=10.0):
        from webhooks.services.outbound import OutboundResponse

        answer = client.generic(
            "POST",
            url.removeprefix("http://testserver"),
            body,
            content_type=headers.get("Content-Type"),
            **{"HTTP_" + name.upper().replace("-", "_"): value for name, value in headers.items()},
        )
        return OutboundResponse(
            status=answer.status_code,
            body=answer.content.decode(),
            duration_ms=1,
            error="",
            headers={name.lower(): value for name, value in answer.headers.items()},
        )

    import webhooks.services.source_testing as source_testing

    original = source_testing.post_to_hookline
    source_testing.post_to_hookline = post_through_test_client
    try:
        result = source_send_test_event(source=source, actor=owner)
    finally:
        source_testing.post_to_hookline = original
    assert result.event is not None
    assert processing.process_received_events() == 1
    deliver_now(Delivery.objects.get().pk)
    request, _ = httpserver.log[0]
    assert request.headers["X-Api-Key"] == API_KEY_VALUE


# --- Checks, the same everywhere -----------------------------------------------------------------


@pytest.mark.parametrize(
    "headers, named",
    [
        ({"Host": "evil.example"}, "Host"),
        ({"content-length": "3"}, "content-length"),
        ({"Content-Type": "text/plain"}, "Content-Type"),
        ({"Transfer-Encoding": "chunked"}, "Transfer-Encoding"),
        ({"Connection": "close"}, "Connection"),
        ({"Keep-Alive": "timeout=5"}, "Keep-Alive"),
        ({"Upgrade": "h2c"}, "Upgrade"),
        ({"TE": "trailers"}, "TE"),
        ({"Proxy-Authorization": "Basic eA=="}, "Proxy-Authorization"),
        ({"webhook-id": "msg_1"}, "webhook-id"),
        ({"Webhook-Timestamp": "1"}, "Webhook-Timestamp"),
        ({"WEBHOOK-SIGNATURE": "v1,x"}, "WEBHOOK-SIGNATURE"),
        ({"webhook-anything": "x"}, "webhook-anything"),
        ({"svix-signature": "v1,x"}, "svix-signature"),
        ({"User-Agent": "mine"}, "User-Agent"),
        ({"Hookline-Test-Event": "true"}, "Hookline-Test-Event"),
        ({"X Api Key": "v"}, "X Api Key"),
        ({"X-Api:Key": "v"}, "X-Api:Key"),
        ({"X-Ümlaut": "v"}, "X-Ümlaut"),
        ({"X-" + "a" * 120: "v"}, "longer than 100"),
        ({"": "v"}, "needs a name"),
        ({"X-Split": "a\r\nX-Injected: b"}, "X-Split"),
        ({"X-Line": "a\nb"}, "X-Line"),
        ({"X-Nul": "a\x00b"}, "X-Nul"),
        ({"X-Bell": "a\x07b"}, "X-Bell"),
        ({"X-Accent": "café"}, "X-Accent"),
        ({"X-Empty": "  "}, "X-Empty"),
        ({"X-Long": "v" * 4097}, "longer than 4096"),
        ({"X-Twice": "1", "x-twice": "2"}, "twice"),
        ({f"X-H{n}": "v" for n in range(11)}, "at most 10"),
    ],
)
def test_refused_headers_name_the_header_and_create_nothing(organization, headers, named):
    with pytest.raises(DestinationError) as refused:
        destination_create(organization=organization, name="d", url="http://127.0.0.1:9/d", custom_headers=headers)
    assert refused.value.field == "custom_headers" and named in str(refused.value)
    for value in headers.values():
        if len(value) > 3:
            assert value not in str(refused.value)  # the message names the header, never its value
    assert not Destination.objects.exists()


def test_changes_keep_the_other_values_and_audit_names_only(organization, owner):
    destination, _ = make_destination(
        organization, "http://127.0.0.1:9/d", custom_headers={"Authorization": GATEWAY_TOKEN, "X-Old": "old-value-1"}
    )
    destination_update(
        destination=destination,
        name=destination.name,
        url=destination.url,
        sources=[],
        event_types=[],
        timeout_seconds=destination.timeout_seconds,
        custom_headers={"x-api-key": API_KEY_VALUE, "X-OLD": None, "authorization": "Bearer replaced-value-9"},
        actor=owner,
    )
    destination.refresh_from_db()
    assert destination.custom_header_values() == {
        "authorization": "Bearer replaced-value-9",
        "x-api-key": API_KEY_VALUE,
    }
    assert destination.custom_header_hints == [
        {"name": "authorization", "hint": "…ue-9"},
        {"name": "x-api-key", "hint": "…C3d4"},
    ]
    entry = AuditLog.objects.get(action="destination.updated")
    assert entry.changes["custom_headers"] == {
        "added": ["x-api-key"],
        "removed": ["X-Old"],
        "changed": ["authorization"],
    }
    assert _no_value_in(_all_audit_text(), GATEWAY_TOKEN, API_KEY_VALUE, "Bearer replaced-value-9", "old-value-1")
    # Removing a header that is not there (any more) changes nothing and is not audited.
    destination_set_custom_headers(destination=destination, changes={"X-Gone": None}, actor=owner)
    assert not AuditLog.objects.filter(action="destination.custom_headers_changed").exists()


def test_a_basic_credentials_hint_shows_none_of_the_password(organization):
    """Basic credentials are the base64 of user:password, so their last four characters were the
    last three of the password, shown to every member and read-only key."""
    basic = "Basic " + base64.b64encode(b"billing:hunter2x").decode()
    destination, _ = make_destination(
        organization, "http://127.0.0.1:9/d", custom_headers={"Authorization": basic, "X-Api-Key": API_KEY_VALUE}
    )
    assert destination.custom_header_hints == [
        {"name": "Authorization", "hint": "Basic …"},
        {"name": "X-Api-Key", "hint": "…C3d4"},
    ]


def test_a_short_value_s_hint_reads_hidden_everywhere(client, organization, owner):
    """A value too short to show any of was hinted "…", shown on the edit page as "(value …)"."""
    destination, _ = make_destination(organization, "http://127.0.0.1:9/d", custom_headers={"X-Env": "prod"})
    assert destination.custom_header_hints == [{"name": "X-Env", "hint": "hidden"}]
    client.force_login(owner)
    edit_page = client.get(reverse("dashboard:destination_edit", args=[organization.slug, destination.pk]))
    assert "X-Env (value hidden)" in edit_page.content.decode() and "(value …)" not in edit_page.content.decode()
    api_key, key = make_key(organization, access=ApiKey.Access.READ_ONLY)
    shown = api_get(client, key, f"/api/v1/destinations/{destination.pk}").json()
    assert shown["custom_headers"] == [{"name": "X-Env", "hint": "hidden"}]  # the same shape as any hint


def test_stored_short_value_hints_are_renamed_by_the_migration(organization):
    from importlib import import_module

    from django.apps import apps

    migration = import_module("webhooks.migrations.0027_destination_short_header_value_hints")
    destination, _ = make_destination(
        organization, "http://127.0.0.1:9/d", custom_headers={"X-Env": "prod", "X-Api-Key": API_KEY_VALUE}
    )
    stored_before = [{"name": "X-Env", "hint": "…"}, {"name": "X-Api-Key", "hint": "…C3d4"}]
    Destination.objects.filter(pk=destination.pk).update(custom_header_hints=stored_before)
    migration.name_short_value_hints(apps, None)
    destination.refresh_from_db()
    assert destination.custom_header_hints == [
        {"name": "X-Env", "hint": "hidden"},
        {"name": "X-Api-Key", "hint": "…C3d4"},
    ]


@pytest.mark.parametrize("separator", ["\t", " \t"])
def test_basic_credentials_after_a_tab_show_none_of_the_password_either(organization, separator):
    # The value may hold tabs, and receivers that split the scheme off at any whitespace (Werkzeug,
    # for one) take "Basic<TAB>…" as Basic credentials.
    basic = "Basic" + separator + base64.b64encode(b"billing:hunter2x").decode()
    destination, _ = make_destination(organization, "http://127.0.0.1:9/d", custom_headers={"Authorization": basic})
    assert destination.custom_header_hints == [{"name": "Authorization", "hint": "Basic …"}]


def test_the_cached_overview_holds_no_custom_header_value(client, organization, owner):
    # The overview is cached as a pickle of its destinations, failing and paused: their decrypted
    # header values must not be in it (Redis holds no secret in clear).
    import pickle

    from django.core.cache import cache

    from .api_helpers import make_delivery, make_event

    source = make_source(organization)
    failing, _ = make_destination(
        organization, "http://127.0.0.1:9/f", sources=[source], custom_headers={"Authorization": GATEWAY_TOKEN}
    )
    paused, _ = make_destination(organization, "http://127.0.0.1:9/p", custom_headers={"X-Api-Key": API_KEY_VALUE})
    make_delivery(make_event(source), failing, status=Delivery.Status.DEAD)
    Destination.objects.filter(pk=paused.pk).update(paused_at=timezone.now())
    client.force_login(owner)
    assert client.get(f"/o/{organization.slug}/").status_code == 200
    cached = cache.get(f"dashboard:overview:{organization.pk}")
    assert cached is not None and cached.failing_destinations and cached.paused_destinations
    pickled = pickle.dumps(cached)
    assert GATEWAY_TOKEN.encode() not in pickled and API_KEY_VALUE.encode() not in pickled


# --- REST API ------------------------------------------------------------------------------------


def test_api_sets_changes_and_shows_only_names_and_hints(client, organization):
    api_key, key = make_key(organization, access=ApiKey.Access.READ_WRITE)
    created = api_post(
        client,
        key,
        "/api/v1/destinations",
        {"name": "Gateway", "url": "http://127.0.0.1:9/g", "custom_headers": {"Authorization": GATEWAY_TOKEN}},
    )
    assert created.status_code == 201, created.content
    shown = created.json()
    assert shown["custom_headers"] == [{"name": "Authorization", "hint": "…A1b2"}]
    assert _no_value_in(created.content.decode(), GATEWAY_TOKEN)
    path = f"/api/v1/destinations/{shown['id']}"

    changed = api_patch(client, key, path, {"custom_headers": {"X-Api-Key": API_KEY_VALUE}})
    assert changed.status_code == 200, changed.content
    assert [item["name"] for item in changed.json()["custom_headers"]] == ["Authorization", "X-Api-Key"]
    assert _no_value_in(changed.content.decode(), GATEWAY_TOKEN, API_KEY_VALUE)
    # A PATCH without the field leaves them; null removes one.
    assert api_patch(client, key, path, {"name": "Gateway 2"}).json()["custom_headers"][0]["name"] == "Authorization"
    removed = api_patch(client, key, path, {"custom_headers": {"authorization": None}})
    assert [item["name"] for item in removed.json()["custom_headers"]] == ["X-Api-Key"]
    assert Destination.objects.get().custom_header_values() == {"X-Api-Key": API_KEY_VALUE}

    _, reader = make_key(organization, access=ApiKey.Access.READ_ONLY, name="reader")
    for body in (api_get(client, reader, path), api_get(client, key, "/api/v1/destinations")):
        assert body.status_code == 200 and "X-Api-Key" in body.content.decode()
        assert _no_value_in(body.content.decode(), GATEWAY_TOKEN, API_KEY_VALUE)
    assert _no_value_in(_all_audit_text(), GATEWAY_TOKEN, API_KEY_VALUE)


@pytest.mark.parametrize(
    "headers",
    [{"Host": "x"}, {"webhook-signature": "v1,x"}, {"X-Bad": "a\r\nb"}, {"X-A": "1", "x-a": "2"}, {"X-A": None}],
)
def test_api_refusals_are_400_on_custom_headers(client, organization, headers):
    _, key = make_key(organization, access=ApiKey.Access.READ_WRITE)
    response = api_post(
        client, key, "/api/v1/destinations", {"name": "x", "url": "http://127.0.0.1:9/x", "custom_headers": headers}
    )
    assert response.status_code == 400 and "custom_headers" in response.json()["fields"], response.content
    assert not Destination.objects.exists()


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (5, "the value of “X-N” must be text"),
        (True, "the value of “X-N” must be text"),
        (None, "the value of “X-N” must be text"),
    ],
)
def test_api_header_values_must_be_strings_and_the_refusal_names_the_header(client, organization, value, reason):
    """A number was turned into text and sent ("5"); null on a new destination got DRF's nested
    "This field may not be null." without the header's name."""
    _, key = make_key(organization, access=ApiKey.Access.READ_WRITE)
    created = api_post(
        client,
        key,
        "/api/v1/destinations",
        {"name": "x", "url": "http://127.0.0.1:9/x", "custom_headers": {"X-N": value}},
    )
    assert created.status_code == 400, created.content
    assert created.json()["fields"]["custom_headers"] == [reason]
    assert not Destination.objects.exists()
    if value is None:
        return  # in a PATCH null removes the header
    destination, _ = make_destination(organization, "http://127.0.0.1:9/d")
    changed = api_patch(client, key, f"/api/v1/destinations/{destination.pk}", {"custom_headers": {"X-N": value}})
    assert changed.status_code == 400, changed.content
    assert changed.json()["fields"]["custom_headers"] == [reason]
    destination.refresh_from_db()
    assert destination.custom_header_values() == {}


def test_api_patch_refusals_change_nothing(client, organization):
    _, key = make_key(organization, access=ApiKey.Access.READ_WRITE)
    destination, _ = make_destination(organization, "http://127.0.0.1:9/d", custom_headers={"X-Keep": "keep-value-1"})
    path = f"/api/v1/destinations/{destination.pk}"
    for changes in ({"Content-Length": "1"}, {f"X-{n}": "v" for n in range(10)}):
        response = api_patch(client, key, path, {"custom_headers": changes})
        assert response.status_code == 400 and "custom_headers" in response.json()["fields"], response.content
    destination.refresh_from_db()
    assert destination.custom_header_values() == {"X-Keep": "keep-value-1"}


def test_api_patch_that_removes_a_header_can_be_sent_again(client, organization):
    """As in a JSON merge patch, null for a header that is not there changes nothing: a script that
    sends its PATCH again (after a timeout, or on every run) gets a 200, not a 400."""
    _, key = make_key(organization, access=ApiKey.Access.READ_WRITE)
    destination, _ = make_destination(
        organization, "http://127.0.0.1:9/d", custom_headers={"X-Keep": "keep-value-1", "X-Old": "old-value-1"}
    )
    path = f"/api/v1/destinations/{destination.pk}"
    for _ in range(2):
        response = api_patch(client, key, path, {"custom_headers": {"X-Old": None}})
        assert response.status_code == 200, response.content
        assert response.json()["custom_headers"] == [{"name": "X-Keep", "hint": "…ue-1"}]
    destination.refresh_from_db()
    assert destination.custom_header_values() == {"X-Keep": "keep-value-1"}
    # The second PATCH changed nothing, so nothing about the headers was audited for it.
    assert [entry.changes.get("custom_headers") for entry in AuditLog.objects.filter(action="destination.updated")] == [
        {"removed": ["X-Old"]}
    ]


class _CountedText(str):
    """Text whose every piece (a line, a header name) counts how often any of them is put in lower
    case: the case-insensitive comparisons of names made."""

    lowered = 0

    def lower(self):
        _CountedText.lowered += 1
        return str.lower(self)

    def strip(self, chars=None):
        return _CountedText(str.strip(self, chars))

    def removesuffix(self, suffix):
        return _CountedText(str.removesuffix(self, suffix))

    def partition(self, separator):
        return tuple(_CountedText(part) for part in str.partition(self, separator))

    def split(self, separator=None, maxsplit=-1):
        return [_CountedText(part) for part in str.split(self, separator, maxsplit)]

    def splitlines(self, keepends=False):
        return [_CountedText(line) for line in str.splitlines(self, keepends)]


HEADERS_NAMED = 2000


def test_many_headers_named_cost_comparisons_in_proportion(monkeypatch):
    """A PATCH naming thousands of headers (or as many lines in the dashboard's text area or a
    header file) is refused after looking each name up once. Compared with every name before it,
    20,000 of them kept a web worker busy past its timeout: a 500 from a 300 KB request."""
    monkeypatch.setattr(_CountedText, "lowered", 0)
    changes = {_CountedText(f"X-{n}"): "v" for n in range(HEADERS_NAMED)}
    with pytest.raises(CustomHeaderError, match="at most 10 custom headers"):
        merge_custom_headers({_CountedText("X-Kept"): "kept"}, changes)
    assert _CountedText.lowered < 10 * HEADERS_NAMED

    text = _CountedText("\n".join(f"X-{n}: v" for n in range(HEADERS_NAMED)))
    for parse in (parse_header_lines, parse_header_file):
        _CountedText.lowered = 0
        assert len(parse(text)) == HEADERS_NAMED  # the count is checked by check_custom_headers, after
        assert _CountedText.lowered < 10 * HEADERS_NAMED, parse


# --- Dashboard -----------------------------------------------------------------------------------


def test_the_help_speaks_of_existing_headers_only_where_there_are_some(client, organization, owner):
    client.force_login(owner)
    existing = "A header named here that exists gets the new value"
    new_page = client.get(reverse("dashboard:destination_create", args=[organization.slug])).content.decode()
    assert "Custom headers" in new_page and existing not in new_page and "{existing}" not in new_page
    destination, _ = make_destination(organization, "http://127.0.0.1:9/d", custom_headers={"X-Old": "old-value-1"})
    edit_url = reverse("dashboard:destination_edit", args=[organization.slug, destination.pk])
    assert existing in client.get(edit_url).content.decode()


def test_dashboard_creates_edits_and_never_shows_a_value(client, organization, owner):
    client.force_login(owner)
    form = {"name": "Gateway", "url": "http://127.0.0.1:9/g", "timeout_seconds": "15", "max_concurrency": "10"}
    created = client.post(
        reverse("dashboard:destination_create", args=[organization.slug]),
        {**form, "custom_headers_set": f"Authorization: {GATEWAY_TOKEN}\nX-Old: old-value-1"},
        follow=True,
    )
    assert created.status_code == 200 and _no_value_in(created.content.decode(), GATEWAY_TOKEN, "old-value-1")
    destination = Destination.objects.get()
    assert destination.custom_header_values() == {"Authorization": GATEWAY_TOKEN, "X-Old": "old-value-1"}

    edit_url = reverse("dashboard:destination_edit", args=[organization.slug, destination.pk])
    edit_page = client.get(edit_url).content.decode()
    assert "Authorization (value …A1b2)" in edit_page and _no_value_in(edit_page, GATEWAY_TOKEN, "old-value-1")
    # Add one and remove another without typing the Authorization value again.
    saved = client.post(
        edit_url, {**form, "custom_headers_set": f"X-Api-Key: {API_KEY_VALUE}", "custom_headers_remove": ["X-Old"]}
    )
    assert saved.status_code == 302, saved.content.decode()
    destination.refresh_from_db()
    assert destination.custom_header_values() == {"Authorization": GATEWAY_TOKEN, "X-Api-Key": API_KEY_VALUE}
    detail = client.get(reverse("dashboard:destination_detail", args=[organization.slug, destination.pk]))
    assert "X-Api-Key" in detail.content.decode() and "…C3d4" in detail.content.decode()
    assert _no_value_in(detail.content.decode(), GATEWAY_TOKEN, API_KEY_VALUE)
    # Replacing a value; a refusal comes back on the field, without what was typed.
    client.post(edit_url, {**form, "custom_headers_set": "authorization: Bearer replaced-value-9"})
    destination.refresh_from_db()
    assert destination.custom_header_values()["authorization"] == "Bearer replaced-value-9"
    refused = client.post(edit_url, {**form, "custom_headers_set": "Host: x\nX-Typed: typed-secret-77"})
    page = refused.content.decode()
    assert refused.status_code == 200 and "“Host” cannot be set" in page and "typed-secret-77" not in page
    # A token pasted without its name is not quoted back either.
    refused = client.post(edit_url, {**form, "custom_headers_set": "X-Ok: 1\npasted-token-without-name-55"})
    page = refused.content.decode()
    assert "line 2 has no colon" in page and "pasted-token-without-name-55" not in page
    audit = client.get(reverse("dashboard:audit", args=[organization.slug])).content.decode()
    assert _no_value_in(audit, GATEWAY_TOKEN, API_KEY_VALUE, "Bearer replaced-value-9", "old-value-1")


# --- Admin ---------------------------------------------------------------------------------------


@pytest.fixture
def admin_client(client, db):
    client.force_login(get_user_model().objects.create_superuser("root@hookline.example", "correct horse battery"))
    return client


def _admin_form(destination, **changes):
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


def test_admin_sets_and_removes_headers_and_never_renders_a_value(admin_client, organization, owner):
    destination, _ = make_destination(
        organization, "http://127.0.0.1:9/d", custom_headers={"Authorization": GATEWAY_TOKEN}
    )
    url = reverse("admin:webhooks_destination_change", args=[destination.pk])
    page = admin_client.get(url).content.decode()
    assert "Authorization" in page and "…A1b2" in page and _no_value_in(page, GATEWAY_TOKEN)

    response = admin_client.post(url, _admin_form(destination, custom_headers_set=f"X-Api-Key: {API_KEY_VALUE}"))
    assert response.status_code == 302, response.content.decode()
    destination.refresh_from_db()
    assert destination.custom_header_values() == {"Authorization": GATEWAY_TOKEN, "X-Api-Key": API_KEY_VALUE}

    # The page was loaded before a tenant changed a header on the dashboard: saving another field in
    # the admin keeps the tenant's value (the admin saves only its form's fields).
    destination_set_custom_headers(
        destination=destination, changes={"Authorization": "Bearer newer-value-5"}, actor=owner
    )
    admin_client.post(url, _admin_form(destination, name="Renamed in the admin", custom_headers_remove=["X-Api-Key"]))
    destination.refresh_from_db()
    assert destination.name == "Renamed in the admin"
    assert destination.custom_header_values() == {"Authorization": "Bearer newer-value-5"}

    refused = admin_client.post(url, _admin_form(destination, custom_headers_set="webhook-id: typed-secret-77"))
    assert refused.status_code == 200 and "errornote" in refused.content.decode()
    assert "typed-secret-77" not in refused.content.decode()
    assert _no_value_in(_all_audit_text(), GATEWAY_TOKEN, API_KEY_VALUE, "Bearer newer-value-5", "typed-secret-77")
    assert AuditLog.objects.filter(action="destination.custom_headers_changed").count() == 3


def test_an_admin_change_of_the_headers_alone_writes_only_the_headers_entry(admin_client, organization):
    """It also wrote admin.webhooks.destination.changed, with no change in it."""
    destination, _ = make_destination(organization, "http://127.0.0.1:9/d", custom_headers={"X-Old": "old-value-1"})
    url = reverse("admin:webhooks_destination_change", args=[destination.pk])
    admin_client.post(url, _admin_form(destination, custom_headers_set=f"X-Api-Key: {API_KEY_VALUE}"))
    admin_client.post(url, _admin_form(destination, custom_headers_remove=["X-Old"]))
    headers_entries = AuditLog.objects.filter(action="destination.custom_headers_changed").order_by("id")
    assert [entry.changes for entry in headers_entries] == [
        {"added": ["X-Api-Key"]},
        {"removed": ["X-Old"]},
    ]
    assert not AuditLog.objects.filter(action="admin.webhooks.destination.changed").exists()
    # With another field changed too, the admin entry is written, naming that field only.
    admin_client.post(url, _admin_form(destination, name="Renamed", custom_headers_set="X-New: new-value-22"))
    [changed] = AuditLog.objects.filter(action="admin.webhooks.destination.changed")
    assert changed.changes["fields"] == {"name": ["endpoint", "Renamed"]}


# --- create_destination --------------------------------------------------------------------------


def test_create_destination_takes_repeated_header_flags(organization):
    out = io.StringIO()
    call_command(
        "create_destination",
        "--org",
        organization.slug,
        "--name",
        "gw",
        "--url",
        "http://127.0.0.1:9/gw",
        "--header",
        f"Authorization: {GATEWAY_TOKEN}",
        "--header",
        f"X-Api-Key:{API_KEY_VALUE}",
        "--json",
        stdout=out,
    )
    created = json.loads(out.getvalue())
    assert created["custom_headers"] == [
        {"name": "Authorization", "hint": "…A1b2"},
        {"name": "X-Api-Key", "hint": "…C3d4"},
    ]
    assert _no_value_in(out.getvalue(), GATEWAY_TOKEN, API_KEY_VALUE)
    assert Destination.objects.get().custom_header_values() == {
        "Authorization": GATEWAY_TOKEN,
        "X-Api-Key": API_KEY_VALUE,
    }


@pytest.mark.parametrize(
    "flag, reason",
    [
        ("Host: x", "--header: the header “Host” cannot be set"),
        ("no colon here", "--header: a header has no colon"),
        ("X-Bad: a\nb", "--header: the value of “X-Bad” holds a line break"),
        ("webhook-signature: v1,x", "--header: the header “webhook-signature” cannot be set"),
    ],
)
def test_create_destination_refuses_a_bad_header_naming_the_flag(organization, flag, reason):
    with pytest.raises(CommandError, match=reason):
        call_command(
            "create_destination",
            "--org",
            organization.slug,
            "--name",
            "gw",
            "--url",
            "http://127.0.0.1:9/gw",
            "--header",
            flag,
            stdout=io.StringIO(),
        )
    assert not Destination.objects.exists()


def test_create_destination_does_not_quote_a_header_without_a_name(organization):
    with pytest.raises(CommandError) as refused:
        call_command(
            "create_destination",
            *("--org", organization.slug, "--name", "gw", "--url", "http://127.0.0.1:9/gw"),
            *("--header", "pasted-token-without-name-55"),
            stdout=io.StringIO(),
            stderr=io.StringIO(),
        )
    assert "has no colon" in str(refused.value) and "pasted-token" not in str(refused.value)


def test_view_only_staff_see_names_and_hints_only(client, organization):
    from .test_admin import staff_account

    destination, _ = make_destination(
        organization, "http://127.0.0.1:9/d", custom_headers={"Authorization": GATEWAY_TOKEN}
    )
    client.force_login(staff_account("viewer@hookline.example", "view_destination"))
    page = client.get(reverse("admin:webhooks_destination_change", args=[destination.pk]))
    assert page.status_code == 200 and "…A1b2" in page.content.decode()
    assert _no_value_in(page.content.decode(), GATEWAY_TOKEN)


def test_rotate_encryption_keys_reencrypts_the_custom_headers(organization, settings):
    from cryptography.fernet import Fernet

    destination, _ = make_destination(
        organization, "http://127.0.0.1:9/d", custom_headers={"Authorization": GATEWAY_TOKEN}
    )
    new_key = Fernet.generate_key().decode()
    settings.FIELD_ENCRYPTION_KEYS = [new_key, settings.FIELD_ENCRYPTION_KEYS[0]]
    call_command("rotate_encryption_keys", stdout=io.StringIO())
    settings.FIELD_ENCRYPTION_KEYS = [new_key]
    assert Destination.objects.get(pk=destination.pk).custom_header_values() == {"Authorization": GATEWAY_TOKEN}


def test_error_reports_leave_out_the_typed_values(client, organization, owner, monkeypatch):
    """A 500 while saving: Django's error report (the DEBUG page, a mail to ADMINS) masks the box."""
    from django.views.debug import SafeExceptionReporterFilter

    from webhooks.views.dashboard import destinations as dashboard_destinations

    destination, _ = make_destination(organization, "http://127.0.0.1:9/d")
    seen = {}

    def failing_update(**kwargs):
        raise RuntimeError("the database went away")

    monkeypatch.setattr(dashboard_destinations, "destination_update", failing_update)
    from django.core.signals import got_request_exception

    def keep_request(sender, request, **kwargs):
        seen["post"] = SafeExceptionReporterFilter().get_post_parameters(request)

    got_request_exception.connect(keep_request)
    client.raise_request_exception = False
    client.force_login(owner)
    try:
        client.post(
            reverse("dashboard:destination_edit", args=[organization.slug, destination.pk]),
            {
                "name": "d",
                "url": "http://127.0.0.1:9/d",
                "timeout_seconds": "15",
                "custom_headers_set": f"X-Api-Key: {API_KEY_VALUE}",
            },
        )
    finally:
        got_request_exception.disconnect(keep_request)
    assert seen["post"]["custom_headers_set"] != f"X-Api-Key: {API_KEY_VALUE}"
    assert seen["post"]["name"] == "d"


def test_admin_error_reports_leave_out_the_typed_values(admin_client, organization, monkeypatch):
    from django.core.signals import got_request_exception
    from django.views.debug import SafeExceptionReporterFilter

    from webhooks.admin import configuration

    destination, _ = make_destination(organization, "http://127.0.0.1:9/d")
    seen = {}

    def failing_set(**kwargs):
        raise RuntimeError("the database went away")

    def keep_request(sender, request, **kwargs):
        seen["post"] = SafeExceptionReporterFilter().get_post_parameters(request)

    monkeypatch.setattr(configuration, "destination_set_custom_headers", failing_set)
    got_request_exception.connect(keep_request)
    admin_client.raise_request_exception = False
    try:
        admin_client.post(
            reverse("admin:webhooks_destination_change", args=[destination.pk]),
            _admin_form(destination, custom_headers_set=f"X-Api-Key: {API_KEY_VALUE}"),
        )
    finally:
        got_request_exception.disconnect(keep_request)
    assert seen["post"]["custom_headers_set"] != f"X-Api-Key: {API_KEY_VALUE}" and seen["post"]["name"] == "endpoint"
