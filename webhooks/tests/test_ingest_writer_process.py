"""The host's ingest writer process: rows from every web worker, committed before each is answered.

The server runs in a thread of the test (real PostgreSQL, real Unix socket); the last tests run
gunicorn with config/gunicorn.conf.py, which starts, restarts and stops the real process.
"""

import contextlib
import importlib.util
import json
import logging
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import types
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from django.db import DataError, OperationalError, connection
from django.test import Client
from django.utils import timezone

from webhooks.models import Source, WebhookEvent
from webhooks.services import ingest, ingest_writer
from webhooks.services.ingest_writer import NewEvent, SourceClosed, WriterTimeout, store_event
from webhooks.services.ingest_writer_process import (
    WriterProcessClient,
    WriterServer,
    decode_event,
    encode_event,
)

from .factories import STRIPE_SECRET, make_source
from .processes import PATIENCE_SECONDS, free_port, post_stripe_over_http, wait_for_port, wait_until
from .signing import post_stripe
from .test_ingest_writer import GatedBatches, new_event

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def stripe_source(organization):
    return make_source(organization)


@pytest.fixture
def socket_path():
    # Unix socket paths are limited to ~100 bytes, which pytest's tmp_path can exceed.
    directory = Path(tempfile.mkdtemp(prefix="hlw-"))
    yield str(directory / "writer.sock")
    shutil.rmtree(directory, ignore_errors=True)


class ServerThread:
    """A WriterServer serving in a thread on the test database, as the writer process does."""

    def __init__(self, path: str, server: WriterServer | None = None):
        if server is None:
            server = WriterServer(path, shutdown_grace_seconds=5)
            server.listen()
        self.server = server
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        try:
            self.server.serve_forever()
        finally:
            connection.close()  # this thread's own connection, as the process's is closed on exit

    def stop(self):
        self.server.stop()
        # The loop sees the stop at its next turn, when its wait for readable sockets (0.5 s) ends:
        # a connection ends that wait now.
        with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as wake:
            wake.connect(self.server.path)
        self.thread.join(10)
        assert not self.thread.is_alive()


@pytest.fixture
def writer_server(transactional_db, socket_path):
    running = ServerThread(socket_path)
    yield running
    running.stop()


@pytest.fixture
def client():
    return WriterProcessClient()


# --- the wire format ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"provider_event_id": None, "remote_ip": None},
        {"provider_event_id": "evt_\udc80_lone_surrogate", "event_type": "caf\u00e9.\U0001f600"},
        {"body": bytes(range(256)) * 4000, "headers": {"X-Empty": "", "Ünïcode": "välue"}},
        {"body": b""},
        {"signed_content_digest": "0123456789abcdef" * 4, "provider_event_id": None},
    ],
)
def test_a_row_crosses_the_socket_unchanged(changes):
    event = NewEvent(
        organization_id=7,
        source_id=2**40,
        provider_event_id="evt_1",
        event_type="invoice.paid",
        body=b'{"id":"evt_1"}',
        headers={"Content-Type": "application/json"},
        remote_ip="2001:db8::1",
    )
    for name, value in changes.items():
        setattr(event, name, value)
    frame = encode_event(event)
    assert int.from_bytes(frame[:4], "big") == len(frame) - 4
    assert decode_event(frame[4:]) == event


def test_a_payload_whose_lengths_do_not_add_up_is_refused():
    payload = encode_event(NewEvent(1, 1, "evt", "t", b"body", {}, None))[4:]
    with pytest.raises(ValueError):
        decode_event(payload + b"x")
    with pytest.raises(ValueError):
        decode_event(payload[:-1])
    with pytest.raises(ValueError):
        decode_event(payload[:10])


def test_a_received_time_out_of_range_is_an_unreadable_frame_not_a_crash():
    event = NewEvent(1, 1, "evt", "t", b"body", {}, None)
    payload = bytearray(encode_event(event)[4:])
    payload[32:40] = (2**62).to_bytes(8, "big")  # the received time, µs since the epoch
    with pytest.raises(ValueError):
        decode_event(bytes(payload))


# --- the server, in a thread ----------------------------------------------------------------------


