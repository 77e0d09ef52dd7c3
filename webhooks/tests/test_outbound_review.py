"""The outbound review: what Hookline sends to a destination, and how it takes odd answers.

Receivers are raw sockets on 127.0.0.1, so every byte sent and answered is under the test's control.
"""

import json
import logging
import re
import socket
import threading

import pytest
from standardwebhooks.webhooks import Webhook

from webhooks.models import Delivery, DeliveryAttempt
from webhooks.services import delivery as delivery_service
from webhooks.services import outbound, processing
from webhooks.services.destinations import DestinationError, destination_check_url

from .factories import STRIPE_SECRET, make_destination, make_source
from .signing import post_stripe


class RawReceiver:
    """Answers every request on a connection with ``answer`` (bytes, or a function of the connection)
    and keeps the raw requests it read."""

    def __init__(self, answer, address="127.0.0.1"):
        self.answer = answer
        self.requests: list[bytes] = []
        self.connections = 0
        self.listener = socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET)
        self.listener.bind((address, 0))
        self.listener.listen(8)
        self.port = self.listener.getsockname()[1]
        host = f"[{address}]" if ":" in address else address
        self.url = f"http://{host}:{self.port}/hook"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                connection, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._handle, args=(connection,), daemon=True).start()

    def _read_request(self, connection, pending: bytes) -> tuple[bytes | None, bytes]:
        while b"\r\n\r\n" not in pending:
            piece = connection.recv(65536)
            if not piece:
                return None, b""
            pending += piece
        head, _, rest = pending.partition(b"\r\n\r\n")
        length = int(re.search(rb"(?im)^content-length:\s*(\d+)", head).group(1))
        while len(rest) < length:
            rest += connection.recv(65536)
        return head + b"\r\n\r\n" + rest[:length], rest[length:]

    def _handle(self, connection):
        with connection:
            connection.settimeout(10)
            pending = b""
            try:
                while True:
                    request, pending = self._read_request(connection, pending)
                    if request is None:
                        return
                    self.requests.append(request)
                    if callable(self.answer):
                        self.answer(connection)
                    else:
                        connection.sendall(self.answer)
            except OSError:
                pass

    def close(self):
        self.listener.close()


@pytest.fixture
def receiver():
    receivers = []

    def start(answer, address="127.0.0.1"):
        receivers.append(RawReceiver(answer, address))
        return receivers[-1]

    yield start
    for one in receivers:
        one.close()


