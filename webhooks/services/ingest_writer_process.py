"""One writer process per web host: the ingest rows of all its web workers share commits.

Why: group commit inside a web process (``ingest_writer``) only batches that
process's own requests, and its writer thread runs the database client under
the same GIL as the requests it serves. On two cores that made storing a row
cost more than verifying it. Here gunicorn's master starts one writer process
(``config/gunicorn.conf.py``); a request thread sends its verified row over a
Unix socket and blocks, without the GIL, until the writer answers. The writer
reads every row waiting on any connection, commits them with one statement
(``commit_batch``, the same code as the in-process writer) and only then
answers, so "acknowledged means committed" holds unchanged, and the rows of
every web process share one commit.

When the writer process is not there (not started, restarting), a request
that could not hand its row over uses the in-process writer instead; a row
handed over whose answer never came is a 503, never a guess.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import selectors
import signal
import socket
import struct
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta

from django.conf import settings
from django.db import DataError, OperationalError

from .ingest_writer import (
    NewEvent,
    SourceClosed,
    UnstorableRow,
    WriterTimeout,
    _PendingWrite,
    commit_batch,
    describe_database_error,
    schedule_processing_of_new_events,
)

logger = logging.getLogger(__name__)

# --- the wire format ------------------------------------------------------------------------------
# A frame is a 4-byte length and a payload. A row's payload is a fixed part (id, organization,
# source, received time in µs since the epoch, then the byte length of each variable field, -1 for
# None) followed by those fields; text is UTF-8 with surrogates passed through, so the writer sees
# exactly the str the request had (and psycopg refuses what it would have refused in-process).
_FRAME = struct.Struct("!I")
_ROW = struct.Struct("!16sqqqiiiiiI")
_REPLY = struct.Struct("!B16s?I")  # kind, stored id, inserted, length of the message that follows
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_TEXT = "surrogatepass"

REPLY_STORED = 0
REPLY_UNAVAILABLE = 1  # the database refused or is down: the view answers 503
REPLY_UNSTORABLE = 2  # a value of this row cannot be stored: the view answers 400
REPLY_SOURCE_CLOSED = 3  # the row's source no longer takes webhooks; nothing stored: the view answers 404

# Room for the headers a web server lets through (gunicorn: ~800 KB) next to the largest body.
FRAME_HEADROOM_BYTES = 16 * 1024 * 1024


def _optional(text: str | None) -> bytes | None:
    return None if text is None else text.encode("utf-8", _TEXT)


def encode_event(event: NewEvent) -> bytes:
    provider_event_id = _optional(event.provider_event_id)
    remote_ip = _optional(event.remote_ip)
    signed_content_digest = _optional(event.signed_content_digest)
    event_type = event.event_type.encode("utf-8", _TEXT)
    headers = json.dumps(event.headers).encode()
    received_us = (event.received_at - _EPOCH) // timedelta(microseconds=1)
    fixed = _ROW.pack(
        event.id.bytes,
        event.organization_id,
        event.source_id,
        received_us,
        -1 if provider_event_id is None else len(provider_event_id),
        len(event_type),
        len(headers),
        -1 if remote_ip is None else len(remote_ip),
        -1 if signed_content_digest is None else len(signed_content_digest),
        len(event.body),
    )
    payload = b"".join(
        (
            fixed,
            provider_event_id or b"",
            event_type,
            headers,
            remote_ip or b"",
            signed_content_digest or b"",
            event.body,
        )
    )
    return _FRAME.pack(len(payload)) + payload


def decode_event(payload: bytes) -> NewEvent:
    """The row of one frame's payload; ValueError when the payload is not one."""
    try:
        raw_id, organization_id, source_id, received_us, *lengths = _ROW.unpack_from(payload)
    except struct.error as exc:
        raise ValueError("the frame is shorter than a row") from exc
    fields: list[bytes | None] = []
    offset = _ROW.size
    for length in lengths:
        if length < 0:
            fields.append(None)
            continue
        fields.append(payload[offset : offset + length])
        offset += length
    if offset != len(payload):
        raise ValueError("the frame's field lengths do not add up to its size")
    provider_event_id, event_type, headers, remote_ip, signed_content_digest, body = fields
    # Only the provider event id, the address and the content digest may be missing: anything else is
    # not a row, and must close its own connection rather than end the loop that serves every web worker.
    if event_type is None or headers is None:
        raise ValueError("the frame lacks a field every row has")
    try:
        received_at = _EPOCH + timedelta(microseconds=received_us)
    except OverflowError as exc:
        raise ValueError("the received time is out of range") from exc
    header_map = json.loads(headers)  # JSONDecodeError is a ValueError
    if not isinstance(header_map, dict):
        raise ValueError("the frame's headers are not an object")
    return NewEvent(
        id=uuid.UUID(bytes=raw_id),
        organization_id=organization_id,
        source_id=source_id,
        received_at=received_at,
        provider_event_id=None if provider_event_id is None else provider_event_id.decode("utf-8", _TEXT),
        event_type=event_type.decode("utf-8", _TEXT),
        headers=header_map,
        remote_ip=None if remote_ip is None else remote_ip.decode("utf-8", _TEXT),
        signed_content_digest=None if signed_content_digest is None else signed_content_digest.decode("utf-8", _TEXT),
        body=body,
    )