def test_a_row_is_committed_before_it_is_answered_and_a_redelivery_counts(writer_server, client, stripe_source):
    event = new_event(stripe_source, "evt_process_1", body=b'{"id":"evt_process_1"}\x00\xff')
    stored_id, inserted = client.write(event, writer_server.server.path, timeout=10)
    assert (stored_id, inserted) == (event.id, True)
    # Committed by the server's own connection: visible to this one at once.
    row = WebhookEvent.objects.get(pk=stored_id)
    assert bytes(row.body) == b'{"id":"evt_process_1"}\x00\xff'
    assert row.headers == {"Content-Type": "application/json"}
    assert (row.organization_id, row.source_id, str(row.remote_ip)) == (
        stripe_source.organization_id,
        stripe_source.pk,
        "203.0.113.7",
    )
    assert row.received_at == event.received_at

    again = new_event(stripe_source, "evt_process_1")
    assert client.write(again, writer_server.server.path, timeout=10) == (event.id, False)
    assert WebhookEvent.objects.get(pk=stored_id).duplicate_count == 1


def test_rows_from_many_connections_share_a_commit(writer_server, stripe_source, monkeypatch):
    batches = GatedBatches()
    monkeypatch.setattr(ingest_writer, "insert_event_batch", batches)
    path = writer_server.server.path
    clients = [WriterProcessClient() for _ in range(9)]

    def write(index):
        return clients[index].write(new_event(stripe_source, f"evt_shared_{index}"), path, timeout=10)

    with ThreadPoolExecutor(9) as pool:
        first = pool.submit(write, 0)
        assert batches.first_started.wait(10)
        rest = [pool.submit(write, index) for index in range(1, 9)]
        time.sleep(0.3)  # the eight rows reach the server's socket while the first commit is held
        assert not any(future.done() for future in [first, *rest])  # nobody is answered before its commit
        batches.gate.set()
        outcomes = [first.result(10), *(future.result(10) for future in rest)]

    assert all(inserted for _, inserted in outcomes)
    assert batches.sizes[0] == 1 and sum(batches.sizes) == 9
    assert max(batches.sizes[1:]) > 1, batches.sizes
    assert WebhookEvent.objects.filter(provider_event_id__startswith="evt_shared_").count() == 9


def test_an_unstorable_row_is_a_data_error_and_its_neighbours_are_stored(writer_server, stripe_source, monkeypatch):
    batches = GatedBatches()
    monkeypatch.setattr(ingest_writer, "insert_event_batch", batches)
    path = writer_server.server.path
    events = [new_event(stripe_source, f"evt_neighbour_{n}") for n in range(3)]
    events.insert(1, new_event(stripe_source, "evt_nul\x00"))  # PostgreSQL refuses NUL in text

    def write(event):
        try:
            return WriterProcessClient().write(event, path, timeout=10)
        except DataError as exc:
            return exc

    with ThreadPoolExecutor(4) as pool:
        first = pool.submit(write, new_event(stripe_source, "evt_gate"))
        assert batches.first_started.wait(10)
        futures = [pool.submit(write, event) for event in events]
        time.sleep(0.3)
        batches.gate.set()
        assert first.result(10)[1] is True
        results = [future.result(10) for future in futures]

    assert isinstance(results[1], DataError)
    assert [result[1] for index, result in enumerate(results) if index != 1] == [True, True, True]
    assert WebhookEvent.objects.filter(provider_event_id__startswith="evt_neighbour_").count() == 3


def _frame_with_field(name: str, raw: bytes | None) -> bytes:
    """A row's frame whose field ``name`` (event_type or headers) is ``raw``; None writes the
    length -1, which only the optional fields (provider event id, remote address) may have."""
    payload = bytearray(encode_event(NewEvent(1, 1, "evt", "", b"body", {}, None))[4:])
    offset = {"event_type": 44, "headers": 48}[name]  # their lengths in the fixed part of a row
    payload[offset : offset + 4] = (-1 if raw is None else len(raw)).to_bytes(4, "big", signed=True)
    event_type_at = 60 + 3  # after the fixed part and the provider event id "evt"
    headers_at = event_type_at  # the event type is empty
    if name == "event_type":
        payload[event_type_at:event_type_at] = raw or b""
    else:
        payload[headers_at : headers_at + 2] = raw or b""  # in place of "{}"
    return len(payload).to_bytes(4, "big") + bytes(payload)


