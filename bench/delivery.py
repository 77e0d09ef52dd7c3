"""End-to-end delivery benchmark: signed Stripe webhooks in, Standard Webhooks deliveries out, real worker.

Starts, on 127.0.0.1 only and in its own PostgreSQL database and Redis DB, the
production processes: gunicorn (web), one Celery worker (prefork) and Celery
beat, plus a cheap counting receiver in a process of its own. It creates an
organization, a Stripe source and a destination pointing at the receiver with
the management commands, then runs two phases:

  throughput  N signed events are ingested over HTTP while no worker runs; then
              the worker (and beat) start and the receiver's arrival times give
              deliveries/s: from worker start to the last arrival, and the
              sustained rate between the 10th and 90th percentile arrival.
  latency     signed events are posted at a fixed rate (default 200/s for 15 s);
              for each one, WebhookEvent.received_at (from the database) to its
              first arrival at the receiver gives p50/p99, split into stages
              (received → fanned out → first attempt started → arrived).

Both phases report duplicates (a webhook-id that arrived more than once) and lost
events (acknowledged by ingest, not delivered within the grace period), and the CPU
each component used (web, worker, beat, receiver, PostgreSQL, Redis, the bench).

    .venv/bin/python bench/delivery.py [--events 6000] [--rate 200] [--duration 15]
        [--worker-concurrency 2] [--delivery-threads 32] [--json]

Every process is started in its own session and its whole group is killed on exit
(Ctrl-C included). Goal (issue): >= 600 deliveries/s sustained, p50 < 100 ms at 200 events/s.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import queue
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from pathlib import Path

from stack import HOST, PYTHON, ROOT, json_line, log, manage, production_env, receiver_get, stop_group, wait_for_port

FIXTURE = ROOT / "webhooks" / "tests" / "fixtures" / "stripe" / "invoice.paid.json"
# A fixed key for the benchmark's own database; never a production key.
BENCH_FERNET_KEY = "q3Yb0mFQ6sWm5b1j8mY0k2fS1xk3bVf3m8y9bq0zQ1Y="
GOAL_RATE = 600.0  # deliveries/s sustained
GOAL_P50_MS = 100.0  # at 200 events/s


# --- configuration ----------------------------------------------------------------------------------


def parse_args(argv=None) -> argparse.Namespace:
    env = os.environ.get
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=int(env("BENCH_EVENTS", "6000")), help="throughput phase size")
    parser.add_argument("--rate", type=float, default=float(env("BENCH_RATE", "200")), help="latency phase events/s")
    parser.add_argument("--duration", type=float, default=float(env("BENCH_DURATION", "15")), help="latency seconds")
    parser.add_argument(
        "--phases", default=env("BENCH_PHASES", "throughput,latency"), help="comma-separated: throughput,latency"
    )
    parser.add_argument("--worker-concurrency", type=int, default=int(env("BENCH_WORKER_CONCURRENCY", "2")))
    parser.add_argument(
        "--delivery-threads", type=int, default=int(env("BENCH_DELIVERY_THREADS", "0")), help="0: the default"
    )
    parser.add_argument(
        "--max-concurrency",
        type=int,
        default=int(env("BENCH_MAX_CONCURRENCY", "0")),
        help="the destination's max_concurrency (0: the model default)",
    )
    parser.add_argument("--web-workers", type=int, default=int(env("BENCH_WEB_WORKERS", "2")))
    parser.add_argument("--clients", type=int, default=int(env("BENCH_CLIENTS", "8")), help="ingest client threads")
    parser.add_argument("--receiver", choices=["asyncio", "threading"], default=env("BENCH_RECEIVER", "asyncio"))
    parser.add_argument("--grace", type=float, default=float(env("BENCH_GRACE", "60")), help="seconds to wait")
    parser.add_argument(
        "--database-url",
        default=env("BENCH_DATABASE_URL", "postgres://postgres@localhost:5432/hookline_bench_delivery"),
        help="the benchmark's own database (created when missing; its events are truncated)",
    )
    parser.add_argument("--redis-url", default=env("BENCH_REDIS_URL", "redis://localhost:6379/13"), help="flushed")
    parser.add_argument("--py-spy", metavar="DIR", help="record py-spy profiles of the worker processes into DIR")
    parser.add_argument("--log-dir", default=env("BENCH_LOG_DIR", ""), help="process logs (default: a temp dir)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    args = parser.parse_args(argv)
    args.phases = [p.strip() for p in args.phases.split(",") if p.strip()]
    if not set(args.phases) <= {"throughput", "latency"} or not args.phases:
        parser.error("--phases takes throughput and/or latency")
    if args.events <= 0 or args.rate <= 0 or args.duration <= 0 or args.duration > 240:
        parser.error("--events, --rate must be > 0 and 0 < --duration <= 240")
    for url in (args.database_url, args.redis_url):
        if urllib.parse.urlsplit(url).hostname not in ("localhost", "127.0.0.1"):
            parser.error(f"{url}: the benchmark only talks to this machine")
    return args


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return probe.getsockname()[1]


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


# --- the receiver (runs in its own process: `delivery.py _receiver PORT MODE`) ------------------------

OK_RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok"


class Tally:
    """Per webhook-id: [count, first arrival, last arrival] (time.time())."""

    def __init__(self):
        self.seen: dict[str, list] = {}
        self.requests = 0
        self.without_id = 0

    def record(self, webhook_id: str | None) -> None:
        now = time.time()
        self.requests += 1
        if not webhook_id:
            self.without_id += 1
            return
        entry = self.seen.get(webhook_id)
        if entry is None:
            self.seen[webhook_id] = [1, now, now]
        else:
            entry[0] += 1
            entry[2] = now

    def answer(self, path: str) -> bytes:
        if path.startswith("/results"):
            payload = {"requests": self.requests, "without_id": self.without_id, "seen": self.seen}
        else:
            payload = {"requests": self.requests, "ids": len(self.seen), "cpu": time.process_time()}
        body = json.dumps(payload).encode()
        return b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (
            len(body),
            body,
        )


def run_asyncio_receiver(port: int) -> None:
    """A minimal HTTP/1.1 keep-alive server on asyncio's default loop: about 40 µs of CPU a request."""
    import asyncio

    tally = Tally()

    class Protocol(asyncio.Protocol):
        def connection_made(self, transport):
            self.transport = transport
            self.buffer = b""

        def data_received(self, data):
            self.buffer += data
            while True:
                end = self.buffer.find(b"\r\n\r\n")
                if end < 0:
                    return
                head = self.buffer[:end].split(b"\r\n")
                length, webhook_id, close = 0, None, False
                for line in head[1:]:
                    name, _, value = line.partition(b":")
                    name = name.strip().lower()
                    if name == b"content-length":
                        length = int(value)
                    elif name == b"webhook-id":
                        webhook_id = value.strip().decode()
                    elif name == b"connection" and value.strip().lower() == b"close":
                        close = True
                if len(self.buffer) < end + 4 + length:
                    return  # the body is still arriving
                self.buffer = self.buffer[end + 4 + length :]
                method, _, rest = head[0].partition(b" ")
                if method == b"POST":
                    tally.record(webhook_id)
                    self.transport.write(OK_RESPONSE)
                else:
                    self.transport.write(tally.answer(rest.partition(b" ")[0].decode()))
                if close:
                    self.transport.close()
                    return

    async def serve():
        loop = asyncio.get_running_loop()
        stop = loop.create_future()
        loop.add_signal_handler(signal.SIGTERM, stop.set_result, None)
        server = await loop.create_server(Protocol, HOST, port, backlog=1024)
        async with server:
            await stop

    asyncio.run(serve())


