"""POST /in/<token>/ over raw sockets against gunicorn as the Procfile runs it (gthread, with its
config/gunicorn.conf.py and ingest writer process): odd framing, cut and slow requests.

What must hold: a body that did not arrive whole is never stored; a client that stops sending
(or trickles) does not hold a thread past REQUEST_READ_TIMEOUT_SECONDS; a signed body stored
byte-exact whatever its framing; a pipelined second request judged on its own headers. Waits
use PATIENCE_SECONDS, so that without the limit a test fails instead of hanging.
"""

from __future__ import annotations

import json
import socket
import threading
import time

import pytest
import stripe

from webhooks.models import WebhookEvent

from .api_helpers import make_key
from .factories import STRIPE_SECRET, make_source
from .processes import PATIENCE_SECONDS, wait_until
from .shared_gunicorn import shared_gunicorn

READ_TIMEOUT_SECONDS = 2
SHARED_TOKEN = "tok_framing_shared_secret_1"


SERVER_OPTIONS = ("--workers", "1", "--worker-class", "gthread", "--threads", "2")


def shared_server(request, django_db_blocker):
    """The server of these tests and test_ingest_http_attack's (one for the session, neither stops it):
    1 process of 2 threads, so that two held connections would stop it."""
    with django_db_blocker.unblock():
        return shared_gunicorn(request, SERVER_OPTIONS, REQUEST_READ_TIMEOUT_SECONDS=str(READ_TIMEOUT_SECONDS))


@pytest.fixture(scope="module")
def port(request, django_db_setup, django_db_blocker):
    server = shared_server(request, django_db_blocker)
    yield server.port
    text = server.log()
    assert "Traceback" not in text and "WORKER TIMEOUT" not in text, text[-3000:]


@pytest.fixture
def stripe_source(transactional_db, organization):
    return make_source(organization)


@pytest.fixture
def shared_token_source(transactional_db, organization):
    # The token says who sent the request, nothing about its body: the case where a cut body could pass.
    return make_source(
        organization, "shared_token", secret=SHARED_TOKEN, header="X-Token", event_id_header="X-Event-Id"
    )


def _body(event_id: str, padding: int = 0) -> bytes:
    return json.dumps({"id": event_id, "object": "event", "type": "invoice.paid", "pad": "x" * padding}).encode()


def _stripe_signature(body: bytes) -> bytes:
    timestamp = int(time.time())
    signature = stripe.WebhookSignature._compute_signature(f"{timestamp}.{body.decode()}", STRIPE_SECRET)
    return f"t={timestamp},v1={signature}".encode()


def _head(token: str, *headers: bytes, method: bytes = b"POST") -> bytes:
    lines = [method + b" /in/" + token.encode() + b"/ HTTP/1.1", b"Host: 127.0.0.1", *headers]
    return b"\r\n".join(lines) + b"\r\n\r\n"


def _stripe_head(token: str, body: bytes, *headers: bytes, signed: bool = True) -> bytes:
    signature = [b"Stripe-Signature: " + _stripe_signature(body)] if signed else []
    framing = (
        [] if any(h.lower().startswith(b"transfer-encoding") for h in headers) else [b"Content-Length: %d" % len(body)]
    )
    return _head(token, b"Content-Type: application/json", *framing, *signature, *headers)


def _connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=PATIENCE_SECONDS)


def _read_all(conn: socket.socket) -> bytes:
    """Everything the server sends until it closes (a timeout here means it kept the connection)."""
    received = b""
    while chunk := conn.recv(65536):
        received += chunk
    return received