@pytest.mark.parametrize(
    "frame",
    [
        (5).to_bytes(4, "big") + b"hello",  # too short to be a row
        (2**32 - 1).to_bytes(4, "big") + b"x" * 100,  # longer than any row can be: never buffered whole
        _frame_with_field("event_type", None),  # a field every row has, said to be missing
        _frame_with_field("headers", None),
        _frame_with_field("headers", b"[1, 2]"),  # headers that are not an object
    ],
    ids=["garbage", "oversized", "no-event-type", "no-headers", "headers-not-an-object"],
)
def test_frames_that_cannot_be_rows_close_only_their_own_connection(writer_server, client, stripe_source, frame):
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as garbage:
        garbage.connect(writer_server.server.path)
        garbage.sendall(frame)
        garbage.settimeout(5)
        assert garbage.recv(100) == b""  # closed, no answer
    assert writer_server.thread.is_alive()
    assert client.write(new_event(stripe_source, "evt_after_garbage"), writer_server.server.path, 10)[1] is True


def _frame_of_the_release_before_signed_content(event: NewEvent) -> bytes:
    """The frame a web worker of the release before migration 0038 sends: no content digest field."""
    fixed = struct.Struct("!16sqqqiiiiI")
    headers = json.dumps(event.headers).encode()
    received_us = (event.received_at - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)
    provider_event_id = event.provider_event_id.encode()
    payload = b"".join(
        (
            fixed.pack(
                event.id.bytes,
                event.organization_id,
                event.source_id,
                received_us,
                len(provider_event_id),
                len(event.event_type),
                len(headers),
                -1,
                len(event.body),
            ),
            provider_event_id,
            event.event_type.encode(),
            headers,
            event.body,
        )
    )
    return len(payload).to_bytes(4, "big") + payload


@pytest.mark.parametrize("body", [b"", b"x", b'{"id":"evt_old_release"}' * 100])
def test_a_frame_of_the_previous_release_is_refused_and_nothing_is_stored(writer_server, stripe_source, body):
    # A rolling deploy (or a kill -HUP, which keeps the writer process) pairs workers and a writer of
    # two releases: the worker must be answered as an outage (503, the provider retries), never have
    # its row stored with its fields read out of place.
    event = new_event(stripe_source, "evt_old_release")
    event.body = body
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as old_worker:
        old_worker.connect(writer_server.server.path)
        old_worker.sendall(_frame_of_the_release_before_signed_content(event))
        old_worker.settimeout(5)
        assert old_worker.recv(100) == b""  # closed, no answer: the old worker answers 503
    assert not WebhookEvent.objects.exists()


def test_a_restarted_writer_is_reached_on_the_next_request(transactional_db, socket_path, client, stripe_source):
    first = ServerThread(socket_path)
    try:
        assert client.write(new_event(stripe_source, "evt_before_restart"), socket_path, 10)[1] is True
    finally:
        first.stop()
    second = ServerThread(socket_path)
    try:
        # The kept connection belongs to the writer that ended: the client connects again.
        assert client.write(new_event(stripe_source, "evt_after_restart"), socket_path, 10)[1] is True
    finally:
        second.stop()


def test_a_terminated_writer_serves_until_its_workers_have_disconnected(writer_server, client, stripe_source):
    path = writer_server.server.path
    assert client.write(new_event(stripe_source, "evt_term_1"), path, 10)[1] is True
    writer_server.server.terminate()  # SIGTERM: web workers may still be finishing requests
    time.sleep(0.7)
    assert writer_server.thread.is_alive()
    assert client.write(new_event(stripe_source, "evt_term_2"), path, 10)[1] is True
    client._forget()  # the worker exits and its connection closes
    # At once, not when the grace time (5 s here) runs out.
    writer_server.thread.join(2)
    assert not writer_server.thread.is_alive()
    assert not os.path.exists(path)


def test_a_terminated_writer_answers_a_row_still_in_its_backlog(transactional_db, socket_path, stripe_source):
    # A HUP reload's old workers still serve while their writer is told to stop: one may connect and
    # send its row just as the writer sees no connection left. That row is answered, not reset (a 503).
    server = WriterServer(socket_path, shutdown_grace_seconds=5)
    server.listen()
    server.terminate()
    event = new_event(stripe_source, "evt_in_the_backlog")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as late_worker:
        late_worker.connect(socket_path)  # in the listener's backlog: not accepted yet
        late_worker.sendall(encode_event(event))
        serving = ServerThread(socket_path, server)
        late_worker.settimeout(10)
        assert late_worker.recv(1) == b"\0"  # REPLY_STORED
        assert not os.path.exists(socket_path)  # no one else can connect: they write in-process
    serving.thread.join(10)
    assert not serving.thread.is_alive()
    assert WebhookEvent.objects.filter(provider_event_id="evt_in_the_backlog").count() == 1