def run_threading_receiver(port: int) -> None:
    """http.server's ThreadingHTTPServer with HTTP/1.1 keep-alive (the stdlib alternative)."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    tally = Tally()
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self):
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            with lock:
                tally.record(self.headers.get("webhook-id"))
            self.wfile.write(OK_RESPONSE)

        def do_GET(self):
            with lock:
                self.wfile.write(tally.answer(self.path))

        def log_message(self, *args):
            pass

    class Server(ThreadingHTTPServer):
        daemon_threads = True
        request_queue_size = 1024

    server = Server((HOST, port), Handler)
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    server.serve_forever(poll_interval=0.5)


# --- CPU accounting from /proc -------------------------------------------------------------------------


def cpu_snapshot() -> dict[int, tuple[str, int, float]]:
    """pid -> (command name, session id, CPU seconds) for every process we can read; pid 0: the machine's busy time."""
    ticks = os.sysconf("SC_CLK_TCK")
    with open("/proc/stat") as f:
        user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in f.readline().split()[1:9])
    snapshot = {0: ("machine", -1, (user + nice + system + irq + softirq + steal) / ticks)}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as f:
                text = f.read()
        except OSError:
            continue
        comm = text[text.index("(") + 1 : text.rindex(")")]
        fields = text[text.rindex(")") + 2 :].split()
        snapshot[int(entry.name)] = (comm, int(fields[3]), (int(fields[11]) + int(fields[12])) / ticks)
    return snapshot


