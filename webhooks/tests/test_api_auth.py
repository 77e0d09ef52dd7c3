"""The REST API's door: bearer keys only, JSON errors, read-only keys, suspended tenants, rate limits."""

import pytest
from django.test import Client

from conftest import UserFactory
from organizations.api_keys import api_key_revoke
from organizations.models import ApiKey, AuditLog, Membership
from webhooks.models import BulkRetry, Delivery

from .api_helpers import api_get, api_post, make_delivery, make_event, make_key
from .factories import make_destination, make_source

WINDOW_START = 1_900_000_020.0  # a multiple of 60: a minute's window begins here
UNKNOWN_KEY = "hl_0123456789_" + "A" * 43  # well formed, no such key


@pytest.fixture
def window_held(monkeypatch):
    """The limits' clock 10 s into a minute, and kept there: no test crosses into the next window."""
    from webhooks.api import limits

    monkeypatch.setattr(limits, "clock", lambda: WINDOW_START + 10)
    return 50  # seconds left in the window: the Retry-After expected


def _assert_json_error(response, status, error):
    assert response.status_code == status, response.content
    assert response["Content-Type"] == "application/json"
    body = response.json()
    assert body["error"] == error and body["detail"]
    return body


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "Bearer",
        "Bearer ",
        "Basic dXNlcjpwYXNz",
        "Bearer not-a-key",
        "Bearer hl_0123456789_" + "A" * 43,  # well formed, unknown
        "Token hl_0123456789_" + "A" * 43,
    ],
)
def test_missing_malformed_and_unknown_keys_get_401_with_www_authenticate(client, organization, header):
    make_key(organization)
    extra = {} if header is None else {"HTTP_AUTHORIZATION": header}
    response = client.get("/api/v1/events", **extra)
    assert response.status_code == 401
    assert response["WWW-Authenticate"].startswith("Bearer")
    assert response.json()["error"] in ("not_authenticated", "invalid_api_key")
    assert response.json()["detail"]


def test_a_revoked_key_gets_401(client, organization):
    api_key, key = make_key(organization)
    assert api_get(client, key, "/api/v1/events").status_code == 200
    api_key_revoke(api_key=api_key)
    body = _assert_json_error(api_get(client, key, "/api/v1/events"), 401, "invalid_api_key")
    assert "revoked" in body["detail"]


def test_a_suspended_organization_gets_403(client, organization):
    _, key = make_key(organization)
    organization.is_active = False
    organization.save()
    body = _assert_json_error(api_get(client, key, "/api/v1/events"), 403, "organization_inactive")
    assert body["detail"] == "this organization is suspended"


def test_an_organization_being_deleted_refuses_its_keys_at_once_and_says_why(client, organization, monkeypatch):
    from webhooks import tasks
    from webhooks.services.organization_deletion import organization_request_deletion

    monkeypatch.setattr(tasks.delete_organization, "apply_async", lambda *args, **kwargs: None)
    _, key = make_key(organization)
    organization_request_deletion(organization=organization)
    for response in (api_get(client, key, "/api/v1/sources"), api_post(client, key, "/api/v1/sources", {})):
        body = _assert_json_error(response, 403, "organization_inactive")
        assert body["detail"] == "this organization is being deleted"


def test_a_dashboard_session_is_not_an_api_credential(client, owner):
    client.force_login(owner)
    response = client.get("/api/v1/events")
    _assert_json_error(response, 401, "not_authenticated")
    assert response["WWW-Authenticate"].startswith("Bearer")


def test_a_read_only_key_reads_but_changes_nothing(client, organization):
    source = make_source(organization)
    destination, _ = make_destination(organization, "http://127.0.0.1:9/hook", sources=[source])
    delivery = make_delivery(make_event(source), destination)
    _, key = make_key(organization, access=ApiKey.Access.READ_ONLY)
    assert api_get(client, key, f"/api/v1/deliveries/{delivery.pk}").status_code == 200
    before = AuditLog.objects.count()
    for path in (
        f"/api/v1/deliveries/{delivery.pk}/retry",
        "/api/v1/deliveries/retry",
        f"/api/v1/destinations/{destination.pk}/pause",
        f"/api/v1/events/{delivery.event_id}/replay",
    ):
        _assert_json_error(api_post(client, key, path, {"destination": destination.pk}), 403, "read_only_key")
    delivery.refresh_from_db()
    destination.refresh_from_db()
    assert delivery.status == Delivery.Status.DEAD and destination.paused_at is None
    assert AuditLog.objects.count() == before and not BulkRetry.objects.exists()


