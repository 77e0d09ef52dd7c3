"""WEB_KEEPALIVE_SECONDS (config/gunicorn.conf.py's `keepalive`) against gunicorn as the Procfile runs it
(gthread, the ingest writer process), over raw sockets.

What must hold: a connection that has been served stays open, idle, for the setting (a platform router
that keeps its connections longer than the app sent requests on closing ones: 502s), then is closed by
gunicorn; a connection that has sent nothing, or stalls mid-request, is let go as soon as before, not
kept as long as a served one; a stopping web process still stops at once with idle connections open,
and answers a request that arrives on one meanwhile. The servers: 1 process of 2 threads,
REQUEST_READ_TIMEOUT_SECONDS=2. Waits use PATIENCE_SECONDS, so that a failure is not a hang.
"""

from __future__ import annotations

import os
import shutil
import signal
import time
from pathlib import Path

import pytest

from . import test_ingest_http_framing as framing
from .processes import PATIENCE_SECONDS, wait_until
from .test_ingest_http_attack import _read_answer, _web_workers
from .test_ingest_http_framing import _answers, _body, _connect, _head, _read_all, _stored, _stripe_head
from .test_ingest_http_linger import _start, _stopped

stripe_source = framing.stripe_source
# Far past anything a test waits: a connection closed in a test was closed by something else.
LONG_KEEPALIVE = str(10 * PATIENCE_SECONDS)


def _server(django_db_blocker, tmp_path_factory, name: str, *options: str, keepalive: str):
    with django_db_blocker.unblock():
        port, gunicorn, private_tmp, log_path = _start(
            tmp_path_factory, name, *options, worker_connections=1000, WEB_KEEPALIVE_SECONDS=keepalive
        )
    return port, gunicorn, private_tmp, log_path


def _stop(gunicorn, private_tmp: Path, log_path: Path) -> None:
    if gunicorn.poll() is None:
        gunicorn.terminate()
        gunicorn.wait(PATIENCE_SECONDS)
    shutil.rmtree(private_tmp, ignore_errors=True)
    text = log_path.read_text()
    assert "Traceback" not in text and "WORKER TIMEOUT" not in text, text[-3000:]


@pytest.fixture(scope="module")
def short_keepalive_port(django_db_setup, django_db_blocker, tmp_path_factory):
    port, gunicorn, private_tmp, log_path = _server(django_db_blocker, tmp_path_factory, "short", keepalive="4")
    try:
        yield port
    finally:
        _stop(gunicorn, private_tmp, log_path)


@pytest.fixture(scope="module")
def long_keepalive_port(django_db_setup, django_db_blocker, tmp_path_factory):
    port, gunicorn, private_tmp, log_path = _server(
        django_db_blocker, tmp_path_factory, "long", keepalive=LONG_KEEPALIVE
    )
    try:
        yield port
    finally:
        _stop(gunicorn, private_tmp, log_path)


def _unknown_source(n: int) -> bytes:
    """A request gunicorn and Django answer at once (404), storing nothing."""
    return _head(f"tok_unknown_keepalive_{n}", b"Content-Length: 0")


def _ingest(conn, token: str, event_id: str) -> int:
    body = _body(event_id)
    conn.sendall(_stripe_head(token, body) + body)
    [(status, _)] = _answers(_read_answer(conn))
    return status


def test_an_idle_connection_serves_its_next_request_until_the_setting_then_is_closed(
    short_keepalive_port, stripe_source
):
    with _connect(short_keepalive_port) as conn:
        conn.sendall(_unknown_source(1))
        head = _read_answer(conn)
        assert head.startswith(b"HTTP/1.1 404") and b"Connection: close" not in head
        # Idle past gunicorn's own 2 s, within the setting's 4 s: what a router does between webhooks.
        time.sleep(3)
        assert _ingest(conn, stripe_source.ingest_token, "evt_after_idle") == 200
        assert _stored("evt_after_idle") == [_body("evt_after_idle")]
        # Then left idle: gunicorn closes it, the setting after that answer.
        assert _read_all(conn) == b""


def test_a_connection_that_sends_nothing_is_let_go_while_a_served_one_is_kept(long_keepalive_port, stripe_source):
    port, token = long_keepalive_port, stripe_source.ingest_token
    with _connect(port) as served, _connect(port) as silent, _connect(port) as stalled:
        assert _ingest(served, token, "evt_before_the_silent_one") == 200
        stalled.sendall(_stripe_head(token, b"{}")[:40])  # part of the headers, then nothing
        # gunicorn waits 5 s for a first byte on a thread, then on its poller: 2 s more, not the
        # setting (as long as this test's patience ten times over).
        assert _read_all(silent) == b""
        assert _read_all(stalled) == b""  # REQUEST_READ_TIMEOUT_SECONDS, whatever the keep-alive
        # The served connection, idle all that time, still serves.
        assert _ingest(served, token, "evt_after_the_silent_one") == 200
        # A next request that stalls on it is let go too.
        served.sendall(_stripe_head(token, b"{}")[:40])
        assert _read_all(served) == b""
    assert _stored("evt_after_the_silent_one") == [_body("evt_after_the_silent_one")]


