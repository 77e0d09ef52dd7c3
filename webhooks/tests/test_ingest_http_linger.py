"""config/gunicorn.conf.py's limits on writing answers and on lingering before a close, against
gunicorn as the Procfile runs it (gthread, the ingest writer process), over raw sockets.

What must hold: a client that keeps taking its answer, however slowly, gets all of it; a flood of
clients that keep closing connections open never holds the worker's main loop (which accepts every
other connection), however many of them there are; a stopping worker does not hold it either.
The servers: 1 process of 2 threads, REQUEST_READ_TIMEOUT_SECONDS=2, and for the most
part 6 connections (``--worker-connections``). Waits use PATIENCE_SECONDS, so that a failure is not a hang.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import tempfile
import time
from pathlib import Path

import pytest
from slack_sdk.signature import SignatureVerifier

from . import test_ingest_http_framing as framing
from .factories import make_source
from .processes import PATIENCE_SECONDS, free_port, wait_for_port, wait_until
from .test_ingest_http_attack import _read_answer, _web_workers
from .test_ingest_http_framing import _answers, _body, _connect, _head, _read_all, _stored, _stripe_head
from .test_ingest_writer_process import _start_gunicorn, _writer_pids
from .test_provider_setup import SLACK_SECRET

stripe_source = framing.stripe_source
WORKER_CONNECTIONS = 6


def _start(tmp_path_factory, name: str, *options: str, worker_connections: int = WORKER_CONNECTIONS, **env: str):
    port = free_port()
    private_tmp = Path(tempfile.mkdtemp(prefix="hll-"))
    log_path = tmp_path_factory.mktemp(name) / "gunicorn.log"
    log = log_path.open("w")
    gunicorn = _start_gunicorn(
        port,
        private_tmp,
        log,
        *("--workers", "1", "--worker-class", "gthread", "--threads", "2"),
        *("--worker-connections", str(worker_connections)),
        *options,
        REQUEST_READ_TIMEOUT_SECONDS=str(framing.READ_TIMEOUT_SECONDS),
        **env,
    )
    wait_for_port(port, process=gunicorn)
    assert wait_until(lambda: len(_writer_pids(gunicorn.pid)) == 1, PATIENCE_SECONDS, 0.05)
    return port, gunicorn, private_tmp, log_path


@pytest.fixture(scope="module")
def server(django_db_setup, django_db_blocker, tmp_path_factory):
    with django_db_blocker.unblock():
        port, gunicorn, private_tmp, log_path = _start(tmp_path_factory, "linger")
        try:
            yield port, gunicorn.pid
        finally:
            gunicorn.terminate()
            gunicorn.wait(30)
            shutil.rmtree(private_tmp, ignore_errors=True)
    text = log_path.read_text()
    assert "Traceback" not in text and "WORKER TIMEOUT" not in text, text[-3000:]


@pytest.fixture
def port(server):
    return server[0]


@pytest.fixture
def slack_source(transactional_db, organization):
    return make_source(organization, provider="slack", secret=SLACK_SECRET)


def _slack_url_verification(token: str, challenge: str) -> bytes:
    body = json.dumps({"type": "url_verification", "token": "t", "challenge": challenge}, ensure_ascii=False).encode()
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


def test_a_slow_client_that_keeps_reading_gets_its_whole_answer(port, slack_source):
    # A large answer to a client on a slow link: it takes every part of the answer as it comes, but
    # the whole takes longer than REQUEST_READ_TIMEOUT_SECONDS. An event's body through the API or
    # the dashboard is up to INGEST_MAX_BODY_BYTES; here Slack's handshake, which echoes its challenge
    # (800 KB of emoji, each escaped as 12 bytes: a 2.4 MB answer, past what the server's socket
    # buffers take at once). The limit is on a client that takes nothing, not on a slow one.
    challenge = "\U0001f600" * 200_000
    conn = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, 1460)  # an Internet path's, not loopback's
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    conn.settimeout(PATIENCE_SECONDS)
    try:
        conn.connect(("127.0.0.1", port))
        conn.sendall(_slack_url_verification(slack_source.ingest_token, challenge))
        received = b""
        while chunk := conn.recv(16 * 1024):
            received += chunk
            head, _, rest = received.partition(b"\r\n\r\n")
            if rest and len(rest) >= int(dict(_header_lines(head))[b"content-length"]):
                break
            # 16 KiB per 30 ms at most: at least 146 reads, 4.4 s for the answer, twice the limit.
            time.sleep(0.03)
    finally:
        conn.close()
    [(status, answer)] = _answers(received)
    assert (status, answer) == (200, {"challenge": challenge})


def _header_lines(head: bytes):
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        yield name.strip().lower(), value.strip()


def test_more_lingering_clients_than_worker_connections_do_not_stall_the_worker(server, stripe_source):
    # Each answer says "Connection: close" and its client never closes its side, many times more of
    # them at once than the worker's connections: past that many, each further one lingered 2 s on
    # the worker's main loop, as before the linger moved to the poller, and the master killed the
    # worker (its `timeout`) with every request it was serving.
    port, master_pid = server
    workers = _web_workers(master_pid)
    held = []
    try:
        for n in range(200):  # some 4 minutes of lingering one after the other past the first 6
            conn = _connect(port)
            conn.sendall(_head(f"tok_unknown_flood_{n}", b"Content-Length: 0", b"Connection: close"))
            held.append(conn)
        deadline = time.monotonic() + PATIENCE_SECONDS
        for conn in held:
            conn.settimeout(max(deadline - time.monotonic(), 0.01))
            [(status, answer)] = _answers(_read_answer(conn))
            assert (status, answer["error"]) == (404, "unknown_source")
        body = _body("evt_after_the_flood")
        with _connect(port) as conn:
            conn.settimeout(max(deadline - time.monotonic(), 0.01))
            conn.sendall(_stripe_head(stripe_source.ingest_token, body) + body)
            [(status, _)] = _answers(_read_answer(conn))
        assert status == 200
        assert _stored("evt_after_the_flood") == [body]
        for conn in held:  # each closed by the server
            conn.settimeout(PATIENCE_SECONDS)
            assert _read_all(conn) == b""
        assert _web_workers(master_pid) == workers  # the same worker served it all
    finally:
        for conn in held:
            conn.close()


def _stopped(pid: int) -> bool:
    """Whether the process is stopped (SIGSTOP), not just sleeping."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat[stat.rindex(")") + 2] == "T"