def cpu_by_pid(before: dict, after: dict, session: int) -> list[float]:
    """CPU seconds of each process of one session between two snapshots, largest first."""
    used = []
    for pid, (_, sid, seconds) in after.items():
        if sid == session and pid != 0:
            previous = before.get(pid)
            used.append(round(seconds - (previous[2] if previous and previous[1] == sid else 0.0), 2))
    return sorted(used, reverse=True)


def cpu_by_component(before: dict, after: dict, sessions: dict[int, str]) -> dict[str, float]:
    """CPU seconds used between two snapshots, by component (our sessions, postgres, redis)."""
    used: dict[str, float] = {}
    for pid, (comm, session, seconds) in after.items():
        if pid == 0:
            continue
        if session in sessions:
            name = sessions[session]
        elif comm.startswith("postgres"):
            name = "postgres"
        elif comm.startswith("redis-server"):
            name = "redis"
        elif pid == os.getpid():
            name = "bench (clients)"
        else:
            continue
        previous = before.get(pid)
        delta = seconds - (previous[2] if previous and previous[1] == session else 0.0)
        used[name] = used.get(name, 0.0) + max(delta, 0.0)
    # Whatever else ran on the machine meanwhile (other people's tests...): it competes for the same cores.
    used["other processes"] = max(0.0, after[0][2] - before[0][2] - sum(used.values()))
    return {name: round(seconds, 2) for name, seconds in sorted(used.items())}


# --- the bench ---------------------------------------------------------------------------------------------