def encode_reply(pending: _PendingWrite) -> bytes:
    if pending.error is None and pending.outcome is not None:
        stored_id, inserted = pending.outcome
        return _REPLY.pack(REPLY_STORED, stored_id.bytes, inserted, 0)
    if isinstance(pending.error, SourceClosed):
        kind = REPLY_SOURCE_CLOSED
    elif isinstance(pending.error, DataError):
        kind = REPLY_UNSTORABLE
    else:
        kind = REPLY_UNAVAILABLE
    if kind == REPLY_UNSTORABLE:
        # Logged by the web process: PostgreSQL's message for a refused value quotes the value.
        message = describe_database_error(pending.error).encode("utf-8", "replace")[:1000]
    else:
        message = str(pending.error or "no outcome").encode("utf-8", "replace")[:1000]
    return _REPLY.pack(kind, bytes(16), False, len(message)) + message


# --- the writer process -------------------------------------------------------------------------


class WriterServer:
    """Serves rows from any number of connections; each loop turn commits all rows read in it."""

    def __init__(self, path: str, *, max_batch: int = 256, shutdown_grace_seconds: float = 25.0):
        self.path = path
        self.max_batch = max_batch
        self.shutdown_grace_seconds = shutdown_grace_seconds
        # A longer frame cannot be a row (the body limit plus headers): the stream is broken.
        self.max_frame_bytes = settings.INGEST_MAX_BODY_BYTES + FRAME_HEADROOM_BYTES
        self._selector = selectors.DefaultSelector()
        self._buffers: dict[socket.socket, bytearray] = {}
        self._listener: socket.socket | None = None
        self._terminating_since: float | None = None
        self._unlinked = False
        self._stop = threading.Event()

    def listen(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)  # a socket file left by a writer that was killed
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old_umask = os.umask(0o177)  # only this user may connect (the file is created 0600)
        try:
            listener.bind(self.path)
        finally:
            os.umask(old_umask)
        listener.listen(1024)
        listener.setblocking(False)
        self._selector.register(listener, selectors.EVENT_READ, None)
        self._listener = listener

    def terminate(self, *_) -> None:
        """Stop once the web workers have gone (their connections closed), or after the grace time."""
        if self._terminating_since is None:
            self._terminating_since = time.monotonic()

    def stop(self) -> None:
        """Stop at the next loop turn (tests)."""
        self._stop.set()

    def serve_forever(self, parent_pid: int | None = None) -> None:
        if self._listener is None:
            self.listen()
        try:
            while not self._should_stop(parent_pid):
                rows = self._read_ready(timeout=0.5)
                if rows:
                    self._commit_and_reply(rows)
        finally:
            self._close_all()

    def _should_stop(self, parent_pid: int | None) -> bool:
        if self._stop.is_set():
            return True
        if parent_pid is not None and os.getppid() != parent_pid:
            return True  # gunicorn's master is gone: nobody will connect again
        if self._terminating_since is None:
            return False
        if time.monotonic() - self._terminating_since > self.shutdown_grace_seconds:
            return True
        if self._buffers:
            return False
        # No connection left. A worker may have connected since the last turn, though, and sent
        # its row into the listener's backlog: closing the listener would reset it, a 503 for a
        # row the worker might just as well have written itself (a HUP reload's old workers are
        # still serving). So the socket's name goes first (a connect from now on finds nothing,
        # and the worker writes in-process), then whoever is in the backlog is served.
        self._unlink_socket()
        self._accept()
        return not self._buffers

    def _read_ready(self, timeout: float) -> list[tuple[socket.socket, NewEvent]]:
        rows: list[tuple[socket.socket, NewEvent]] = []
        for key, _ in self._selector.select(timeout):
            if key.data is None:
                self._accept()
            else:
                self._read(key.fileobj, rows)
            if len(rows) >= self.max_batch:
                break
        return rows

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            conn.setblocking(False)
            self._buffers[conn] = bytearray()
            self._selector.register(conn, selectors.EVENT_READ, True)

    def _read(self, conn: socket.socket, rows: list) -> None:
        try:
            data = conn.recv(1 << 20)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._close(conn)  # a row cut short by a closed connection was never acknowledged
            return
        buffer = self._buffers[conn]
        buffer += data
        while len(buffer) >= _FRAME.size:
            (length,) = _FRAME.unpack_from(buffer)
            if length > self.max_frame_bytes:
                logger.error("ingest writer: a frame of %d bytes; closing that connection", length)
                self._close(conn)
                return
            if len(buffer) < _FRAME.size + length:
                return
            payload = bytes(buffer[_FRAME.size : _FRAME.size + length])
            del buffer[: _FRAME.size + length]
            try:
                rows.append((conn, decode_event(payload)))
            except (ValueError, UnicodeError) as exc:
                logger.error("ingest writer: an unreadable frame (%s); closing that connection", exc)
                self._close(conn)
                return

    def _commit_and_reply(self, rows: list[tuple[socket.socket, NewEvent]]) -> None:
        batch = [_PendingWrite(event) for _, event in rows]
        inserted = commit_batch(batch, schedule=False)
        for (conn, _), pending in zip(rows, batch, strict=True):
            if conn not in self._buffers:
                continue  # that request gave up (timed out) and closed its connection
            try:
                conn.sendall(encode_reply(pending))
            except OSError:
                self._close(conn)
        # Only now: with Redis slow or down, scheduling waits for its timeouts, and the
        # requests of this batch need not wait with it (their rows are committed).
        schedule_processing_of_new_events(inserted)

    def _close(self, conn: socket.socket) -> None:
        if self._buffers.pop(conn, None) is not None:
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(conn)
        with contextlib.suppress(OSError):
            conn.close()

    def _close_all(self) -> None:
        for conn in list(self._buffers):
            self._close(conn)
        if self._listener is not None:
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(self._listener)
            self._listener.close()
            self._listener = None
            self._unlink_socket()
        self._selector.close()

    def _unlink_socket(self) -> None:
        if not self._unlinked:
            self._unlinked = True
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)


