"""A host with several addresses: connecting goes on to the next address when one cannot be reached.

Only the host name's lookup is faked (getaddrinfo answers with the test's addresses); every
connection is a real one, to receivers on loopback addresses, or to loopback addresses nobody
listens on.
"""

import re
import socket
import threading

import pytest

from webhooks.models import Delivery, DeliveryAttempt
from webhooks.services import delivery as delivery_service
from webhooks.services import outbound, processing
from webhooks.tests.delivering import deliver_now

from .factories import STRIPE_SECRET, make_destination, make_source
from .signing import post_stripe

HOST = "several.example"


@pytest.fixture
def resolving(monkeypatch, settings):
    """``resolving(addresses)``: HOST resolves to ``addresses``, in that order (other names as usual)."""
    settings.ALLOW_PRIVATE_DESTINATIONS = True  # the test's receivers are on loopback addresses
    outbound.forget_resolved_hosts()
    outbound.forget_unreachable_addresses()
    real_getaddrinfo = socket.getaddrinfo
    answer: list[str] = []

    def fake(host, port, *args, **kwargs):
        if host != HOST:
            return real_getaddrinfo(host, port, *args, **kwargs)
        return [
            (socket.AF_INET6, socket.SOCK_STREAM, 6, "", (address, port, 0, 0))
            if ":" in address
            else (socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port))
            for address in answer
        ]

    monkeypatch.setattr(outbound.socket, "getaddrinfo", fake)

    def resolve_to(addresses):
        answer[:] = addresses
        outbound.forget_resolved_hosts()

    yield resolve_to
    outbound.forget_resolved_hosts()
    outbound.forget_unreachable_addresses()


@pytest.fixture
def connections(monkeypatch):
    """The addresses each attempt went to, in order (each address has a pool of its own)."""
    tried = []
    real_pool_for = outbound._pool_for

    def recording(scheme, host, port, address):
        tried.append(address)
        return real_pool_for(scheme, host, port, address)

    monkeypatch.setattr(outbound, "_pool_for", recording)
    return tried


def listening_address(httpserver) -> str:
    return httpserver.server.socket.getsockname()[0]


@pytest.fixture
def unanswering():
    """``unanswering(address, port)``: a listener there whose queue is full, so new connections get no
    answer at all (the kernel drops them), as from an address that is black-holed."""
    sockets = []

    def start(address, port):
        listener = socket.socket()
        listener.bind((address, port))
        listener.listen(0)
        filler = socket.create_connection((address, port), timeout=5)  # the one place in its queue
        sockets.extend([listener, filler])

    yield start
    for one in sockets:
        one.close()


class ClosingReceiver:
    """Reads a request on ``address``:``port`` and closes the connection without answering."""

    def __init__(self, address, port):
        self.listener = socket.socket()
        self.listener.bind((address, port))
        self.listener.listen(8)
        self.requests = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                connection, _ = self.listener.accept()
            except OSError:
                return
            with connection:
                connection.settimeout(5)
                received = b""
                while b"\r\n\r\n" not in received:
                    piece = connection.recv(65536)
                    if not piece:
                        break
                    received += piece
                if received:
                    self.requests += 1


def test_a_refused_first_address_falls_over_to_the_next(resolving, connections, httpserver):
    httpserver.expect_request("/hook", method="POST").respond_with_data("ok", status=200)
    port = httpserver.port
    working = listening_address(httpserver)
    resolving(["127.0.0.2", working])  # nothing listens on 127.0.0.2: the connection is refused

    response = outbound.post(f"http://{HOST}:{port}/hook", body=b'{"n": 1}', headers={}, timeout=5)

    assert (response.status, response.body, response.error) == (200, "ok", "")
    assert connections == ["127.0.0.2", working]
    assert len(httpserver.log) == 1
    request = httpserver.log[0][0]
    assert request.get_data() == b'{"n": 1}'
    assert request.headers["Host"] == f"{HOST}:{port}"  # the name, whichever address answered


