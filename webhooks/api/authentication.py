"""What every API view shares: the key from the Authorization header, its access, its rate limit,
and errors as JSON ``{"error", "detail"}``."""

from __future__ import annotations

import codecs
import io
import logging

from django.conf import settings
from django.contrib.auth.models import AnonymousUser
from django.core.exceptions import DisallowedHost, RequestDataTooBig, SuspiciousOperation
from django.core.exceptions import ValidationError as DjangoValidationError
from django.http import Http404, JsonResponse
from django.utils.cache import add_never_cache_headers
from django.views import defaults
from django.views.decorators.csrf import csrf_exempt
from rest_framework import exceptions
from rest_framework.authentication import BaseAuthentication
from rest_framework.exceptions import ErrorDetail
from rest_framework.parsers import JSONParser, get_encoding
from rest_framework.permissions import SAFE_METHODS, BasePermission
from rest_framework.renderers import JSONRenderer
from rest_framework.response import Response
from rest_framework.throttling import BaseThrottle
from rest_framework.utils import json
from rest_framework.views import APIView, exception_handler

from accounts.http import client_ip
from config.content_security_policy import allow_own_style_blocks
from organizations.api_keys import ApiKeyError, api_key_authenticate
from organizations.models import ApiKey, Organization
from webhooks.services.text import echoable_text

from .idempotency import IdempotencyKeyMixin
from .limits import api_auth_failure_counted, api_request_counted

API_PATH_PREFIX = "/api/"
INGEST_PATH_PREFIX = "/in/"


class ApiKeyAuthentication(BaseAuthentication):
    """``Authorization: Bearer hl_…``. The organization comes from the key and nowhere else.

    ``request.auth`` is the ApiKey; ``request.user`` stays anonymous, so nothing can take the key for a person.
    """

    def authenticate(self, request):
        header = request.META.get("HTTP_AUTHORIZATION", "")
        if not header:
            return None
        scheme, _, key = header.partition(" ")
        try:
            if scheme.lower() != "bearer" or not key.strip():
                raise ApiKeyError("send the key as Authorization: Bearer hl_<prefix>_<secret>")
            api_key = api_key_authenticate(key=key.strip())
        except ApiKeyError as exc:
            # Only a key that did not authenticate is counted, and only it is refused past the limit:
            # a right key from the same address (a tenant behind a scanner's NAT, the good key of a
            # job that also holds a stale one) is never locked out. A malformed key costs no query;
            # a well-formed one costs one indexed lookup by its prefix, over the limit too.
            if wait := api_auth_failure_counted(address=client_ip(request)):
                raise exceptions.Throttled(wait, detail="Too many wrong API keys from this address.") from None
            raise exceptions.AuthenticationFailed(str(exc), code="invalid_api_key") from None
        if not api_key.organization.is_active:
            state = "being deleted" if api_key.organization.being_deleted else "suspended"
            raise exceptions.PermissionDenied(f"this organization is {state}", code="organization_inactive")
        return AnonymousUser(), api_key

    def authenticate_header(self, request):
        return 'Bearer realm="api"'


class ApiKeyAccess(BasePermission):
    """A key reads; only a read-write key changes anything."""

    def has_permission(self, request, view):
        if not isinstance(request.auth, ApiKey):
            return False  # answered 401 with WWW-Authenticate
        if request.method not in SAFE_METHODS and not request.auth.can_write:
            raise exceptions.PermissionDenied("this API key is read-only", code="read_only_key")
        return True


class ApiKeyRateThrottle(BaseThrottle):
    """At most settings.API_RATE_LIMIT requests per key and window (webhooks.api.limits)."""

    def allow_request(self, request, view):
        self.retry_after = api_request_counted(api_key_id=request.auth.pk)
        return self.retry_after is None

    def wait(self):
        return self.retry_after


