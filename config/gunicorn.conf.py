"""gunicorn settings for the web process: starts and watches the host's ingest writer process.

Why a process next to the web workers: their ingest requests then share one
database commit per batch (webhooks/services/ingest_writer_process.py). The
master starts it before forking workers, tells them its socket through
INGEST_WRITER_SOCKET, starts it again if it ends, and stops it last. While it
is not running, each worker writes its own rows, so nothing waits on it.
It is started only for PostgreSQL (elsewhere ingest writes on the request's
thread); INGEST_WRITER_PROCESS=false does without it.
"""

import collections
import contextlib
import errno
import fcntl
import functools
import json
import os
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import termios
import threading
import time
from pathlib import Path

import environ

_MANAGE_PY = Path(__file__).resolve().parent.parent / "manage.py"

# The access log shows an ingest URL's token by its last four characters only.
logger_class = "config.log_masking.UrlTokenMaskingLogger"
# Unused here, and one path per user (~/.gunicorn/gunicorn.ctl): every gunicorn of the host
# would claim the same socket.
control_socket_disable = True
_RESTART_DELAY_SECONDS = 1.0
_STABLE_SECONDS = 60.0  # a writer that ran this long is restarted after the shortest delay again
# A writer that exits cleanly may have been stopped by the same signal as the master, which
# gunicorn handles on its main loop's next turn: its notice is waited for this long.
_SHUTDOWN_NOTICE_SECONDS = 2.0


# --- keep-alive: longer than the platform router's ----------------------------------------------------
# Heroku's Router 2.0 keeps its connections to a dyno open and closes them after 90 s idle; AWS's load
# balancers (ALB, classic ELB) after 60 s by default. gunicorn's own 2 s closed an idle connection
# long before the router did, so the router could send the next request on it just as gunicorn closed it:
# the router answered that request 502 itself (it does not retry a POST), the provider retried later,
# and some providers turn a webhook endpoint off after repeated failures. Whoever holds the connection
# longer must be the one to close it: the router. 0 is gunicorn's "no keep-alive" (every answer closes
# its connection, a new connection for each request); below the router's idle timeout, the race again.
_DEFAULT_KEEPALIVE_SECONDS = 95


def _keepalive_seconds() -> int:
    env = environ.Env()
    environ.Env.read_env(_MANAGE_PY.parent / ".env", overwrite=False)
    value = env.str("WEB_KEEPALIVE_SECONDS", default="").strip()
    if not value:
        return _DEFAULT_KEEPALIVE_SECONDS
    try:
        seconds = int(value)
    except ValueError:
        seconds = -1
    if seconds < 0:
        raise ValueError(f"WEB_KEEPALIVE_SECONDS must be a whole number of seconds, 0 or more (got {value!r})")
    return seconds


# Read when gunicorn loads this file (a bad value stops it there, before any worker starts); gunicorn's
# own --keep-alive on the command line still wins.
keepalive = _keepalive_seconds()


