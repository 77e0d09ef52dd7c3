"""Keep-alive race benchmark: signed Stripe webhooks through HAProxy reusing idle connections to gunicorn.

A platform router (Heroku's Router 2.0, an AWS load balancer) keeps its connections to the web
process open between requests and sends the next request, whoever it comes from, on one of them.
If gunicorn closes such a connection for being idle just as the router sends a request on it, the
router answers that request 502 itself and does not send it again (it may already have reached the
application). This script measures how often that happens for a given WEB_KEEPALIVE_SECONDS:

  gunicorn    as the Procfile starts it (config/gunicorn.conf.py, gthread, 2 workers x 8 threads),
              on PostgreSQL and Redis, with WEB_KEEPALIVE_SECONDS=--keepalive
  HAProxy     HTTP mode in front of it, as a router: `http-reuse always` (any request may go on any
              idle server connection), idle server connections kept ~90 s (`pool-purge-delay`), and
              retries only of a connection that could not be made (`retry-on conn-failure`: a
              request already sent is never sent again); --routers proxies ("router nodes"), each
              with its own pool of idle connections, one per client by default
  clients     --clients threads, each posting a signed Stripe event through its router node (on a
              new connection each time, or its kept-alive one with --client-keepalive), then
              waiting a random --gap-min..--gap-max seconds, for --duration s

It prints one JSON object: answers by status (2xx, HAProxy's own 502, others, client errors), the
HAProxy termination states of the failed ones, how many server connections HAProxy opened and
reused, and what the database holds: every event id is unique, so an event stored whose request was
answered 502 is one the provider would send again (a duplicate on retry), and a 2xx not stored would
be a lost event.

Needs HAProxy (Debian: `apt-get install -y haproxy`). Only 127.0.0.1 is contacted; the run is
bounded by --duration; HAProxy and gunicorn are stopped and the benchmark's database dropped on exit,
Ctrl-C and SIGTERM included.

    .venv/bin/python bench/keepalive_race.py --keepalive 2 [--duration 60] [--clients 16]
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import csv
import http.client
import io
import json
import os
import random
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from pathlib import Path

import stripe
from ingest import BENCH_FERNET_KEY, GUNICORN, body_template, flush_redis, port_is_free, wait_until_up
from stack import HOST, ROOT, json_line, log, manage, production_env, stop_group, wait_for_port

# What HAProxy stands in for: Heroku's Router 2.0 closes an idle connection to a dyno after 90 s,
# an AWS ALB after 60 s. HAProxy has no per-connection idle timeout for its server pool;
# pool-purge-delay closes idle server connections (half of them per period) this often.
ROUTER_IDLE_SECONDS = 90
# Heroku's router gives the application 30 s to start its answer.
ROUTER_SERVER_TIMEOUT_SECONDS = 30

# One router node: its own pool of idle connections to gunicorn.
HAPROXY_ROUTER = """\
listen router{number}
    bind {host}:{port}
    # Any request, a client's first included, may go on any idle connection to gunicorn.
    http-reuse always
    # Retry only a connection that could not be made: nothing was sent. A request sent on a
    # connection that then failed is answered 502, never sent again.
    retry-on conn-failure
    retries 3
    server gunicorn {host}:{app_port} pool-purge-delay {idle}s
"""

HAPROXY_CONFIG = """\
global
    log stdout format raw local0
    maxconn 1000

defaults
    mode http
    log global
    log-format "status=%ST term=%tsc retries=%rc tw_tc_tr=%Tw/%Tc/%Tr req=%HM"
    timeout connect 5s
    timeout client 60s
    timeout http-request 15s
    timeout http-keep-alive 60s
    timeout server {server_timeout}s
    # A connection gunicorn has half-closed is held no longer than an idle one.
    timeout server-fin {idle}s

{routers}
listen stats
    bind {host}:{stats_port}
    stats enable
    stats uri /stats
