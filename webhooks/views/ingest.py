"""POST /in/<token>/ — the provider-facing endpoint. All logic is in services.ingest."""

import json
import logging

import psycopg
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured, TooManyFieldsSent
from django.db import InterfaceError, OperationalError
from django.http import HttpResponse
from django.http.request import RawPostDataException
from django.views.decorators.csrf import csrf_exempt
from rest_framework.negotiation import BaseContentNegotiation
from rest_framework.renderers import JSONRenderer
from rest_framework.views import APIView

from accounts.http import client_ip
from config.unreadable_body import read_timed_out
from webhooks.services.ingest import DUPLICATE_HEADER, EVENT_ID_HEADER, ingest_request
from webhooks.services.ingest_writer import RowRefused, describe_database_error

logger = logging.getLogger(__name__)


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

    # GET only for the handshakes some providers make; OPTIONS, PUT… get the JSON 405 below.
    http_method_names = ["post", "get"]

    def http_method_not_allowed(self, request, *args, **kwargs):
        # The same JSON error shape as every other ingest answer (DRF adds the Allow header).
        return _json(405, {"error": "method_not_allowed", "detail": "webhooks are accepted with POST"})

    def _ingest(self, request, token: str):
        django_request = request._request
        try:
            declared_length = int(django_request.META.get("CONTENT_LENGTH") or 0)
        except ValueError:
            declared_length = 0
        if declared_length > settings.INGEST_MAX_BODY_BYTES:
            return _too_large()
        try:
            body = django_request.body if declared_length else _body_without_length(django_request)
        except RawPostDataException:  # pragma: no cover - nothing reads the stream before us
            body = b""
        except Exception as exc:  # the server's own parse errors (a bad chunk size, a body cut short)
            if read_timed_out(exc):
                return _json(408, {"error": "request_timeout", "detail": "the request body did not arrive in time"})
            return _json(400, {"error": "unreadable_body", "detail": "the request body could not be read whole"})
        if len(body) > settings.INGEST_MAX_BODY_BYTES:
            return _too_large()
        if len(body) < declared_length:
            # The connection ended before the body did (gunicorn hands over what came, without an
            # error). Stored, a cut body whose check does not cover it (a shared token) would be kept
            # as the event, and the provider's retry with the whole body counted as its duplicate.
            return _json(
                400,
                {
                    "error": "unreadable_body",
                    "detail": f"the body ended after {len(body)} of the {declared_length} bytes of its Content-Length",
                },
            )
        try:
            query = {key: django_request.GET.getlist(key) for key in django_request.GET}
        except TooManyFieldsSent:
            # Left to Django, this is its HTML "Bad Request" page; a provider reads JSON with the reason.
            return _json(
                400,
                {
                    "error": "too_many_query_fields",
                    "detail": f"the query string has more than {settings.DATA_UPLOAD_MAX_NUMBER_FIELDS} fields",
                },
            )
        try:
            outcome = ingest_request(
                token=token,
                body=body,
                headers=dict(django_request.headers),
                method=django_request.method,
                url=settings.PUBLIC_BASE_URL + django_request.get_full_path(),
                query=query,
                remote_ip=client_ip(django_request),
            )
        except (OperationalError, InterfaceError) as exc:
            # Nothing was committed, so nothing may be acknowledged: providers retry a 503. The
            # database's reason goes to the log: Django's own line says only "Service Unavailable",
            # which left an operator at a capped plan's "too many connections" guessing.
            reason = _database_reason(exc)
            if reason:
                logger.warning("ingest for source …%s answered 503, nothing stored: %s", token[-4:], reason)
            return _unavailable("storage is unavailable; retry later")
        except ImproperlyConfigured as exc:
            # The source's secret cannot be decrypted: FIELD_ENCRYPTION_KEYS lacks the key it was
            # written with (a key retired before the rotation command ran, or this process started
            # with the old list). The request cannot be judged, so it is neither stored nor refused
            # for its signature: the provider retries a 503 once the keys are right.
            logger.error("ingest for source …%s not verified: %s", token[-4:], exc)
            return _unavailable("the signature cannot be checked at the moment; retry later")
        if outcome.handshake is not None:
            response = IngestAnswer(
                outcome.handshake.body, status=outcome.status_code, content_type=outcome.handshake.content_type
            )
            if "id" in outcome.payload:  # a stored request answered in the provider's own form
                response[EVENT_ID_HEADER] = outcome.payload["id"]
                response[DUPLICATE_HEADER] = "true" if outcome.payload["duplicate"] else "false"
        else:
            response = _json(outcome.status_code, outcome.payload)
        if outcome.retry_after_seconds is not None:
            response["Retry-After"] = str(outcome.retry_after_seconds)
        response.after_answer = outcome.after_answer
        return response


@csrf_exempt
def not_an_ingest_url(request, *args, **kwargs):
    """Any other path under /in/ ("/in//<token>/", "/in/<token>/extra", "/in/"): the answer of an
    unknown token, in JSON, where Django's HTML 404 page was (or, for a POST, its CSRF page)."""
    return _json(404, {"error": "unknown_source", "detail": "no active source has this ingest URL"})


class IngestAnswer(HttpResponse):
    """An ingest answer that may carry bookkeeping for after it was sent.

    The WSGI server calls close() once the provider has the whole answer (Django's test client
    too), so work done there never delays it. It runs before Django's own end-of-request
    handling, which may close this thread's database connection.
    """

    after_answer = None

    def close(self):
        work, self.after_answer = self.after_answer, None
        try:
            if work is not None:
                work()
        finally:
            super().close()


def _database_reason(exc: Exception) -> str:
    """What the database driver said, safe to log; "" when the services made (and logged) the error.

    A connection refused or lost (no SQLSTATE: "too many connections for role …", a timeout) is
    told by the driver's message, which names the host and role, never a password or a webhook's
    content. A statement's error only by its kind, code and primary message (as the services log
    the ones they catch): PostgreSQL may quote a row's values in the rest."""
    cause = exc.__cause__
    if isinstance(exc, RowRefused) or not isinstance(cause, psycopg.Error):
        return ""
    if cause.sqlstate:
        return describe_database_error(exc)
    try:
        message = " ".join(str(cause).split())  # psycopg's spans lines, one per host tried
    except Exception:
        message = ""
    return (message or type(cause).__name__)[:500]


def _unavailable(detail: str) -> HttpResponse:
    response = _json(503, {"error": "unavailable", "detail": detail})
    response["Retry-After"] = "30"
    return response


def _too_large() -> HttpResponse:
    return _json(413, {"error": "body_too_large", "detail": f"the body exceeds {settings.INGEST_MAX_BODY_BYTES} bytes"})


def _body_without_length(django_request) -> bytes:
    """The body of a request sent without Content-Length (empty, or Transfer-Encoding: chunked).

    Django reads no more than Content-Length, so such a body would look empty and fail
    verification; gunicorn hands the WSGI application the de-chunked stream. One byte more
    than the limit is read, so that an oversized body is answered 413, not cut.
    """
    if "chunked" not in django_request.META.get("HTTP_TRANSFER_ENCODING", "").lower():
        return django_request.body
    return django_request.META["wsgi.input"].read(settings.INGEST_MAX_BODY_BYTES + 1)


def _json(status: int, payload: dict) -> HttpResponse:
    # json.dumps directly: JsonResponse's encoder set-up is a measurable part of this path.
    return IngestAnswer(json.dumps(payload), status=status, content_type="application/json")