class _WriterProcess:
    def __init__(self):
        self.process = None
        self.socket_path = None
        self.stopping = False
        self.shutting_down = threading.Event()  # set when the master is told to stop (when_ready)
        self.lock = threading.Lock()
        self.retiring: list = []  # writers replaced by a HUP reload, still finishing (on_reload)

    def start(self, server):
        # A private directory (0700) for the socket: only this user can reach the writer.
        self.socket_path = os.path.join(tempfile.mkdtemp(prefix="hookline-writer-"), "writer.sock")
        os.environ["INGEST_WRITER_SOCKET"] = self.socket_path  # read by the workers' settings
        if not self._spawn(server):
            self.process = None
        threading.Thread(target=self._watch, args=(server,), name="hookline-writer-watch", daemon=True).start()

    def _spawn(self, server) -> bool:
        with self.lock:
            if self.stopping:
                return False
            command = [sys.executable, str(_MANAGE_PY), "run_ingest_writer", "--socket", self.socket_path]
            try:
                # Our own interpreter, manage.py and a path we made: nothing here comes from a request.
                self.process = subprocess.Popen([*command, "--parent-pid", str(os.getpid())])  # noqa: S603
            except OSError as exc:  # out of processes or memory: the workers write in-process meanwhile
                server.log.error("ingest writer process could not be started: %s", exc)
                return False
            server.log.info("ingest writer process %s started on %s", self.process.pid, self.socket_path)
            return True

    def _watch(self, server):
        delay = _RESTART_DELAY_SECONDS / 2  # doubled before the first restart
        while not self.stopping:
            process = self.process
            started = time.monotonic()
            if process is not None:
                # Either this wait or gunicorn's own reaping of its children collects the exit.
                returncode = process.wait()
                if self.stopping:
                    return
                stopped_by_a_signal = returncode in (0, -signal.SIGTERM, -signal.SIGINT, -signal.SIGQUIT)
                if stopped_by_a_signal and self.shutting_down.wait(_SHUTDOWN_NOTICE_SECONDS):
                    # The platform's SIGTERM (or a Ctrl-C) reached the whole process group: the
                    # writer stopped (cleanly, or before its handler was set) and so does the
                    # master, whose on_exit ends this.
                    return
                server.log.error("ingest writer process %s ended (%s); starting it again", process.pid, returncode)
            # One that keeps failing at start-up (a broken deploy) is retried less and less often.
            delay = _RESTART_DELAY_SECONDS if time.monotonic() - started > _STABLE_SECONDS else min(delay * 2, 30)
            time.sleep(delay)
            if not self._spawn(server):
                self.process = None

    def stop(self, server):
        with self.lock:
            self.stopping = True
            process = self.process
        if process is not None and process.poll() is None:
            process.terminate()  # it finishes the rows it holds; the workers are gone by now
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
        if self.socket_path:
            with contextlib.suppress(OSError):
                shutil.rmtree(os.path.dirname(self.socket_path))
        for retired in self.retiring:
            _retire(retired, timeout=10)


def _retire(writer, timeout: float) -> None:
    """Stop a writer replaced by a HUP reload once it has answered everything it was handed.

    ``writer`` may be an earlier release's _WriterProcess (the one the first load of this file
    started): only the attributes every release has are used.
    """
    with writer.lock:
        writer.stopping = True  # its watcher starts no other
        process = writer.process
    if process is not None and process.poll() is None:
        # SIGTERM: it still commits and answers what it reads, stops taking new connections
        # and ends once the old workers' connections have closed (they exit after their last
        # request), or after its grace time.
        process.terminate()
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
    if writer.socket_path:
        with contextlib.suppress(OSError):
            shutil.rmtree(os.path.dirname(writer.socket_path))


def _wanted(server) -> bool:
    # The same sources as config/settings.py: the environment first, then the project's .env file.
    env = environ.Env()
    environ.Env.read_env(_MANAGE_PY.parent / ".env", overwrite=False)
    if not env.bool("INGEST_WRITER_PROCESS", default=True):
        return False
    if not env.str("DATABASE_URL", default="").startswith(("postgres://", "postgresql://", "pgsql://", "postgis://")):
        return False  # SQLite (make run): ingest writes on the request's thread
    if server.cfg.preload_app:
        # The workers' settings would be loaded before the socket is known: they could not use it.
        server.log.warning("ingest writer process not started: it does not work with --preload")
        return False
    return True


# --- a time limit on reading each request -------------------------------------------------------------
# gunicorn's threads read a request's headers and body with no time limit once its first byte has come,
# so a client sending part of a request and then nothing (or a byte now and then) held a thread for as
# long as it kept the connection open: a few dozen such connections stopped all ingest. Each request
# may now keep a thread waiting for its bytes REQUEST_READ_TIMEOUT_SECONDS in all; past it, a read
# raises RequestReadTimeout: during the headers the connection is closed quietly (gunicorn's path for
# a client gone mid-request), during the body the application answers (the ingest view: 408).
_DEFAULT_READ_TIMEOUT_SECONDS = 15.0  # a 1 MiB body at 1 Mbit/s takes 8 s; providers give up at 10 to 30 s