def test_bearer_requests_need_no_csrf_token(organization):
    source = make_source(organization)
    destination, _ = make_destination(organization, "http://127.0.0.1:9/hook", sources=[source])
    _, key = make_key(organization)
    strict = Client(enforce_csrf_checks=True)
    response = api_post(strict, key, f"/api/v1/destinations/{destination.pk}/pause")
    assert response.status_code == 200, response.content
    destination.refresh_from_db()
    assert destination.paused_at is not None


def test_each_key_is_rate_limited_on_its_own(client, organization, settings, window_held):
    settings.API_RATE_LIMIT = "3/min"
    _, key = make_key(organization, name="busy")
    _, other_key = make_key(organization, name="quiet")
    for _ in range(3):
        assert api_get(client, key, "/api/v1/sources").status_code == 200
    response = api_get(client, key, "/api/v1/sources")
    _assert_json_error(response, 429, "rate_limited")
    assert int(response["Retry-After"]) == window_held
    assert api_get(client, other_key, "/api/v1/sources").status_code == 200


def test_with_redis_down_each_key_is_still_limited_and_the_api_answers(
    client, organization, settings, window_held, caplog, monkeypatch
):
    # The limit, counted in this process's memory while the cache is a closed port: the default's 600
    # a minute lowered to 30, which is counted the same way in 570 requests fewer.
    from conftest import REDIS_DOWN_CACHES
    from webhooks.api import limits

    # The warning's clock held too: a loaded machine took over a minute for 603 requests, and the
    # warning is rightly said again after one (test_the_outage_warning_is_said_again_after_a_minute).
    monkeypatch.setattr(limits, "warning_clock", lambda: 1_000.0)
    assert settings.API_RATE_LIMIT == "600/min"
    settings.API_RATE_LIMIT = "30/min"
    source = make_source(organization)
    destination, _ = make_destination(organization, "http://127.0.0.1:9/hook", sources=[source])
    _, key = make_key(organization, name="busy")
    _, other_key = make_key(organization, name="quiet")
    settings.CACHES = REDIS_DOWN_CACHES
    for _ in range(30):
        assert api_get(client, key, "/api/v1/sources").status_code == 200
    response = api_get(client, key, "/api/v1/sources")
    _assert_json_error(response, 429, "rate_limited")
    assert int(response["Retry-After"]) == window_held
    # Otherwise the API works on PostgreSQL alone: another key reads and writes.
    assert api_get(client, other_key, "/api/v1/sources").json()["results"][0]["id"] == source.pk
    response = api_post(client, other_key, f"/api/v1/destinations/{destination.pk}/pause")
    assert response.status_code == 200, response.content
    destination.refresh_from_db()
    assert destination.paused_at is not None
    # Said once, not on each of the 33 requests.
    said = [r for r in caplog.records if r.name == "webhooks.api.limits"]
    assert len(said) == 1 and said[0].levelname == "WARNING" and "this process only" in said[0].getMessage()


def test_the_outage_warning_is_said_again_after_a_minute(monkeypatch, caplog):
    from webhooks.api import limits

    now = [1_000.0]
    monkeypatch.setattr(limits, "warning_clock", lambda: now[0])
    for elapsed in (0, 30, 59.9, 60, 61, 120):
        now[0] = 1_000.0 + elapsed
        limits._warn_counted_locally("rate", ConnectionError("refused"))
    said = [r for r in caplog.records if r.name == "webhooks.api.limits"]
    assert len(said) == 3  # at 0, 60 and 120 s


def test_unknown_paths_and_methods_answer_json(client, organization):
    _, key = make_key(organization)
    _assert_json_error(api_get(client, key, "/api/v1/nothing/here"), 404, "not_found")
    _assert_json_error(api_post(client, key, "/api/v1/events"), 405, "method_not_allowed")
    response = client.post(
        "/api/v1/destinations/1/pause", "{not json", content_type="application/json", HTTP_AUTHORIZATION=f"Bearer {key}"
    )
    assert response.status_code in (400, 404)  # never a 500