class Bench:
    def __init__(self, args):
        self.args = args
        self.run_id = secrets.token_hex(4)
        self.web_port = free_port()
        self.receiver_port = free_port()
        self.processes: dict[str, subprocess.Popen] = {}
        self.sessions: dict[int, str] = {}
        self.spies: list[subprocess.Popen] = []
        self.log_dir = Path(args.log_dir or tempfile.mkdtemp(prefix="hookline-bench-delivery-"))
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.queue = "hookline-bench-delivery"
        self._client_connection = threading.local()

    # processes

    def env(self) -> dict[str, str]:
        env = production_env(
            database_url=self.args.database_url,
            redis_url=self.args.redis_url,
            secret_key="bench-only-secret-key-" + "x" * 32,
            fernet_key=BENCH_FERNET_KEY,
            web_port=self.web_port,
            queue=self.queue,
        )
        if self.args.delivery_threads:
            env["DELIVERY_THREADS"] = str(self.args.delivery_threads)
        return env

    def start(self, name: str, command: list[str]) -> subprocess.Popen:
        with open(self.log_dir / f"{name}.log", "ab") as log_file:
            # A session of its own: the whole group (arbiter/pool children included) is stopped together.
            process = subprocess.Popen(
                command, cwd=ROOT, env=self.env(), stdout=log_file, stderr=log_file, start_new_session=True
            )
        self.processes[name] = process
        self.sessions[process.pid] = name
        return process

    def stop(self, name: str, sig=signal.SIGTERM, timeout: float = 10) -> None:
        process = self.processes.pop(name, None)
        if process is not None:
            stop_group(process, sig, timeout)

    def close(self) -> None:
        self.stop_py_spy()
        for name in list(self.processes):
            self.stop(name, signal.SIGKILL if name == "worker" else signal.SIGTERM)

    def start_receiver(self) -> None:
        process = self.start(
            "receiver",
            [PYTHON, str(Path(__file__).resolve()), "_receiver", str(self.receiver_port), self.args.receiver],
        )
        wait_for_port(self.receiver_port, process)

    def start_web(self) -> None:
        gunicorn = [PYTHON, "-m", "gunicorn", "config.wsgi", "-b", f"{HOST}:{self.web_port}"]
        gunicorn += ["-w", str(self.args.web_workers), "--backlog", "2048", "--graceful-timeout", "5"]
        gunicorn += ["--worker-class", "gthread", "--threads", "8"]  # the Procfile's web process
        gunicorn += ["--log-level", "warning"]
        process = self.start("web", gunicorn)
        wait_for_port(self.web_port, process)

    def start_worker(self) -> None:
        command = [PYTHON, "-m", "celery", "-A", "config", "worker", "-P", "prefork"]
        command += ["-c", str(self.args.worker_concurrency), "-l", "WARNING", "-Q", self.queue]
        command += ["--without-gossip", "--without-mingle", "--without-heartbeat", "-n", f"bench-{self.run_id}@%h"]
        self.start("worker", command)
        beat_schedule = self.log_dir / "beat-schedule"
        self.start(
            "beat",
            [
                PYTHON,
                "-m",
                "celery",
                "-A",
                "config",
                "beat",
                "-S",
                "config.beat:DatabaseScheduler",
                "-l",
                "WARNING",
                "-s",
                str(beat_schedule),
            ],
        )

    def worker_pids(self) -> list[int]:
        worker = self.processes.get("worker")
        if worker is None:
            return []
        return [pid for pid, (_, session, _) in cpu_snapshot().items() if session == worker.pid]

    def start_py_spy(self, phase: str) -> None:
        """Sample every worker process until stop_py_spy() (raw collapsed stacks, for flamegraph.pl or speedscope)."""
        if not self.args.py_spy:
            return
        spy = shutil.which("py-spy") or str(Path(PYTHON).with_name("py-spy"))
        out = Path(self.args.py_spy)
        out.mkdir(parents=True, exist_ok=True)
        for pid in self.worker_pids():
            command = [spy, "record", "--pid", str(pid), "--duration", "600", "--rate", "100", "--format", "raw"]
            command += ["--nonblocking", "--threads", "--output", str(out / f"{phase}-{pid}.txt")]
            self.spies.append(
                subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
            )

    def stop_py_spy(self) -> None:
        for spy in self.spies:
            with contextlib.suppress(ProcessLookupError):
                spy.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
        for spy in self.spies:
            try:
                spy.wait(timeout=30)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(spy.pid, signal.SIGKILL)
        self.spies.clear()

    # database and tenant

    def manage(self, *command: str) -> str:
        return manage(self.env(), *command, timeout=180)

    def db(self):
        import psycopg

        return psycopg.connect(self.args.database_url, autocommit=True, connect_timeout=5)

    def prepare(self) -> None:
        import psycopg
        import redis
        from psycopg import sql

        parts = urllib.parse.urlsplit(self.args.database_url)
        name = parts.path.lstrip("/")
        admin_url = urllib.parse.urlunsplit(parts._replace(path="/postgres"))
        with psycopg.connect(admin_url, autocommit=True, connect_timeout=5) as conn:
            if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone() is None:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        client = redis.Redis.from_url(self.args.redis_url, socket_timeout=5)
        try:
            client.flushdb()
        finally:
            client.close()
        log("migrating the bench database")
        self.manage("migrate", "--noinput")
        with self.db() as conn:
            conn.execute("TRUNCATE webhooks_webhookevent CASCADE")
            # Earlier runs' destinations must not share the dispatcher with this one.
            conn.execute("UPDATE webhooks_destination SET is_active = false")
            exists = conn.execute("SELECT 1 FROM organizations_organization WHERE slug = 'bench'").fetchone()
        if exists is None:
            self.manage(
                "create_organization", "--name", "Bench", "--slug", "bench", "--owner-email", "bench@example.com"
            )
        self.secret = f"whsec_bench_{self.run_id}"
        source = json_line(
            self.manage(
                "create_source",
                "--org",
                "bench",
                "--provider",
                "stripe",
                "--name",
                f"bench {self.run_id}",
                "--secret",
                self.secret,
                "--json",
            )
        )
        self.token, self.source_id = source["token"], source["id"]
        destination = json_line(
            self.manage(
                "create_destination",
                "--org",
                "bench",
                "--name",
                f"receiver {self.run_id}",
                "--url",
                f"http://{HOST}:{self.receiver_port}/hook",
                "--source",
                str(self.source_id),
                "--json",
            )
        )
        self.destination_id = destination["id"]
        with self.db() as conn:
            if self.args.max_concurrency:
                conn.execute(
                    "UPDATE webhooks_destination SET max_concurrency = %s WHERE id = %s",
                    [self.args.max_concurrency, self.destination_id],
                )
            self.max_concurrency = conn.execute(
                "SELECT max_concurrency FROM webhooks_destination WHERE id = %s", [self.destination_id]
            ).fetchone()[0]

    # ingest clients

    def signed_requests(self, prefix: str, count: int) -> list[tuple[str, bytes, str]]:
        import stripe

        text = FIXTURE.read_text()
        original = json.dumps(json.loads(text)["id"])
        before, _, after = text.partition(original)
        timestamp = int(time.time())
        requests = []
        for n in range(count):
            event_id = f"{prefix}{n:07d}"
            body = f'{before}"{event_id}"{after}'
            signature = stripe.WebhookSignature._compute_signature(f"{timestamp}.{body}", self.secret)
            requests.append((event_id, body.encode(), f"t={timestamp},v1={signature}"))
        return requests

    def post(self, body: bytes, signature: str) -> tuple[int, str | None]:
        status, event_id = self._post_once(body, signature)
        if status == 0:  # the kept-alive connection was closed by the server meanwhile: once more, anew
            status, event_id = self._post_once(body, signature)
        return status, event_id

    def _post_once(self, body: bytes, signature: str) -> tuple[int, str | None]:
        # One kept-alive connection per client thread, as a provider's sender keeps one.
        conn = getattr(self._client_connection, "conn", None)
        if conn is None:
            conn = self._client_connection.conn = http.client.HTTPConnection(HOST, self.web_port, timeout=10)
        try:
            conn.request(
                "POST",
                f"/in/{self.token}/",
                body=body,
                headers={"Content-Type": "application/json", "Stripe-Signature": signature},
            )
            response = conn.getresponse()
            payload = response.read()
            event_id = json.loads(payload).get("id") if response.status == 200 else None
            return response.status, event_id
        except (OSError, http.client.HTTPException, ValueError):
            conn.close()
            self._client_connection.conn = None
            return 0, None

    def drive(self, requests, rate: float | None) -> dict:
        """Post every request with ``--clients`` threads, paced at ``rate`` per second (None: as fast as possible)."""
        jobs: queue.Queue = queue.Queue()
        for index, request in enumerate(requests):
            jobs.put((index, request))
        acked: list[str] = []
        failures: dict[int, int] = {}
        late = [0]
        lock = threading.Lock()
        start = time.time() + 0.2
        deadline = time.monotonic() + (len(requests) / rate if rate else 0) + 300

        def client():
            while time.monotonic() < deadline:
                try:
                    index, (_, body, signature) = jobs.get_nowait()
                except queue.Empty:
                    return
                if rate:
                    due = start + index / rate
                    wait = due - time.time()
                    if wait > 0:
                        time.sleep(wait)
                    elif wait < -0.05:
                        with lock:
                            late[0] += 1
                status, event_id = self.post(body, signature)
                with lock:
                    if status == 200 and event_id:
                        acked.append(event_id)
                    else:
                        failures[status] = failures.get(status, 0) + 1

        threads = [threading.Thread(target=client, daemon=True) for _ in range(self.args.clients)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=max(1.0, deadline - time.monotonic()))
        elapsed = time.time() - start
        return {
            "sent": len(requests),
            "acked": acked,
            "failures": failures,
            "elapsed_s": round(elapsed, 2),
            "rate": round(len(requests) / elapsed, 1) if elapsed > 0 else None,
            "late_sends": late[0],
        }

    def wait_delivered(self, expected: int, baseline: int, timeout: float) -> bool:
        """Until the receiver has ``expected`` ids more than ``baseline``, or ``timeout``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if receiver_get(self.receiver_port, "/stats")["ids"] - baseline >= expected:
                return True
            time.sleep(0.1)
        return False

    def wait_idle(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        with self.db() as conn:
            while time.monotonic() < deadline:
                busy = conn.execute(
                    "SELECT (SELECT count(*) FROM webhooks_webhookevent WHERE status = 'received')"
                    " + (SELECT count(*) FROM webhooks_delivery WHERE status IN ('pending', 'in_flight'))"
                ).fetchone()[0]
                if busy == 0:
                    return
                time.sleep(0.2)

    def delivery_statuses(self, event_ids: list[str]) -> dict[str, int]:
        with self.db() as conn:
            rows = conn.execute(
                "SELECT status, count(*) FROM webhooks_delivery WHERE event_id = ANY(%s::uuid[]) GROUP BY status",
                [event_ids],
            ).fetchall()
        return {status: count for status, count in rows}

    def arrivals(self, event_ids: list[str]) -> tuple[dict[str, list], dict]:
        results = receiver_get(self.receiver_port, "/results", timeout=60)
        wanted = set(event_ids)
        return {key: value for key, value in results["seen"].items() if key in wanted}, results

    # phases

    def phase_throughput(self) -> dict:
        args = self.args
        prefix = f"evt_tp_{self.run_id}_"
        log(f"throughput: signing {args.events} Stripe events")
        requests = self.signed_requests(prefix, args.events)
        log(f"throughput: ingesting them with {args.clients} clients while no worker runs")
        ingest = self.drive(requests, rate=None)
        acked = ingest.pop("acked")
        log(f"throughput: {len(acked)} acknowledged at {ingest['rate']}/s; starting the worker")
        baseline = receiver_get(self.receiver_port, "/stats")["ids"]
        cpu_before = cpu_snapshot()
        started = time.time()
        self.start_worker()
        self.start_py_spy_later("throughput", delay=1)
        complete = self.wait_delivered(len(acked), baseline, args.grace + args.events / 100)
        finished = time.time()
        self.stop_py_spy()
        cpu_after = cpu_snapshot()
        cpu = cpu_by_component(cpu_before, cpu_after, self.sessions)
        worker_processes = cpu_by_pid(cpu_before, cpu_after, self.processes["worker"].pid)
        seen, raw = self.arrivals(acked)
        firsts = sorted(entry[1] for entry in seen.values())
        n = len(firsts)
        result = {
            "events": args.events,
            "ingest": ingest | {"acked": len(acked)},
            "delivered": n,
            "complete": complete,
            "duplicates": sum(1 for entry in seen.values() if entry[0] > 1),
            "extra_requests": sum(entry[0] - 1 for entry in seen.values()),
            "lost": len(acked) - n,
            "delivery_statuses": self.delivery_statuses(acked),
            "worker_start_to_first_s": round(firsts[0] - started, 2) if n else None,
            "worker_start_to_last_s": round(firsts[-1] - started, 2) if n else None,
        }
        if n:
            span = firsts[-1] - started
            result["rate_incl_startup"] = round(n / span, 1) if span > 0 else None
            first_to_last = firsts[-1] - firsts[0]
            result["rate_first_to_last"] = round((n - 1) / first_to_last, 1) if first_to_last > 0 else None
            lo, hi = firsts[int(n * 0.1)], firsts[min(n - 1, int(n * 0.9))]
            result["rate_sustained"] = round((int(n * 0.9) - int(n * 0.1)) / (hi - lo), 1) if hi > lo else None
            # Per-second arrivals, to show a ramp or stalls.
            buckets: dict[int, int] = {}
            for t in firsts:
                second = int(t - firsts[0])
                buckets[second] = buckets.get(second, 0) + 1
            result["per_second"] = [buckets.get(s, 0) for s in range(max(buckets) + 1)]
        with self.db() as conn:
            row = conn.execute(
                "SELECT extract(epoch from min(processed_at)), extract(epoch from max(processed_at))"
                " FROM webhooks_webhookevent WHERE id = ANY(%s::uuid[])",
                [acked],
            ).fetchone()
        if row[0] is not None:
            result["fan_out_done_after_s"] = round(float(row[1]) - started, 2)
        window = finished - started
        result["cpu_seconds"] = cpu
        result["cpu_window_s"] = round(window, 2)
        result["worker_cpu_by_process"] = worker_processes
        result["worker_cpu_ms_per_delivery"] = round(cpu.get("worker", 0) * 1000 / n, 2) if n else None
        result["postgres_cpu_ms_per_delivery"] = round(cpu.get("postgres", 0) * 1000 / n, 2) if n else None
        result["receiver_requests_total"] = raw["requests"]
        return result

    def start_py_spy_later(self, phase: str, delay: float) -> None:
        if not self.args.py_spy:
            return

        def later():
            # The pool children exist once the worker has booted.
            deadline = time.monotonic() + 60
            while len(self.worker_pids()) <= self.args.worker_concurrency and time.monotonic() < deadline:
                time.sleep(0.2)
            time.sleep(delay)
            self.start_py_spy(phase)

        threading.Thread(target=later, daemon=True).start()

    def phase_latency(self) -> dict:
        args = self.args
        if "worker" not in self.processes:
            self.start_worker()
            time.sleep(5)  # the worker boots before the clock starts
        self.wait_idle()
        count = int(args.rate * args.duration)
        prefix = f"evt_lat_{self.run_id}_"
        requests = self.signed_requests(prefix, count)
        baseline = receiver_get(self.receiver_port, "/stats")["ids"]
        log(f"latency: posting {count} events at {args.rate:g}/s for {args.duration:g} s")
        cpu_before = cpu_snapshot()
        self.start_py_spy("latency")
        ingest = self.drive(requests, rate=args.rate)
        self.stop_py_spy()
        cpu_after = cpu_snapshot()
        cpu = cpu_by_component(cpu_before, cpu_after, self.sessions)
        worker_processes = cpu_by_pid(cpu_before, cpu_after, self.processes["worker"].pid)
        acked = ingest.pop("acked")
        log(f"latency: {len(acked)} acknowledged at {ingest['rate']}/s; waiting for the last deliveries")
        complete = self.wait_delivered(len(acked), baseline, args.grace)
        seen, _ = self.arrivals(acked)
        with self.db() as conn:
            rows = conn.execute(
                "SELECT e.id::text, extract(epoch from e.received_at), extract(epoch from e.processed_at),"
                " extract(epoch from a.started_at)"
                " FROM webhooks_webhookevent e"
                " LEFT JOIN webhooks_delivery d ON d.event_id = e.id AND NOT d.is_replay"
                " LEFT JOIN webhooks_deliveryattempt a ON a.delivery_id = d.id AND a.attempt_number = 1"
                " WHERE e.id = ANY(%s::uuid[])",
                [acked],
            ).fetchall()
        total, fan_out, dispatch, send = [], [], [], []
        for event_id, received, processed, attempt in rows:
            entry = seen.get(event_id)
            if entry is None:
                continue
            arrived = entry[1]
            total.append((arrived - float(received)) * 1000)
            if processed is not None:
                fan_out.append((float(processed) - float(received)) * 1000)
                if attempt is not None:
                    dispatch.append((float(attempt) - float(processed)) * 1000)
                    send.append((arrived - float(attempt)) * 1000)

        def stats(values):
            return {
                "p50": _round(percentile(values, 50)),
                "p90": _round(percentile(values, 90)),
                "p99": _round(percentile(values, 99)),
                "max": _round(max(values) if values else None),
            }

        return {
            "rate_target": args.rate,
            "duration_s": args.duration,
            "ingest": ingest | {"acked": len(acked)},
            "delivered": len(seen),
            "complete": complete,
            "duplicates": sum(1 for entry in seen.values() if entry[0] > 1),
            "extra_requests": sum(entry[0] - 1 for entry in seen.values()),
            "lost": len(acked) - len(seen),
            "delivery_statuses": self.delivery_statuses(acked),
            "latency_ms": stats(total),
            "stages_ms": {
                "received_to_fanned_out": stats(fan_out),
                "fanned_out_to_attempt": stats(dispatch),
                "attempt_to_arrival": stats(send),
            },
            "cpu_seconds": cpu,
            "cpu_window_s": ingest["elapsed_s"],
            "worker_cpu_by_process": worker_processes,
        }


def _round(value):
    return None if value is None else round(value, 1)


# --- report -------------------------------------------------------------------------------------------------


def print_table(report: dict) -> None:
    config = report["config"]
    print(
        f"Hookline delivery benchmark — {config['cpus']} CPUs, worker -c {config['worker_concurrency']} prefork, "
        f"DELIVERY_THREADS={config['delivery_threads']}, destination max_concurrency={config['max_concurrency']}, "
        f"gunicorn -w {config['web_workers']}, receiver={config['receiver']}"
    )
    rows = []
    tp = report.get("throughput")
    if tp:
        rows += [
            (
                "throughput",
                "events ingested (acked) / ingest rate",
                f"{tp['ingest']['acked']} / {tp['ingest']['rate']}/s",
            ),
            ("", "delivered / duplicates / lost", f"{tp['delivered']} / {tp['duplicates']} / {tp['lost']}"),
            (
                "",
                "worker start → first / last arrival",
                f"{tp['worker_start_to_first_s']} s / {tp['worker_start_to_last_s']} s",
            ),
            ("", "deliveries/s incl. worker start-up", tp.get("rate_incl_startup")),
            ("", "deliveries/s first → last arrival", tp.get("rate_first_to_last")),
            (
                "",
                "deliveries/s sustained (p10–p90 arrivals)",
                f"{tp.get('rate_sustained')}   goal >= {GOAL_RATE:g}: "
                + ("MET" if (tp.get("rate_sustained") or 0) >= GOAL_RATE else "MISSED"),
            ),
            ("", "fan-out finished after worker start", f"{tp.get('fan_out_done_after_s')} s"),
            ("", f"CPU s over {tp['cpu_window_s']} s", _cpu_text(tp["cpu_seconds"])),
            ("", "worker CPU s by process", " / ".join(f"{v:g}" for v in tp["worker_cpu_by_process"])),
            (
                "",
                "CPU ms per delivery: worker / postgres",
                f"{tp['worker_cpu_ms_per_delivery']} / {tp['postgres_cpu_ms_per_delivery']}",
            ),
        ]
    lat = report.get("latency")
    if lat:
        s = lat["stages_ms"]
        rows += [
            (
                "latency",
                "target / achieved ingest rate",
                f"{lat['rate_target']:g}/s / {lat['ingest']['rate']}/s ({lat['ingest']['late_sends']} late sends)",
            ),
            (
                "",
                "acked / delivered / duplicates / lost",
                f"{lat['ingest']['acked']} / {lat['delivered']} / {lat['duplicates']} / {lat['lost']}",
            ),
            (
                "",
                "received → delivered p50 / p90 / p99 / max ms",
                _stats_text(lat["latency_ms"])
                + f"   goal p50 < {GOAL_P50_MS:g}: "
                + ("MET" if (lat["latency_ms"]["p50"] or 1e9) < GOAL_P50_MS else "MISSED"),
            ),
            ("", "  received → fanned out", _stats_text(s["received_to_fanned_out"])),
            ("", "  fanned out → attempt started", _stats_text(s["fanned_out_to_attempt"])),
            ("", "  attempt started → arrived", _stats_text(s["attempt_to_arrival"])),
            ("", f"CPU s over {lat['cpu_window_s']} s", _cpu_text(lat["cpu_seconds"])),
            ("", "worker CPU s by process", " / ".join(f"{v:g}" for v in lat["worker_cpu_by_process"])),
        ]
    width = max(len(r[1]) for r in rows) if rows else 10
    for phase, label, value in rows:
        print(f"{phase:<11} {label:<{width}}  {value}")


def _stats_text(stats: dict) -> str:
    return " / ".join("-" if stats[k] is None else f"{stats[k]:g}" for k in ("p50", "p90", "p99", "max"))


def _cpu_text(cpu: dict) -> str:
    return ", ".join(f"{name} {seconds:g}" for name, seconds in sorted(cpu.items(), key=lambda kv: -kv[1]))


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_receiver"]:
        port, mode = int(argv[1]), argv[2]
        (run_asyncio_receiver if mode == "asyncio" else run_threading_receiver)(port)
        return 0
    args = parse_args(argv)
    bench = Bench(args)
    previous = signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    report: dict = {}
    try:
        bench.prepare()
        bench.start_receiver()
        bench.start_web()
        report["config"] = {
            "cpus": os.cpu_count(),
            "loadavg_at_start": os.getloadavg()[0],
            "worker_concurrency": args.worker_concurrency,
            "delivery_threads": args.delivery_threads or int(bench.env().get("DELIVERY_THREADS", 32)),
            "max_concurrency": bench.max_concurrency,
            "web_workers": args.web_workers,
            "receiver": args.receiver,
            "log_dir": str(bench.log_dir),
        }
        if "throughput" in args.phases:
            report["throughput"] = bench.phase_throughput()
        if "latency" in args.phases:
            report["latency"] = bench.phase_latency()
    finally:
        bench.close()
        signal.signal(signal.SIGTERM, previous)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_table(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
