"""POST /in/<token>/ — the provider-facing endpoint. All logic is in services.ingest."""

import json

from django.conf import settings
from django.db import InterfaceError, OperationalError
from django.http import HttpResponse
from django.http.request import RawPostDataException
from rest_framework.negotiation import BaseContentNegotiation
from rest_framework.renderers import JSONRenderer
from rest_framework.views import APIView

from accounts.http import client_ip
from webhooks.services.ingest import ingest_request


class AlwaysJSON(BaseContentNegotiation):
    """Providers get JSON whatever they send in Accept; skipping negotiation saves the hot path work."""

    def select_renderer(self, request, renderers, format_suffix=None):
        return renderers[0], renderers[0].media_type

    def select_parser(self, request, parsers):  # pragma: no cover - the view reads the raw body itself
        return None


class IngestView(APIView):
    authentication_classes = ()
    permission_classes = ()
    parser_classes = ()
    throttle_classes = ()
    renderer_classes = (JSONRenderer,)
    content_negotiation_class = AlwaysJSON

    def post(self, request, token: str):
        return self._ingest(request, token)

    def get(self, request, token: str):
        # Some providers verify the URL with a signed GET (handshakes only).
        return self._ingest(request, token)

    def _ingest(self, request, token: str):
        django_request = request._request
        try:
            declared_length = int(django_request.META.get("CONTENT_LENGTH") or 0)
        except ValueError:
            declared_length = 0
        if declared_length > settings.INGEST_MAX_BODY_BYTES:
            return _json(
                413, {"error": "body_too_large", "detail": f"the body exceeds {settings.INGEST_MAX_BODY_BYTES} bytes"}
            )
        try:
            body = django_request.body
        except RawPostDataException:  # pragma: no cover - nothing reads the stream before us
            body = b""
        try:
            outcome = ingest_request(
                token=token,
                body=body,
                headers=dict(django_request.headers),
                method=django_request.method,
                url=settings.PUBLIC_BASE_URL + django_request.get_full_path(),
                query={key: django_request.GET.getlist(key) for key in django_request.GET},
                remote_ip=client_ip(django_request),
            )
        except (OperationalError, InterfaceError):
            # Nothing was committed, so nothing may be acknowledged: providers retry a 503.
            response = _json(503, {"error": "unavailable", "detail": "storage is unavailable; retry later"})
            response["Retry-After"] = "30"
            return response
        if outcome.handshake is not None:
            return HttpResponse(
                outcome.handshake.body, status=outcome.status_code, content_type=outcome.handshake.content_type
            )
        return _json(outcome.status_code, outcome.payload)


def _json(status: int, payload: dict) -> HttpResponse:
    # json.dumps directly: JsonResponse's encoder set-up is a measurable part of this path.
    return HttpResponse(json.dumps(payload), status=status, content_type="application/json")