def test_without_keep_alive_a_connection_slow_to_send_its_first_byte_keeps_its_seven_seconds(
    django_db_setup, django_db_blocker, tmp_path_factory
):
    # WEB_KEEPALIVE_SECONDS=0 turns keep-alive off, not the wait for a first byte: gunicorn's 5 s on a
    # thread, then 2 s on its poller, as with any other setting (gunicorn's own 0 let the connection go
    # as soon as the thread gave it up).
    port, gunicorn, private_tmp, log_path = _server(django_db_blocker, tmp_path_factory, "off", keepalive="0")
    try:
        with _connect(port) as slow:
            time.sleep(6)  # past the thread's 5 s, within the poller's 2 s after them
            slow.sendall(_unknown_source(1))
            head = _read_answer(slow)
            assert head.startswith(b"HTTP/1.1 404") and b"Connection: close" in head
    finally:
        _stop(gunicorn, private_tmp, log_path)


def _signal_pending(pid: int, signum: int) -> bool:
    """Whether ``signum`` was sent to the (stopped) process and waits for it to run again."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("ShdPnd:"):
            return bool(int(line.split()[1], 16) & (1 << (signum - 1)))
    return False


def test_a_stopping_web_process_answers_what_comes_on_idle_connections_and_stops_at_once(
    django_db_setup, django_db_blocker, tmp_path_factory, stripe_source
):
    # A deploy's SIGTERM to the master, with connections a router keeps open idle: the worker keeps
    # them 2 s at most (gunicorn's STOP_KEEPALIVE_LINGER), not the setting, and answers a request
    # that comes on one meanwhile with "Connection: close". Its graceful_timeout is past this
    # test's patience: a worker that waited for its idle or silent connections would fail it.
    port, gunicorn, private_tmp, log_path = _server(
        django_db_blocker,
        tmp_path_factory,
        "stop",
        *("--graceful-timeout", str(2 * PATIENCE_SECONDS)),
        keepalive=LONG_KEEPALIVE,
    )
    kept, silent = [], None
    try:
        [worker] = _web_workers(gunicorn.pid)
        # One that has sent nothing, and waits on the worker's poller by the time it stops (after
        # gunicorn's 5 s on a thread): a stopping worker waited for such a one up to its
        # graceful_timeout (with Heroku's 30 s, until it was killed with what it was serving).
        silent = _connect(port)
        silent_since = time.monotonic()
        for n in range(6):
            conn = _connect(port)
            conn.sendall(_unknown_source(n))
            assert _read_answer(conn).startswith(b"HTTP/1.1 404")
            kept.append(conn)
        # Idle past gunicorn's own 2 s; the silent one past its 5 s.
        time.sleep(max(3, 6 - (time.monotonic() - silent_since)))
        # The worker is frozen while the master passes SIGTERM on to it, and the requests are sent
        # on half of the connections before it runs again: they come after it was told to stop,
        # however slow the machine (as in test_ingest_http_linger's stop test).
        os.kill(worker, signal.SIGSTOP)
        try:
            assert wait_until(lambda: _stopped(worker), PATIENCE_SECONDS, 0.01)
            gunicorn.send_signal(signal.SIGTERM)
            assert wait_until(lambda: _signal_pending(worker, signal.SIGTERM), PATIENCE_SECONDS, 0.01)
            body = _body("evt_during_the_stop")
            kept[0].sendall(_stripe_head(stripe_source.ingest_token, body) + body)
            for n, conn in enumerate(kept[1:3], start=100):
                conn.sendall(_unknown_source(n))
        finally:
            os.kill(worker, signal.SIGCONT)
        heads = [_read_answer(conn) for conn in kept[:3]]
        assert [head[:12] for head in heads] == [b"HTTP/1.1 200", b"HTTP/1.1 404", b"HTTP/1.1 404"]
        assert all(b"Connection: close" in head for head in heads)
        for conn in [*kept, silent]:  # the idle ones too: closed by the worker, not held for the setting
            assert _read_all(conn) == b""
        assert gunicorn.wait(PATIENCE_SECONDS) == 0
        assert f"Worker exiting (pid: {worker})" in log_path.read_text()
        assert _stored("evt_during_the_stop") == [_body("evt_during_the_stop")]
    finally:
        for conn in [*kept, silent]:
            if conn is not None:
                conn.close()
        _stop(gunicorn, private_tmp, log_path)
