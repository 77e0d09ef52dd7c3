"""Real Hookline processes (web, worker, beat) and a counting receiver, for end-to-end and fault tests."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import stripe
from django.conf import settings
from django.db import connection

from .ports import free_port

ROOT = Path(__file__).resolve().parents[2]
# One directory per process of `make test` (pytest-xdist's worker id), so that the fault tests of
# two processes do not append to the same files.
LOG_DIR = ROOT / "var" / "test-logs" / os.environ.get("PYTEST_XDIST_WORKER", "main")


# How long a test waits for a process of ours (gunicorn, the ingest writer, redis-server) to start,
# answer or end before it calls it stuck. Django's start takes seconds on an idle machine, many times
# that on a CI machine loaded by the suite's own processes; only a test that fails anyway waits it out.
PATIENCE_SECONDS = 120


def wait_for_port(port: int, timeout: float = PATIENCE_SECONDS, process: subprocess.Popen | None = None) -> None:
    """Until something listens on ``port``; with ``process``, fails at once should it exit first (it
    could not bind the port, say) rather than wait, or take another program's server for it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{process.args[0]} exited with {process.returncode} before listening on {port}")
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"nothing listens on {port}")


class CountingReceiver:
    """A destination that counts each webhook-id it receives, optionally slowly."""

    def __init__(self, delay: float = 0.0):
        self.counts: Counter[str] = Counter()
        self.lock = threading.Lock()
        self.delay = delay
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                answer = receiver.wait_before_answering()
                with receiver.lock:
                    receiver.counts[self.headers["webhook-id"]] += 1
                if not answer:
                    return
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait_before_answering(self) -> bool:
        """Called for each request, in its own thread, before it is counted: whether to answer it."""
        if self.delay:
            time.sleep(self.delay)
        return True

    def snapshot(self) -> Counter[str]:
        with self.lock:
            return Counter(self.counts)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class RedisServer:
    """A private redis-server, so a test can stop and restart it without touching anyone else's."""

    def __init__(self):
        self.port = free_port()
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for_port(self.port, process=self.process)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


class Stack:
    """gunicorn, a Celery worker and Celery beat on the test database and a given Redis."""

    def __init__(self, redis_url: str, **extra_env: str):
        db = connection.settings_dict
        self.web_port = free_port()
        self.env = {
            **os.environ,
            "DATABASE_URL": f"postgres://{db['USER']}@{db['HOST'] or 'localhost'}:{db['PORT'] or 5432}/{db['NAME']}",
            "REDIS_URL": redis_url,
            "PUBLIC_BASE_URL": f"http://127.0.0.1:{self.web_port}",
            "TRUST_X_FORWARDED_FOR": "false",
            "ALLOW_PRIVATE_DESTINATIONS": "true",
            "SWEEP_INTERVAL_SECONDS": "1",
            "STUCK_EVENT_SECONDS": "1",
            "STUCK_DELIVERY_SECONDS": "3",
            "CELERY_QUEUE": f"faults-{self.web_port}",
            "LOG_LEVEL": "WARNING",
            **extra_env,
        }
        self.processes: dict[str, subprocess.Popen] = {}
        self.restarts: dict[str, int] = {}
        self._lock = threading.RLock()
        self._stopping = threading.Event()
        self._supervisor = threading.Thread(target=self._supervise, daemon=True)
        self._supervisor.start()
        LOG_DIR.mkdir(parents=True, exist_ok=True)

    def _supervise(self) -> None:
        """Restart a process that exited on its own, as the platform (Heroku, Render) does.

        A Celery worker can exit when Redis vanishes under it (kombu's reconnection path
        raises "'NoneType' object has no attribute 'hostname'"); what these tests check is
        that nothing is lost when that happens, not that no process ever exits.
        """
        while not self._stopping.wait(0.5):
            with self._lock:
                for name, process in list(self.processes.items()):
                    if process.poll() is not None:
                        self.restarts[name] = self.restarts.get(name, 0) + 1
                        self.start(name)

    def start(self, name: str) -> None:
        commands = {
            # As the Procfile runs it: with the host's ingest writer process.
            "web": [
                *(sys.executable, "-m", "gunicorn", "config.wsgi", "--config", "config/gunicorn.conf.py"),
                *("-w", "2", "-b", f"127.0.0.1:{self.web_port}"),
            ],
            "worker": [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "config",
                "worker",
                "-c",
                "2",
                "-l",
                "WARNING",
                "-Q",
                self.env["CELERY_QUEUE"],
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
            ],
            "beat": [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "config",
                "beat",
                "-S",
                "config.beat:DatabaseScheduler",
                "-l",
                "WARNING",
            ],
        }
        log = (LOG_DIR / f"{name}.log").open("a")
        with self._lock:
            process = self.processes[name] = subprocess.Popen(
                commands[name], cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        if name == "web":
            wait_for_port(self.web_port, process=process)

    def start_together(self, *names: str) -> None:
        """Start ``names``, the web process last: a worker's or beat's start is not waited for, the web
        process's is (until it listens), so the others load Django meanwhile rather than after it."""
        for name in sorted(names, key=lambda name: name == "web"):
            self.start(name)

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        """Stop ``name`` on purpose: it stays stopped until started again."""
        with self._lock:
            self._end({name: self.processes.pop(name)}, lambda _: sig)

    def stop_all(self) -> None:
        """Every process told at once (the worker killed), then each waited for: they wind down
        together rather than one after the other (web's graceful stop alone takes seconds)."""
        self._stopping.set()
        self._supervisor.join(5)
        with self._lock:
            stopping, self.processes = self.processes, {}
            self._end(stopping, lambda name: signal.SIGKILL if name == "worker" else signal.SIGTERM)

    @staticmethod
    def _end(processes: dict[str, subprocess.Popen], signal_for) -> None:
        for name, process in processes.items():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal_for(name))  # the whole group: a worker's pool children too
        for process in processes.values():
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                # As a platform does when SIGTERM is not enough (a process stuck reconnecting).
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(15)

    def post_stripe(self, token: str, event_id: str, secret: str) -> int:
        return post_stripe_over_http(self.web_port, token, event_id, secret)


