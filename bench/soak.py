"""Soak test: does Hookline leak under steady mixed load?

Starts, on 127.0.0.1 only and in a database of its own (created, then dropped at the end) and a
Redis DB, the production processes as the Procfile does: gunicorn with config/gunicorn.conf.py
(hence the host's ingest writer process), one Celery worker (prefork) and Celery beat, plus a
receiver of its own. Two Stripe sources; source A delivers to a flaky destination and to one that
is down (nothing listens on its port), source B to another flaky destination. The receiver answers
a fraction of requests with a 500 and some slowly (within the destination's timeout), so retries
(on a short DELIVERY_RETRY_SCHEDULE), dead deliveries and the circuit breaker all run.

For --duration seconds it posts signed Stripe webhooks (signed by the ``stripe`` package) at a
steady --rate, alternating the sources, and every --interval seconds samples, from /proc, the RSS
and open file descriptors of every process (gunicorn master and workers, the ingest writer, the
Celery worker and its pool children, beat), PostgreSQL's connections to the bench database, and
the Redis DB's key count and the memory its keys use. At the end it prints the first and last
samples, each process's growth after the warm-up and a verdict per resource (growth past a stated
threshold is flagged), the ingest answers, and whether every acknowledged event arrived exactly
once at each flaky destination (or is dead or still retrying, with no success seen).

    .venv/bin/python bench/soak.py [--duration 180] [--rate 100] [--interval 10] [--warmup 30] [--json]

Every process is started in a session of its own and its whole group is killed on exit, whatever
happens (Ctrl-C and SIGTERM included); the database is dropped and the Redis DB flushed. Exit status 1 when a verdict is
flagged or a delivery check fails.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import random
import signal
import sys
import tempfile
import threading
import time
import urllib.parse

import stripe
from delivery import Bench
from ingest import flush_redis, port_is_free
from stack import HOST, PYTHON, ROOT, json_line, log, receiver_get, wait_for_port

FIXTURE = ROOT / "webhooks" / "tests" / "fixtures" / "stripe" / "invoice.paid.json"
RETRY_SCHEDULE = "2,4,8"  # seconds: three retries within the run, then dead
DESTINATION_TIMEOUT = 10.0  # seconds; the receiver's slow answers (1 s) stay well inside it, on a busy machine too
MIB = 1024 * 1024
# Growth after the warm-up, from the first sample after it to the last, flagged past these.
THRESHOLDS = {
    "rss_bytes": 16 * MIB,  # per process
    "fds": 16,  # per process
    "pg_connections": 5,
    "redis_keys": 200,
    "redis_key_bytes": 8 * MIB,
}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=180.0, help="seconds of load")
    parser.add_argument("--rate", type=float, default=100.0, help="webhooks posted per second")
    parser.add_argument("--interval", type=float, default=10.0, help="seconds between samples")
    parser.add_argument("--warmup", type=float, default=30.0, help="seconds before the growth baseline sample")
    parser.add_argument("--settle", type=float, default=90.0, help="most seconds to wait for retries after the load")
    parser.add_argument("--fail-fraction", type=float, default=0.2, help="receiver answers 500 to this fraction")
    parser.add_argument("--slow-fraction", type=float, default=0.05, help="and slowly (1 s) to this fraction")
    parser.add_argument("--clients", type=int, default=8, help="ingest client threads")
    parser.add_argument(
        "--port-base",
        type=int,
        default=18800,
        help="web, receiver and the down destination: this port and the next two",
    )
    parser.add_argument("--web-workers", type=int, default=2)
    parser.add_argument("--worker-concurrency", type=int, default=2)
    parser.add_argument(
        "--database-url",
        default="postgres://postgres@localhost:5432/hookline_bench_soak",
        help="the soak's own database: created, and dropped at the end",
    )
    parser.add_argument("--redis-url", default="redis://localhost:6379/14", help="flushed at the start")
    parser.add_argument("--log-dir", default="", help="process logs (default: a temporary directory)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    args = parser.parse_args(argv)
    if not 0 < args.duration <= 3600 or not 0 < args.rate <= 1000 or args.interval <= 0 or args.warmup < 0:
        parser.error("0 < --duration <= 3600, 0 < --rate <= 1000, --interval > 0, --warmup >= 0")
    if args.warmup + args.interval > args.duration:
        parser.error("--duration must leave room for a sample after --warmup")
    for url in (args.database_url, args.redis_url):
        if urllib.parse.urlsplit(url).hostname not in ("localhost", "127.0.0.1"):
            parser.error(f"{url}: the soak only talks to this machine")
    # What the delivery bench's Bench reads of its arguments.
    args.delivery_threads = 0
    args.max_concurrency = 0
    args.py_spy = None
    args.receiver = "threading"
    return args


# --- the receiver (its own process: `soak.py _receiver PORT FAIL SLOW`) ----------------------------------


def run_receiver(port: int, fail_fraction: float, slow_fraction: float) -> None:
    """Counts, per path and webhook-id, the 200s and the 500s it answered."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    lock = threading.Lock()
    answers: dict[str, dict[str, list[int]]] = {}  # path -> webhook-id -> [200s, 500s]

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self):
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            draw = random.random()
            failing = draw < fail_fraction
            if not failing and draw < fail_fraction + slow_fraction:
                time.sleep(1.0)
            with lock:
                entry = answers.setdefault(self.path, {}).setdefault(self.headers.get("webhook-id") or "", [0, 0])
                entry[1 if failing else 0] += 1
            self._answer(500 if failing else 200, b"no" if failing else b"ok")

        def do_GET(self):
            with lock:
                body = json.dumps(answers).encode()
            self._answer(200, body)

        def _answer(self, status: int, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    class Server(ThreadingHTTPServer):
        daemon_threads = True
        request_queue_size = 1024

    server = Server((HOST, port), Handler)
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    server.serve_forever(poll_interval=0.5)


# --- sampling from /proc -------------------------------------------------------------------------------


def proc_status(pid: int) -> dict | None:
    """RSS (bytes), open descriptors, command line and parent of one process; None once it has gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            fields = dict(line.split(":", 1) for line in f if ":" in line)
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
        targets = []
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(FileNotFoundError):
                targets.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    rss_kib = int(fields.get("VmRSS", "0 kB").split()[0])
    return {"rss_bytes": rss_kib * 1024, "fds": len(targets), "targets": targets, "cmdline": cmdline}


def tcp_sockets() -> dict[str, tuple[int, int]]:
    """socket inode -> (local port, remote port) of this network namespace's TCP sockets."""
    sockets = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as f:
            for line in list(f)[1:]:
                fields = line.split()
                local, remote, inode = fields[1], fields[2], fields[9]
                sockets[inode] = (int(local.rsplit(":", 1)[1], 16), int(remote.rsplit(":", 1)[1], 16))
    return sockets


def fd_kinds(targets: list[str], sockets: dict[str, tuple[int, int]], ports: dict[int, str]) -> dict[str, int]:
    """Open descriptors by what they are: TCP sockets by the named port at either end, else by kind."""
    kinds: dict[str, int] = {}
    for target in targets:
        if target.startswith("socket:["):
            ends = sockets.get(target[8:-1])
            if ends is None:
                kind = "socket (unix or closed)"
            else:
                kind = next((f"tcp {ports[p]}" for p in (ends[1], ends[0]) if p in ports), "tcp other")
        elif target.startswith(("pipe:", "anon_inode:")):
            kind = target.split(":", 1)[0].split("[")[0]
        else:
            kind = "file"
        kinds[kind] = kinds.get(kind, 0) + 1
    return dict(sorted(kinds.items()))


def session_members(session: int) -> list[int]:
    members = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as f:
                text = f.read()
        except OSError:
            continue
        if int(text[text.rindex(")") + 2 :].split()[3]) == session:
            members.append(int(entry.name))
    return sorted(members)


def role_of(component: str, pid: int, leader: int, cmdline: str) -> str:
    """A name for a process that stays the same across samples: what it is and its pid."""
    if component == "web":
        if pid == leader:
            return f"gunicorn master {pid}"
        if "run_ingest_writer" in cmdline:
            return f"ingest writer {pid}"
        return f"gunicorn worker {pid}"
    if component == "worker":
        return f"celery worker {pid}" if pid == leader else f"celery pool child {pid}"
    return f"{component} {pid}"


def growth(first: dict, last: dict) -> dict:
    """Per process present in both samples: the change of each figure; and which came and went."""
    changes = {
        role: {key: last[role][key] - first[role][key] for key in ("rss_bytes", "fds")}
        for role in first
        if role in last
    }
    return {
        "by_process": changes,
        "gone": sorted(set(first) - set(last)),
        "new": sorted(set(last) - set(first)),
    }


def verdicts(first: dict, middle: dict, last: dict, elapsed: float, thresholds: dict = THRESHOLDS) -> dict:
    """One verdict per resource, from the sample after the warm-up (``first``) to the last one: growth
    past the threshold is flagged, unless it levelled off (under a quarter of the threshold from the
    ``middle`` sample, half-way, to the last), as a pool that filled late does."""
    change = growth(first["processes"], last["processes"])
    late = growth(middle["processes"], last["processes"])["by_process"]
    minutes = max(elapsed, 1e-9) / 60
    result = {}
    for key in ("rss_bytes", "fds"):
        grown = {
            role: {
                "growth": values[key],
                "per_minute": round(values[key] / minutes, 1),
                "second_half": late.get(role, {}).get(key),
            }
            for role, values in change["by_process"].items()
            if values[key] > thresholds[key]
        }
        flagged = {
            role: v for role, v in grown.items() if v["second_half"] is None or v["second_half"] > thresholds[key] / 4
        }
        result[key] = {
            "threshold": thresholds[key],
            "flagged": flagged,
            "levelled_off": {role: v for role, v in grown.items() if role not in flagged},
            "verdict": "GROWS" if flagged else "ok",
        }
    for key in ("pg_connections", "redis_keys", "redis_key_bytes"):
        delta, second_half = last[key] - first[key], last[key] - middle[key]
        result[key] = {
            "threshold": thresholds[key],
            "growth": delta,
            "per_minute": round(delta / minutes, 1),
            "second_half": second_half,
            "verdict": "GROWS" if delta > thresholds[key] and second_half > thresholds[key] / 4 else "ok",
        }
    if change["gone"] or change["new"]:
        # A restarted process starts small again: its growth is not in the figures above.
        result["replaced_processes"] = {"gone": change["gone"], "new": change["new"]}
    return result


def check_arrivals(acked: list[str], answers: dict[str, list[int]], statuses: dict[str, str]) -> dict:
    """For one flaky destination: each acknowledged event's 200s at the receiver against its delivery's
    status. Exactly one 200 and succeeded is right; none and dead or still retrying is expected, as is
    a send not made yet (a backlog), or one in flight whose 200 is not recorded yet."""
    unrecorded: dict[str, int] = {}
    counts = dict.fromkeys(
        ("delivered_once", "duplicates", "dead", "retrying", "not_sent_yet", "in_flight", "lost", "success_unrecorded"),
        0,
    )
    for event_id in acked:
        ok, failed = answers.get(event_id, [0, 0])
        status = statuses.get(event_id)
        if ok > 1:
            counts["duplicates"] += 1
        elif status == "in_flight":
            counts["in_flight"] += 1
        elif ok == 1 and status == "succeeded":
            counts["delivered_once"] += 1
        elif ok == 1:
            # A 200 the sender did not take for one (its timeout came first): it will be sent again.
            counts["success_unrecorded"] += 1
            unrecorded[status or "none"] = unrecorded.get(status or "none", 0) + 1
        elif status == "dead":
            counts["dead"] += 1
        elif status == "pending":
            counts["retrying" if failed else "not_sent_yet"] += 1
        elif status == "received":  # the event is not fanned out yet
            counts["not_sent_yet"] += 1
        else:
            counts["lost"] += 1  # no delivery at all, or succeeded with no 200 seen
    counts["success_unrecorded_statuses"] = unrecorded
    counts["ok"] = counts["duplicates"] == counts["lost"] == counts["success_unrecorded"] == 0
    return counts


# --- the soak --------------------------------------------------------------------------------------------


class Soak(Bench):
    def __init__(self, args):
        args.log_dir = args.log_dir or tempfile.mkdtemp(prefix="hookline-soak-")
        super().__init__(args)
        self.queue = "hookline-bench-soak"
        base = args.port_base
        self.web_port, self.receiver_port, self.down_port = base, base + 1, base + 2  # nothing listens on the last
        for port in (self.web_port, self.receiver_port, self.down_port):
            if not port_is_free(port):
                raise RuntimeError(f"port {port} on {HOST} is in use; pass --port-base")
        self.sources: list[dict] = []
        self.flaky: dict[str, int] = {}  # receiver path -> destination id
        self.samples: list[dict] = []
        self.stopping = threading.Event()
        self._connections = threading.local()

    def env(self) -> dict[str, str]:
        env = super().env()
        env.update(
            DELIVERY_RETRY_SCHEDULE=RETRY_SCHEDULE,
            # Twenty failures in a row over 10 s pause the down destination within the run.
            CIRCUIT_BREAKER_PERIOD_SECONDS="10",
            STUCK_EVENT_SECONDS="10",
        )
        return env

    def start_receiver(self) -> None:
        command = [PYTHON, os.path.abspath(__file__), "_receiver", str(self.receiver_port)]
        command += [str(self.args.fail_fraction), str(self.args.slow_fraction)]
        wait_for_port(self.receiver_port, self.start("receiver", command))

    def start_web(self) -> None:
        # As the Procfile runs it: with config/gunicorn.conf.py, so with the host's ingest writer process.
        gunicorn = [PYTHON, "-m", "gunicorn", "config.wsgi", "--config", str(ROOT / "config" / "gunicorn.conf.py")]
        gunicorn += ["-b", f"{HOST}:{self.web_port}", "-w", str(self.args.web_workers), "--backlog", "2048"]
        gunicorn += ["--graceful-timeout", "5", "--worker-class", "gthread", "--threads", "8", "--log-level", "warning"]
        wait_for_port(self.web_port, self.start("web", gunicorn))

    def prepare(self) -> None:
        super().prepare()  # database, Redis, migrations, organization; its own source and destination unused
        with self.db() as conn:
            conn.execute("UPDATE webhooks_destination SET is_active = false")
        self.manage("install_periodic_tasks")
        for name, paths in (("A", ["/a"]), ("B", ["/b"])):
            secret = f"whsec_soak_{self.run_id}_{name}"
            command = ["create_source", "--org", "bench", "--provider", "stripe", "--secret", secret, "--json"]
            source = json_line(self.manage(*command, "--name", f"soak {name} {self.run_id}"))
            self.sources.append({"name": name, "token": source["token"], "secret": secret})
            for path in paths:
                self.flaky[path] = self.create_destination(
                    f"flaky {path}", f"{HOST}:{self.receiver_port}{path}", source
                )
            if name == "A":
                self.down_id = self.create_destination("down", f"{HOST}:{self.down_port}/down", source)

    def create_destination(self, name: str, address: str, source: dict) -> int:
        command = ["create_destination", "--org", "bench", "--name", f"{name} {self.run_id}", "--json"]
        command += ["--url", f"http://{address}", "--source", str(source["id"]), "--timeout", str(DESTINATION_TIMEOUT)]
        return json_line(self.manage(*command))["id"]

    def drop_database(self) -> None:
        import psycopg
        from psycopg import sql

        parts = urllib.parse.urlsplit(self.args.database_url)
        admin_url = urllib.parse.urlunsplit(parts._replace(path="/postgres"))
        with psycopg.connect(admin_url, autocommit=True, connect_timeout=5) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(parts.path[1:])))

    # load

    def signed(self, source: dict, event_id: str) -> tuple[bytes, str]:
        body = self.template[0] + event_id + self.template[1]
        timestamp = int(time.time())
        signature = stripe.WebhookSignature._compute_signature(f"{timestamp}.{body}", source["secret"])
        return body.encode(), f"t={timestamp},v1={signature}"

    def post(self, source: dict, event_id: str) -> tuple[int, str | None]:
        body, signature = self.signed(source, event_id)
        for _ in range(2):  # a kept-alive connection the server closed meanwhile: once more, anew
            conn = getattr(self._connections, "conn", None)
            if conn is None:
                conn = self._connections.conn = http.client.HTTPConnection(HOST, self.web_port, timeout=10)
            try:
                conn.request(
                    "POST",
                    f"/in/{source['token']}/",
                    body=body,
                    headers={"Content-Type": "application/json", "Stripe-Signature": signature},
                )
                response = conn.getresponse()
                payload = response.read()
                return response.status, (json.loads(payload).get("id") if response.status == 200 else None)
            except (OSError, http.client.HTTPException, ValueError):
                conn.close()
                self._connections.conn = None
        return 0, None

    def load(self) -> dict:
        """Posts at a steady rate for --duration seconds, alternating the sources."""
        text = FIXTURE.read_text()
        before, _, after = text.partition(json.dumps(json.loads(text)["id"]))
        self.template = (before + '"', '"' + after)
        total = int(self.args.rate * self.args.duration)
        next_index = iter(range(total))
        lock = threading.Lock()
        acked: dict[str, list[str]] = {source["name"]: [] for source in self.sources}
        answers: dict[int, int] = {}
        late = [0]
        start = time.time() + 0.2

        def client():
            while not self.stopping.is_set():
                with lock:
                    index = next(next_index, None)
                if index is None:
                    return
                wait = start + index / self.args.rate - time.time()
                if wait > 0:
                    time.sleep(wait)
                elif wait < -1:
                    with lock:
                        late[0] += 1
                source = self.sources[index % len(self.sources)]
                status, event_id = self.post(source, f"evt_soak_{self.run_id}_{index:08d}")
                with lock:
                    answers[status] = answers.get(status, 0) + 1
                    if status == 200 and event_id:
                        acked[source["name"]].append(event_id)

        threads = [threading.Thread(target=client, daemon=True) for _ in range(self.args.clients)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        elapsed = time.time() - start
        return {
            "sent": sum(answers.values()),
            "answers": {str(status): count for status, count in sorted(answers.items())},
            "non_2xx": sum(count for status, count in answers.items() if not 200 <= status < 300),
            "acked": acked,
            "rate": round(sum(answers.values()) / elapsed, 1),
            "late_over_1s": late[0],
        }

    # sampling

    def sample(self, started: float) -> dict:
        import redis

        processes = {}
        sockets = tcp_sockets()
        ports = {5432: "postgres", 6379: "redis", self.web_port: "web", self.receiver_port: "receiver"}
        for name in ("web", "worker", "beat"):
            leader = self.processes[name].pid
            for pid in session_members(leader):
                status = proc_status(pid)
                if status is not None:
                    processes[role_of(name, pid, leader, status["cmdline"])] = {
                        "rss_bytes": status["rss_bytes"],
                        "fds": status["fds"],
                        "fd_kinds": fd_kinds(status["targets"], sockets, ports),
                    }
        with self.db() as conn:
            pg_connections = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
            ).fetchone()[0]
        client = redis.Redis.from_url(self.args.redis_url, socket_timeout=5)
        try:
            keys = client.dbsize()
            # used_memory is the whole server's (other DBs, other users): the DB's own keys are summed instead.
            key_bytes = sum(client.memory_usage(key) or 0 for key in client.scan_iter(count=1000))
            used_memory = client.info("memory")["used_memory"]
        finally:
            client.close()
        return {
            "t": round(time.time() - started, 1),
            "processes": processes,
            "pg_connections": pg_connections,
            "redis_keys": keys,
            "redis_key_bytes": key_bytes,
            "redis_server_used_memory": used_memory,
        }

    def sampler(self, started: float) -> None:
        next_at = started
        while not self.stopping.is_set():
            try:
                self.samples.append(self.sample(started))
            except Exception as exc:  # a sample that failed is missing, the soak goes on
                log(f"sample failed: {exc!r}")
            next_at += self.args.interval
            self.stopping.wait(max(0.0, next_at - time.time()))

    # checks

    def settle(self) -> dict:
        """Until no acknowledged event waits to be fanned out and no flaky delivery is pending, or --settle."""
        started = time.monotonic()
        busy = None
        with self.db() as conn:
            while time.monotonic() < started + self.args.settle:
                busy = conn.execute(
                    "SELECT (SELECT count(*) FROM webhooks_webhookevent WHERE status = 'received')"
                    " + (SELECT count(*) FROM webhooks_delivery WHERE destination_id = ANY(%s)"
                    "    AND status IN ('pending', 'in_flight'))",
                    [list(self.flaky.values())],
                ).fetchone()[0]
                if busy == 0:
                    break
                time.sleep(1)
        return {"settled": busy == 0, "waited_s": round(time.monotonic() - started, 1), "still_busy": busy}

    def statuses(self, destination_id: int, acked: list[str]) -> dict[str, str]:
        """Each acknowledged event's delivery status; "received" for an event not fanned out yet."""
        with self.db() as conn:
            rows = conn.execute(
                "SELECT e.id::text, coalesce(d.status, CASE WHEN e.status = 'received' THEN 'received' END)"
                " FROM webhooks_webhookevent e LEFT JOIN webhooks_delivery d"
                "  ON d.event_id = e.id AND d.destination_id = %s AND NOT d.is_replay"
                " WHERE e.id = ANY(%s::uuid[])",
                [destination_id, acked],
            ).fetchall()
        return {event_id: status for event_id, status in rows if status is not None}

    def deliveries_check(self, acked: dict[str, list[str]]) -> dict:
        received = receiver_get(self.receiver_port, "/", timeout=60)
        result = {}
        for path, source_name in (("/a", "A"), ("/b", "B")):
            result[f"flaky {path}"] = check_arrivals(
                acked[source_name], received.get(path, {}), self.statuses(self.flaky[path], acked[source_name])
            )
        with self.db() as conn:
            down = dict(
                conn.execute(
                    "SELECT status, count(*) FROM webhooks_delivery WHERE destination_id = %s GROUP BY status",
                    [self.down_id],
                ).fetchall()
            )
            paused = conn.execute(
                "SELECT paused_at IS NOT NULL FROM webhooks_destination WHERE id = %s", [self.down_id]
            ).fetchone()[0]
            attempts = conn.execute(
                "SELECT count(*) FROM webhooks_deliveryattempt a JOIN webhooks_delivery d ON d.id = a.delivery_id"
                " WHERE d.destination_id = %s",
                [self.down_id],
            ).fetchone()[0]
        result["down"] = {
            "statuses": down,
            "attempts": attempts,
            "paused_by_circuit_breaker": paused,
            "ok": "succeeded" not in down and sum(down.values()) == len(acked["A"]),
        }
        return result

    def run(self) -> dict:
        args = self.args
        self.prepare()
        self.start_receiver()
        self.start_web()
        self.start_worker()
        time.sleep(5)  # the worker and beat boot before the clock starts
        loadavg = os.getloadavg()
        log(f"soak: {args.rate:g}/s for {args.duration:g} s, a sample every {args.interval:g} s")
        started = time.time()
        sampler = threading.Thread(target=self.sampler, args=(started,), daemon=True)
        sampler.start()
        ingest = self.load()
        self.stopping.set()
        sampler.join(timeout=30)
        log(f"soak: load done ({ingest['sent']} sent, {ingest['non_2xx']} non-2xx); letting retries settle")
        acked = ingest.pop("acked")
        settle = self.settle()
        # Nothing may move between reading the receiver's answers and the deliveries' statuses: a send
        # finishing in between would look like a success with no 200 seen. A send cut short by the kill
        # stays in flight, which the check expects.
        self.stop("worker", signal.SIGKILL)
        self.stop("beat")
        deliveries = self.deliveries_check(acked)
        after_warmup = next((s for s in self.samples if s["t"] >= args.warmup), self.samples[-1])
        last = self.samples[-1]
        halfway = (after_warmup["t"] + last["t"]) / 2
        middle = next(s for s in self.samples if s["t"] >= halfway)
        return {
            "config": {
                "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(started)),
                "cpus": os.cpu_count(),
                "loadavg_at_start": [round(v, 2) for v in loadavg],
                "loadavg_at_end": [round(v, 2) for v in os.getloadavg()],
                "duration_s": args.duration,
                "rate": args.rate,
                "interval_s": args.interval,
                "warmup_s": args.warmup,
                "fail_fraction": args.fail_fraction,
                "slow_fraction": args.slow_fraction,
                "retry_schedule": RETRY_SCHEDULE,
                "web_workers": args.web_workers,
                "worker_concurrency": args.worker_concurrency,
                "log_dir": str(self.log_dir),
            },
            "ingest": ingest | {"acked": sum(len(ids) for ids in acked.values())},
            "settle": settle,
            "deliveries": deliveries,
            "first_sample": self.samples[0],
            "after_warmup_sample": after_warmup,
            "last_sample": last,
            "growth_after_warmup": growth(after_warmup["processes"], last["processes"])["by_process"],
            "verdicts": verdicts(after_warmup, middle, last, last["t"] - after_warmup["t"]),
            "samples": self.samples,
        }