"""


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keepalive", type=int, required=True, help="WEB_KEEPALIVE_SECONDS for gunicorn")
    parser.add_argument("--duration", type=float, default=60, help="seconds of traffic (at most 240)")
    parser.add_argument("--clients", type=int, default=16, help="senders, each a thread")
    # gunicorn closes an idle connection on its main loop's next turn after `keepalive` (a turn
    # at least once a second): between keepalive and keepalive + 1 s after its last answer.
    # The default gaps straddle that window for gunicorn's old 2 s; keep them the same when
    # comparing settings, so that only gunicorn's keep-alive differs between runs.
    parser.add_argument("--gap-min", type=float, default=1.8, help="shortest wait between a client's requests (s)")
    parser.add_argument("--gap-max", type=float, default=3.0, help="longest wait between a client's requests (s)")
    # A router is a fleet of nodes, each with its own connections to the dyno; the requests of a
    # sparse sender reach the dyno over a node's connection that was idle since that node's last one.
    # One HAProxy proxy ("router node", its own idle pool) per client by default; --routers 1
    # sends every client through one shared pool.
    parser.add_argument("--routers", type=int, default=0, help="router nodes (own idle pools); 0: one per client")
    parser.add_argument(
        "--port", type=int, default=8780, help="gunicorn's port; the routers' are the next ones, then HAProxy's stats"
    )
    # HAProxy answers a request it could not get an answer for with its own 502 when the request
    # was the first of its client connection; after that, it closes the client connection without
    # an answer instead, as a keep-alive server would, for the client to send it again. Providers'
    # senders are counted both ways; a new connection per webhook is the default.
    parser.add_argument(
        "--client-keepalive", action="store_true", help="each client keeps its connection to HAProxy open"
    )
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument(
        "--database-url",
        default="postgres://postgres@localhost:5432/hookline_bench_keepalive",
        help="a database this run creates and drops (refused if it exists)",
    )
    parser.add_argument("--redis-url", default="redis://localhost:6379/14", help="flushed before and after")
    parser.add_argument("--seed", type=int, default=None, help="seed of the clients' gaps")
    args = parser.parse_args(argv)
    if args.keepalive < 0 or args.clients < 1 or args.routers < 0 or not 0 < args.gap_min <= args.gap_max:
        parser.error("--keepalive >= 0, --clients >= 1, --routers >= 0 and 0 < --gap-min <= --gap-max")
    args.routers = args.routers or args.clients
    if not 0 < args.duration <= 240:
        parser.error("--duration must be above 0 and at most 240 s")
    if shutil.which("haproxy") is None:
        parser.error("haproxy is not installed: apt-get install -y haproxy (Debian/Ubuntu)")
    return args


def server_env(args) -> dict[str, str]:
    env = production_env(
        database_url=args.database_url,
        redis_url=args.redis_url,
        secret_key="bench-only-secret-key-" + "x" * 32,
        fernet_key=BENCH_FERNET_KEY,
        web_port=args.port,
        queue="hookline-bench-keepalive",
    )
    env["WEB_KEEPALIVE_SECONDS"] = str(args.keepalive)
    return env


# --- database and redis -----------------------------------------------------------------------------


def _admin_url(database_url: str) -> tuple[str, str]:
    parts = urllib.parse.urlsplit(database_url)
    return urllib.parse.urlunsplit(parts._replace(path="/postgres")), parts.path.lstrip("/")


def create_database(database_url: str) -> None:
    import psycopg
    from psycopg import sql

    admin_url, name = _admin_url(database_url)
    with psycopg.connect(admin_url, autocommit=True, connect_timeout=5) as conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone() is not None:
            raise RuntimeError(f"database {name} exists (an earlier run's?): drop it or pass another --database-url")
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


def drop_database(database_url: str) -> None:
    import psycopg
    from psycopg import sql

    admin_url, name = _admin_url(database_url)
    with psycopg.connect(admin_url, autocommit=True, connect_timeout=5) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def prepare_tenant(env: dict[str, str], run_id: str) -> tuple[str, str]:
    """Migrate, create an organization and a Stripe source; returns (ingest token, signing secret)."""
    manage(env, "migrate", "--noinput")
    manage(env, "create_organization", "--name", "Bench", "--slug", "bench", "--owner-email", "bench@example.com")
    secret = f"whsec_keepalive_{run_id}"
    out = manage(
        env,
        "create_source",
        *("--org", "bench", "--provider", "stripe", "--name", "keep-alive", "--secret", secret, "--json"),
    )
    return json_line(out)["token"], secret


def stored_events(database_url: str, id_prefix: str) -> dict[str, int]:
    """Each stored event id of this run, with how many times it arrived again after the first."""
    import psycopg

    with psycopg.connect(database_url, autocommit=True, connect_timeout=5) as conn:
        rows = conn.execute(
            "SELECT provider_event_id, duplicate_count FROM webhooks_webhookevent WHERE provider_event_id LIKE %s",
            [id_prefix + "%"],
        ).fetchall()
    return {event_id: duplicates for event_id, duplicates in rows}


# --- processes -----------------------------------------------------------------------------------------


def start_gunicorn(args, log_path: Path) -> subprocess.Popen:
    # The Procfile's web command, on 127.0.0.1; the access log is left out (one line per request).
    command = [
        GUNICORN,
        "config.wsgi",
        "--config",
        str(ROOT / "config" / "gunicorn.conf.py"),
        "--bind",
        f"{HOST}:{args.port}",
        "--worker-class",
        "gthread",
        "--workers",
        str(args.workers),
        "--threads",
        str(args.threads),
        "--error-logfile",
        str(log_path),
        "--log-level",
        "warning",
    ]
    with open(log_path, "ab") as log_file:
        return subprocess.Popen(
            command, cwd=ROOT, env=server_env(args), stdout=log_file, stderr=log_file, start_new_session=True
        )


def router_port(args, number: int) -> int:
    return args.port + 1 + number


def stats_port(args) -> int:
    return args.port + 1 + args.routers


def start_haproxy(args, workdir: Path) -> subprocess.Popen:
    config_path = workdir / "haproxy.cfg"
    routers = "\n".join(
        HAPROXY_ROUTER.format(
            number=number, host=HOST, port=router_port(args, number), app_port=args.port, idle=ROUTER_IDLE_SECONDS
        )
        for number in range(args.routers)
    )
    config_path.write_text(
        HAPROXY_CONFIG.format(
            host=HOST,
            routers=routers,
            stats_port=stats_port(args),
            idle=ROUTER_IDLE_SECONDS,
            server_timeout=ROUTER_SERVER_TIMEOUT_SECONDS,
        )
    )
    check = subprocess.run(["haproxy", "-c", "-f", str(config_path)], capture_output=True, text=True)
    if check.returncode != 0:
        raise RuntimeError(f"haproxy refused its configuration:\n{check.stdout}{check.stderr}")
    log_file = open(workdir / "haproxy.log", "ab")
    try:
        # -db: in the foreground, logging to stdout; a session of its own, stopped as a group.
        return subprocess.Popen(
            ["haproxy", "-db", "-f", str(config_path)],
            stdout=log_file,
            stderr=log_file,
            start_new_session=True,
        )
    finally:
        log_file.close()


def haproxy_server_stats(port: int) -> dict[str, int]:
    """HAProxy's counters of its connections to gunicorn, summed over the router nodes."""
    conn = http.client.HTTPConnection(HOST, port, timeout=10)
    try:
        conn.request("GET", "/stats;csv")
        text = conn.getresponse().read().decode()
    finally:
        conn.close()
    wanted = {"connect": "connections_opened", "reuse": "connections_reused", "hrsp_5xx": "answers_5xx"}
    wanted |= {"eresp": "response_errors", "wretr": "retries", "econ": "connect_errors"}
    totals = dict.fromkeys(wanted.values(), 0)
    for row in csv.DictReader(io.StringIO(text.lstrip("# "))):
        if row["pxname"].startswith("router") and row["svname"] == "gunicorn":
            for key, name in wanted.items():
                totals[name] += int(row[key] or 0)
    return totals