def test_a_stopping_worker_closes_lingering_connections_without_holding_its_main_loop(
    django_db_setup, django_db_blocker, tmp_path_factory, stripe_source
):
    # A worker told to stop (a deploy's SIGTERM, a HUP reload, max_requests) answers the requests
    # its kept-alive connections still bring, with "Connection: close". Their clients keep the
    # connections open: the stopping worker lingered 2 s for each on its main loop, as before the
    # linger moved to the poller, and 30 of them held it past gunicorn's `timeout` (30 s): the
    # master killed it instead of letting it finish.
    # Its own server, of gunicorn's default 1000 connections, which the master keeps serving with a
    # new worker (what this test checks last). Kept-alive connections stay open PATIENCE_SECONDS
    # there, not gunicorn's default 2 s: on a loaded machine the 30 requests took longer than that,
    # and the first connections were closed, idle, before the worker was told to stop.
    with django_db_blocker.unblock():
        port, gunicorn, private_tmp, log_path = _start(
            tmp_path_factory, "stop", "--keep-alive", str(PATIENCE_SECONDS), worker_connections=1000
        )
    kept = []
    try:
        [worker] = _web_workers(gunicorn.pid)
        for n in range(30):
            conn = _connect(port)
            conn.sendall(_head(f"tok_unknown_kept_{n}", b"Content-Length: 0"))
            [(status, _)] = _answers(_read_answer(conn))
            assert status == 404
            kept.append(conn)
        # The next requests are on their way as the worker is told to stop: a stopping worker keeps
        # its kept-alive connections 2 s more (gunicorn's STOP_KEEPALIVE_LINGER), and requests sent a
        # moment after the signal could come later than that on a loaded machine. So the worker is
        # frozen, told to stop and sent them, and only then goes on: its signal handler runs as it
        # wakes, before it reads any of them.
        os.kill(worker, signal.SIGSTOP)
        try:
            assert wait_until(lambda: _stopped(worker), PATIENCE_SECONDS, 0.01)
            os.kill(worker, signal.SIGTERM)
            for n, conn in enumerate(kept):
                conn.sendall(_head(f"tok_unknown_kept_again_{n}", b"Content-Length: 0"))
        finally:
            os.kill(worker, signal.SIGCONT)
        for conn in kept:
            head = _read_answer(conn)
            assert head.startswith(b"HTTP/1.1 404") and b"Connection: close" in head
        assert wait_until(lambda: worker not in _web_workers(gunicorn.pid), PATIENCE_SECONDS, 0.05)
        for conn in kept:  # each closed by the worker, although its client never closed it
            assert _read_all(conn) == b""
        # The worker ended on its own, not killed by the master.
        assert wait_until(lambda: f"Worker exiting (pid: {worker})" in log_path.read_text(), PATIENCE_SECONDS, 0.05)
        assert "WORKER TIMEOUT" not in log_path.read_text()
        # Its replacement serves ingest.
        assert wait_until(lambda: len(_web_workers(gunicorn.pid)) == 1, PATIENCE_SECONDS, 0.05)
        body = _body("evt_after_the_stop")
        with _connect(port) as conn:
            conn.sendall(_stripe_head(stripe_source.ingest_token, body) + body)
            [(status, _)] = _answers(_read_answer(conn))
        assert status == 200
        assert _stored("evt_after_the_stop") == [body]
    finally:
        for conn in kept:
            conn.close()
        gunicorn.terminate()
        gunicorn.wait(30)
        shutil.rmtree(private_tmp, ignore_errors=True)
    assert "Traceback" not in log_path.read_text(), log_path.read_text()[-3000:]