def test_an_unanswering_first_address_leaves_the_next_one_time_to_answer(
    resolving, connections, httpserver, unanswering
):
    # Given all of the attempt's 2 s as before, the first address would have used them up waiting.
    httpserver.expect_request("/hook", method="POST").respond_with_data("ok", status=200)
    port = httpserver.port
    working = listening_address(httpserver)
    unanswering("127.0.0.3", port)
    resolving(["127.0.0.3", working])

    response = outbound.post(f"http://{HOST}:{port}/hook", body=b"{}", headers={}, timeout=2)

    assert (response.status, response.error) == (200, "")
    assert connections == ["127.0.0.3", working]
    assert len(httpserver.log) == 1

    # The address that did not answer is tried last for a while: the next attempt goes straight to
    # the one that works instead of waiting on it again.
    connections.clear()
    assert outbound.post(f"http://{HOST}:{port}/hook", body=b"{}", headers={}, timeout=2).status == 200
    assert connections == [working]
    assert len(httpserver.log) == 2


def test_an_ipv6_address_the_host_cannot_reach_falls_over_to_ipv4(resolving, connections, httpserver):
    # 2001:db8::/32 is for documentation: no network routes it (unreachable at once, or never answered).
    httpserver.expect_request("/hook", method="POST").respond_with_data("ok", status=200)
    working = listening_address(httpserver)
    resolving(["2001:db8::1", working])

    response = outbound.post(f"http://{HOST}:{httpserver.port}/hook", body=b"{}", headers={}, timeout=2)

    assert (response.status, response.error) == (200, "")
    assert connections == ["2001:db8::1", working]


def test_when_no_address_can_be_connected_to_the_error_names_each_one_tried(resolving, connections):
    with socket.socket() as placeholder:  # a port nobody listens on, on any loopback address
        placeholder.bind(("127.0.0.1", 0))
        port = placeholder.getsockname()[1]
    resolving(["127.0.0.4", "127.0.0.5"])

    response = outbound.post(f"http://{HOST}:{port}/hook", body=b"{}", headers={}, timeout=2)

    assert response.status is None
    assert response.error == (
        f"connection failed to each address of {HOST}: "
        f"127.0.0.4:{port}: connection refused; 127.0.0.5:{port}: connection refused"
    )
    assert connections == ["127.0.0.4", "127.0.0.5"]


def test_an_unanswering_address_is_named_with_the_time_it_was_given(resolving, unanswering):
    with socket.socket() as placeholder:
        placeholder.bind(("127.0.0.1", 0))
        port = placeholder.getsockname()[1]
    unanswering("127.0.0.6", port)
    resolving(["127.0.0.6", "127.0.0.7"])

    response = outbound.post(f"http://{HOST}:{port}/hook", body=b"{}", headers={}, timeout=1)

    assert response.status is None
    # Given half the attempt's second, as the first of two addresses.
    assert re.fullmatch(
        rf"connection failed to each address of {HOST}: "
        rf"127\.0\.0\.6:{port}: no answer within 0\.\d s; 127\.0\.0\.7:{port}: connection refused",
        response.error,
    )


def test_a_request_that_went_out_is_never_sent_to_another_address(resolving, connections):
    # The first address takes the request and drops the connection without an answer: the receiver may
    # have acted on it, so the attempt fails (and is retried later, as any) instead of going on.
    first = ClosingReceiver("127.0.0.8", 0)
    port = first.listener.getsockname()[1]
    second = ClosingReceiver("127.0.0.9", port)
    resolving(["127.0.0.8", "127.0.0.9"])
    try:
        response = outbound.post(f"http://{HOST}:{port}/hook", body=b"{}", headers={}, timeout=5)
    finally:
        first.listener.close()
        second.listener.close()

    assert response.status is None and response.error.startswith("connection failed: ")
    assert connections == ["127.0.0.8"]
    assert (first.requests, second.requests) == (1, 0)