def post_stripe_over_http(
    port: int, token: str, event_id: str, secret: str, timeout: float = PATIENCE_SECONDS, *, prefix: str = "/in/"
) -> int:
    """POST a Stripe-signed event to a real server on 127.0.0.1:``port``; the HTTP status.

    A server just started answers its first request once a worker has loaded Django (wait_for_port
    sees only the master listening): on a loaded machine that took longer than the 10 s it was given."""
    body = f'{{"id":"{event_id}","object":"event","type":"invoice.paid"}}'
    timestamp = int(time.time())
    signature = stripe.WebhookSignature._compute_signature(f"{timestamp}.{body}", secret)
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{prefix}{token}/",
        data=body.encode(),
        headers={"Content-Type": "application/json", "Stripe-Signature": f"t={timestamp},v1={signature}"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


# The embedded mode (`make run`: SQLite under HOOKLINE_VAR_DIR), its tables straight from the models
# (as the migrations leave them: test_migrations_complete.py): running every migration on SQLite
# would take most of such a test's time.
EMBEDDED_SQLITE_SET_UP = """
import django
django.setup()
from django.apps import apps
from django.conf import settings
from django.core.management import call_command
settings.MIGRATION_MODULES = {app.label: None for app in apps.get_app_configs()}
call_command("migrate", run_syncdb=True, verbosity=0)
"""


def run_on_embedded_sqlite(script: str, var_dir: Path) -> dict:
    """Run ``script`` in a new Python on the embedded defaults, after EMBEDDED_SQLITE_SET_UP, with
    var_dir as its HOOKLINE_VAR_DIR; the JSON object its last printed line holds."""
    environment = {
        "PATH": os.environ["PATH"],
        "HOME": str(Path.home()),
        "DJANGO_SETTINGS_MODULE": "config.settings",
        "HOOKLINE_VAR_DIR": str(var_dir),
        "SECRET_KEY": "test-only-embedded-key",
    }
    ran = subprocess.run(
        [sys.executable, "-c", EMBEDDED_SQLITE_SET_UP + script],
        capture_output=True,
        text=True,
        env=environment,
        cwd=ROOT,
        timeout=300,
    )
    assert ran.returncode == 0, ran.stderr
    return json.loads(ran.stdout.strip().splitlines()[-1])


def wait_until(predicate, timeout: float, interval: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


__all__ = [
    "PATIENCE_SECONDS",
    "CountingReceiver",
    "RedisServer",
    "Stack",
    "free_port",
    "post_stripe_over_http",
    "settings",
    "wait_until",
]


class PostgresServer:
    """A private PostgreSQL cluster (initdb in a temp dir) that a test may stop and start at will."""

    def __init__(self, base_dir: Path):
        import glob

        bins = sorted(glob.glob("/usr/lib/postgresql/*/bin"))
        if not bins:
            raise RuntimeError("PostgreSQL server binaries are not installed")
        self.bin = Path(bins[-1])
        self.port = free_port()
        self.dir = base_dir / "pgdata"
        self.socket_dir = base_dir / "pgsocket"
        self.url = f"postgres://postgres@127.0.0.1:{self.port}/hookline"

    def _as_postgres(self, *command: str) -> None:
        # initdb and postgres refuse to run as root; runuser is a no-op need when we are not root.
        # runuser lives in sbin, which a minimal PATH (a CI runner's, cron's) may leave out.
        runuser = shutil.which("runuser") or shutil.which("runuser", path="/usr/sbin:/sbin") or "runuser"
        prefix = [runuser, "-u", "postgres", "--"] if os.geteuid() == 0 else []
        subprocess.run([*prefix, *command], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def init(self) -> None:
        for path in (self.dir.parent, self.socket_dir):
            path.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            subprocess.run(["chown", "-R", "postgres", str(self.dir.parent)], check=True)
        self._as_postgres(str(self.bin / "initdb"), "-D", str(self.dir), "-U", "postgres", "--auth=trust", "-E", "UTF8")
        self.start()
        self._as_postgres(
            str(self.bin / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "hookline"
        )

    def start(self) -> None:
        options = f"-p {self.port} -k {self.socket_dir} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._as_postgres(str(self.bin / "pg_ctl"), "-D", str(self.dir), "-o", options, "-w", "start")

    def stop(self, mode: str = "immediate") -> None:
        try:
            self._as_postgres(str(self.bin / "pg_ctl"), "-D", str(self.dir), "-m", mode, "-w", "stop")
        except subprocess.CalledProcessError:
            pass