def haproxy_log_summary(log_path: Path) -> dict:
    """Termination states and retries of the requests HAProxy did not answer with gunicorn's 2xx."""
    states: collections.Counter = collections.Counter()
    retried = 0
    lines = []
    for line in log_path.read_text(errors="replace").splitlines():
        if not line.startswith("status=") or line.endswith("req=<BADREQ>"):
            continue  # a connection that sent no request: the start-up's wait for the port
        fields = dict(part.split("=", 1) for part in line.split() if "=" in part)
        if fields.get("retries", "0").lstrip("+") not in ("", "0"):
            retried += 1
        if not fields.get("status", "").startswith("2"):
            states[f"{fields.get('status')} {fields.get('term')}"] += 1
            lines.append(line)
    return {"failed_by_status_and_termination": dict(states), "requests_retried": retried, "failed_lines": lines[:20]}


# --- clients -------------------------------------------------------------------------------------------


class Client(threading.Thread):
    def __init__(self, number, args, path, secret, id_prefix, stop, deadline, rng):
        super().__init__(name=f"client-{number}", daemon=True)
        self.args, self.path, self.secret, self.stop, self.deadline, self.rng = args, path, secret, stop, deadline, rng
        self.id_prefix = f"{id_prefix}{number:02d}_"
        self.port = router_port(args, number % args.routers)
        self.results: list[tuple[str, str]] = []  # (event id, outcome)
        self.template = body_template()

    def run(self):
        conn = None
        sent = 0
        while not self.stop.is_set() and time.monotonic() < self.deadline:
            event_id = f"{self.id_prefix}{sent:06d}"
            sent += 1
            payload = self.template[0] + event_id + self.template[1]
            timestamp = int(time.time())
            signature = stripe.WebhookSignature._compute_signature(f"{timestamp}.{payload}", self.secret)
            headers = {"Content-Type": "application/json", "Stripe-Signature": f"t={timestamp},v1={signature}"}
            if conn is None:
                conn = http.client.HTTPConnection(HOST, self.port, timeout=ROUTER_SERVER_TIMEOUT_SECONDS + 10)
            try:
                conn.request("POST", self.path, body=payload.encode(), headers=headers)
                response = conn.getresponse()
                body = response.read()
                outcome = str(response.status)
                if response.status == 502 and b"<html>" in body:
                    outcome = "502 proxy"  # HAProxy's own page; gunicorn's answers are JSON
                if response.will_close or not self.args.client_keepalive:
                    conn.close()
                    conn = None
            except (OSError, http.client.HTTPException) as exc:
                outcome = f"client error {type(exc).__name__}"
                conn.close()
                conn = None
            self.results.append((event_id, outcome))
            self.stop.wait(self.rng.uniform(self.args.gap_min, self.args.gap_max))
        if conn is not None:
            conn.close()