@pytest.mark.parametrize("order", ["private first", "private last"])
def test_a_private_address_among_public_ones_refuses_the_destination(resolving, connections, settings, order):
    # DNS rebinding: a name that also resolves to a private address must not be sent to at all
    # (going on to the next address would reach the private one as soon as the public one failed).
    settings.ALLOW_PRIVATE_DESTINATIONS = False
    addresses = ["93.184.215.14", "2606:2800:21f:cb07:6820:80da:af6b:8b2c", "10.0.0.7"]
    resolving(addresses if order == "private last" else addresses[::-1])

    response = outbound.post(f"https://{HOST}/hook", body=b"{}", headers={}, timeout=2)

    assert response.status is None and "private or reserved address" in response.error
    assert "10.0.0.7" not in response.error  # the refusal does not tell where the name points
    assert connections == []  # not even the public addresses were connected to
    with pytest.raises(outbound.DestinationNotAllowed, match="private or reserved"):
        outbound.resolve_destination(f"https://{HOST}/hook")


def test_an_address_named_twice_is_tried_once(resolving, connections):
    with socket.socket() as placeholder:
        placeholder.bind(("127.0.0.1", 0))
        port = placeholder.getsockname()[1]
    resolving(["127.0.0.10", "127.0.0.10", "127.0.0.11"])

    response = outbound.post(f"http://{HOST}:{port}/hook", body=b"{}", headers={}, timeout=2)

    assert connections == ["127.0.0.10", "127.0.0.11"]
    assert re.fullmatch(
        rf"connection failed to each address of {HOST}: 127\.0\.0\.10:\d+: .*; 127\.0\.0\.11:\d+: .*", response.error
    )


def test_the_connect_time_is_shared_among_the_addresses_left():
    assert outbound._connect_timeout(6.0, 3) == 2.0
    assert outbound._connect_timeout(6.0, 1) == 6.0  # the last address gets all that is left
    assert outbound._connect_timeout(30.0, 1) == outbound.MAX_CONNECT_SECONDS
    assert outbound._connect_timeout(1.0, 8) == outbound.CONNECT_SHARE_FLOOR_SECONDS
    assert outbound._connect_timeout(0.1, 8) == 0.1  # never past the attempt's end


@pytest.mark.django_db
def test_the_delivery_attempt_records_the_addresses_tried(client, organization, resolving, monkeypatch):
    monkeypatch.setattr(delivery_service, "schedule_dispatch", lambda slot=0: None)
    monkeypatch.setattr(processing, "schedule_dispatch", lambda slot=0: None)
    with socket.socket() as placeholder:
        placeholder.bind(("127.0.0.1", 0))
        port = placeholder.getsockname()[1]
    resolving(["127.0.0.12", "127.0.0.13"])
    source = make_source(organization)
    make_destination(organization, f"http://{HOST}:{port}/hook", sources=[source], timeout_seconds=2)
    assert (
        post_stripe(
            client, source, '{"id": "evt_1", "object": "event", "type": "invoice.paid"}', STRIPE_SECRET
        ).status_code
        == 200
    )
    processing.process_received_events()

    delivery = deliver_now(Delivery.objects.get().pk)

    assert delivery.status == Delivery.Status.PENDING  # retried later, as any failed attempt
    assert DeliveryAttempt.objects.get().error == (
        f"connection failed to each address of {HOST}: "
        f"127.0.0.12:{port}: connection refused; 127.0.0.13:{port}: connection refused"
    )


def test_an_address_that_never_answers_the_tls_handshake_falls_over_to_the_next(resolving, connections):
    # It accepts the connection and says nothing: no byte of the request went out (the request is
    # written only once the handshake is done), so the next address is tried, as for no answer at all.
    silent = socket.socket()
    silent.bind(("127.0.0.13", 0))
    silent.listen(8)
    port = silent.getsockname()[1]
    resolving(["127.0.0.13", "127.0.0.14"])  # nobody listens on the second one
    try:
        response = outbound.post(f"https://{HOST}:{port}/hook", body=b"{}", headers={}, timeout=1)
    finally:
        silent.close()

    assert connections == ["127.0.0.13", "127.0.0.14"]
    assert re.fullmatch(
        rf"connection failed to each address of {HOST}: "
        rf"127\.0\.0\.13:{port}: no answer within 0\.\d s; 127\.0\.0\.14:{port}: connection refused",
        response.error,
    )