def _read_timeout_seconds() -> float:
    env = environ.Env()
    environ.Env.read_env(_MANAGE_PY.parent / ".env", overwrite=False)
    seconds = env.float("REQUEST_READ_TIMEOUT_SECONDS", default=_DEFAULT_READ_TIMEOUT_SECONDS)
    if not seconds > 0:
        raise ValueError(f"REQUEST_READ_TIMEOUT_SECONDS must be above 0 (got {seconds})")
    return seconds


def _read_timeout_error():
    from gunicorn.http.errors import NoMoreData

    class RequestReadTimeout(NoMoreData, TimeoutError):
        """A request that did not arrive in time. NoMoreData: gunicorn closes the connection without
        logging a traceback (as for a client gone mid-request); TimeoutError: what gunicorn's own body
        drain expects of a socket read that gave up, and what the ingest view answers 408 for."""

        def __str__(self):
            return "the request did not arrive within the read time limit"

    return RequestReadTimeout


class _ReadDeadlineSocket:
    """A connection's socket whose recv() gives up once the current request took too long to arrive,
    and whose writes give up once the client stopped taking its answer.

    What is limited on reads is the time spent waiting for the client's bytes, added up over the
    request's reads (``waited``); time the application takes between them (a first request's
    imports, a loaded machine) does not count. The worker's handle() starts each request's count
    again. On writes, it is each wait for the client to take part of its answer.
    """

    def __init__(self, sock, seconds: float, error: type[Exception]):
        self._sock = sock
        self._seconds = seconds
        self._error = error
        self.waited = 0.0

    def __getattr__(self, name):
        return getattr(self._sock, name)

    def recv(self, size, *flags):
        if self._sock.gettimeout() is not None:
            # Non-blocking, or bounded by the caller itself (gunicorn's drain of an unread body, or
            # before closing): left as it is, so that an answer already written is not cut by a reset.
            return self._sock.recv(size, *flags)
        remaining = self._seconds - self.waited
        if remaining <= 0:
            raise self._error()
        self._sock.settimeout(remaining)
        started = time.monotonic()
        try:
            return self._sock.recv(size, *flags)
        except TimeoutError:
            raise self._error() from None
        finally:
            self.waited += time.monotonic() - started
            self._sock.settimeout(None)

    # A client that stops reading its answers (it pipelines requests and reads none, or simply
    # never reads) made the thread writing to it wait for ever once the socket buffers were full:
    # gunicorn writes with no time limit, and one such connection per thread stopped a worker.
    # Answers are written as before as long as the client takes them, however slowly (a large
    # answer, an event's body through the API, to a client on a slow link takes as long as it
    # takes); once the client has taken nothing of it for REQUEST_READ_TIMEOUT_SECONDS, the
    # connection is dropped (the row of an ingest request was committed before its answer was
    # written: the provider's retry is its duplicate). Like nginx's send_timeout, except that what
    # counts as taking is the client acknowledging bytes, not room for a third of the socket's
    # send buffer (up to 4 MiB: a slow client could take for long before that). A limit on the
    # whole answer would not hold a thread any less against a client that takes a little now and
    # then: it pipelines small requests, each answer a new count.
    def send(self, data, *flags):
        return self._write(self._sock.send, data, *flags)  # gunicorn's "100 Continue"

    def sendall(self, data, *flags):
        if self._sock.gettimeout() is not None:
            # Non-blocking (gunicorn's error answers: write_nonblock), or bounded by the caller.
            return self._sock.sendall(data, *flags)
        # socket.sendall's timeout bounds the whole of its data: sent piece by piece instead, each
        # send waiting for the client to make room. Most answers fit in the socket's buffer: one
        # send that does not wait, as cheap as gunicorn's own sendall.
        view = memoryview(data).cast("B")
        flag = flags[0] if flags else 0
        try:
            sent = self._sock.send(view, flag | socket.MSG_DONTWAIT)
        except (BlockingIOError, ValueError):  # full; ValueError: a TLS socket takes no flags
            sent = 0
        while sent < len(view):
            sent += self._write(self._sock.send, view[sent:], flag)
        return None

    def _write(self, write, *args):
        # A send that timed out sent nothing: it is made again while the client takes bytes.
        if self._sock.gettimeout() is not None:
            return write(*args)
        self._sock.settimeout(self._seconds)
        try:
            while True:
                unacknowledged = self._unacknowledged()
                try:
                    return write(*args)
                except TimeoutError:
                    if not self._unacknowledged() < unacknowledged:
                        raise _answer_not_taken() from None
        finally:
            self._sock.settimeout(None)

    def sendfile(self, file, offset=0, count=None):
        # gunicorn's answers from a file (wsgi.file_wrapper: whitenoise's static files): socket.sendfile
        # waits for room up to the limit at a time, and on giving up has moved the file past what
        # it sent (when it sent any); sent again from there while the client takes bytes.
        if self._sock.gettimeout() is not None:
            return self._sock.sendfile(file, offset, count)
        if count is None:
            count = os.fstat(file.fileno()).st_size - offset
        sent = 0
        self._sock.settimeout(self._seconds)
        try:
            while sent < count:
                unacknowledged = self._unacknowledged()
                file.seek(offset + sent)
                try:
                    return sent + self._sock.sendfile(file, offset + sent, count - sent)
                except TimeoutError:
                    progress = file.tell() - (offset + sent)
                    sent += progress
                    if not progress and not self._unacknowledged() < unacknowledged:
                        raise _answer_not_taken() from None
            return sent  # all of it sent, before a last wait for room timed out
        finally:
            self._sock.settimeout(None)

    def _unacknowledged(self) -> int:
        """Bytes written to the socket that the client has not acknowledged yet (Linux's SIOCOUTQ);
        0 where that is unknown."""
        if _SIOCOUTQ is None:
            return 0
        try:
            answer = fcntl.ioctl(self._sock.fileno(), _SIOCOUTQ, b"\0\0\0\0")
        except (OSError, ValueError):
            return 0
        return int.from_bytes(answer, sys.byteorder, signed=True)