def run_writer_process(path: str, parent_pid: int | None = None) -> None:
    """The body of ``manage.py run_ingest_writer``: serve until SIGTERM/SIGINT (gracefully) or the parent ends."""
    server = WriterServer(path)
    server.listen()
    signal.signal(signal.SIGTERM, server.terminate)
    signal.signal(signal.SIGINT, server.terminate)
    logger.info("ingest writer process %d listening on %s", os.getpid(), path)
    server.serve_forever(parent_pid)


# --- the web worker's side ------------------------------------------------------------------------


class WriterProcessClient:
    """A connection per request thread to the writer process at ``path``."""

    def __init__(self) -> None:
        self._local = threading.local()

    def write(self, event: NewEvent, path: str, timeout: float) -> tuple[uuid.UUID, bool] | None:
        """The stored outcome, or None when the row could not be handed over (nothing was sent whole).

        Raises WriterTimeout or OperationalError when the row was handed over but its commit was
        not confirmed (the caller answers 503), DataError when the row cannot be stored,
        SourceClosed when its source no longer takes webhooks (nothing was stored).
        """
        frame = encode_event(event)
        conn = self._send(frame, path, timeout)
        if conn is None:
            return None
        conn.settimeout(timeout)
        try:
            header = _receive_exactly(conn, _REPLY.size)
            kind, raw_id, inserted, message_length = _REPLY.unpack(header)
            message = _receive_exactly(conn, message_length).decode("utf-8", "replace") if message_length else ""
        except TimeoutError:
            self._forget()
            raise WriterTimeout(f"the event was not committed within {timeout:g} s") from None
        except OSError as exc:
            self._forget()
            raise OperationalError(f"the ingest writer process ended before confirming the commit: {exc}") from exc
        if kind == REPLY_STORED:
            return uuid.UUID(bytes=raw_id), inserted
        if kind == REPLY_UNSTORABLE:
            raise UnstorableRow(message)
        if kind == REPLY_SOURCE_CLOSED:
            raise SourceClosed(message)
        raise OperationalError(message)

    def _send(self, frame: bytes, path: str, timeout: float) -> socket.socket | None:
        # A kept connection may belong to a writer that has restarted since: one new try then.
        for attempt in range(2):
            conn = self._connection(path, fresh=attempt > 0, timeout=timeout)
            if conn is None:
                return None
            try:
                # Bounded: a writer that does not read (paused, stuck in a commit) must not hold
                # this request for ever once the frame is larger than the socket's buffer.
                conn.settimeout(timeout)
                conn.sendall(frame)
                return conn
            except TimeoutError:
                # Part of the frame at most: closing the connection makes the writer drop it,
                # so the row was not handed over. No second try at a writer that is not reading.
                self._forget()
                return None
            except OSError:
                self._forget()
        return None

    def _connection(self, path: str, *, fresh: bool, timeout: float) -> socket.socket | None:
        cached = getattr(self._local, "conn", None)
        if cached is not None and not fresh and cached[0] == os.getpid() and cached[1] == path:
            return cached[2]
        self._forget()
        try:
            conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        except OSError:  # out of file descriptors: this process writes the row itself
            return None
        try:
            conn.settimeout(timeout)  # connect blocks while the writer's backlog is full
            conn.connect(path)
        except OSError:
            conn.close()
            return None
        self._local.conn = (os.getpid(), path, conn)
        return conn

    def _forget(self) -> None:
        cached = getattr(self._local, "conn", None)
        self._local.conn = None
        if cached is not None:
            with contextlib.suppress(OSError):
                cached[2].close()


def _receive_exactly(conn: socket.socket, size: int) -> bytes:
    chunks, received = [], 0
    while received < size:
        chunk = conn.recv(size - received)
        if not chunk:
            raise ConnectionResetError("the writer closed the connection")
        chunks.append(chunk)
        received += len(chunk)
    return b"".join(chunks)


writer_process_client = WriterProcessClient()