def parse_request(raw: bytes) -> tuple[str, list[tuple[str, str]], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    request_line, *lines = head.decode("latin-1").split("\r\n")
    headers = [tuple(part.strip() for part in line.split(":", 1)) for line in lines]
    return request_line, headers, body


# --- What is sent ---------------------------------------------------------------------------


@pytest.mark.django_db
def test_the_request_is_signed_verifiably_byte_exact_and_without_the_providers_private_headers(
    client, organization, receiver, monkeypatch
):
    monkeypatch.setattr(delivery_service, "schedule_dispatch", lambda slot=0: None)
    monkeypatch.setattr(processing, "schedule_dispatch", lambda slot=0: None)
    destination_receiver = receiver(b"HTTP/1.1 204 No Content\r\n\r\n")
    source = make_source(organization)
    _, secret = make_destination(organization, destination_receiver.url, sources=[source])
    # Unusual but valid JSON bytes: spacing, escapes and non-ASCII must reach the receiver unchanged.
    body = '{"id": "evt_1",  "object":"event","type":"invoice.paid","note":"caf\\u00e9 \u2603 \\"q\\""}\n'
    provider_headers = {
        "HTTP_AUTHORIZATION": "Bearer provider-token",
        "HTTP_COOKIE": "session=abc",
        "HTTP_X_FORWARDED_FOR": "203.0.113.9",
        "HTTP_X_FORWARDED_HOST": "hookline.example",
        "HTTP_X_REAL_IP": "203.0.113.9",
        "HTTP_CONNECTION": "keep-alive, X-Custom",
        "HTTP_TRANSFER_ENCODING": "chunked",
        "HTTP_WEBHOOK_SIGNATURE": "v1,forged",
        "HTTP_X_PROVIDER_DELIVERY": "d-42",
    }
    assert post_stripe(client, source, body, STRIPE_SECRET, **provider_headers).status_code == 200
    processing.process_received_events()
    assert delivery_service.dispatch_due_deliveries(threads=1) == 1
    assert Delivery.objects.get().status == "succeeded"

    request_line, headers, sent_body = parse_request(destination_receiver.requests[0])
    assert request_line == "POST /hook HTTP/1.1"
    assert sent_body == body.encode()
    names = [name.lower() for name, _ in headers]
    assert len(names) == len(set(names)), f"a header is sent twice: {names}"
    for private in ("authorization", "cookie", "x-forwarded-for", "x-forwarded-host", "x-real-ip", "transfer-encoding"):
        assert private not in names
    as_dict = {name.lower(): value for name, value in headers}
    assert as_dict["host"] == f"127.0.0.1:{destination_receiver.port}"
    assert as_dict["content-length"] == str(len(body.encode()))
    assert as_dict["x-provider-delivery"] == "d-42"  # the provider's own headers are passed on
    assert "forged" not in as_dict["webhook-signature"]
    # The receiver's side: the official Standard Webhooks package accepts the signature.
    verified = Webhook(secret).verify(sent_body, {name: value for name, value in headers})
    assert verified == json.loads(body)
    # The attempt's record keeps the request headers but never the signature.
    assert "webhook-signature" not in {name.lower() for name in DeliveryAttempt.objects.get().request_headers}


@pytest.mark.django_db
def test_headers_a_receiver_s_proxy_or_framework_would_take_as_facts_about_the_request_are_not_passed_on(
    client, organization, receiver, monkeypatch
):
    # Whoever sends to an ingest URL chooses these headers; passed on, they would tell the
    # destination's proxy or framework that the request came from another client address (an
    # allowlist of 127.0.0.1), for another host, scheme or path, or with another method: Symfony
    # and Rack take X-HTTP-Method-Override on a POST, so a signed webhook would reach a DELETE route.
    monkeypatch.setattr(delivery_service, "schedule_dispatch", lambda slot=0: None)
    monkeypatch.setattr(processing, "schedule_dispatch", lambda slot=0: None)
    destination_receiver = receiver(b"HTTP/1.1 204 No Content\r\n\r\n")
    source = make_source(organization)
    make_destination(organization, destination_receiver.url, sources=[source])
    sender_chosen = {
        "HTTP_X_HTTP_METHOD_OVERRIDE": "DELETE",
        "HTTP_X_HTTP_METHOD": "DELETE",
        "HTTP_X_METHOD_OVERRIDE": "DELETE",
        "HTTP_X_ORIGINAL_URL": "/admin/purge",
        "HTTP_X_REWRITE_URL": "/admin/purge",
        "HTTP_TRUE_CLIENT_IP": "127.0.0.1",
        "HTTP_CLIENT_IP": "127.0.0.1",
        "HTTP_X_CLIENT_IP": "127.0.0.1",
        "HTTP_X_CLUSTER_CLIENT_IP": "127.0.0.1",
        "HTTP_CF_CONNECTING_IP": "127.0.0.1",
        "HTTP_FASTLY_CLIENT_IP": "127.0.0.1",
        "HTTP_X_FORWARDED_SERVER": "internal.example",
        "HTTP_X_FORWARDED_CLIENT_CERT": "By=spiffe://cluster/admin",
        "HTTP_X_ORIGINAL_HOST": "internal.example",
        "HTTP_FRONT_END_HTTPS": "on",
        "HTTP_X_PROVIDER_DELIVERY": "d-42",
    }
    body = '{"id": "evt_1", "object": "event", "type": "invoice.paid"}'
    assert post_stripe(client, source, body, STRIPE_SECRET, **sender_chosen).status_code == 200
    processing.process_received_events()
    assert delivery_service.dispatch_due_deliveries(threads=1) == 1

    _, headers, _ = parse_request(destination_receiver.requests[0])
    sent = {name.lower(): value for name, value in headers}
    assert sent["x-provider-delivery"] == "d-42"  # the provider's own headers still are
    passed_on = sorted(
        name
        for name in sent
        if name.replace("-", "_").upper() in {key.removeprefix("HTTP_") for key in sender_chosen}
        and name != "x-provider-delivery"
    )
    assert passed_on == []


# --- Odd answers ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "interim", [b"HTTP/1.1 102 Processing\r\n\r\n", b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"]
)
def test_interim_answers_are_passed_over_to_the_final_one(receiver, interim, settings):
    # RFC 9110 15.2: a client must parse 1xx answers it did not expect before the final answer.
    settings.ALLOW_PRIVATE_DESTINATIONS = True
    hinting = receiver(interim + interim + b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    response = outbound.post(hinting.url, body=b"{}", headers={}, timeout=5)
    assert (response.status, response.body, response.error) == (200, "ok", "")
    # The connection is still in step: the next attempt gets its own answer, on the same connection.
    again = outbound.post(hinting.url, body=b"{}", headers={}, timeout=5)
    assert (again.status, again.body) == (200, "ok")
    assert hinting.connections == 1


def test_an_upgrade_nobody_asked_for_is_a_failed_attempt(receiver, settings):
    settings.ALLOW_PRIVATE_DESTINATIONS = True
    upgrading = receiver(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
    response = outbound.post(upgrading.url, body=b"{}", headers={}, timeout=5)
    assert response.status is None
    assert "101" in response.error
    # The connection no longer speaks HTTP: the next attempt opens a new one.
    assert outbound.post(upgrading.url, body=b"{}", headers={}, timeout=5).status is None
    assert upgrading.connections == 2


def test_a_request_that_cannot_be_sent_out_in_time_is_reported_as_timed_out(settings):
    settings.ALLOW_PRIVATE_DESTINATIONS = True
    with socket.socket() as never_reads:  # the kernel takes the connection; nobody ever reads it
        never_reads.bind(("127.0.0.1", 0))
        never_reads.listen(1)
        url = f"http://127.0.0.1:{never_reads.getsockname()[1]}/hook"
        response = outbound.post(url, body=b"x" * 50_000_000, headers={}, timeout=1.0)
    assert response.status is None
    assert response.error == "timed out sending the request: the receiver stopped reading it"


def test_an_answer_with_broken_headers_does_not_write_the_destination_s_path_to_the_logs(receiver, settings, caplog):
    # The receiver decides when urllib3 warns of headers it cannot parse; the warning named the whole
    # URL (its path and query are often the receiver's credential) and repeated the receiver's headers.
    settings.ALLOW_PRIVATE_DESTINATIONS = True
    caplog.set_level(logging.DEBUG, logger="urllib3")
    broken = receiver(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nnot a header line " + b"x" * 5000 + b"\r\n\r\nok")
    url = f"http://127.0.0.1:{broken.port}/services/T0/B0/path-token-4f8e?api_key=query-token-9c1d"
    response = outbound.post(url, body=b"{}", headers={}, timeout=5)
    assert (response.status, response.body, response.error) == (200, "ok", "")
    logged = "\n".join(caplog.text.splitlines() + [record.getMessage() for record in caplog.records])
    assert "path-token-4f8e" not in logged and "query-token-9c1d" not in logged
    assert "x" * 100 not in logged
    warning = next(record for record in caplog.records if record.levelno == logging.WARNING)
    assert warning.getMessage() == (
        f"a receiver answered with headers that could not be parsed (http://127.0.0.1:{broken.port}): "
        "MissingHeaderBodySeparatorDefect; the answer was read all the same"
    )
    assert warning.exc_info is None


# --- Host names -----------------------------------------------------------------------------


@pytest.fixture
def resolving_to_loopback(monkeypatch, settings):
    """Names ending in .example resolve to 127.0.0.1 (the address check is the one for private addresses)."""
    settings.ALLOW_PRIVATE_DESTINATIONS = True
    outbound.forget_resolved_hosts()
    real_getaddrinfo = socket.getaddrinfo
    asked = []

    def fake(host, port, *args, **kwargs):
        if isinstance(host, str) and host.rstrip(".").endswith(".example"):
            asked.append(host)
            host = "127.0.0.1"
        return real_getaddrinfo(host, port, *args, **kwargs)

    monkeypatch.setattr(outbound.socket, "getaddrinfo", fake)
    yield asked
    outbound.forget_resolved_hosts()


@pytest.mark.parametrize(
    ("name", "ascii_name"),
    [
        ("bücher.example", "xn--bcher-kva.example"),
        ("faß.example", "xn--fa-hia.example"),  # as browsers read it (IDNA 2008), not "fass.example"
        ("EXAMPLE.example", "example.example"),
    ],
)
def test_an_international_host_name_is_sent_in_its_ascii_form(receiver, resolving_to_loopback, name, ascii_name):
    # A Host header must be ASCII: the raw name was sent in latin-1 or, outside latin-1, not at all.
    ok = receiver(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    response = outbound.post(f"http://{name}:{ok.port}/hook", body=b"{}", headers={}, timeout=5)
    assert (response.status, response.error) == (200, "")
    headers = dict(parse_request(ok.requests[0])[1])
    assert headers["Host"] == f"{ascii_name}:{ok.port}"
    assert resolving_to_loopback == [ascii_name]  # the name looked up is the name sent


def test_an_ipv6_address_is_sent_in_brackets_in_the_host_header(receiver, settings):
    # Bare ("::1:8443"), no receiver can tell the address from the port: strict servers answer 400.
    settings.ALLOW_PRIVATE_DESTINATIONS = True
    ok = receiver(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", address="::1")
    response = outbound.post(ok.url, body=b"{}", headers={}, timeout=5)
    assert (response.status, response.error) == (200, "")
    assert dict(parse_request(ok.requests[0])[1])["Host"] == f"[::1]:{ok.port}"


def test_a_host_name_idna_2008_leaves_out_keeps_the_form_browsers_still_accept():
    assert outbound.ascii_host("i❤.ws") == "xn--i-7iq.ws"
    assert outbound.ascii_host("faß.example") == "xn--fa-hia.example"  # where IDNA 2008 applies, it decides


def test_an_international_host_name_is_checked_like_any_other(resolving_to_loopback, settings):
    settings.ALLOW_PRIVATE_DESTINATIONS = False
    with pytest.raises(outbound.DestinationNotAllowed, match="private or reserved"):
        outbound.resolve_destination("http://bücher.example/hook")
    with pytest.raises(outbound.DestinationNotAllowed, match="private or reserved"):
        outbound.resolve_destination("http://ｌocalhost/hook")  # full-width l: the name localhost


# --- Hookline's own ingest URLs -------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "https://hookline.example/in/tok_1/",
        "https://HOOKLINE.example:443/in/tok_1/",
        "https://hookline.example./in/tok_1/",  # a trailing dot: the same host (Django accepts it)
        "https://ｈookline.example/in/tok_1/",  # full-width h: the same host in its IDNA form
        "https://hookline.example。/in/tok_1/",  # an ideographic full stop: a trailing dot once mapped
        "https://hookline.example/%69n/tok_1/",  # the server decodes the path before routing it
        "https://hookline.example//in/tok_1/",
        "https://hookline.example/x/../in/tok_1",
    ],
)
def test_hookline_s_own_ingest_urls_are_refused_however_spelled(settings, url):
    settings.PUBLIC_BASE_URL = "https://hookline.example"
    with pytest.raises(DestinationError, match="loop back"):
        destination_check_url(url)


def test_other_paths_on_hookline_s_host_are_not_taken_for_its_ingest_urls(settings, resolving_to_loopback):
    settings.PUBLIC_BASE_URL = "https://hookline.example"
    destination_check_url("https://hookline.example/inbox/tok_1/")
    destination_check_url("https://hookline.example:8443/in/tok_1/")


@pytest.mark.parametrize(
    "url", ["http://93.184.215.14:0/hook", "https://93.184.215.14:00/hook", "http://93.184.215.14:99999/"]
)
def test_a_port_that_cannot_be_connected_to_is_refused(url):
    # Port 0 was read as no port at all, and the request went to port 80 (or 443).
    with pytest.raises(outbound.DestinationNotAllowed, match="invalid port"):
        outbound.resolve_destination(url)


def test_a_url_without_a_port_goes_to_the_scheme_s_port():
    assert outbound.resolve_destination("http://93.184.215.14/hook")[2] == 80
    assert outbound.resolve_destination("https://93.184.215.14/hook")[2] == 443


def test_a_watch_thread_that_could_not_start_is_started_by_the_next_attempt(monkeypatch):
    # Marked started before it was: one failed start ("can't start new thread") left every later
    # attempt of the process uncut at its deadline.
    watched = outbound._WatchedAttempts()
    real_start, started = threading.Thread.start, []

    def start_once_refused(thread):
        if not started:
            started.append("refused")
            raise RuntimeError("can't start new thread")
        started.append(thread.name)
        return real_start(thread)

    monkeypatch.setattr(threading.Thread, "start", start_once_refused)
    # Watchdogs far from their deadline: the started thread looks at them and leaves them be.
    first, second = (type("FarWatchdog", (), {"deadline": float("inf")})() for _ in range(2))
    with pytest.raises(RuntimeError):
        watched.add(first)
    watched.add(second)
    assert started == ["refused", "hookline-attempt-watch"]
    assert watched._attempts == {second}
    watched.discard(second)
