"""The dashboard's destination form in titled groups: each field in its group, in the page's order,
with the error summary, the errors in their group and the focus on the first thing to correct."""

import re
from html.parser import HTMLParser

import pytest
from django import forms
from django.urls import reverse

from webhooks.forms import DestinationForm, FieldsetsMixin
from webhooks.models import Destination

from .factories import make_destination, make_source

pytestmark = pytest.mark.django_db

SECTIONS = ["Where to send", "Which events", "Delivery policy", "Custom headers"]


class Sections(HTMLParser):
    """The form's groups as the page shows them: title, help and the fields inside, in order."""

    def __init__(self):
        super().__init__()
        self.sections: list[dict] = []
        self._depth = 0  # fieldsets open inside the current group (a checkbox list is one)
        self._in = None  # what the text read now belongs to: "title" or "help"

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        classes = (attrs.get("class") or "").split()
        if tag == "fieldset" and "form-section" in classes:
            self.sections.append(
                {
                    "id": attrs["id"],
                    "title": "",
                    "help": "",
                    "describedby": attrs.get("aria-describedby"),
                    "has_error": "section-has-error" in classes,
                    "fields": [],
                }
            )
            self._depth = 1
        elif tag == "fieldset" and self._depth:
            self._depth += 1
        elif self._depth and tag == "h2":
            self._in = "title"
        elif self._depth and "section-help" in classes:
            self._in = "help"
            self.sections[-1]["help_id"] = attrs.get("id")
        elif self._depth and (attrs.get("id") or "").startswith("field-"):
            self.sections[-1]["fields"].append(attrs["id"].removeprefix("field-"))

    def handle_endtag(self, tag):
        if tag in ("h2", "p"):
            self._in = None
        elif tag == "fieldset" and self._depth:
            self._depth -= 1

    def handle_data(self, data):
        if self._in:
            self.sections[-1][self._in] += data


def sections_of(html: str) -> list[dict]:
    parser = Sections()
    parser.feed(html)
    return parser.sections


def test_the_form_shows_its_fields_in_titled_groups_each_with_a_short_help(client, organization, owner):
    make_source(organization, name="Stripe live")
    client.force_login(owner)

    html = client.get(reverse("dashboard:destination_create", args=["acme"])).content.decode()

    sections = sections_of(html)
    assert [section["title"] for section in sections] == SECTIONS
    assert [section["fields"] for section in sections] == [
        ["name", "url"],
        ["sources", "event_types", "payload_filters"],
        [
            "timeout_seconds",
            "max_concurrency",
            "rate_limit_per_second",
            "retry_schedule",
            "max_attempts",
            "max_retry_age_hours",
            "retry_client_errors",
        ],
        ["custom_headers_set"],  # nothing to remove on a new destination
    ]
    for section in sections:
        # The help is read with the group's name (its legend) when a screen reader enters it.
        assert section["help"] and section["describedby"] == section["help_id"], section
        assert not section["has_error"]
    # The fields keep their own labels, help and the checkbox list its own legend.
    # The group points to its help (Django links help to a control, not to a group of them).
    assert '<fieldset aria-describedby="id_sources_helptext"><legend>Sources</legend><div id="id_sources">' in html
    assert '<label for="id_url">URL</label>' in html
    assert 'aria-describedby="id_retry_schedule_helptext"' in html
    assert "autofocus" not in html and "form-error-summary" not in html


def test_the_edit_form_groups_the_ticks_that_remove_headers_with_the_headers(client, organization, owner):
    source = make_source(organization)
    destination, _ = make_destination(
        organization, "http://127.0.0.1:9/hook", sources=[source], custom_headers={"X-Api-Key": "key-Q1w2e3r4"}
    )
    client.force_login(owner)

    html = client.get(reverse("dashboard:destination_edit", args=["acme", destination.pk])).content.decode()

    sections = sections_of(html)
    assert [section["title"] for section in sections] == SECTIONS
    assert sections[-1]["fields"] == ["custom_headers_set", "custom_headers_remove"]
    assert "key-Q1w2e3r4" not in html


def test_every_field_of_the_form_is_in_a_declared_group(organization):
    destination, _ = make_destination(organization, "http://127.0.0.1:9/hook", custom_headers={"X-A": "value-1234"})
    for form in (
        DestinationForm(organization=organization),
        DestinationForm(organization=organization, destination=destination),
    ):
        sections = form.sections()
        assert [section.title for section in sections] == SECTIONS
        assert [field.name for section in sections for field in section.fields] == list(form.fields)
    # The ids the page gives the groups (section-<slug>).
    assert [section.slug for section in sections] == [
        "where-to-send",
        "which-events",
        "delivery-policy",
        "custom-headers",
    ]


