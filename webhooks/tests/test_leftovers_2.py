"""Leftovers of earlier fixes: the admin's object pages read ids in ASCII only, event types and
patterns with bidirectional controls shown escaped on the pages the first fix missed, the rotation
forms' times to the second, and the API reference following the document's $ref."""

import dataclasses
from datetime import timedelta

import pytest
from django.contrib import admin as django_admin
from django.contrib.auth import get_user_model
from django.contrib.messages import get_messages
from django.test import Client
from django.urls import reverse
from django.utils import timezone
from django_celery_beat.models import IntervalSchedule

from config.formats import to_the_second
from webhooks.admin_site import AsciiObjectIdsMixin
from webhooks.api.reference import UnresolvedReference, api_reference
from webhooks.api.schema_view import api_document
from webhooks.models import Source
from webhooks.services import sources as source_services
from webhooks.services.destinations import destination_rotate_secret

from .api_helpers import make_event
from .factories import make_destination, make_source

pytestmark = pytest.mark.django_db

RECEIVER = "http://127.0.0.1:9/hooks"
ARABIC_INDIC = str.maketrans("0123456789", "٠١٢٣٤٥٦٧٨٩")
FULLWIDTH = str.maketrans("0123456789", "０１２３４５６７８９")


@pytest.fixture
def staff_client(db):
    staff = Client()
    staff.force_login(get_user_model().objects.create_superuser("root@hookline.example", "correct horse battery"))
    return staff


# --- 1. An admin object URL with an id in other digits than ASCII's names no object ----------------------


def test_an_admin_object_page_with_an_id_in_other_digits_answers_as_for_no_such_object(staff_client, organization):
    source = make_source(organization)
    destination, _ = make_destination(organization, RECEIVER, sources=[source])
    schedule = IntervalSchedule.objects.create(every=17, period=IntervalSchedule.SECONDS)  # a package's admin
    pages = [
        ("admin:webhooks_source_change", source.pk, ARABIC_INDIC),
        ("admin:webhooks_source_history", source.pk, FULLWIDTH),
        ("admin:webhooks_source_delete", source.pk, ARABIC_INDIC),
        ("admin:webhooks_destination_change", destination.pk, FULLWIDTH),
        ("admin:organizations_organization_change", organization.pk, ARABIC_INDIC),
        ("admin:django_celery_beat_intervalschedule_change", schedule.pk, ARABIC_INDIC),
    ]
    for name, pk, digits in pages:
        written = str(pk).translate(digits)
        assert written != str(pk)
        # As written in ASCII, the page is the object's.
        assert staff_client.get(reverse(name, args=[pk])).status_code == 200, name
        answer = staff_client.get(reverse(name, args=[written]))
        # The admin's answer for an id that names nothing: back to the index, saying so.
        assert answer.status_code == 302, (name, answer.status_code)
        assert answer["Location"] == reverse("admin:index")
        said = [str(message) for message in get_messages(answer.wsgi_request)]
        assert any(f"ID “{written}” doesn’t exist" in text for text in said), said

    # Nor does a POST reach it: the source is not deleted through such an id.
    written = str(source.pk).translate(ARABIC_INDIC)
    staff_client.post(reverse("admin:webhooks_source_delete", args=[written]), {"post": "yes"})
    assert Source.objects.filter(pk=source.pk).exists()


def test_every_registered_model_admin_reads_object_ids_in_ascii_only():
    for model, model_admin in django_admin.site._registry.items():
        assert isinstance(model_admin, AsciiObjectIdsMixin), model


# --- 2. Bidirectional controls shown escaped on the rest of the pages ------------------------------------

REVERSED_TYPE = "invoice.\u202ediap"  # a browser shows "invoice.paid"
REVERSED_PATTERN = "order.\u202e*diap"  # takes no invoice.* type
CONTROLS = ("\u202e", "\u2066", "\u2069", "\u200f")


def _no_raw_controls(page: str) -> None:
    for control in CONTROLS:
        assert control not in page, repr(control)


def test_not_sent_reasons_and_subscription_patterns_show_controls_escaped(client, organization, owner, staff_client):
    source = make_source(organization)
    destination, _ = make_destination(organization, RECEIVER, sources=[source], event_types=[REVERSED_PATTERN])
    event = make_event(source, event_type=REVERSED_TYPE)  # processed, refused by the destination's pattern
    client.force_login(owner)
    slug = organization.slug

    event_page = client.get(reverse("dashboard:event_detail", args=[slug, event.pk])).content.decode()
    admin_event = staff_client.get(reverse("admin:webhooks_webhookevent_change", args=[event.pk])).content.decode()
    for page in (event_page, admin_event):
        assert "Not sent to" in page
        # The reason names the pattern and the type, escaped.
        assert "order.\\u202e*diap" in page and "invoice.\\u202ediap" in page
        _no_raw_controls(page)

    pages = [
        client.get(reverse("dashboard:destination_detail", args=[slug, destination.pk])),
        client.get(reverse("dashboard:destinations", args=[slug])),
        client.get(reverse("dashboard:source_detail", args=[slug, source.pk])),
        staff_client.get(reverse("admin:webhooks_destination_change", args=[destination.pk])),
    ]
    for answer in pages:
        page = answer.content.decode()
        assert answer.status_code == 200
        assert "order.\\u202e*diap" in page, answer.wsgi_request.path
        _no_raw_controls(page)

    destination.subscriptions.get().refresh_from_db()
    assert destination.subscriptions.get().event_types == [REVERSED_PATTERN]  # stored exactly


