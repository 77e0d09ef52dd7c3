"""Reading a receiver's answer: bounded in size and in time, whatever the receiver does."""

import gzip
import socket
import threading
import time

import pytest

from webhooks.services import outbound


class OneShotServer:
    """A raw HTTP server on 127.0.0.1 that answers each connection with ``respond(connection)``."""

    def __init__(self, respond):
        self.respond = respond
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(8)
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}/hook"
        self.connections = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                connection, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._handle, args=(connection,), daemon=True).start()

    def _handle(self, connection):
        with connection:
            connection.settimeout(10)
            request = b""
            while b"\r\n\r\n" not in request:
                request += connection.recv(65536)
            head, _, body = request.partition(b"\r\n\r\n")
            length = next(
                int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")
            )
            while len(body) < length:
                body += connection.recv(65536)
            try:
                self.respond(connection)
            except OSError:
                pass  # the client gave up, as it should

    def close(self):
        self.listener.close()


@pytest.fixture
def server():
    servers = []

    def start(respond):
        servers.append(OneShotServer(respond))
        return servers[-1]

    yield start
    for one in servers:
        one.close()


def test_a_trickling_answer_is_cut_at_the_attempts_timeout(server, settings):
    def trickle(connection):
        connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
        for _ in range(1000):  # 1,000 bytes, one every 50 ms: 50 s in all
            connection.sendall(b"x")
            time.sleep(0.05)

    slow = server(trickle)
    response = outbound.post(slow.url, body=b"{}", headers={}, timeout=1.0)
    # Cut with part of the body: the receiver wanted 50 s for all of it.
    assert response.status == 200 and 0 < len(response.body) < 1000


def test_a_long_answer_is_kept_up_to_the_limit(server, settings):
    settings.DELIVERY_RESPONSE_BODY_MAX_BYTES = 100

    def long(connection):
        connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n" + b"y" * 5000)

    response = outbound.post(server(long).url, body=b"{}", headers={}, timeout=5.0)
    assert response.status == 200 and response.body == "y" * 100


def test_a_compressed_answer_is_stored_decoded(server, settings):
    payload = gzip.compress(b'{"received": true}')

    def compressed(connection):
        head = f"HTTP/1.1 202 Accepted\r\nContent-Encoding: gzip\r\nContent-Length: {len(payload)}\r\n\r\n"
        connection.sendall(head.encode() + payload)

    response = outbound.post(server(compressed).url, body=b"{}", headers={}, timeout=5.0)
    assert response.status == 202 and response.body == '{"received": true}'


@pytest.mark.parametrize(
    "retry_after",
    [
        b"\xb2",  # "²" passes str.isdigit(), and float() refuses it
        b"Mon, 01 Jan 99999999999 00:00:00 GMT",  # a date past what datetime can hold
    ],
)
def test_an_answer_whose_retry_after_cannot_be_read_is_still_the_answer(server, settings, retry_after):
    # The exception took the 200 for an attempt that could not be made, and the delivery the receiver
    # had accepted was sent again.
    def accepted(connection):
        connection.sendall(b"HTTP/1.1 200 OK\r\nRetry-After: " + retry_after + b"\r\nContent-Length: 2\r\n\r\nok")

    response = outbound.post(server(accepted).url, body=b"{}", headers={}, timeout=5.0)
    assert (response.status, response.body, response.error, response.retry_after) == (200, "ok", "", None)


@pytest.fixture
def short_cut_grace(monkeypatch):
    # Only the watchdog cuts a trickle (each byte restarts urllib3's read timeout); it does so a
    # grace after the deadline, a second in production, a margin these tests do not need to wait out.
    monkeypatch.setattr(outbound, "CUT_GRACE_SECONDS", 0.1)


def test_trickled_headers_are_cut_at_the_attempts_timeout(server, short_cut_grace):
    def trickle_headers(connection):
        for _ in range(1000):  # a header line that never ends, one byte every 50 ms
            connection.sendall(b"X" if _ else b"HTTP/1.1 200 OK\r\nX-Slow: ")
            time.sleep(0.05)

    response = outbound.post(server(trickle_headers).url, body=b"{}", headers={}, timeout=1.0)
    assert response.status is None and response.error == "timed out after 1 s"


def test_a_trickled_compressed_answer_is_cut_at_the_attempts_timeout(server, short_cut_grace):
    def trickle_gzip(connection):
        connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: 100000\r\n\r\n")
        connection.sendall(b"\x1f\x8b\x08\x08\x00\x00\x00\x00\x00\x03")  # a gzip header with a file name...
        for _ in range(1000):
            connection.sendall(b"a")  # ...that never ends, so nothing ever decodes
            time.sleep(0.05)

    response = outbound.post(server(trickle_gzip).url, body=b"{}", headers={}, timeout=1.0)
    assert response.error == "timed out after 1 s"


def test_a_busy_destination_keeps_one_connection_per_sending_thread(settings, caplog):
    # With fewer kept-alive connections than sending threads, the extra ones were closed after each
    # send ("Connection pool is full" each time) and the next sends paid new handshakes.
    import http.server
    import logging
    from concurrent.futures import ThreadPoolExecutor

    settings.DELIVERY_THREADS = 12
    together = threading.Barrier(12, timeout=10)
    connections = []

    class KeepAliveHandler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def setup(self):
            super().setup()
            connections.append(self.client_address)

        def do_POST(self):
            self.rfile.read(int(self.headers["Content-Length"]))
            together.wait()  # every thread holds a connection of its own at once
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args):
            pass

    receiver = http.server.ThreadingHTTPServer(("127.0.0.1", 0), KeepAliveHandler)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{receiver.server_address[1]}/hook"
    try:
        with caplog.at_level(logging.WARNING, logger="urllib3"), ThreadPoolExecutor(12) as pool:
            for _round in range(3):
                answers = list(
                    pool.map(lambda _: outbound.post(url, body=b"{}", headers={}, timeout=10).status, range(12))
                )
                assert answers == [200] * 12
    finally:
        receiver.shutdown()
        receiver.server_close()
        outbound.forget_resolved_hosts()
    assert len(connections) == 12  # opened in the first round, kept for the next two
    assert not [record for record in caplog.records if "pool is full" in record.getMessage()]