# --- the web worker's side: nothing handed over is ever guessed -----------------------------------


class MuteWriter:
    """Accepts a connection, reads one row, then either hangs up or says nothing."""

    def __init__(self, path: str, hang_up: bool):
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(path)
        self.listener.listen(1)
        self.received = threading.Event()
        self.release = threading.Event()
        self.hang_up = hang_up
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        conn, _ = self.listener.accept()
        length = int.from_bytes(conn.recv(4), "big")
        while length > 0:
            length -= len(conn.recv(length))
        self.received.set()
        if not self.hang_up:
            self.release.wait(10)
        conn.close()

    def close(self):
        self.release.set()
        self.listener.close()


def test_no_writer_process_means_nothing_was_handed_over(socket_path, client):
    assert client.write(new_event_without_source(), socket_path, 1) is None


def new_event_without_source():
    return NewEvent(1, 1, "evt_x", "t", b"{}", {}, None)


def test_a_writer_that_hangs_up_before_answering_is_an_outage_not_a_success(socket_path, client):
    mute = MuteWriter(socket_path, hang_up=True)
    try:
        with pytest.raises(OperationalError):
            client.write(new_event_without_source(), socket_path, 5)
        assert mute.received.is_set()
    finally:
        mute.close()


def test_a_writer_that_does_not_answer_in_time_is_a_timeout(socket_path, client):
    mute = MuteWriter(socket_path, hang_up=False)
    try:
        with pytest.raises(WriterTimeout):
            client.write(new_event_without_source(), socket_path, 0.5)
        assert mute.received.is_set()
    finally:
        mute.close()


def test_a_large_row_to_a_writer_that_does_not_read_is_not_handed_over_and_does_not_hang(socket_path, client):
    # A paused or stuck writer reads nothing; a 1 MiB frame is larger than the socket's buffer.
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(socket_path)
    listener.listen(1)
    accepted = []
    threading.Thread(target=lambda: accepted.append(listener.accept()[0]), daemon=True).start()
    event = NewEvent(1, 1, "evt_large", "t", b"x" * (1 << 20), {}, None)
    outcome = []
    writing = threading.Thread(target=lambda: outcome.append(client.write(event, socket_path, 0.5)), daemon=True)
    try:
        writing.start()
        writing.join(5)
        assert not writing.is_alive(), "the request is still blocked sending its row"
        assert outcome == [None]  # not handed over: the worker writes it itself
        # The partial frame's connection is closed, so the writer can never complete (and commit) it.
        received, conn = 0, accepted[0]
        conn.settimeout(5)
        while chunk := conn.recv(1 << 20):
            received += len(chunk)
        assert received < len(encode_event(event))
    finally:
        listener.close()
        for conn in accepted:
            conn.close()


def test_store_event_uses_the_writer_process_when_there_is_one(writer_server, stripe_source, settings, monkeypatch):
    settings.INGEST_WRITER_SOCKET = writer_server.server.path
    monkeypatch.setattr(ingest_writer.writer, "write", _must_not_be_called)
    stored_id, inserted = store_event(new_event(stripe_source, "evt_via_process"))
    assert inserted and WebhookEvent.objects.filter(pk=stored_id).exists()


def test_store_event_writes_in_process_when_the_writer_process_is_away(
    transactional_db, stripe_source, settings, socket_path
):
    settings.INGEST_WRITER_SOCKET = socket_path  # nothing listens there
    stored_id, inserted = store_event(new_event(stripe_source, "evt_in_process"))
    assert inserted and WebhookEvent.objects.filter(pk=stored_id).exists()


def test_the_ingest_endpoint_answers_from_the_writer_process(writer_server, stripe_source, settings):
    settings.INGEST_WRITER_SOCKET = writer_server.server.path
    body = '{"id":"evt_endpoint","object":"event","type":"invoice.paid"}'
    first = post_stripe(Client(), stripe_source, body, STRIPE_SECRET)
    again = post_stripe(Client(), stripe_source, body, STRIPE_SECRET)
    assert (first.status_code, again.status_code) == (200, 200)
    assert first.json()["duplicate"] is False
    assert again.json() == {"id": first.json()["id"], "duplicate": True}
    assert WebhookEvent.objects.get(pk=first.json()["id"]).duplicate_count == 1