def drive(args, path, secret, id_prefix) -> list[tuple[str, str]]:
    stop = threading.Event()
    deadline = time.monotonic() + args.duration
    seed = args.seed if args.seed is not None else secrets.randbits(32)
    clients = [
        Client(n, args, path, secret, id_prefix, stop, deadline, random.Random(seed + n)) for n in range(args.clients)
    ]
    for client in clients:
        client.start()
        # Spread the clients' first requests over one gap, so their connections do not idle in step.
        if stop.wait(args.gap_min / args.clients):
            break
    try:
        for client in clients:
            client.join(timeout=max(0.1, deadline - time.monotonic()) + ROUTER_SERVER_TIMEOUT_SECONDS + 15)
    finally:
        stop.set()
    return [result for client in clients for result in client.results]


# --- the run ---------------------------------------------------------------------------------------------


def run(args) -> dict:
    for port in range(args.port, stats_port(args) + 1):
        if not port_is_free(port):
            raise RuntimeError(f"port {port} on {HOST} is in use; pass another --port")
    run_id = secrets.token_hex(4)
    id_prefix = f"evt_keepalive_{run_id}_"
    env = server_env(args)
    load_before = os.getloadavg()
    gunicorn = haproxy = None
    created = False
    with tempfile.TemporaryDirectory(prefix="hookline-keepalive-") as tmp:
        workdir = Path(tmp)
        try:
            log(f"creating database {args.database_url}; flushing {args.redis_url}")
            create_database(args.database_url)
            created = True
            flush_redis(args.redis_url)
            token, secret = prepare_tenant(env, run_id)
            gunicorn_log = workdir / "gunicorn.log"
            gunicorn = start_gunicorn(args, gunicorn_log)
            wait_until_up(args.port, gunicorn, gunicorn_log)
            haproxy = start_haproxy(args, workdir)
            wait_for_port(stats_port(args), haproxy)
            log(
                f"gunicorn (keep-alive {args.keepalive} s) behind HAProxy ({args.routers} router nodes);"
                f" {args.clients} clients,"
                f" gaps {args.gap_min:g}-{args.gap_max:g} s, for {args.duration:g} s"
            )
            started = time.monotonic()
            results = drive(args, f"/in/{token}/", secret, id_prefix)
            elapsed = time.monotonic() - started
            load_after = os.getloadavg()
            proxy_stats = haproxy_server_stats(stats_port(args))
            stored = stored_events(args.database_url, id_prefix)
        finally:
            for process in (haproxy, gunicorn):
                if process is not None and process.poll() is None:
                    stop_group(process)
            if created:
                with contextlib.suppress(Exception):
                    drop_database(args.database_url)
                with contextlib.suppress(Exception):
                    flush_redis(args.redis_url)
        proxy_log = haproxy_log_summary(workdir / "haproxy.log")
        server_errors = [line for line in gunicorn_log.read_text().splitlines() if "ERROR" in line][-10:]

    answers = collections.Counter(outcome for _, outcome in results)
    ok = [event_id for event_id, outcome in results if outcome.startswith("2")]
    failed = [event_id for event_id, outcome in results if not outcome.startswith("2")]
    proxy_502 = [event_id for event_id, outcome in results if outcome == "502 proxy"]
    unanswered = [event_id for event_id, outcome in results if outcome.startswith("client error")]
    return {
        "keepalive_s": args.keepalive,
        "duration_s": round(elapsed, 1),
        "clients": args.clients,
        "routers": args.routers,
        "client_keepalive": args.client_keepalive,
        "gap_s": [args.gap_min, args.gap_max],
        "gunicorn": f"{args.workers} gthread x {args.threads}",
        "haproxy": subprocess.run(["haproxy", "-v"], capture_output=True, text=True).stdout.split()[2],
        "load_average_1m": [round(load_before[0], 2), round(load_after[0], 2)],
        "cpus": os.cpu_count(),
        "requests": len(results),
        "answers": dict(sorted(answers.items())),
        "proxy_502": len(proxy_502),
        "unanswered": len(unanswered),
        "failed_rate": round(len(failed) / len(results), 4) if results else None,
        "stored": {
            "events": len(stored),
            "of_2xx": sum(1 for event_id in ok if event_id in stored),
            "2xx_not_stored (lost)": sum(1 for event_id in ok if event_id not in stored),
            "of_failed (duplicate on retry)": sum(1 for event_id in failed if event_id in stored),
            "of_proxy_502": sum(1 for event_id in proxy_502 if event_id in stored),
            "of_unanswered": sum(1 for event_id in unanswered if event_id in stored),
            "arrived_more_than_once": sum(1 for duplicates in stored.values() if duplicates),
        },
        "haproxy_server_side": proxy_stats,
        "haproxy_log": proxy_log,
        "gunicorn_errors": server_errors,
    }


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def main(argv=None) -> int:
    args = parse_args(argv)
    # Ctrl-C and SIGTERM unwind through run()'s finally: HAProxy and gunicorn stopped, database dropped.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        report = run(args)
    except KeyboardInterrupt:
        print("interrupted; HAProxy and gunicorn stopped, database dropped", file=sys.stderr)
        return 130
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