def test_api_responses_are_never_cached(client, organization):
    _, key = make_key(organization)
    assert "no-store" in api_get(client, key, "/api/v1/events")["Cache-Control"]


def test_a_key_belongs_to_the_organization_not_to_who_made_it(client, organization):
    # Keys are the organization's, not a person's: removing the member who made one does not matter,
    # and the person's role never widens what the key may do.
    user = UserFactory(email="leaving@acme.example")
    membership = Membership.objects.create(user=user, organization=organization, role=Membership.Role.ADMIN)
    from organizations.api_keys import api_key_create

    _, key = api_key_create(organization=organization, name="by-admin", access=ApiKey.Access.READ_ONLY, actor=user)
    source = make_source(organization)
    event = make_event(source)
    destination, _ = make_destination(organization, "http://127.0.0.1:9/hook", sources=[source])
    membership.delete()
    response = api_get(client, key, "/api/v1/events")
    assert response.status_code == 200, response.content
    assert [item["id"] for item in response.json()["results"]] == [str(event.pk)]
    # Made by an admin, the read-only key still changes nothing.
    _assert_json_error(api_post(client, key, f"/api/v1/destinations/{destination.pk}/pause"), 403, "read_only_key")
    destination.refresh_from_db()
    assert destination.paused_at is None


def test_a_trailing_slash_is_optional(client, organization):
    _, key = make_key(organization)
    source = make_source(organization)
    assert api_get(client, key, "/api/v1/sources/").status_code == 200
    assert api_get(client, key, f"/api/v1/sources/{source.pk}/").json()["id"] == source.pk
    assert api_get(client, key, "/api/v1/sources//").status_code == 404


def test_a_right_key_passes_from_an_address_past_the_failure_limit(client, organization, settings, window_held):
    # The default limit: a scanner, or a job's stale key, behind the same address as a tenant's script.
    assert settings.API_AUTH_FAILURE_LIMIT == "30/min"
    _, key = make_key(organization)
    for _ in range(30):
        _assert_json_error(api_get(client, UNKNOWN_KEY, "/api/v1/sources"), 401, "invalid_api_key")
    response = api_get(client, UNKNOWN_KEY, "/api/v1/sources")
    body = _assert_json_error(response, 429, "rate_limited")
    assert set(body) == {"error", "detail"} and "wrong API keys" in body["detail"]
    assert int(response["Retry-After"]) == window_held
    for _ in range(3):
        assert api_get(client, key, "/api/v1/sources").status_code == 200
        _assert_json_error(api_get(client, UNKNOWN_KEY, "/api/v1/sources"), 429, "rate_limited")


def test_past_the_failure_limit_wrong_keys_cost_at_most_one_indexed_lookup(client, organization, settings, window_held):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    settings.API_AUTH_FAILURE_LIMIT = "3/min"
    revoked, revoked_key = make_key(organization, name="old")
    api_key_revoke(api_key=revoked)
    for wrong in (UNKNOWN_KEY, "not-a-key", UNKNOWN_KEY):
        _assert_json_error(api_get(client, wrong, "/api/v1/sources"), 401, "invalid_api_key")

    def key_queries(header, **extra):
        with CaptureQueriesContext(connection) as captured:
            response = client.get("/api/v1/sources", HTTP_AUTHORIZATION=header, **extra)
        return response, [query["sql"] for query in captured if "organizations_apikey" in query["sql"]]

    for header in ("Bearer not-a-key", "Basic dXNlcjpwYXNz", "Bearer hl_short_secret"):
        response, queries = key_queries(header)  # malformed: refused without a query
        _assert_json_error(response, 429, "rate_limited")
        assert queries == [] and int(response["Retry-After"]) == window_held
    for header in (f"Bearer {UNKNOWN_KEY}", f"Bearer {revoked_key}"):
        response, queries = key_queries(header)  # well formed: one lookup by the prefix
        _assert_json_error(response, 429, "rate_limited")
        assert len(queries) == 1 and '"prefix" =' in queries[0]
    # Counted per address: another one still gets 401, and a request without a key is not counted.
    response, _ = key_queries(f"Bearer {UNKNOWN_KEY}", REMOTE_ADDR="192.0.2.7")
    _assert_json_error(response, 401, "invalid_api_key")
    _assert_json_error(client.get("/api/v1/sources"), 401, "not_authenticated")