def test_a_field_left_out_of_the_groups_is_still_shown_in_a_last_group():
    # A field added to the form but not to its fieldsets must not vanish from the page.
    class Grouped(FieldsetsMixin, forms.Form):
        fieldsets = (("First", {"fields": ("a",), "description": "The first."}),)
        a = forms.CharField()
        b = forms.CharField()
        hidden = forms.CharField(widget=forms.HiddenInput)

    sections = Grouped().sections()

    assert [(section.title, [field.name for field in section.fields]) for section in sections] == [
        ("First", ["a"]),
        ("Other settings", ["b"]),
    ]


def test_a_refused_form_names_the_fields_in_page_order_marks_their_groups_and_focuses_the_first(
    client, organization, owner
):
    source = make_source(organization, name="Stripe live")
    client.force_login(owner)

    response = client.post(
        reverse("dashboard:destination_create", args=["acme"]),
        {
            "name": "Billing",
            "url": "http://127.0.0.1:9/billing",
            "sources": [source.pk],
            "event_types": "invoice.*",
            "timeout_seconds": "15",
            "retry_schedule": "1h30m",
            "max_attempts": "3",
            "custom_headers_set": "Host: example.com",
        },
    )

    assert response.status_code == 200
    assert not Destination.objects.exists()
    html = response.content.decode()
    summary = re.search(r'<p class="notice notice-bad form-error-summary" role="alert">(.*?)</p>', html).group(1)
    assert summary == (
        'To correct below: <a href="#field-retry_schedule">Retry schedule</a>, '
        '<a href="#field-custom_headers_set">Custom headers</a>.'
    )
    assert html.index("form-error-summary") < html.index('id="section-where-to-send"')
    sections = {section["title"]: section for section in sections_of(html)}
    assert [title for title, section in sections.items() if section["has_error"]] == [
        "Delivery policy",
        "Custom headers",
    ]
    policy = re.search(
        r'<fieldset class="form-section section-has-error" id="section-delivery-policy".*?</fieldset>', html, re.S
    )
    assert '<ul class="errorlist" id="id_retry_schedule_error">' in policy.group(0)
    # Only the first field to correct takes the focus, and it says why it is refused.
    assert html.count("autofocus") == 1
    control = re.search(r'<input [^>]*name="retry_schedule"[^>]*>', html).group(0)
    assert "autofocus" in control and 'aria-invalid="true"' in control
    assert 'aria-describedby="id_retry_schedule_helptext id_retry_schedule_error"' in control
    # What was typed is kept, but for the custom headers, which hold secrets.
    assert 'value="invoice.*"' in html and 'value="3"' in html
    assert "example.com" not in html.split('id="section-custom-headers"')[1].split("</textarea>")[0]


def test_a_form_without_groups_is_shown_flat_and_focuses_its_first_refused_field(client, organization, owner):
    client.force_login(owner)

    html = client.post(reverse("dashboard:source_create", args=["acme", "stripe"]), {"name": ""}).content.decode()

    assert "form-section" not in html
    assert re.search(r'<input type="text" name="name"[^>]*autofocus', html)


def test_a_refused_list_of_options_focuses_its_first_option_only(client, organization, owner):
    # The attributes given to a radio group or a checkbox list go to each of its options: the page
    # must still have one control with autofocus, not one per option.
    client.force_login(owner)

    html = client.post(
        reverse("dashboard:api_keys", args=["acme"]), {"name": "deploy", "access": "everything"}
    ).content.decode()

    assert "form-error-summary" in html
    assert html.count("autofocus") == 1
    assert re.search(r'<input type="radio" name="access" value="read_only"[^>]*autofocus[^>]*id="id_access_0"', html)

    source = make_source(organization, name="Stripe live")
    html = client.post(
        reverse("dashboard:destination_create", args=["acme"]),
        {"name": "Billing", "url": "http://127.0.0.1:9/billing", "sources": [source.pk, source.pk + 1000]},
    ).content.decode()

    assert html.count("autofocus") == 1
    assert re.search(r'<input type="checkbox" name="sources"[^>]*autofocus[^>]*id="id_sources_0"', html)