def _answers(raw: bytes) -> list[tuple[int, dict | None]]:
    """(status, JSON body or None) of each answer on a connection."""
    answers = []
    while raw:
        head, _, rest = raw.partition(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        length = next(
            (
                int(line.split(b":", 1)[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            ),
            0,
        )
        payload, raw = rest[:length], rest[length:]
        answers.append((status, json.loads(payload) if payload.startswith(b"{") else None))
    return answers


def _exchange(port: int, data: bytes) -> list[tuple[int, dict | None]]:
    with _connect(port) as conn:
        conn.sendall(data)
        conn.shutdown(socket.SHUT_WR)
        return _answers(_read_all(conn))


def _stored(event_id: str) -> list[bytes]:
    return [
        bytes(body) for body in WebhookEvent.objects.filter(provider_event_id=event_id).values_list("body", flat=True)
    ]


# --- a body that did not arrive whole ---------------------------------------------------------------


def test_a_body_cut_short_is_never_stored_and_the_retry_stores_it_whole(port, shared_token_source):
    body = _body("evt_cut_short", padding=2000)
    head = _head(
        shared_token_source.ingest_token,
        b"Content-Type: application/json",
        b"X-Token: " + SHARED_TOKEN.encode(),
        b"X-Event-Id: evt_cut_short",
        b"Content-Length: %d" % len(body),
    )
    # The provider's connection ends half-way through the body (gunicorn hands over what came).
    [(status, answer)] = _exchange(port, head + body[:1000])
    assert (status, answer["error"]) == (400, "unreadable_body")
    assert f"after 1000 of the {len(body)} bytes" in answer["detail"]
    assert _stored("evt_cut_short") == []
    # Its retry is the event, not a duplicate of a cut copy.
    [(status, answer)] = _exchange(port, head + body)
    assert (status, answer["duplicate"]) == (200, False)
    assert _stored("evt_cut_short") == [body]


def test_a_client_gone_right_after_sending_has_its_event_stored_once(port, stripe_source):
    body = _body("evt_sent_then_gone")
    with _connect(port) as conn:
        conn.sendall(_stripe_head(stripe_source.ingest_token, body) + body)
    assert wait_until(lambda: _stored("evt_sent_then_gone") == [body], PATIENCE_SECONDS, 0.05)
    # The provider never read the answer, so it sends again: a counted duplicate, not a second event.
    [(status, answer)] = _exchange(port, _stripe_head(stripe_source.ingest_token, body) + body)
    assert (status, answer["duplicate"]) == (200, True)
    assert _stored("evt_sent_then_gone") == [body]


# --- slow clients -----------------------------------------------------------------------------------


def test_connections_that_stop_sending_are_let_go_and_ingest_goes_on(port, stripe_source):
    token = stripe_source.ingest_token
    body = _body("evt_held")
    # Twice as many as the server's threads: each would hold one for as long as it stays open.
    mid_body = [_connect(port) for _ in range(2)]
    mid_headers = [_connect(port) for _ in range(2)]
    try:
        for conn in mid_body:
            conn.sendall(_stripe_head(token, body) + body[:10])
        for conn in mid_headers:
            conn.sendall(_stripe_head(token, body)[:40])
        for conn in mid_body:
            [(status, answer)] = _answers(_read_all(conn))
            assert (status, answer["error"]) == (408, "request_timeout")
        for conn in mid_headers:
            assert _read_all(conn) == b""  # closed: there is no request to answer yet
    finally:
        for conn in mid_body + mid_headers:
            conn.close()
    assert _stored("evt_held") == []
    good = _body("evt_after_the_held_ones")
    assert [status for status, _ in _exchange(port, _stripe_head(token, good) + good)] == [200]
    assert _stored("evt_after_the_held_ones") == [good]


def test_a_body_trickled_byte_by_byte_is_cut_off(port, stripe_source):
    body = _body("evt_trickled", padding=5000)  # sent whole, at this pace, only after many minutes
    stop = threading.Event()
    with _connect(port) as conn:
        conn.sendall(_stripe_head(stripe_source.ingest_token, body))

        def trickle():
            for byte in body:
                if stop.wait(0.05):
                    return
                try:
                    conn.sendall(bytes([byte]))
                except OSError:  # the server closed the connection: what this test waits for
                    return

        trickler = threading.Thread(target=trickle, daemon=True)
        trickler.start()
        try:
            answer = conn.recv(65536)
        finally:
            stop.set()
            trickler.join(PATIENCE_SECONDS)
    assert answer.startswith(b"HTTP/1.1 408 ")
    assert _stored("evt_trickled") == []


# --- odd framing of signed requests -------------------------------------------------------------------


def _chunked(body: bytes, size: int = 7, extension: bytes = b"") -> bytes:
    pieces = [body[start : start + size] for start in range(0, len(body), size)]
    return b"".join(b"%x%s\r\n%s\r\n" % (len(piece), extension, piece) for piece in pieces)


def test_signed_bodies_in_odd_framing_are_stored_byte_exact(port, stripe_source):
    token = stripe_source.ingest_token
    bodies = {name: _body(f"evt_framing_{name}") for name in ("chunked", "extension", "trailer", "expect", "http10")}
    chunked = b"Transfer-Encoding: chunked"
    requests = {
        "chunked": _stripe_head(token, bodies["chunked"], chunked) + _chunked(bodies["chunked"]) + b"0\r\n\r\n",
        "extension": _stripe_head(token, bodies["extension"], chunked)
        + _chunked(bodies["extension"], 100, b";name=value")
        + b"0\r\n\r\n",
        # A trailer cannot bring a signature: the header section's is the one checked.
        "trailer": _stripe_head(token, bodies["trailer"], chunked)
        + _chunked(bodies["trailer"])
        + b"0\r\nStripe-Signature: t=1,v1=00\r\n\r\n",
        "http10": _stripe_head(token, bodies["http10"]).replace(b"HTTP/1.1", b"HTTP/1.0", 1) + bodies["http10"],
    }
    for name, request in requests.items():
        [(status, _)] = _exchange(port, request)
        assert status == 200, name
    # Expect: 100-continue: the body is sent once the server asked for it.
    with _connect(port) as conn:
        conn.sendall(_stripe_head(token, bodies["expect"], b"Expect: 100-continue"))
        assert conn.recv(25) == b"HTTP/1.1 100 Continue\r\n\r\n"
        conn.sendall(bodies["expect"])
        conn.shutdown(socket.SHUT_WR)
        assert [status for status, _ in _answers(_read_all(conn))] == [200]
    for name, body in bodies.items():
        assert _stored(f"evt_framing_{name}") == [body], name


def test_a_pipelined_request_is_judged_on_its_own_headers(port, stripe_source):
    token = stripe_source.ingest_token
    first, second = _body("evt_pipelined_signed"), _body("evt_pipelined_unsigned")
    answers = _exchange(port, _stripe_head(token, first) + first + _stripe_head(token, second, signed=False) + second)
    assert [(status, answer.get("error")) for status, answer in answers] == [(200, None), (401, "missing_signature")]
    assert _stored("evt_pipelined_signed") == [first]
    assert _stored("evt_pipelined_unsigned") == []


@pytest.mark.parametrize(
    "framing",
    [
        pytest.param([b"Content-Length: %(n)d", b"Transfer-Encoding: chunked"], id="length-and-chunked"),
        pytest.param([b"Content-Length: %(n)d", b"Content-Length: 3"], id="two-lengths"),
        pytest.param([b"Content-Length: -1"], id="negative-length"),
        pytest.param([b"Transfer-Encoding: chunked", b"Transfer-Encoding: identity"], id="chunked-then-identity"),
    ],
)
def test_ambiguous_framing_is_refused_and_nothing_behind_it_runs(port, stripe_source, framing):
    token = stripe_source.ingest_token
    body = _body("evt_ambiguous")
    smuggled = _stripe_head(token, _body("evt_smuggled"), signed=False) + _body("evt_smuggled")
    head = _head(
        token,
        b"Content-Type: application/json",
        b"Stripe-Signature: " + _stripe_signature(body),
        *(line % {b"n": len(body)} for line in framing),
    )
    answers = _exchange(port, head + b"0\r\n\r\n" + smuggled)
    assert [(status, answer["error"]) for status, answer in answers] == [(400, "bad_request")]
    assert _stored("evt_ambiguous") == [] and _stored("evt_smuggled") == []


@pytest.mark.parametrize(
    ("extra", "status", "error"),
    [
        pytest.param([b"X-Folded: one", b" two"], 400, "bad_request", id="obs-fold"),
        pytest.param([b"X-Nul: a\x00b"], 400, "bad_request", id="nul-in-value"),
        pytest.param([b"X-N\x00ul: ab"], 400, "bad_request", id="nul-in-name"),
        pytest.param([b"X-Long: " + b"v" * 9000], 431, "headers_too_large", id="long-header"),
        pytest.param([b"X-H-%d: v" % n for n in range(101)], 431, "headers_too_large", id="too-many-headers"),
        pytest.param([b"Expect: 200-ok"], 417, "expectation_failed", id="odd-expect"),
        pytest.param([b"Transfer-Encoding: gzip"], 400, "bad_request", id="gzip-coding-alone"),
    ],
)
def test_requests_gunicorn_refuses_are_answered_in_json(port, stripe_source, extra, status, error):
    # gunicorn answers these itself, before Django: they get the same {"error", "detail"} as the rest.
    body = _body("evt_refused_by_gunicorn")
    [(answered, answer)] = _exchange(port, _stripe_head(stripe_source.ingest_token, body, *extra) + body)
    assert (answered, answer["error"]) == (status, error)
    assert answer["detail"]
    assert _stored("evt_refused_by_gunicorn") == []


def test_a_request_line_too_long_is_answered_in_json(port, transactional_db):
    [(status, answer)] = _exchange(port, b"POST /in/" + b"t" * 5000 + b"/ HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    assert (status, answer["error"]) == (414, "request_line_too_long")


def test_a_list_filter_over_the_request_line_limit_is_the_414_the_api_document_lists(
    port, organization, transactional_db
):
    from gunicorn.config import LimitRequestLine

    from webhooks.api.schema_view import api_document

    _, key = make_key(organization)
    patterns = ",".join(f"invoice.type{n}.*" for n in range(400))
    line = f"GET /api/v1/events?event_type={patterns} HTTP/1.1".encode()
    assert len(line) > LimitRequestLine.default
    request = line + b"\r\nHost: 127.0.0.1\r\nAuthorization: Bearer " + key.encode() + b"\r\n\r\n"
    [(status, answer)] = _exchange(port, request)
    assert (status, answer["error"]) == (414, "request_line_too_long")
    # What a client reading the document expects of the list (drf-spectacular's document, as served).
    documented = api_document()["paths"]["/api/v1/events"]["get"]["responses"]
    assert "request_line_too_long" in documented["414"]["description"]


def test_a_request_line_too_long_says_the_limit_and_what_to_shorten(port, organization, transactional_db):
    # gunicorn's own words, "Request line length (5035) exceeds limit (4094)", said neither what the request
    # line is nor what to do about it.
    _, key = make_key(organization)
    line = b"GET /api/v1/events?search=" + b"x" * 5000 + b" HTTP/1.1"
    request = line + b"\r\nHost: 127.0.0.1\r\nAuthorization: Bearer " + key.encode() + b"\r\n\r\n"
    [(status, answer)] = _exchange(port, request)
    assert (status, answer["error"]) == (414, "request_line_too_long")
    assert "exceeds limit" not in answer["detail"]
    assert "longer than this server's 4,094 bytes" in answer["detail"]
    assert "fewer or shorter filters" in answer["detail"]


# --- the same limits elsewhere than ingest ------------------------------------------------------------


def test_an_api_body_that_does_not_arrive_in_time_is_a_408_not_a_500(port, organization, transactional_db):
    _, key = make_key(organization)
    body = b'{"name": "slow", "url": "http://127.0.0.1:9/hook"}'
    head = (
        b"POST /api/v1/destinations HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer " + key.encode() + b"\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body)
    )
    with _connect(port) as conn:
        conn.sendall(head + body[:5])  # and then nothing
        [(status, answer)] = _answers(_read_all(conn))
    assert (status, answer["error"]) == (408, "request_timeout")


class _ResetMidBody:
    def read(self, *args):
        raise ConnectionResetError(104, "Connection reset by peer")

    readline = read


def test_an_api_body_cut_by_a_reset_is_a_400_not_a_500(client, organization):
    _, key = make_key(organization)
    answer = client.post(
        "/api/v1/destinations",
        data=b'{"name": "cut"}',
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {key}",
        **{"wsgi.input": _ResetMidBody()},
    )
    assert (answer.status_code, answer.json()["error"]) == (400, "unreadable_body")


@pytest.mark.parametrize("path", ["/in/", "/in//{token}/", "/in/x/../{token}/", "/in/{token}/extra", "/in"])
def test_other_paths_under_in_are_answered_in_json(client, stripe_source, path):
    # What Django routes as it came (gunicorn does not normalize paths): the unknown token's answer.
    body = _body("evt_odd_path").decode()
    answer = client.post(path.format(token=stripe_source.ingest_token), body, content_type="application/json")
    assert (answer.status_code, answer.json()["error"]) == (404, "unknown_source")
    assert _stored("evt_odd_path") == []
