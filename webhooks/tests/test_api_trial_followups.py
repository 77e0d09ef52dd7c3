"""From a REST API trial: a caller without a valid key is told so (401) before any 406 for its Accept
header; a name that is not an option is echoed cut and escaped; a destination URL with a #fragment is
refused wherever a URL is set, while a destination that already has one keeps working."""

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.urls import reverse

from organizations.models import ApiKey
from webhooks.models import Destination
from webhooks.providers.base import InvalidOptions
from webhooks.providers.registry import get_provider
from webhooks.services import payload_filters
from webhooks.services.destinations import DestinationError, event_type_patterns_problem
from webhooks.services.text import echoable_text

from .api_helpers import api_patch, api_post, make_key
from .factories import make_destination, make_source

pytestmark = pytest.mark.django_db

NOT_JSON = "text/html"


@pytest.fixture
def writer_key(organization):
    return make_key(organization, access=ApiKey.Access.READ_WRITE, name="ops-script")[1]


# --- 401 before 406 ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "authorization",
    [None, "Bearer hl_nope_notakey", "Basic dXNlcjpwYXNz"],
    ids=["no-credentials", "wrong-key", "wrong-scheme"],
)
def test_a_caller_without_a_valid_key_gets_401_as_json_whatever_it_accepts(client, authorization):
    headers = {"HTTP_ACCEPT": NOT_JSON}
    if authorization:
        headers["HTTP_AUTHORIZATION"] = authorization
    response = client.get("/api/v1/events", **headers)
    assert response.status_code == 401
    assert response["Content-Type"] == "application/json"
    assert response["WWW-Authenticate"] == 'Bearer realm="api"'
    body = response.json()
    assert body["error"] in ("not_authenticated", "invalid_api_key") and body["detail"]


def test_an_authenticated_caller_that_accepts_no_json_still_gets_406(client, writer_key):
    response = client.get("/api/v1/events", HTTP_ACCEPT=NOT_JSON, HTTP_AUTHORIZATION=f"Bearer {writer_key}")
    assert response.status_code == 406
    assert response["Content-Type"] == "application/json"
    assert response.json()["error"] == "not_acceptable"


# --- Names echoed in errors ------------------------------------------------------------------------


def test_echoable_text_cuts_long_text_and_escapes_control_characters():
    assert echoable_text("signature_header") == "signature_header"
    long = echoable_text("k" * 10_000)
    assert len(long) == 60 and long.endswith("…")
    assert echoable_text("a\nb\x1b[31m\u2028c") == "a\\nb\\x1b[31m\\u2028c"


def test_an_unknown_option_is_echoed_cut_and_escaped_by_the_api(client, writer_key):
    long_name = "x" * 5000
    response = api_post(
        client,
        writer_key,
        "/api/v1/sources",
        {"provider": "github", "name": "GitHub", "secret": "s" * 32, "options": {long_name: 1}},
    )
    assert response.status_code == 400
    message = response.json()["fields"]["options"][0]
    assert "unknown option for github: " in message
    assert long_name not in message and len(message) < 200 and message.endswith("…”")


def test_an_unknown_option_in_a_source_update_is_echoed_cut_too(client, organization, writer_key):
    source = make_source(organization, provider="github", secret="s" * 32)
    response = api_patch(client, writer_key, f"/api/v1/sources/{source.pk}", {"options": {"bad\nname" + "y" * 900: 1}})
    assert response.status_code == 400
    message = response.json()["fields"]["options"][0]
    assert "bad\\nname" in message and "\n" not in message and len(message) < 200


def test_several_unknown_options_are_each_cut():
    with pytest.raises(InvalidOptions) as refused:
        get_provider("github").clean_options({"a" * 300: 1, "b" * 300: 2})
    message = str(refused.value)
    assert message.startswith("unknown options for github: ") and len(message) < 200


def test_an_unknown_field_of_a_body_is_named_cut_and_escaped(client, writer_key):
    long_name = "source\n" + "s" * 5000
    response = api_post(client, writer_key, "/api/v1/sources", {"provider": "github", "name": "G", long_name: 1})
    assert response.status_code == 400
    (named,) = response.json()["fields"]
    assert named.startswith("source\\nsss") and named.endswith("…") and len(named) == 60


