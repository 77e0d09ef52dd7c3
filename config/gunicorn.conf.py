"""gunicorn settings for the web process: starts and watches the host's ingest writer process.

Why a process next to the web workers: their ingest requests then share one
database commit per batch (webhooks/services/ingest_writer_process.py). The
master starts it before forking workers, tells them its socket through
INGEST_WRITER_SOCKET, starts it again if it ends, and stops it last. While it
is not running, each worker writes its own rows, so nothing waits on it.
It is started only for PostgreSQL (elsewhere ingest writes on the request's
thread); INGEST_WRITER_PROCESS=false does without it.
"""

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

_MANAGE_PY = Path(__file__).resolve().parent.parent / "manage.py"
_RESTART_DELAY_SECONDS = 1.0


class _WriterProcess:
    def __init__(self):
        self.process = None
        self.socket_path = None
        self.stopping = False
        self.lock = threading.Lock()

    def start(self, server):
        # A private directory (0700) for the socket: only this user can reach the writer.
        self.socket_path = os.path.join(tempfile.mkdtemp(prefix="hookline-writer-"), "writer.sock")
        os.environ["INGEST_WRITER_SOCKET"] = self.socket_path  # read by the workers' settings
        self._spawn(server)
        threading.Thread(target=self._watch, args=(server,), name="hookline-writer-watch", daemon=True).start()

    def _spawn(self, server):
        with self.lock:
            if self.stopping:
                return
            command = [sys.executable, str(_MANAGE_PY), "run_ingest_writer", "--socket", self.socket_path]
            # Our own interpreter, manage.py and a path we made: nothing here comes from a request.
            self.process = subprocess.Popen([*command, "--parent-pid", str(os.getpid())])  # noqa: S603
            server.log.info("ingest writer process %s started on %s", self.process.pid, self.socket_path)

    def _watch(self, server):
        while True:
            process = self.process
            returncode = process.wait()
            if self.stopping:
                return
            server.log.error("ingest writer process %s ended (%s); starting it again", process.pid, returncode)
            time.sleep(_RESTART_DELAY_SECONDS)
            self._spawn(server)

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


def _wanted() -> bool:
    enabled = os.environ.get("INGEST_WRITER_PROCESS", "true").lower() not in ("0", "false", "no", "off")
    on_postgresql = os.environ.get("DATABASE_URL", "").startswith(("postgres://", "postgresql://", "pgsql://"))
    return enabled and on_postgresql


# Kept on gunicorn's arbiter, not in this module: a HUP loads this file again as a new module,
# whose hooks must still stop the writer that the first one started.
_ARBITER_ATTRIBUTE = "hookline_ingest_writer"


def on_starting(server):
    if _wanted():
        writer = _WriterProcess()
        setattr(server, _ARBITER_ATTRIBUTE, writer)
        writer.start(server)


def on_exit(server):
    writer = getattr(server, _ARBITER_ATTRIBUTE, None)
    if writer is not None:
        writer.stop(server)