_SIOCOUTQ = getattr(termios, "TIOCOUTQ", None)  # Linux's SIOCOUTQ on a TCP socket


def _answer_not_taken() -> BrokenPipeError:
    # EPIPE: gunicorn closes the connection and logs it at debug level, as for a client gone.
    return BrokenPipeError(errno.EPIPE, "the client took none of its answer within the time limit")


# --- closing a connection without holding the worker's main loop --------------------------------------
# When an answer closes its connection ("Connection: close", an error, HTTP/1.0, a read timed out),
# gunicorn's gthread worker half-closes it and then lingers up to 2 s reading what the client may
# still send, so that a request arriving meanwhile does not reset the answer (RFC 9112 section 9.6).
# It did so on the worker's main loop, the one thread that accepts connections and hands kept-alive
# ones to the request threads: each client that keeps such a connection open without sending stopped
# that worker for 2 s, and a few dozen of them (or a steady trickle) stopped it for good. The same
# linger now waits on the worker's poller: the main loop reads what comes when it comes and closes the
# connection at its end (the client closed, 64 KiB read, or 2 s passed), and does other work meanwhile.
_LINGER_SECONDS = 2.0  # gunicorn's util.close_graceful
_LINGER_MAX_BYTES = 65536


class _Lingering:
    """Connections half-closed by one worker, each until its client closes or its time is up.

    Only ever used on the worker's main thread: gunicorn closes connections there alone (the
    request threads' results come back to it through its method queue).
    """

    def __init__(self, worker):
        from gunicorn import util

        self.util = util
        self.worker = worker
        self.conns: collections.deque = collections.deque()  # (deadline, sock), oldest first
        self.drained: dict = {}  # sock -> bytes read while lingering

    def close(self, conn, graceful=False):
        """TConn.close, for one connection (set on it by handle_with_read_deadline)."""
        sock = conn.sock
        if not graceful:
            self.util.close(sock)
            return
        # The main loop never lingers itself, not even for a flood of connections left open or in a
        # stopping worker (each such close held it 2 s: a few dozen, and the master killed it).
        self._make_room(for_one_more=True)
        try:
            sock.shutdown(socket.SHUT_WR)
            sock.setblocking(False)
            self.worker.poller.register(sock, selectors.EVENT_READ, self._readable)
        except (OSError, ValueError, KeyError):
            self.util.close(sock)
            return
        self.drained[sock] = 0
        self.conns.append((time.monotonic() + _LINGER_SECONDS, sock))

    def _make_room(self, for_one_more=False):
        # The worker holds at most worker_connections sockets, as gunicorn's setting says: those it
        # serves or keeps alive (nr_conns) and those lingering. Past that (a flood of connections
        # left open), the ones lingering longest are closed first, so that descriptors stay within
        # what the setting was sized for.
        room = self.worker.worker_connections - self.worker.nr_conns - (1 if for_one_more else 0)
        while self.conns and len(self.drained) > max(room, 0):
            _, sock = self.conns.popleft()
            self._end(sock)

    def _readable(self, sock):
        try:
            data = sock.recv(4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if sock not in self.drained:
            return
        self.drained[sock] += len(data)
        if not data or self.drained[sock] >= _LINGER_MAX_BYTES:
            self._end(sock)

    def expire(self, force=False):
        if force:
            self._finish()
            return
        now = time.monotonic()
        while self.conns and self.conns[0][0] <= now:
            _, sock = self.conns.popleft()
            self._end(sock)
        self._make_room()  # connections accepted since

    def _finish(self):
        """The worker stops and closes its poller next: what still lingers gets the rest of its time
        (2 s at most) on a selector of its own, then is closed."""
        with selectors.DefaultSelector() as selector:
            for sock in list(self.drained):
                with contextlib.suppress(OSError, ValueError, KeyError):
                    self.worker.poller.unregister(sock)
                    selector.register(sock, selectors.EVENT_READ)
            while True:
                now = time.monotonic()
                while self.conns and self.conns[0][0] <= now:
                    _, sock = self.conns.popleft()
                    self._end(sock)
                if not self.drained or not self.conns:
                    break
                for key, _ in selector.select(self.conns[0][0] - now):
                    self._readable(key.fileobj)
        for sock in list(self.drained):
            self._end(sock)

    def _end(self, sock):
        if self.drained.pop(sock, None) is None:
            return  # already ended (the client closed before its time was up)
        with contextlib.suppress(OSError, ValueError, KeyError):
            self.worker.poller.unregister(sock)
        self.util.close(sock)


def _limit_request_read_time(worker) -> None:
    from gunicorn.workers.gthread import ThreadWorker

    # The Procfile's gthread workers only; a sync worker is stopped by gunicorn's own `timeout`.
    if not isinstance(worker, ThreadWorker) or worker.cfg.is_ssl:  # TLS wraps the real socket itself
        return
    seconds, error = _read_timeout_seconds(), _read_timeout_error()
    handle = worker.handle
    lingering = _Lingering(worker)

    def handle_with_read_deadline(conn):
        if not isinstance(conn.sock, _ReadDeadlineSocket):
            conn.sock = _ReadDeadlineSocket(conn.sock, seconds, error)
            conn.close = functools.partial(lingering.close, conn)
        # Each request (a kept-alive connection's next one) gets its own time.
        conn.sock.waited = 0.0
        return handle(conn)

    worker.handle = handle_with_read_deadline
    murder_keepalived = worker.murder_keepalived

    def murder_keepalived_and_lingering(force=False):
        # Called by the main loop at least once a second, and with force=True as the worker stops.
        murder_keepalived(force)
        lingering.expire(force)

    worker.murder_keepalived = murder_keepalived_and_lingering


# --- connections that never sent a byte ---------------------------------------------------------------
# gunicorn 27's gthread worker gives a new connection 5 s on a thread for its first byte, then puts it on
# its poller for as long as a kept-alive one (the `keepalive` setting). With gunicorn's default 2 s that
# was 7 s in all; with the router's keep-alive above (95 s) a connection that sends nothing would be held
# 100 s, counted against worker_connections all along, and a stopping worker waited for it up to its
# graceful_timeout. It is held 2 s on the poller again, as before: keep-alive is for a connection that
# has been served, not one that has not said anything yet. So these 2 s hold whatever the setting, 0
# included: with 0, gunicorn let such a connection go as soon as its 5 s on a thread ended, and a
# request whose first byte came 6 s after its connection was dropped unanswered.
# (A request that starts and then stalls is bounded by REQUEST_READ_TIMEOUT_SECONDS, above.)
_SILENT_CONNECTION_SECONDS = 2.0


def _bound_silent_connections(worker) -> None:
    from gunicorn.workers.gthread import ThreadWorker

    if not isinstance(worker, ThreadWorker) or not hasattr(worker, "pending_conns"):
        return
    finish_request = worker.finish_request

    def finish_request_bounding_silent_ones(conn, fs):
        # Runs on the worker's main loop, as gunicorn's own; a connection it has just put on the
        # poller to wait for its first byte is the last one of pending_conns. Each gets the same
        # time from now, so pending_conns stays in the order of their deadlines, as murder_pending
        # expects.
        finish_request(conn, fs)
        if worker.pending_conns and worker.pending_conns[-1] is conn:
            conn.timeout = time.monotonic() + _SILENT_CONNECTION_SECONDS

    worker.finish_request = finish_request_bounding_silent_ones


# --- gunicorn's own answers, as JSON -----------------------------------------------------------------
# A request gunicorn cannot parse (ambiguous framing, a bad header, too many or too long ones) never
# reaches Django: gunicorn answers it itself, with an HTML page. Its senders are programs (webhook
# providers, API clients), which read every other refusal of Hookline's as {"error", "detail"}.
_GUNICORN_ERRORS = {
    400: "bad_request",
    403: "forbidden",
    408: "request_timeout",
    414: "request_line_too_long",
    417: "expectation_failed",
    431: "headers_too_large",
    500: "server_error",
    501: "unsupported_transfer_coding",
}


# gunicorn's own wording for a request line past limit_request_line ("Request line length (5035) exceeds
# limit (4094)") names neither what the line is nor what to do. The path is unknown here (the line was
# never read whole), and the line's limit is left as it is (it bounds what the parser holds of a
# request): the words are for what reaches it in practice, an API list's filters or cursor; a
# provider's ingest URL is far shorter.
_REQUEST_LINE_TOO_LONG = (
    "the request line (method, path and query string) is longer than this server's {limit:,} bytes: "
    "shorten the query string: fewer or shorter filters (an event_type list, a search), or narrow the "
    "list in several requests; follow a list's next link as it is, without adding filters to it"
)


def _detail(status_int, reason, mesg, limit_request_line) -> str:
    if status_int == 414:
        return _REQUEST_LINE_TOO_LONG.format(limit=limit_request_line)
    return mesg or reason


def _write_json_error(sock, status_int, reason, mesg, *, limit_request_line=None):
    from gunicorn.config import LimitRequestLine
    from gunicorn.util import write_nonblock

    limit = LimitRequestLine.default if limit_request_line is None else limit_request_line
    error = _GUNICORN_ERRORS.get(status_int, "bad_request" if 400 <= status_int < 500 else "server_error")
    detail = _detail(status_int, reason, mesg, limit)
    body = json.dumps({"error": error, "detail": detail}).encode()  # ASCII: escapes what came
    head = f"HTTP/1.1 {status_int} {reason}\r\nConnection: close\r\nContent-Type: application/json\r\n"
    write_nonblock(sock, head.encode("latin-1") + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)


def post_fork(server, worker):
    from gunicorn import util

    # Called as util.write_error by the worker's handle_error; with this server's own line limit.
    util.write_error = functools.partial(_write_json_error, limit_request_line=worker.cfg.limit_request_line)
    _limit_request_read_time(worker)
    _bound_silent_connections(worker)


def post_worker_init(worker):
    """Import what requests run (the URLconf's views and services, the writer process's client) as
    the worker starts, not at its first request of each kind.

    Imported at a first request, a worker still serving after a release changed the files (the
    moments of a HUP reload) ran the new code against the old writer process, which refused its
    frames: those requests were 503s. And each worker's first request no longer waits for them.
    """
    try:
        from django.urls import get_resolver

        get_resolver().url_patterns  # noqa: B018 (imports every view, and through them the services)
        import webhooks.services.ingest_writer_process  # noqa: F401 (store_event imports it on first use)
    except Exception:  # a request would say it (a 500), as before: a worker that fails to boot stops gunicorn
        worker.log.exception("could not import the application's views at the worker's start")


# Kept on gunicorn's arbiter, not in this module: a HUP loads this file again as a new module,
# whose hooks must still stop the writer that the first one started.
_ARBITER_ATTRIBUTE = "hookline_ingest_writer"


def on_starting(server):
    if _wanted(server):
        writer = _WriterProcess()
        setattr(server, _ARBITER_ATTRIBUTE, writer)
        writer.start(server)


def on_exit(server):
    writer = getattr(server, _ARBITER_ATTRIBUTE, None)
    if writer is not None:
        writer.stop(server)


# A HUP reload: a writer process per release, each on its own socket.
# The old writer ran the code it was started with, and once a release changed the frame it
# refused every frame of the new workers: each ingest request was a 503 until a full restart
# (and GitHub does not retry). So the new module (this hook is the reloaded file's) starts a
# new writer, on a new socket, before gunicorn forks the new workers: they read its path
# (INGEST_WRITER_SOCKET) and only ever talk to a writer of their own release; until it listens
# they write in-process, as whenever it is away. The old workers keep the old writer's path:
# it is told to stop (SIGTERM) and goes on committing and answering what they send until their
# connections close, so no frame it accepted goes unanswered. No version in the frame is
# needed, since no worker meets a writer of another release.
_RETIRE_SECONDS = 120.0  # past gunicorn's graceful_timeout (30 s) and the writer's own grace (25 s)


def on_reload(server):
    old = getattr(server, _ARBITER_ATTRIBUTE, None)
    if old is None:
        return  # not started at first (INGEST_WRITER_PROCESS=false, SQLite, --preload): nor now
    writer = _WriterProcess()
    writer.shutting_down = old.shutting_down  # the event when_ready's signal handlers set
    writer.retiring = [old, *getattr(old, "retiring", [])]
    setattr(server, _ARBITER_ATTRIBUTE, writer)
    writer.start(server)  # sets INGEST_WRITER_SOCKET for the workers forked next
    server.log.info("ingest writer process replaced after a reload; the previous one finishes its rows")
    threading.Thread(target=_retire, args=(old, _RETIRE_SECONDS), name="hookline-writer-retire", daemon=True).start()


def when_ready(server):
    """Note the master's stop signals for the writer's watcher (after gunicorn installed its own).

    Platforms send SIGTERM to every process of the web dyno or container, the writer included:
    without this, the watcher would take the writer's clean exit for a crash, log an error and
    start a new one while the master shuts down.
    """
    writer = getattr(server, _ARBITER_ATTRIBUTE, None)
    if writer is None:
        return
    for stop_signal in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT):
        gunicorns_handler = signal.getsignal(stop_signal)

        def noted(signum, frame, gunicorns_handler=gunicorns_handler):
            writer.shutting_down.set()
            if callable(gunicorns_handler):
                gunicorns_handler(signum, frame)

        signal.signal(stop_signal, noted)


# accounts.http.client_ip trusts the right-most X-Forwarded-For entry, the one the router adds (or
# the TRUSTED_PROXY_HOPS-th from the right, behind a CDN).
# gunicorn joins a header's field lines in the order they came, so with a second line from the
# client, a router that appends its entry to the first line (Heroku's has been seen to) passes the
# client's own pick on as the right-most entry. Such a request keeps one unreadable entry instead:
# its address is unknown (an allowed-networks source refuses it), never one the client chose.
_FORWARDED_FOR = "X-FORWARDED-FOR"  # gunicorn's spelling of header names
UNREADABLE_FORWARDED_FOR = "unknown"


def pre_request(worker, req):
    lines = [value for name, value in req.headers if name == _FORWARDED_FOR]
    if len(lines) > 1:
        req.headers = [(name, value) for name, value in req.headers if name != _FORWARDED_FOR]
        req.headers.append((_FORWARDED_FOR, UNREADABLE_FORWARDED_FOR))
    worker.log.debug("%s %s", req.method, req.path)  # gunicorn's own pre_request