def passed(report: dict) -> bool:
    verdict_ok = all(v.get("verdict", "ok") == "ok" for v in report["verdicts"].values())
    return verdict_ok and report["ingest"]["non_2xx"] == 0 and all(d["ok"] for d in report["deliveries"].values())


# --- report ---------------------------------------------------------------------------------------------


def print_table(report: dict) -> None:
    c = report["config"]
    print(
        f"Hookline soak, {c['date']}: {c['rate']:g}/s for {c['duration_s']:g} s, {c['cpus']} CPUs, load average"
        f" {c['loadavg_at_start'][0]} at start, {c['loadavg_at_end'][0]} at end; receiver fails"
        f" {c['fail_fraction']:.0%}, slow {c['slow_fraction']:.0%}; retries {c['retry_schedule']} s"
    )
    i = report["ingest"]
    print(f"ingest: {i['sent']} sent at {i['rate']}/s, answers {i['answers']}, non-2xx {i['non_2xx']}")
    print(f"after the load: {report['settle']}")
    for name, d in report["deliveries"].items():
        print(f"  {name}: " + ", ".join(f"{k} {v}" for k, v in d.items()))
    first, base, last = report["first_sample"], report["after_warmup_sample"], report["last_sample"]
    print(f"\n{'process':<28} {'RSS MiB first':>13} {'after warm-up':>13} {'last':>8} {'growth':>8}  fds")
    for role in sorted(set(first["processes"]) | set(last["processes"])):
        values = [s["processes"].get(role) for s in (first, base, last)]
        rss = ["-" if v is None else f"{v['rss_bytes'] / MIB:.1f}" for v in values]
        fds = "/".join("-" if v is None else str(v["fds"]) for v in values)
        change = report["growth_after_warmup"].get(role)
        grown = "-" if change is None else f"{change['rss_bytes'] / MIB:+.1f}"
        print(f"{role:<28} {rss[0]:>13} {rss[1]:>13} {rss[2]:>8} {grown:>8}  {fds}")
    print("\nopen descriptors by kind, after warm-up -> last:")
    for role in sorted(set(base["processes"]) & set(last["processes"])):
        before, after = base["processes"][role].get("fd_kinds", {}), last["processes"][role].get("fd_kinds", {})
        kinds = sorted(set(before) | set(after))
        print(f"  {role:<26} " + ", ".join(f"{k} {before.get(k, 0)}->{after.get(k, 0)}" for k in kinds))
    for key in ("pg_connections", "redis_keys", "redis_key_bytes", "redis_server_used_memory"):
        print(f"{key:<28} {first[key]:>13} {base[key]:>13} {last[key]:>8}")
    print(f"\nverdicts (after warm-up: t={base['t']} s to t={last['t']} s):")
    for key, v in report["verdicts"].items():
        print(f"  {key}: " + json.dumps(v))
    print("PASS" if passed(report) else "FLAGGED")


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_receiver"]:
        run_receiver(int(argv[1]), float(argv[2]), float(argv[3]))
        return 0
    args = parse_args(argv)
    soak = Soak(args)
    previous = signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        report = soak.run()
    finally:
        soak.stopping.set()
        soak.close()  # every process group, SIGKILL to what lingers
        try:
            soak.drop_database()
            flush_redis(args.redis_url)  # the queues' leftovers: deliveries of a database that is gone
        except Exception as exc:
            log(f"could not drop the soak database or flush its Redis DB: {exc!r}")
        signal.signal(signal.SIGTERM, previous)
    if args.json:
        print(json.dumps(report))
    else:
        print_table(report)
    return 0 if passed(report) else 1


if __name__ == "__main__":
    sys.exit(main())
