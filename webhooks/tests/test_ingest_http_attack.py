"""Hostile and broken HTTP clients against POST /in/<token>/ on gunicorn as the Procfile runs it
(gthread, config/gunicorn.conf.py, the ingest writer process), over raw sockets.

What must hold: a client that never reads its answers, or never closes a connection it was told
is closing, holds neither a request thread nor the worker's main loop (which accepts every other
connection); everyone else keeps being served. The server is the framing tests' (1 process of 2
threads, REQUEST_READ_TIMEOUT_SECONDS=2): two held threads or a held main loop would stop it.
Nothing here may be answered by gunicorn killing its own worker.
Waits use PATIENCE_SECONDS, so that without the limits a test fails instead of hanging.
"""

from __future__ import annotations

import contextlib
import json
import socket
import time
from pathlib import Path

import pytest
from slack_sdk.signature import SignatureVerifier

from . import test_ingest_http_framing as framing
from .factories import make_source
from .processes import PATIENCE_SECONDS
from .test_ingest_http_framing import _answers, _body, _connect, _exchange, _head, _read_all, _stored, _stripe_head
from .test_ingest_writer_process import _writer_pids
from .test_provider_setup import SLACK_SECRET

stripe_source = framing.stripe_source


@pytest.fixture(scope="module")
def server(request, django_db_setup, django_db_blocker):
    """The framing tests' server (shared with them): 1 process of 2 threads, REQUEST_READ_TIMEOUT_SECONDS=2,
    gunicorn's default `timeout` (30 s: a worker whose main loop is held longer is killed by the master)."""
    shared = framing.shared_server(request, django_db_blocker)
    yield shared.port, shared.process.pid
    text = shared.log()
    assert "Traceback" not in text and "WORKER TIMEOUT" not in text, text[-3000:]


@pytest.fixture
def port(server):
    return server[0]


def _web_workers(master_pid: int) -> set[int]:
    """The master's worker processes (not its ingest writer)."""
    children = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            stat = (entry / "stat").read_text()
            if int(stat[stat.rindex(")") + 2 :].split()[1]) == master_pid:
                children.add(int(entry.name))
    return children - set(_writer_pids(master_pid))


@pytest.fixture
def slack_source(transactional_db, organization):
    return make_source(organization, provider="slack", secret=SLACK_SECRET)


def _slack_url_verification(token: str, challenge_bytes: int) -> bytes:
    """Slack's signed url_verification (signed by slack_sdk), whose answer echoes its challenge."""
    body = json.dumps({"type": "url_verification", "token": "t", "challenge": "c" * challenge_bytes}).encode()
    timestamp = str(int(time.time()))
    signature = SignatureVerifier(SLACK_SECRET).generate_signature(timestamp=timestamp, body=body)
    return (
        _head(
            token,
            b"Content-Type: application/json",
            b"Content-Length: %d" % len(body),
            b"X-Slack-Request-Timestamp: " + timestamp.encode(),
            b"X-Slack-Signature: " + signature.encode(),
        )
        + body
    )


def test_clients_that_never_read_their_answers_are_let_go(port, slack_source, stripe_source):
    # Each connection pipelines requests whose answers are large (Slack's handshake echoes a 512 KiB
    # challenge) and reads none of them: once the socket buffers are full, the thread writing the next
    # answer waits for the client, which keeps sending. gunicorn writes with no time limit.
    request = _slack_url_verification(slack_source.ingest_token, 512 * 1024)
    flooders = []
    try:
        for _ in range(2):  # as many as the server's threads
            conn = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connecting: a small window
            conn.settimeout(PATIENCE_SECONDS)
            conn.connect(("127.0.0.1", port))
            flooders.append(conn)
        for conn in flooders:
            # Sending goes on until the server drops the connection; without a limit on its wait for
            # the client, the buffers fill up and this send waits for good (a TimeoutError here).
            with pytest.raises((BrokenPipeError, ConnectionResetError)):
                while True:
                    conn.sendall(request)
        # Both threads are free again.
        body = _body("evt_after_the_non_readers")
        assert [status for status, _ in _exchange(port, _stripe_head(stripe_source.ingest_token, body) + body)] == [200]
        assert _stored("evt_after_the_non_readers") == [body]
    finally:
        for conn in flooders:
            conn.close()


def test_clients_that_keep_a_closing_connection_open_do_not_stall_the_worker(server, stripe_source):
    # Each answer says "Connection: close"; the client reads it but does not close its side. gunicorn
    # then lingers before closing (so that a request still arriving does not reset the answer): up to
    # 2 s each, and it did so on the worker's main loop, the thread that accepts every connection and
    # tells the master it is alive. A few dozen such clients held it past gunicorn's `timeout`, and
    # the master killed the worker, with every request it was serving.
    port, master_pid = server
    workers = _web_workers(master_pid)
    held = []
    try:
        for n in range(200):  # 400 s of lingering one after the other, before the fix
            conn = _connect(port)
            conn.sendall(_head(f"tok_unknown_lingering_{n}", b"Content-Length: 0", b"Connection: close"))
            held.append(conn)
        # All of them answered, and the next client served, in the time a test waits for anything.
        deadline = time.monotonic() + PATIENCE_SECONDS
        for conn in held:
            conn.settimeout(max(deadline - time.monotonic(), 0.01))
            [(status, answer)] = _answers(_read_answer(conn))
            assert (status, answer["error"]) == (404, "unknown_source")
        body = _body("evt_after_the_lingering_ones")
        with _connect(port) as conn:
            conn.settimeout(max(deadline - time.monotonic(), 0.01))
            conn.sendall(_stripe_head(stripe_source.ingest_token, body) + body)
            [(status, _)] = _answers(_read_answer(conn))
        assert status == 200
        assert _stored("evt_after_the_lingering_ones") == [body]
        for conn in held:  # and each closed by the server, although its client never closed it
            conn.settimeout(PATIENCE_SECONDS)
            assert _read_all(conn) == b""
        assert _web_workers(master_pid) == workers  # the same worker served it all
    finally:
        for conn in held:
            conn.close()


def _read_answer(conn: socket.socket) -> bytes:
    """One answer (with its Content-Length), without waiting for the connection to close."""
    received = b""
    while b"\r\n\r\n" not in received:
        chunk = conn.recv(65536)
        assert chunk, "the connection closed before its answer"
        received += chunk
    head, _, rest = received.partition(b"\r\n\r\n")
    length = int(
        next(line for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")).split(b":")[1]
    )
    while len(rest) < length:
        chunk = conn.recv(65536)
        assert chunk, "the connection closed in the middle of an answer"
        rest += chunk
    return head + b"\r\n\r\n" + rest


def test_a_host_header_not_this_servers_is_refused_in_json(port, stripe_source):
    # Django refuses it before any view (ALLOWED_HOSTS): that was its HTML "Bad Request (400)" page.
    body = _body("evt_other_host")
    request = _stripe_head(stripe_source.ingest_token, body).replace(b"Host: 127.0.0.1", b"Host: evil.example") + body
    [(status, answer)] = _exchange(port, request)
    assert (status, answer) == (400, {"error": "bad_request", "detail": "the Host header does not name this server"})
    assert _stored("evt_other_host") == []