def api_exception_handler(exc, context):
    """DRF's answer (status, WWW-Authenticate, Retry-After) in the shape ``{"error", "detail"}``."""
    if isinstance(exc, DjangoValidationError):
        exc = exceptions.ValidationError({"detail": exc.messages})
    elif isinstance(exc, Http404):  # DRF's own, e.g. ?format= naming a format this API does not have
        exc = exceptions.NotFound("not found")
    elif isinstance(exc, RequestDataTooBig):
        exc = RequestTooLarge()
    elif isinstance(exc, SuspiciousOperation):  # too many query parameters…: Django's answer would be an HTML page
        logging.getLogger(f"django.security.{exc.__class__.__name__}").warning("%s", exc)
        exc = exceptions.ParseError(str(exc), code="bad_request")
    elif isinstance(exc, exceptions.UnsupportedMediaType):
        exc = _json_only(context["request"])
    elif isinstance(exc, exceptions.NotAuthenticated):
        # DRF's "Authentication credentials were not provided." names neither the credential nor
        # where it goes. The detail is replaced in place: the exception carries WWW-Authenticate.
        exc.detail = ErrorDetail(
            "no API key: send one as Authorization: Bearer hl_<prefix>_<secret> (owners and admins make "
            "keys on the dashboard's API keys page; a dashboard session does not open the API)",
            code=exc.default_code,
        )
    elif isinstance(exc, exceptions.NotAcceptable):
        # DRF's "Could not satisfy the request Accept header." does not say what it could answer.
        exc = exceptions.NotAcceptable("this API answers JSON only: accept application/json (or */*)")
    response = exception_handler(exc, context)
    if response is None:
        return None
    if isinstance(exc, exceptions.ValidationError):
        response.data = {"error": "invalid", "detail": "the request is not valid", "fields": exc.detail}
    else:
        detail = exc.detail if isinstance(exc, exceptions.APIException) else str(exc)
        code = getattr(detail, "code", None) or "error"
        response.data = {"error": _ERROR_NAMES.get(code, code), "detail": str(detail)}
    return response


def _json_only(request) -> exceptions.UnsupportedMediaType:
    """DRF says only 'Unsupported media type "" in request.': not what to send instead. curl's -d
    sends a form unless told otherwise, and some clients send no Content-Type at all."""
    given = request.content_type.partition(";")[0].strip()
    came_as = f"this one came as {given}" if given else "this one had none"
    return exceptions.UnsupportedMediaType(
        given, detail=f"send the body as JSON, with Content-Type: application/json ({came_as})"
    )


# DRF's own codes, in the names this API documents.
_ERROR_NAMES = {
    "not_authenticated": "not_authenticated",
    "authentication_failed": "invalid_api_key",
    "permission_denied": "forbidden",
    "not_found": "not_found",
    "throttled": "rate_limited",
    "method_not_allowed": "method_not_allowed",
    "parse_error": "invalid_json",
    "unsupported_media_type": "unsupported_media_type",
}


class RequestTooLarge(exceptions.APIException):
    status_code = 413
    default_code = "request_too_large"

    def __init__(self):
        # The limit itself, read at each refusal (it follows INGEST_MAX_BODY_BYTES): without it a
        # caller could only find it by halving its body.
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        super().__init__(f"the request body is larger than this API takes: {limit:,} bytes at most")


class Conflict(exceptions.APIException):
    """The change cannot be made in the object's current state (409)."""

    status_code = 409
    default_code = "conflict"


class SearchTimedOut(exceptions.APIException):
    """The database stopped a search at its time limit (503): the request is well formed, but
    too broad to answer within it."""

    status_code = 503
    default_code = "search_timed_out"


class SearchBusy(exceptions.Throttled):
    """Too many searches of the organization run at once (429, with Retry-After)."""

    default_code = "search_busy"


class LookupsBusy(exceptions.Throttled):
    """A URL to save could not be checked now: the organization's earlier lookups still wait on their
    DNS (429, with Retry-After). Nothing is wrong with the request; the same one may pass later."""

    default_code = "lookups_busy"


def _object_naming_each_once(pairs: list) -> dict:
    """A JSON object, refused when it names a member twice: Python's json keeps the last value without
    a word, so {"destination": 3, "destination": 4} replayed to 4, which a reader of the body (or of a
    log of it) could take for 3. The API refuses every name it would otherwise ignore."""
    members = {}
    for name, value in pairs:
        if name in members:
            raise ValueError(f"“{echoable_text(name)}” is given twice in one object: give each name once")
        members[name] = value
    return members


class JsonBodyParser(JSONParser):
    """DRF's JSON parser, a body nested too deeply for Python's json being a 400 like any other
    JSON it cannot read (DRF lets the RecursionError through: a 500), and an object naming a
    member twice too."""

    def parse(self, stream, media_type=None, parser_context=None):
        encoding = get_encoding(parser_context or {})
        try:
            return json.load(
                codecs.getreader(encoding)(stream),
                parse_constant=json.strict_constant,
                object_pairs_hook=_object_naming_each_once,
            )
        except RecursionError:
            raise exceptions.ParseError("JSON parse error - nested too deeply") from None
        except ValueError as exc:  # what DRF's own parse answers: a 400 invalid_json
            raise exceptions.ParseError(f"JSON parse error - {exc}") from None


def options_answer(view: APIView) -> Response:
    """An OPTIONS request's answer under /api/: the methods the path takes, in ``Allow``, and nothing
    else. DRF's described the view itself (its class's name, such as "Destination Detail Manage", and
    its parsers), none of which the OpenAPI document, the reference for what each endpoint takes, says."""
    response = Response(status=204)
    response["Allow"] = ", ".join(view.allowed_methods)
    return response


