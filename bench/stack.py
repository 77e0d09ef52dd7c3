"""What the benchmarks that run Hookline's processes share: starting and stopping them, waiting
for their ports, asking the counting receiver, running manage.py. Imported by bench/delivery.py
and bench/faults.py, which run as scripts (this folder is then on sys.path)."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
HOST = "127.0.0.1"


def production_env(*, database_url: str, redis_url: str, secret_key: str, fernet_key: str, web_port: int, queue: str):
    """The environment of Hookline's processes as production runs them, on 127.0.0.1 and the given
    services; DJANGO_* and CELERY_* of the calling shell are left out, so they cannot change a run."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("DJANGO_", "CELERY_"))}
    env.update(
        DJANGO_SETTINGS_MODULE="config.settings",
        DATABASE_URL=database_url,
        REDIS_URL=redis_url,
        CELERY_BROKER_URL=redis_url,
        SECRET_KEY=secret_key,
        FIELD_ENCRYPTION_KEYS=fernet_key,
        DEBUG="false",
        PUBLIC_BASE_URL=f"http://{HOST}:{web_port}",
        ALLOWED_HOSTS="127.0.0.1,localhost",
        TRUST_X_FORWARDED_FOR="false",
        ALLOW_PRIVATE_DESTINATIONS="true",
        LOG_LEVEL="WARNING",
        CELERY_QUEUE=queue,
        PYTHONDONTWRITEBYTECODE="1",
        SWEEP_INTERVAL_SECONDS="1",
    )
    return env


def log(message: str) -> None:
    # Progress goes to stderr so that --json leaves stdout with one object.
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def wait_for_port(port: int, process: subprocess.Popen | None = None, timeout: float = 30) -> None:
    """Until something listens on ``port``; an error as soon as ``process`` has exited instead."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"process {process.args[:4]} exited with {process.returncode}")
        try:
            socket.create_connection((HOST, port), 0.2).close()
            return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"nothing listens on {HOST}:{port} after {timeout} s")


def receiver_get(port: int, path: str, timeout: float = 30) -> dict:
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        conn.request("GET", path)
        return json.loads(conn.getresponse().read())
    finally:
        conn.close()


def json_line(output: str) -> dict:
    """The last JSON object printed on a line of its own (a command's --json answer)."""
    for line in reversed(output.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            return json.loads(line)
    raise RuntimeError(f"no JSON in: {output!r}")


def manage(env: dict[str, str], *command: str, timeout: float = 300) -> str:
    result = subprocess.run(
        [PYTHON, "manage.py", *command], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )
    if result.returncode != 0:
        raise RuntimeError(f"manage.py {' '.join(command)} failed:\n{result.stdout}\n{result.stderr}")
    return result.stdout


def stop_group(process: subprocess.Popen, sig=signal.SIGTERM, timeout: float = 10) -> None:
    """Stop a process started in a session of its own, with its whole group; SIGKILL if it lingers."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, sig)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=5)
    # Pool children may outlive their parent for a moment.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