def test_payload_filter_and_event_type_pattern_errors_escape_what_they_echo():
    with pytest.raises(payload_filters.PayloadFilterError) as refused:
        payload_filters.check_payload_filters([{"path": "a", "op": "equals", "value": 1, "x\x1b" * 200: 1}])
    assert "\x1b" not in str(refused.value) and len(str(refused.value)) < 200
    problem = event_type_patterns_problem(["invoice.[\x1b" + "z" * 200])
    assert "\x1b" not in problem and len(problem) < 200


# --- URL fragments ---------------------------------------------------------------------------------

FRAGMENT_REFUSAL = "#fragment is never sent"


@pytest.mark.parametrize("url", ["http://127.0.0.1:9/hook#section", "http://127.0.0.1:9/hook#"])
def test_the_api_refuses_a_destination_url_with_a_fragment(client, writer_key, url):
    response = api_post(client, writer_key, "/api/v1/destinations", {"name": "Billing", "url": url})
    assert response.status_code == 400
    assert FRAGMENT_REFUSAL in str(response.json())
    assert not Destination.objects.exists()


def test_the_dashboard_form_refuses_a_fragment(client, owner, organization):
    client.force_login(owner)
    response = client.post(
        reverse("dashboard:destination_create", args=[organization.slug]),
        {"name": "Billing", "url": "https://127.0.0.1:9/hook#top", "max_concurrency": "10", "timeout_seconds": "15"},
    )
    assert response.status_code == 200 and FRAGMENT_REFUSAL in response.content.decode()
    assert not Destination.objects.exists()


def test_the_create_destination_command_refuses_a_fragment(organization):
    with pytest.raises(CommandError, match=FRAGMENT_REFUSAL):
        call_command("create_destination", "--org", organization.slug, "--name", "B", "--url", "http://127.0.0.1:9/#x")


def _with_a_fragment_saved_before(organization) -> Destination:
    destination, _ = make_destination(organization, "http://127.0.0.1:9/hook")
    Destination.objects.filter(pk=destination.pk).update(url="http://127.0.0.1:9/hook#kept")
    destination.refresh_from_db()
    return destination


def test_a_destination_saved_with_a_fragment_before_can_still_be_edited_through_the_api(
    client, organization, writer_key
):
    destination = _with_a_fragment_saved_before(organization)
    path = f"/api/v1/destinations/{destination.pk}"
    renamed = api_patch(client, writer_key, path, {"name": "Renamed"})
    assert renamed.status_code == 200, renamed.json()
    destination.refresh_from_db()
    assert destination.name == "Renamed" and destination.url == "http://127.0.0.1:9/hook#kept"
    # Another URL is a new value, checked as any.
    moved = api_patch(client, writer_key, path, {"url": "http://127.0.0.1:9/other#new"})
    assert moved.status_code == 400 and FRAGMENT_REFUSAL in str(moved.json())
    assert api_patch(client, writer_key, path, {"url": "http://127.0.0.1:9/other"}).status_code == 200


def test_a_destination_saved_with_a_fragment_before_can_still_be_edited_in_the_dashboard(client, owner, organization):
    destination = _with_a_fragment_saved_before(organization)
    client.force_login(owner)
    edit = reverse("dashboard:destination_edit", args=[organization.slug, destination.pk])
    response = client.post(
        edit,
        {"name": "Renamed", "url": destination.url, "max_concurrency": "10", "timeout_seconds": "15"},
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    destination.refresh_from_db()
    assert destination.name == "Renamed" and destination.url == "http://127.0.0.1:9/hook#kept"


def test_the_shared_check_names_the_fragment():
    from webhooks.services.destinations import destination_check_url

    with pytest.raises(DestinationError, match="remove it"):
        destination_check_url("https://hooks.example.com/in#x")


def test_the_admin_refuses_a_new_fragment_and_keeps_an_old_one_on_other_edits(client, organization, django_user_model):
    from .test_admin import destination_form

    admin_user = django_user_model.objects.create_superuser("root@hookline.example", "correct horse battery")
    client.force_login(admin_user)
    destination = _with_a_fragment_saved_before(organization)
    change = reverse("admin:webhooks_destination_change", args=[destination.pk])
    refused = client.post(change, destination_form(destination, url="http://127.0.0.1:9/other#new"))
    assert refused.status_code == 200 and FRAGMENT_REFUSAL in refused.content.decode()
    renamed = client.post(change, destination_form(destination, name="Renamed"))
    assert renamed.status_code == 302
    destination.refresh_from_db()
    assert destination.name == "Renamed" and destination.url == "http://127.0.0.1:9/hook#kept"