def test_right_keys_are_not_counted_as_failures(client, organization, settings, window_held):
    settings.API_AUTH_FAILURE_LIMIT = "2/min"
    _, key = make_key(organization)
    for _ in range(5):
        assert api_get(client, key, "/api/v1/sources").status_code == 200
    # Nothing was counted: the address still has both of its failures before it must wait.
    for _ in range(2):
        _assert_json_error(api_get(client, UNKNOWN_KEY, "/api/v1/sources"), 401, "invalid_api_key")
    _assert_json_error(api_get(client, UNKNOWN_KEY, "/api/v1/sources"), 429, "rate_limited")


def test_with_redis_down_wrong_keys_are_still_limited_and_right_ones_pass(client, organization, settings, window_held):
    from conftest import REDIS_DOWN_CACHES

    _, key = make_key(organization)
    settings.CACHES = REDIS_DOWN_CACHES
    settings.API_AUTH_FAILURE_LIMIT = "2/min"
    for _ in range(2):
        _assert_json_error(api_get(client, UNKNOWN_KEY, "/api/v1/sources"), 401, "invalid_api_key")
    response = api_get(client, UNKNOWN_KEY, "/api/v1/sources")
    _assert_json_error(response, 429, "rate_limited")
    assert int(response["Retry-After"]) == window_held
    assert api_get(client, key, "/api/v1/sources").status_code == 200
    other_address = client.get("/api/v1/sources", HTTP_AUTHORIZATION=f"Bearer {UNKNOWN_KEY}", REMOTE_ADDR="192.0.2.7")
    _assert_json_error(other_address, 401, "invalid_api_key")


def test_the_in_memory_fallback_keeps_one_window_and_a_bounded_number_of_subjects():
    from webhooks.api.limits import LocalWindowCounter

    counter = LocalWindowCounter(max_subjects=2)
    assert [counter.hit("a", period=60, window=1) for _ in range(3)] == [1, 2, 3]
    counter.hit("b", period=60, window=1)
    counter.hit("a", period=60, window=1)  # "a" hit last: "b" is the one forgotten for "c"
    counter.hit("c", period=60, window=1)
    assert counter.hit("a", period=60, window=1) == 5 and counter.hit("b", period=60, window=1) == 1
    assert counter.hit("a", period=60, window=2) == 1  # a new window starts from nothing
    assert counter.hit("a", period=1, window=1) == 1  # as does another period


def test_a_server_error_under_the_api_is_json_and_elsewhere_the_html_page(organization, owner, monkeypatch):
    from webhooks.api import views

    def broken(**kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr(views, "sources_for_organization", broken)
    _, key = make_key(organization)
    client = Client(raise_request_exception=False)
    response = api_get(client, key, "/api/v1/sources")
    assert response.status_code == 500 and response["Content-Type"] == "application/json"
    assert response.json() == {"error": "server_error", "detail": "something went wrong on our side"}
    monkeypatch.setattr("webhooks.views.dashboard.home.HomeView.get", lambda *args, **kwargs: broken())
    client.force_login(owner)
    page = client.get("/")
    assert page.status_code == 500 and page["Content-Type"].startswith("text/html")


@pytest.mark.parametrize("path", ["/api/", "/api", "/api/v2/events", "/api/v1/nothing"])
def test_every_unknown_path_under_the_api_is_its_json_404(client, organization, path):
    _, key = make_key(organization)
    _assert_json_error(api_get(client, key, path), 404, "not_found")


@pytest.mark.parametrize("params", [{"format": "api"}, {"format": "xml"}])
def test_a_format_the_api_does_not_have_is_its_json_404(client, organization, params):
    _, key = make_key(organization)
    _assert_json_error(api_get(client, key, "/api/v1/sources", **params), 404, "not_found")
