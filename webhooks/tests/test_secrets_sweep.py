"""No secret of a source or destination is shown or logged anywhere, for every provider Hookline can sign.

Each source gets one genuine request and one signed with another secret, through POST /in/<token>/;
each event is delivered to a receiver that fails; then the tenant's pages (as its owner), the admin's
pages (as a superuser), show_event and list_events are read, with every log record of the whole run.
None of it may hold a secret, its key part (after whsec_) or the key it decodes to.
"""

from __future__ import annotations

import base64
import binascii
import io
import logging
import time

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.urls import reverse

from webhooks.models import Delivery, Source, WebhookEvent
from webhooks.providers.registry import PROVIDERS
from webhooks.services.processing import process_event_batch
from webhooks.tests.delivering import deliver_all_due

from .factories import make_destination, make_source
from .test_providers import REQUIRED_OPTIONS, SIGNABLE, fixture_request, fixtures_of

pytestmark = pytest.mark.django_db
WRONG_SECRET = "whsec_" + base64.b64encode(b"not the source's secret at all").decode()


def secret_for(kind: str) -> str:
    """A secret of the shape the provider takes, unique to it."""
    provider = PROVIDERS[kind]
    tag = kind.replace("_", "")
    for candidate in (
        "whsec_" + base64.b64encode(f"secret of {tag} 0123456789".encode()).decode(),
        f"sk_test_secret{tag}0123456789",
        f"FLWSECK_TEST-secret{tag}0123456789-X",
    ):
        try:
            provider.clean_secret(candidate)
        except Exception:  # noqa: S112 - the next shape is tried
            continue
        return candidate
    raise AssertionError(f"no secret shape for {kind}")


def forms_of(secret: str) -> set[str]:
    forms = {secret}
    if secret.startswith("whsec_"):
        forms.add(secret.removeprefix("whsec_"))
        try:
            forms.add(base64.b64decode(secret.removeprefix("whsec_")).hex())
        except binascii.Error:
            pass
    return forms


def send(client, source: Source, kind: str, secret: str, extra: dict[str, str] | None = None):
    url = f"http://testserver/in/{source.ingest_token}/"
    request = fixture_request(kind, fixtures_of(kind)[0], secret=secret, now=time.time())
    headers = {**request.headers, **PROVIDERS[kind].sign(request.body, secret, source.options, time.time(), url=url)}
    headers.update(extra or {})
    meta = {f"HTTP_{name.upper().replace('-', '_')}": value for name, value in headers.items()}
    content_type = meta.pop("HTTP_CONTENT_TYPE", "application/json")
    return client.generic("POST", f"/in/{source.ingest_token}/", request.body, content_type=content_type, **meta)


def test_no_secret_is_shown_or_logged_anywhere(client, organization, owner, caplog, httpserver, settings):
    settings.ALLOW_PRIVATE_DESTINATIONS = True
    caplog.set_level(logging.DEBUG)
    httpserver.expect_request("/hook").respond_with_data("failing on purpose", status=500)
    secrets: dict[str, str] = {}
    for kind in SIGNABLE:
        if kind == "paypal":  # its "secret" is the webhook id, which is not one
            continue
        secret = secret_for(kind)
        source = make_source(organization, provider=kind, secret=secret, name=kind, **REQUIRED_OPTIONS.get(kind, {}))
        secrets[kind] = secret
        # A sender that also copies its token into a header of its own (see _headers_to_store).
        assert send(client, source, kind, secret, {"x-copied-token": secret}).status_code == 200, kind
        assert send(client, source, kind, WRONG_SECRET).status_code in (400, 401), kind
    destination, secrets["destination"] = make_destination(
        organization, httpserver.url_for("/hook"), sources=list(Source.objects.filter(organization=organization))
    )
    while process_event_batch():
        pass
    deliver_all_due()
    assert Delivery.objects.filter(attempt_count__gt=0).count() == Delivery.objects.count() > 0

    texts = []
    client.force_login(owner)
    pages = [reverse(name, args=["acme"]) for name in ("dashboard:events", "dashboard:sources", "dashboard:audit")]
    pages.append(reverse("dashboard:destination_detail", args=["acme", destination.pk]))
    for source in Source.objects.all():
        for name in ("dashboard:source_detail", "dashboard:source_rejected", "dashboard:source_edit"):
            pages.append(reverse(name, args=["acme", source.pk]))
    pages += [reverse("dashboard:event_detail", args=["acme", event.pk]) for event in WebhookEvent.objects.all()]
    superuser = get_user_model().objects.create_superuser("root@hookline.example", "correct horse battery")
    admin_pages = [f"/admin/webhooks/source/{source.pk}/change/" for source in Source.objects.all()]
    admin_pages += [f"/admin/webhooks/webhookevent/{event.pk}/change/" for event in WebhookEvent.objects.all()]
    admin_pages += [f"/admin/webhooks/destination/{destination.pk}/change/", "/admin/organizations/auditlog/"]
    for user, urls in ((owner, pages), (superuser, admin_pages)):
        client.force_login(user)
        for url in urls:
            response = client.get(url)
            assert response.status_code == 200, url
            texts.append(response.content.decode())
    output = io.StringIO()
    for event in WebhookEvent.objects.all():
        call_command("show_event", str(event.pk), stdout=output)
    call_command("list_events", "--org", "acme", stdout=output)
    texts += [output.getvalue(), caplog.text]
    text = "\n".join(texts)
    assert [owner for owner, secret in secrets.items() for form in forms_of(secret) if form in text] == []
