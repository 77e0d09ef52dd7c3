"""The dashboard's "send test event": sign a sample as the provider would, post it, find the event."""

from __future__ import annotations

import json
from dataclasses import dataclass

from organizations.services import audit_record
from webhooks.models import Source, WebhookEvent
from webhooks.providers.base import InboundRequest
from webhooks.providers.registry import get_provider

from .ingest import DUPLICATE_HEADER, EVENT_ID_HEADER
from .outbound import OutboundResponse, post_to_hookline
from .permissions import require_configure_role
from .sample_sender import build_test_request
from .sources import ingest_url


@dataclass
class TestSendResult:
    response: OutboundResponse
    # The event the request created (None when Hookline refused it or the answer named none).
    event: WebhookEvent | None
    # Hookline already had an event with this provider event id: counted as a redelivery, not delivered.
    duplicate: bool = False
    # The payload was typed in (sent as is), not one of the samples.
    edited: bool = False
    # The provider's event id is not signed, so a payload already received is a duplicate whatever
    # its id (Provider.signed_content_digest): a duplicate is then about the payload, not the id.
    by_payload: bool = False


def source_send_test_event(
    *, source: Source, fixture: str | None = None, body: bytes | None = None, actor=None, url: str | None = None
) -> TestSendResult:
    """Post a signed sample to the source's own ingest URL and return the answer and the event.

    The request goes over HTTP like a provider's would, so it proves the whole path (URL,
    secret, verification); it runs outside any transaction, since it waits on our own server.
    """
    require_configure_role(organization=source.organization, actor=actor)
    # Built first: a test that cannot be made (no secret yet, an unsignable payload) is not audited as sent.
    signed_body, headers = build_test_request(source=source, fixture=fixture, body=body, fresh_id=True)
    audit_record(
        action="source.test_sent",
        organization=source.organization,
        actor=actor,
        target=source,
        changes={"fixture": fixture or "", "edited_payload": body is not None},
    )
    response = post_to_hookline(url or ingest_url(source), body=signed_body, headers=headers)
    event = None
    try:
        answer = json.loads(response.body)
    except ValueError:
        answer = None
    if not isinstance(answer, dict):
        answer = {}
    event_id_header = response.headers.get(EVENT_ID_HEADER.lower())
    if event_id_header:  # answered in the provider's own form (Slack's empty 200)
        answer = {"id": event_id_header, "duplicate": response.headers.get(DUPLICATE_HEADER.lower()) == "true"}
    answered_id = answer.get("id")
    if answered_id:
        event = WebhookEvent.objects.filter(organization_id=source.organization_id, pk=answered_id).first()
    provider = get_provider(source.provider)
    by_payload = provider.signed_content_digest(InboundRequest(body=signed_body, headers={}), source.options)
    return TestSendResult(
        response=response,
        event=event,
        duplicate=answer.get("duplicate") is True,
        edited=body is not None,
        by_payload=by_payload is not None,
    )