def test_several_patterns_are_each_escaped_and_html_escaped_once(client, organization, owner):
    source = make_source(organization)
    destination, _ = make_destination(
        organization, RECEIVER, sources=[source], event_types=["a&b.\u2066x\u2069", "order.*"]
    )
    client.force_login(owner)
    page = client.get(reverse("dashboard:destination_detail", args=[organization.slug, destination.pk]))
    text = page.content.decode()
    assert "a&amp;b.\\u2066x\\u2069, order.*" in text
    assert "&amp;amp;" not in text


# --- 3. The rotation forms say the older secret's end to the second ---------------------------------------


def test_the_rotation_forms_and_refusals_say_the_older_secrets_end_to_the_second(client, organization, owner):
    client.force_login(owner)
    source = make_source(organization)
    source_services.source_rotate_secret(source=source, new_secret="whsec_second", overlap_seconds=3600)
    source.refresh_from_db()
    destination, _ = make_destination(organization, RECEIVER, sources=[source])
    destination_rotate_secret(destination=destination, overlap_seconds=3600)
    destination.refresh_from_db()
    # Not on a whole minute, so that a time without seconds cannot pass for it.
    until = timezone.now().replace(microsecond=0, second=37) + timedelta(hours=1)
    Source.objects.filter(pk=source.pk).update(previous_secret_expires_at=until)
    destination.previous_secret_expires_at = until
    destination.save(update_fields=["previous_secret_expires_at"])
    shown = to_the_second(until)
    assert shown.endswith(":37 UTC")

    for url in (
        reverse("dashboard:source_rotate", args=[organization.slug, source.pk]),
        reverse("dashboard:destination_rotate", args=[organization.slug, destination.pk]),
    ):
        page = client.get(url).content.decode()
        assert f"still works until {shown}." in page, url

    source.refresh_from_db()
    with pytest.raises(source_services.SourceError, match=f"still works until {shown},"):
        source_services.source_rotate_secret(source=source, new_secret="whsec_third", overlap_seconds=0)


# --- 5. The API reference follows the document's $ref ------------------------------------------------------


def _document_with_references() -> dict:
    return {
        "openapi": "3.0.3",
        "info": {"title": "T", "version": "1"},
        "paths": {
            "/api/v1/things": {
                "parameters": [{"$ref": "#/components/parameters/Org~1Header"}],
                "get": {
                    "tags": ["things"],
                    "parameters": [{"$ref": "#/components/parameters/Cursor"}],
                    "responses": {"200": {"$ref": "#/components/responses/Things"}},
                },
                "post": {
                    "tags": ["things"],
                    "requestBody": {"$ref": "#/components/requestBodies/NewThing"},
                    "responses": {"400": {"$ref": "#/components/responses/Invalid"}},
                },
            }
        },
        "components": {
            "schemas": {
                "Thing": {"type": "object", "properties": {"name": {"type": "string"}}},
                "Name": {"type": "string", "maxLength": 40, "description": "What it is called."},
                "NewThing": {
                    "type": "object",
                    "required": ["name"],
                    "properties": {"name": {"$ref": "#/components/schemas/Name"}},
                },
            },
            "parameters": {
                "Cursor": {
                    "name": "cursor",
                    "in": "query",
                    "description": "Where the page starts.",
                    "schema": {"type": "string", "minLength": 1},
                },
                "Org/Header": {"name": "X-Org", "in": "header", "required": True, "schema": {"type": "string"}},
            },
            "requestBodies": {
                "NewThing": {
                    "required": True,
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/NewThing"}}},
                }
            },
            "responses": {
                "Things": {
                    "description": "The things.",
                    "content": {
                        "application/json": {
                            "schema": {"type": "array", "items": {"$ref": "#/components/schemas/Thing"}}
                        }
                    },
                },
                "Invalid": {"description": "Not a thing.", "headers": {"X-Reason": {"schema": {"type": "string"}}}},
            },
        },
    }


def test_the_api_reference_follows_references_to_parameters_bodies_and_answers():
    listed, created = api_reference(_document_with_references()).endpoints

    assert (listed.method, created.method) == ("GET", "POST")
    cursor = listed.query_parameters[0]
    assert (cursor.name, cursor.type, cursor.constraints, cursor.description) == (
        "cursor",
        "string",
        ["at least 1 characters"],
        "Where the page starts.",
    )
    # The path item's parameter, for each of its operations.
    assert [field.name for field in listed.header_parameters] == ["X-Org"]
    assert [field.name for field in created.header_parameters] == ["X-Org"]
    assert [(answer.status, answer.description, answer.body) for answer in listed.answers] == [
        ("200", "The things.", "array of Thing")
    ]
    assert created.body_required
    name = created.body_fields[0]
    assert (name.name, name.required, name.constraints) == ("name", True, ["at most 40 characters"])
    assert created.answers[0].headers == ["X-Reason"]


@pytest.mark.parametrize(
    "reference",
    ["#/components/parameters/Missing", "https://example.com/other.json#/x", "#/components/parameters/Loop"],
)
def test_a_reference_to_nothing_fails_the_build_saying_which(reference):
    document = _document_with_references()
    document["components"]["parameters"]["Loop"] = {"$ref": "#/components/parameters/Loop"}
    document["paths"]["/api/v1/things"]["get"]["parameters"] = [{"$ref": reference}]
    with pytest.raises(UnresolvedReference, match=reference.rsplit("/", 1)[-1]):
        api_reference(document)


def test_todays_document_builds_with_every_reference_followed(client):
    reference = api_reference(api_document())
    assert reference.endpoints
    for endpoint in reference.endpoints:
        for field in (*endpoint.path_parameters, *endpoint.query_parameters, *endpoint.header_parameters):
            assert field.name and field.type
    assert dataclasses.asdict(reference)  # every part is plain data