def test_a_source_closed_behind_the_cache_is_404_through_the_writer_process(
    writer_server, stripe_source, settings, monkeypatch
):
    # Another web process deleted the source; this one still has its copy. The writer's INSERT
    # refuses the row, and the request gets the unknown URL's 404, not a 200 nor a 503.
    settings.INGEST_WRITER_SOCKET = writer_server.server.path
    monkeypatch.setattr(ingest_writer.writer, "write", _must_not_be_called)
    body = '{"id":"evt_open","object":"event","type":"invoice.paid"}'
    stored = post_stripe(Client(), stripe_source, body, STRIPE_SECRET)
    assert stored.status_code == 200
    duplicate = post_stripe(Client(), stripe_source, body, STRIPE_SECRET)
    assert duplicate.json() == {"id": stored.json()["id"], "duplicate": True}  # while open, still a duplicate

    Source.objects.filter(pk=stripe_source.pk).update(is_active=False, deletion_requested_at=timezone.now())
    assert ingest._source_cache[stripe_source.ingest_token][1] is not None  # the stale copy
    closed_body = '{"id":"evt_closed","object":"event","type":"invoice.paid"}'
    refused = post_stripe(Client(), stripe_source, closed_body, STRIPE_SECRET)
    assert (refused.status_code, refused.json()["error"]) == (404, "unknown_source")
    with pytest.raises(SourceClosed):  # a redelivery too, at the writer: not counted on the stored event
        WriterProcessClient().write(new_event(stripe_source, "evt_open"), writer_server.server.path, timeout=10)
    assert list(WebhookEvent.objects.values_list("provider_event_id", "duplicate_count")) == [("evt_open", 1)]


def test_a_badly_signed_request_to_a_source_closed_behind_the_cache_is_404_with_the_writer_process(
    writer_server, stripe_source, settings, monkeypatch
):
    # A rejected request is recorded by the web process itself, with the writer process up too:
    # the same guard as the writer's INSERT, so nothing is recorded against the closed source.
    settings.INGEST_WRITER_SOCKET = writer_server.server.path
    monkeypatch.setattr(ingest_writer.writer, "write", _must_not_be_called)
    body = '{"id":"evt_open","object":"event","type":"invoice.paid"}'
    assert post_stripe(Client(), stripe_source, body, STRIPE_SECRET).status_code == 200

    Source.objects.filter(pk=stripe_source.pk).update(is_active=False)
    assert ingest._source_cache[stripe_source.ingest_token][1] is not None  # the stale copy
    badly_signed = '{"id":"evt_badly_signed","object":"event","type":"invoice.paid"}'
    refused = post_stripe(Client(), stripe_source, badly_signed, "whsec_not_the_secret")
    assert (refused.status_code, refused.json()["error"]) == (404, "unknown_source")
    assert list(WebhookEvent.objects.values_list("provider_event_id", "status")) == [("evt_open", "received")]


def _must_not_be_called(*args, **kwargs):
    raise AssertionError("the in-process writer was used although the writer process is up")


# --- gunicorn with config/gunicorn.conf.py: the real process ---------------------------------------


def _writer_pids(master_pid: int) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            stat = (entry / "stat").read_text()
            parent = int(stat[stat.rindex(")") + 2 :].split()[1])
            if parent == master_pid and b"run_ingest_writer" in (entry / "cmdline").read_bytes():
                pids.append(int(entry.name))
    return pids


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def _socket_of(writer_pid: int) -> Path:
    arguments = Path(f"/proc/{writer_pid}/cmdline").read_bytes().split(b"\0")
    return Path(os.fsdecode(arguments[arguments.index(b"--socket") + 1]))


