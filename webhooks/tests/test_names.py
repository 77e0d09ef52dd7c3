"""Names a tenant gives sources and destinations: shown in the dashboard and in email subjects,
so they hold no line breaks or other control characters (a CRLF in a subject is a refused header)."""

import pytest
from django.urls import reverse

from webhooks.models import Destination, Source
from webhooks.services.destinations import DestinationError, destination_create, destination_update
from webhooks.services.sources import SourceError, source_create, source_update

from .factories import STRIPE_SECRET, make_destination, make_source

pytestmark = pytest.mark.django_db

BAD_NAMES = [
    "Evil\r\nBcc: someone@evil.example",
    "two\nlines",
    "tab\there",
    "nul\x00",
    "next line\x85",
    "line separator\u2028",
    "right-to-left \u202egnp.exe",
]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_the_services_refuse_a_name_with_control_characters(organization, owner, name):
    with pytest.raises(SourceError, match="control characters"):
        source_create(organization=organization, provider="stripe", name=name, secret=STRIPE_SECRET, actor=owner)
    with pytest.raises(DestinationError, match="control characters"):
        destination_create(organization=organization, name=name, url="http://127.0.0.1:9/hook", actor=owner)

    source = make_source(organization, name="Stripe live")
    destination, _ = make_destination(organization, "http://127.0.0.1:9/hook", sources=[source])
    with pytest.raises(SourceError, match="control characters"):
        source_update(source=source, name=name, options=source.options, actor=owner)
    with pytest.raises(DestinationError, match="control characters"):
        destination_update(
            destination=destination,
            name=name,
            url=destination.url,
            sources=[source],
            event_types=[],
            timeout_seconds=destination.timeout_seconds,
            actor=owner,
        )
    assert list(Source.objects.values_list("name", flat=True)) == ["Stripe live"]
    assert list(Destination.objects.values_list("name", flat=True)) == ["endpoint"]


def test_names_with_any_printable_text_are_kept(organization, owner):
    name = 'Stripe – live ü 💳 "quoted" <b>'
    source, _ = source_create(
        organization=organization, provider="stripe", name=name, secret=STRIPE_SECRET, actor=owner
    )
    destination, _ = destination_create(organization=organization, name=name, url="http://127.0.0.1:9/h", actor=owner)
    assert source.name == destination.name == name


def test_the_dashboard_forms_say_so_on_the_name_field(client, organization, owner):
    client.force_login(owner)
    source = make_source(organization, name="Stripe live")
    pages = [
        (reverse("dashboard:source_create", args=["acme", "stripe"]), {"secret": STRIPE_SECRET}),
        (reverse("dashboard:source_edit", args=["acme", source.pk]), {"option_tolerance": "300"}),
        (
            reverse("dashboard:destination_create", args=["acme"]),
            {"url": "http://127.0.0.1:9/hook", "timeout_seconds": "15", "sources": [source.pk]},
        ),
    ]
    for path, data in pages:
        response = client.post(path, {**data, "name": "Evil\r\nBcc: someone@evil.example"})
        assert response.status_code == 200, path
        errors = response.context["form"].errors
        assert list(errors) == ["name"], (path, errors)
        assert "control characters" in errors["name"][0]
    assert list(Source.objects.values_list("name", flat=True)) == ["Stripe live"]
    assert not Destination.objects.exists()


def test_the_admin_forms_refuse_such_a_name_too(organization):
    # The admin saves sources and destinations through its own forms: they check the name as the dashboard's do.
    from webhooks.admin.configuration import DestinationAdminForm, SourceAddForm, SourceAdminForm

    source = make_source(organization, name="Stripe live")
    destination, _ = make_destination(organization, "http://127.0.0.1:9/hook", sources=[source])
    bad = BAD_NAMES[0]
    forms = [
        SourceAddForm(data={"organization": organization.pk, "provider": "stripe", "name": bad, "options": "{}"}),
        SourceAdminForm(
            instance=source,
            data={
                "organization": organization.pk,
                "provider": "stripe",
                "name": bad,
                "options": "{}",
                "is_active": "on",
            },
        ),
        DestinationAdminForm(
            instance=destination,
            data={
                "organization": organization.pk,
                "name": bad,
                "url": destination.url,
                "timeout_seconds": destination.timeout_seconds,
                "max_concurrency": destination.max_concurrency,
                "rate_limit_per_second": destination.rate_limit_per_second or "",
                "is_active": "on",
            },
        ),
    ]
    for form in forms:
        assert not form.is_valid()
        assert list(form.errors) == ["name"], (type(form).__name__, form.errors)
        assert "control characters" in form.errors["name"][0]


def test_an_organization_name_is_held_to_the_same_rule(client, organization):
    # It goes into the quota notice's and the invitation's subjects.
    from django.contrib.auth import get_user_model
    from django.core.exceptions import ValidationError

    from organizations.models import Organization
    from organizations.services import organization_create
    from webhooks.tests.test_admin import organization_form

    with pytest.raises(ValidationError, match="control characters"):
        organization_create(name=BAD_NAMES[0], slug="evil", owner_email="owner@evil.example")
    assert not Organization.objects.filter(slug="evil").exists()

    client.force_login(get_user_model().objects.create_superuser("root@hookline.example", "correct horse battery"))
    response = client.post(
        reverse("admin:organizations_organization_change", args=[organization.pk]),
        organization_form(organization, name=BAD_NAMES[0]),
    )
    assert response.status_code == 200 and "control characters" in response.content.decode()
    assert Organization.objects.get(pk=organization.pk).name == organization.name


def test_an_organization_name_saved_before_the_rule_still_sends_its_emails(organization, owner, mailoutbox):
    from organizations import team
    from organizations.models import Organization
    from webhooks.services.lifecycle import _notify_quota_exceeded

    Organization.objects.filter(pk=organization.pk).update(name="Acme\r\nBcc: someone@evil.example")
    organization.refresh_from_db()
    team.invitation_create(organization=organization, actor=owner, email="new@acme.example", role="member")
    _notify_quota_exceeded(organization.pk, organization.created_at.date().replace(day=1))
    subjects = [message.subject for message in mailoutbox]
    assert len(subjects) == 2 and all("\n" not in subject and "\r" not in subject for subject in subjects), subjects
    assert all(message.bcc == [] for message in mailoutbox)