class ApiView(IdempotencyKeyMixin, APIView):
    """The base of every /api/v1/ view: only API keys, JSON in and out, never cached; every POST takes
    an Idempotency-Key (IdempotencyKeyMixin), so no endpoint that changes something can be left without."""

    authentication_classes = (ApiKeyAuthentication,)
    permission_classes = (ApiKeyAccess,)
    throttle_classes = (ApiKeyRateThrottle,)
    renderer_classes = (JSONRenderer,)
    parser_classes = (JsonBodyParser,)

    def get_exception_handler(self):
        return api_exception_handler

    def initial(self, request, *args, **kwargs):
        # Who asks is settled before in which format: DRF negotiates first, so a caller without a
        # valid key whose Accept names no JSON got 406, learning what the API serves before being
        # told it is not let in. A refusal raised here has no renderer chosen yet, and
        # finalize_response takes this view's only one: the 401 is JSON whatever Accept says.
        self.perform_authentication(request)
        if request.successful_authenticator is None:
            raise exceptions.NotAuthenticated()
        _take_body_without_length(request)  # once the key is known: no stranger's body is read
        super().initial(request, *args, **kwargs)

    @property
    def organization(self) -> Organization:
        return self.request.auth.organization

    @property
    def api_key(self) -> ApiKey:
        return self.request.auth

    @property
    def sees_everything(self) -> bool:
        """Signature headers and full destination URLs: shown to read-write keys, as to admins in
        the dashboard; a read-only key sees what a member sees."""
        return self.api_key.can_write

    def options(self, request, *args, **kwargs):
        return options_answer(self)

    def finalize_response(self, request, response, *args, **kwargs):
        response = super().finalize_response(request, response, *args, **kwargs)
        add_never_cache_headers(response)
        return response


def _take_body_without_length(request) -> None:
    """Read a body sent with Transfer-Encoding: chunked (a client streaming it, as Python's requests
    does for a generator): Django reads no more than Content-Length, so it looked empty, and a bulk
    retry's filters or a PATCH's fields were lost without a word (every dead delivery retried, a 200
    that changed nothing). gunicorn hands over the de-chunked stream, as ingest reads it
    (views.ingest); one byte past the limit is read, so that a larger body is a 413, not cut."""
    django_request = request._request
    if "chunked" not in django_request.META.get("HTTP_TRANSFER_ENCODING", "").lower():
        return
    limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
    body = django_request.META["wsgi.input"].read(limit + 1)
    if len(body) > limit:
        raise RequestTooLarge()
    # What Django's request.body and DRF's parser (which reads CONTENT_LENGTH bytes) then read.
    django_request._body, django_request._stream = body, io.BytesIO(body)
    django_request.META["CONTENT_LENGTH"] = str(len(body))


def _answers_in_json(request) -> bool:
    # The REST API's and the providers' paths (/in/<token>/, and /in/<token> without the slash).
    return request.path.startswith((API_PATH_PREFIX, INGEST_PATH_PREFIX)) or request.path == INGEST_PATH_PREFIX[:-1]


def bad_request(request, exception, *args, **kwargs):
    """The site's 400 for a request Django refuses before any view (config.urls.handler400): a Host
    header that is not this site's, a suspicious request. JSON for API clients and webhook senders
    (it was Django's HTML page), the HTML page everywhere else."""
    if _answers_in_json(request):
        if isinstance(exception, DisallowedHost):
            detail = "the Host header does not name this server"
        else:
            detail = "the request was refused as malformed"
        response = JsonResponse({"error": "bad_request", "detail": detail}, status=400)
        # Refused in CommonMiddleware (which sets it for every other answer), so set here: without
        # it the answer went out chunked.
        response["Content-Length"] = str(len(response.content))
        return response
    return defaults.bad_request(request, exception)


def server_error(request, *args, **kwargs):
    """The site's 500 (config.urls.handler500): JSON under /api/ and /in/, the HTML page everywhere else."""
    if _answers_in_json(request):
        return JsonResponse({"error": "server_error", "detail": "something went wrong on our side"}, status=500)
    # The page stands alone (no static files): its own <style> is allowed by hash.
    return allow_own_style_blocks(defaults.server_error(request))


@csrf_exempt
def json_not_found(request, *args, **kwargs):
    """Any other path under /api/ (a trailing slash doubled, another version, a typo), whatever the
    method and with or without a key: the API's 404, not the dashboard's HTML page, and never cached
    like every other answer of the API (a shared cache may keep a 404 it was not told not to).
    Exempt from the CSRF check, as the API's views are (they take no cookie): a script's POST carries
    no token, and was refused with the dashboard's HTML "Form not sent" before reaching this."""
    response = JsonResponse({"error": "not_found", "detail": "no such endpoint"}, status=404)
    add_never_cache_headers(response)
    return response