def _accepts(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(str(path))
        except OSError:
            return False
    return True


def _post(port: int, token: str, event_id: str) -> int:
    return post_stripe_over_http(port, token, event_id, STRIPE_SECRET)


def _start_gunicorn(
    port: int, private_tmp: Path, log, *options: str, cwd: Path = ROOT, **extra_env: str
) -> subprocess.Popen:
    """gunicorn as the Procfile runs it (with the writer process), on the test database; ``cwd``:
    the project it runs."""
    db = connection.settings_dict
    env = {
        **os.environ,
        "DATABASE_URL": f"postgres://{db['USER']}@{db['HOST'] or 'localhost'}:{db['PORT'] or 5432}/{db['NAME']}",
        "PUBLIC_BASE_URL": f"http://127.0.0.1:{port}",
        "TMPDIR": str(private_tmp),  # short, so that the socket path stays within the limit
        **extra_env,
    }
    env.pop("INGEST_WRITER_SOCKET", None)
    command = [sys.executable, "-m", "gunicorn", "config.wsgi", "--config", "config/gunicorn.conf.py"]
    command += ["--bind", f"127.0.0.1:{port}", *options]
    return subprocess.Popen(command, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT)


def test_gunicorn_runs_restarts_and_stops_the_writer_process(transactional_db, organization, tmp_path, socket_path):
    source = make_source(organization)
    port = free_port()
    private_tmp = Path(socket_path).parent
    log = (tmp_path / "gunicorn.log").open("w")
    gunicorn = _start_gunicorn(
        port,
        private_tmp,
        log,
        *("--workers", "2", "--worker-class", "gthread", "--threads", "4"),
        INGEST_COMMIT_TIMEOUT_SECONDS="1",
        INGEST_SOURCE_CACHE_SECONDS="0",
    )
    writer_pids = []
    try:
        wait_for_port(port, process=gunicorn)
        assert wait_until(lambda: len(_writer_pids(gunicorn.pid)) == 1, PATIENCE_SECONDS, 0.05)
        writer_pids += _writer_pids(gunicorn.pid)
        # Until the writer listens (Django takes a moment to load), workers write in-process.
        assert wait_until(lambda: any(private_tmp.glob("hookline-writer-*/writer.sock")), PATIENCE_SECONDS, 0.05)

        assert _post(port, source.ingest_token, "evt_gunicorn_1") == 200
        assert WebhookEvent.objects.filter(provider_event_id="evt_gunicorn_1").exists()

        # A paused writer holds the row it was handed: the request is a 503, never a 200 it cannot promise.
        os.kill(writer_pids[0], signal.SIGSTOP)
        try:
            assert _post(port, source.ingest_token, "evt_gunicorn_paused") == 503
        finally:
            os.kill(writer_pids[0], signal.SIGCONT)
        # Once it runs again the row is committed; the provider's retry is then a duplicate of it.
        assert wait_until(
            lambda: WebhookEvent.objects.filter(provider_event_id="evt_gunicorn_paused").exists(), 10, 0.05
        )
        assert _post(port, source.ingest_token, "evt_gunicorn_paused") == 200
        assert WebhookEvent.objects.get(provider_event_id="evt_gunicorn_paused").duplicate_count == 1

        # Killed: requests are written in-process meanwhile, and the master starts a new writer.
        os.kill(writer_pids[0], signal.SIGKILL)
        # A row sent while it dies would be a 503.
        assert wait_until(lambda: not _alive(writer_pids[0]), PATIENCE_SECONDS, 0.05)
        for n in range(5):
            assert _post(port, source.ingest_token, f"evt_gunicorn_gone_{n}") == 200
        assert wait_until(lambda: _writer_pids(gunicorn.pid) not in ([], writer_pids[:1]), PATIENCE_SECONDS, 0.05)
        writer_pids += _writer_pids(gunicorn.pid)
        # Restarted means serving again: the new process listens on the (stale) socket path.
        socket_file = next(private_tmp.glob("hookline-writer-*/writer.sock"))
        assert wait_until(lambda: _accepts(socket_file), PATIENCE_SECONDS, 0.05)
        assert _post(port, source.ingest_token, "evt_gunicorn_after") == 200
        assert WebhookEvent.objects.filter(provider_event_id__startswith="evt_gunicorn_").count() == 8
    finally:
        gunicorn.terminate()
        gunicorn.wait(30)
        log.close()
    # Stopped with gunicorn, and its socket directory removed.
    assert wait_until(lambda: not any(_alive(pid) for pid in writer_pids), PATIENCE_SECONDS, 0.05)
    assert list(private_tmp.iterdir()) == []


@contextlib.contextmanager
def _gunicorn_with_its_writer(tmp_path, socket_path):
    """One gunicorn worker and the writer process, started and waited for; stopped on leaving.

    Yields (gunicorn, its log's path, the writer's pid)."""
    port = free_port()
    log_path = tmp_path / "gunicorn.log"
    with log_path.open("w") as log:
        gunicorn = _start_gunicorn(port, Path(socket_path).parent, log, "--workers", "1")
        try:
            wait_for_port(port, process=gunicorn)
            assert wait_until(lambda: len(_writer_pids(gunicorn.pid)) == 1, PATIENCE_SECONDS, 0.05)
            yield gunicorn, log_path, _writer_pids(gunicorn.pid)[0]
        finally:
            if gunicorn.poll() is None:
                gunicorn.terminate()
                gunicorn.wait(30)


# What a release that changes the writer's frame looks like to a running gunicorn: its files change
# on disk, then the operator sends HUP. Done in a copy of the project, so that this one is untouched.
_PROJECT_COPY_SKIPS = shutil.ignore_patterns(
    ".git", ".venv", "var", "docs", "bench", "node_modules", ".hypothesis", ".ruff_cache", "__pycache__"
)
_FRAME_OF_THIS_RELEASE = '_FRAME = struct.Struct("!I")'
_FRAME_OF_THE_NEXT_RELEASE = '_FRAME = struct.Struct("!Q")'  # an 8-byte length: unreadable to this writer


def test_a_hup_reload_with_a_new_frame_answers_every_request_and_stores_each_event_once(
    transactional_db, organization, tmp_path, socket_path
):
    source = make_source(organization)
    project = tmp_path / "release"
    shutil.copytree(ROOT, project, ignore=_PROJECT_COPY_SKIPS)
    writer_module = project / "webhooks" / "services" / "ingest_writer_process.py"
    assert _FRAME_OF_THIS_RELEASE in writer_module.read_text()
    private_tmp = Path(socket_path).parent
    port = free_port()
    log_path = tmp_path / "gunicorn.log"
    statuses: dict[str, int] = {}
    statuses_lock = threading.Lock()
    stop_posting = threading.Event()

    def post_continuously(sender: int) -> None:
        for n in range(1_000_000):
            if stop_posting.is_set():
                return
            event_id = f"evt_hup_{sender}_{n}"
            try:
                status = _post(port, source.ingest_token, event_id)
            except OSError as exc:  # the connection refused or reset: as much a failure as a 503
                status = repr(exc)
            with statuses_lock:
                statuses[event_id] = status

    def answered() -> int:
        with statuses_lock:
            return len(statuses)

    with log_path.open("w") as log:
        gunicorn = _start_gunicorn(
            port, private_tmp, log, *("--workers", "2", "--worker-class", "gthread", "--threads", "4"), cwd=project
        )
        try:
            wait_for_port(port, process=gunicorn)
            assert wait_until(lambda: len(_writer_pids(gunicorn.pid)) == 1, PATIENCE_SECONDS, 0.05)
            old_writer_pid = _writer_pids(gunicorn.pid)[0]
            assert wait_until(
                lambda: any(_accepts(path) for path in private_tmp.glob("hookline-writer-*/writer.sock")),
                PATIENCE_SECONDS,
                0.05,
            )
            senders = [threading.Thread(target=post_continuously, args=(n,), daemon=True) for n in range(4)]
            for sender in senders:
                sender.start()
            try:
                assert wait_until(lambda: answered() >= 20, PATIENCE_SECONDS, 0.05)

                writer_module.write_text(
                    writer_module.read_text().replace(_FRAME_OF_THIS_RELEASE, _FRAME_OF_THE_NEXT_RELEASE)
                )
                gunicorn.send_signal(signal.SIGHUP)
                assert wait_until(lambda: "Hang up" in log_path.read_text(), PATIENCE_SECONDS, 0.05)
                hup_answered = answered()
                # The writer now runs the new code (a process started after the change), the old
                # one has finished and ended, and the new one is serving the new workers.
                assert wait_until(
                    lambda: _writer_pids(gunicorn.pid) not in ([], [old_writer_pid]) and not _alive(old_writer_pid),
                    PATIENCE_SECONDS,
                    0.05,
                ), _writer_pids(gunicorn.pid)
                new_writer_pid = _writer_pids(gunicorn.pid)[0]
                assert wait_until(lambda: _accepts(_socket_of(new_writer_pid)), PATIENCE_SECONDS, 0.05)
                # The old writer's directory removed with it.
                assert wait_until(lambda: len(list(private_tmp.iterdir())) == 1, PATIENCE_SECONDS, 0.05)
                serving = answered()
                assert wait_until(lambda: answered() >= serving + 40, PATIENCE_SECONDS, 0.05)
            finally:
                stop_posting.set()
                for sender in senders:
                    sender.join(PATIENCE_SECONDS)
        finally:
            stop_posting.set()
            gunicorn.terminate()
            gunicorn.wait(30)
    # HUP made gunicorn load config/gunicorn.conf.py again, so on_exit came from a new module: it still
    # stopped the new writer (one that only noticed its parent had gone would leave its directory).
    assert wait_until(lambda: not _alive(new_writer_pid), PATIENCE_SECONDS, 0.05)
    assert list(private_tmp.iterdir()) == []
    assert hup_answered < serving  # requests were answered while the writer was being replaced
    refused = {event_id: status for event_id, status in statuses.items() if status != 200}
    assert refused == {}, (len(refused), len(statuses))
    # Every acknowledged event stored, once.
    stored = list(WebhookEvent.objects.filter(source=source).values_list("provider_event_id", "duplicate_count"))
    assert sorted(event_id for event_id, _ in stored) == sorted(statuses)
    assert {duplicates for _, duplicates in stored} == {0}


def test_a_platform_stop_that_reaches_the_writer_too_is_not_taken_for_a_crash(transactional_db, tmp_path, socket_path):
    # Heroku and Render send SIGTERM to every process of the dyno or container at once.
    private_tmp = Path(socket_path).parent
    with _gunicorn_with_its_writer(tmp_path, socket_path) as (gunicorn, log_path, writer_pid):
        assert wait_until(
            lambda: any(private_tmp.glob("hookline-writer-*/writer.sock")), PATIENCE_SECONDS, 0.05
        )  # serving
        gunicorn.send_signal(signal.SIGTERM)
        os.kill(writer_pid, signal.SIGTERM)
        gunicorn.wait(30)
    output = log_path.read_text()
    assert "starting it again" not in output and "ERROR" not in output, output
    assert wait_until(lambda: not _alive(writer_pid), PATIENCE_SECONDS, 0.05)


# --- when config/gunicorn.conf.py starts the writer ------------------------------------------------


def _gunicorn_config(monkeypatch, project_dir: Path):
    spec = importlib.util.spec_from_file_location("hookline_gunicorn_conf", ROOT / "config" / "gunicorn.conf.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(module, "_MANAGE_PY", project_dir / "manage.py")  # its .env is looked up beside it
    for name in ("INGEST_WRITER_PROCESS", "DATABASE_URL"):
        monkeypatch.delenv(name, raising=False)  # also undoes what reading .env sets
    return module


def _arbiter(preload: bool = False):
    return types.SimpleNamespace(cfg=types.SimpleNamespace(preload_app=preload), log=logging.getLogger("test"))


@pytest.mark.parametrize(
    ("environment", "dotenv", "wanted"),
    [
        ({"DATABASE_URL": "postgres://db/hookline"}, "", True),
        ({"DATABASE_URL": "postgresql://db/hookline", "INGEST_WRITER_PROCESS": "false"}, "", False),
        ({}, "", False),  # embedded mode: SQLite
        ({"DATABASE_URL": "sqlite:////tmp/x.db"}, "", False),
        ({}, "DATABASE_URL=postgres://db/hookline\n", True),  # settings read .env too, and so does this
        ({"DATABASE_URL": "postgres://db/hookline"}, "INGEST_WRITER_PROCESS=false\n", False),
    ],
)
def test_the_writer_process_is_wanted_for_postgresql_unless_turned_off(
    monkeypatch, tmp_path, environment, dotenv, wanted
):
    config = _gunicorn_config(monkeypatch, tmp_path)
    (tmp_path / ".env").write_text(dotenv)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    assert config._wanted(_arbiter()) is wanted


def test_the_writer_process_is_not_started_with_preload(monkeypatch, tmp_path):
    # Preloaded workers read their settings before on_starting could tell them the socket.
    config = _gunicorn_config(monkeypatch, tmp_path)
    monkeypatch.setenv("DATABASE_URL", "postgres://db/hookline")
    assert config._wanted(_arbiter(preload=True)) is False


def test_requests_are_answered_before_processing_is_scheduled(writer_server, client, stripe_source, monkeypatch):
    # Scheduling talks to Redis; when Redis is slow or down that waits for its timeouts, and the
    # requests whose rows are committed must not wait with it.
    from webhooks.services import processing

    scheduling_started, release_scheduling = threading.Event(), threading.Event()
    scheduled = []

    def slow_schedule(**kwargs):
        scheduling_started.set()
        release_scheduling.wait(10)
        scheduled.append(kwargs)

    monkeypatch.setattr(processing, "schedule_event_processing", slow_schedule)
    try:
        event = new_event(stripe_source, "evt_answer_first")
        assert client.write(event, writer_server.server.path, timeout=5) == (event.id, True)
        assert scheduling_started.wait(5)
        assert scheduled == []  # answered while scheduling was still held
    finally:
        release_scheduling.set()
    assert wait_until(lambda: scheduled == [{"from_ingest": True}], timeout=5)
