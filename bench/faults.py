"""Fault injection: Hookline's delivery promises checked under real crashes and outages.

The promises: (1) nothing acknowledged to the provider (2xx) is lost; (2) a receiver sees each
event once per destination, except after a worker crash mid-send (documented at-least-once:
those duplicates are reported apart); (3) a broker or database outage delays work, never drops it.

Starts, on 127.0.0.1 only, a private PostgreSQL cluster (initdb into a temporary directory, or
--pg-data) and a private Redis, so that it can stop and start them; then the production
processes as the Procfile does (gunicorn with config/gunicorn.conf.py, hence the ingest writer
process; a Celery worker; Celery beat) and a counting receiver. For each fault, in turn, it
posts signed Stripe webhooks at a steady rate, injects the fault a few seconds in, posts again
what was not acknowledged (as a provider retries), lets the sweeper settle everything and
compares, for that fault's events: acknowledged, stored (once per provider id), delivered,
duplicates and lost, and the ingest answers seen (a 500 is a failure; a 503 is allowed).

    .venv/bin/python bench/faults.py [--faults worker_kill,writer_kill,...] [--rate 40]
        [--load-seconds 20] [--settle-seconds 120] [--pg-port 19333] [--redis-port 19379]
        [--web-port 19380] [--receiver-port 19381] [--json]

Faults: worker_kill (SIGKILL to the Celery worker's whole group, then a new worker), worker_term
(SIGTERM to its main process only: a warm shutdown, then a new worker), platform_restart (SIGTERM
at once to every process of the worker and of the web, pool children, gunicorn workers and the
ingest writer included, as a dyno restart does, while the receiver answers after 1 s so that sends
are under way; SIGKILL to what is left after a 30 s grace; then both started again),
writer_kill (SIGKILL to the ingest writer process; gunicorn starts another), web_worker_kill
(SIGKILL to one gunicorn worker), pg_stop_5 / pg_stop_40 / pg_stop_120 (a fast shutdown for that long), pg_crash (an immediate
shutdown, i.e. crash recovery at the restart, 5 s down), pg_freeze_60 (SIGSTOP to the postmaster
and every backend for 60 s, then SIGCONT: a frozen server), pg_cut_worker_60 (a second worker is
started, then the first one's backends are stopped for 60 s: that worker cut off from the
database, or still waiting on a primary that failed over, while the other one sweeps; neither
changes pg_postmaster_start_time(), and both last far longer than the destination's timeout plus
STUCK_DELIVERY_MARGIN_SECONDS), redis_stop_10 (SIGKILL, a new empty Redis 10 s later),
receiver_500 / receiver_slow (the receiver answers 500, or after twice the destination's
timeout, for 12 s). Every process it starts is stopped on exit (Ctrl-C included), private
PostgreSQL and Redis too. Not part of the test suite; bounded by --max-seconds.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import pwd
import queue
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from stack import HOST, PYTHON, ROOT, json_line, log, manage, production_env, receiver_get, stop_group, wait_for_port

FIXTURE = ROOT / "webhooks" / "tests" / "fixtures" / "stripe" / "invoice.paid.json"
# A fixed key for this harness's own throw-away database; never a production key.
FAULTS_FERNET_KEY = "q3Yb0mFQ6sWm5b1j8mY0k2fS1xk3bVf3m8y9bq0zQ1Y="
ALL_FAULTS = [
    "worker_kill",
    "worker_term",
    "platform_restart",
    "writer_kill",
    "web_worker_kill",
    "pg_stop_5",
    "pg_stop_40",
    "pg_stop_120",
    "pg_crash",
    "pg_freeze_60",
    "pg_cut_worker_60",
    "redis_stop_10",
    "receiver_500",
    "receiver_slow",
]
DESTINATION_TIMEOUT = 2.0  # seconds; the slow receiver answers after twice this
PLATFORM_GRACE_SECONDS = 30.0  # a dyno's processes are sent SIGKILL this long after its SIGTERM


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--faults", default=",".join(ALL_FAULTS), help="comma-separated, run in this order")
    parser.add_argument("--rate", type=float, default=40.0, help="webhooks posted per second during the load")
    parser.add_argument("--load-seconds", type=float, default=20.0, help="load per fault (the fault starts at 1/4)")
    parser.add_argument("--settle-seconds", type=float, default=150.0, help="most to wait for each fault to settle")
    parser.add_argument("--max-seconds", type=float, default=1800.0, help="the whole run's bound")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--pg-bin", default="/usr/lib/postgresql/15/bin")
    parser.add_argument("--pg-data", default="", help="a cluster directory (default: a new one, removed at the end)")
    parser.add_argument("--pg-user", default="postgres", help="the OS user PostgreSQL runs as when run by root")
    parser.add_argument("--pg-port", type=int, default=19333)
    parser.add_argument("--redis-port", type=int, default=19379)
    parser.add_argument("--web-port", type=int, default=19380)
    parser.add_argument("--receiver-port", type=int, default=19381)
    parser.add_argument("--log-dir", default="", help="process logs (default: a temporary directory)")
    parser.add_argument("--json", action="store_true", help="print only the JSON summary on stdout")
    args = parser.parse_args(argv)
    args.faults = [name.strip() for name in args.faults.split(",") if name.strip()]
    unknown = set(args.faults) - set(ALL_FAULTS)
    if unknown or not args.faults:
        parser.error(f"unknown faults {sorted(unknown)}; choose from {ALL_FAULTS}")
    if not 0 < args.rate <= 500 or not 4 <= args.load_seconds <= 300:
        parser.error("0 < --rate <= 500 and 4 <= --load-seconds <= 300")
    return args


# --- the receiver (its own process: `faults.py _receiver PORT`) ---------------------------------------------


def run_receiver(port: int) -> None:
    """Counts every webhook-id and how it was answered; GET /mode/<ok|500|slow> changes its answers,
    GET /delay/<seconds> has it take that long over each (still counted as its mode's answer)."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    lock = threading.Lock()
    seen: dict[str, dict[str, int]] = {}  # webhook-id -> {"ok": n, "500": n, "slow": n}
    state = {"mode": "ok", "requests": 0, "delay": 0.0}

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self):
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            mode = state["mode"]
            with lock:
                state["requests"] += 1
                counts = seen.setdefault(self.headers.get("webhook-id") or "", {})
                counts[mode] = counts.get(mode, 0) + 1
            if mode == "slow":
                time.sleep(DESTINATION_TIMEOUT * 2)  # the sender has given up: not an acknowledgement
            elif state["delay"]:
                time.sleep(state["delay"])
            status = 500 if mode == "500" else 200
            with contextlib.suppress(OSError):
                self.send_response(status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

        def do_GET(self):
            if self.path.startswith("/mode/"):
                state["mode"] = self.path.rsplit("/", 1)[1]
            elif self.path.startswith("/delay/"):
                state["delay"] = float(self.path.rsplit("/", 1)[1])
            with lock:
                body = json.dumps({"mode": state["mode"], "requests": state["requests"], "seen": seen}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    class Server(ThreadingHTTPServer):
        daemon_threads = True
        request_queue_size = 512

    server = Server((HOST, port), Handler)
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    server.serve_forever(poll_interval=0.2)


# --- the harness ------------------------------------------------------------------------------------------


class Harness:
    def __init__(self, args):
        self.args = args
        self.run_id = secrets.token_hex(3)
        self.processes: dict[str, subprocess.Popen] = {}
        self.log_dir = Path(args.log_dir or tempfile.mkdtemp(prefix="hookline-faults-"))
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.own_pg_data = not args.pg_data
        self.pg_data = Path(args.pg_data) if args.pg_data else Path(tempfile.mkdtemp(prefix="hookline-faults-pg-"))
        self.database_url = f"postgres://postgres@{HOST}:{args.pg_port}/hookline_faults"
        self.redis_url = f"redis://{HOST}:{args.redis_port}/0"
        self.queue = f"hookline-faults-{self.run_id}"
        self.local = threading.local()
        self.deadline = time.monotonic() + args.max_seconds

    # infrastructure: our own PostgreSQL and Redis

    def _as_pg_user(self, command: list[str]) -> list[str]:
        if os.geteuid() != 0:
            return command
        return ["runuser", "-u", self.args.pg_user, "--", *command]

    def pg_start(self) -> None:
        if not (self.pg_data / "PG_VERSION").exists():
            if os.geteuid() == 0:
                user = pwd.getpwnam(self.args.pg_user)
                os.chown(self.pg_data, user.pw_uid, user.pw_gid)
            subprocess.run(
                self._as_pg_user(
                    [f"{self.args.pg_bin}/initdb", "-D", str(self.pg_data), "-U", "postgres", "--auth=trust"]
                ),
                check=True,
                capture_output=True,
            )
        options = f"-p {self.args.pg_port} -k /tmp -c listen_addresses={HOST} -c max_connections=200"
        subprocess.run(
            self._as_pg_user(
                [f"{self.args.pg_bin}/pg_ctl", "-D", str(self.pg_data), "-o", options, "-l", "/dev/null", "-w", "start"]
            ),
            check=True,
            capture_output=True,
        )

    def pg_stop(self, mode: str = "fast") -> None:
        subprocess.run(
            self._as_pg_user([f"{self.args.pg_bin}/pg_ctl", "-D", str(self.pg_data), "-m", mode, "-w", "stop"]),
            capture_output=True,
        )

    def pg_processes(self) -> list[int]:
        """The postmaster's pid, then its children's (the backends and background processes)."""
        postmaster = int((self.pg_data / "postmaster.pid").read_text().split()[0])
        return [postmaster] + [pid for pid, _ in self.children(postmaster)]

    def pg_signal(self, pids: list[int], sig) -> None:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)

    def redis_start(self) -> None:
        command = ["redis-server", "--port", str(self.args.redis_port), "--bind", HOST, "--save", "", "--appendonly"]
        command += ["no", "--loglevel", "warning"]
        self.start("redis", command, with_env=False)
        wait_for_port(self.args.redis_port, process=self.processes["redis"])

    def redis_stop(self) -> None:
        self.stop("redis", signal.SIGKILL)

    # processes

    def env(self) -> dict[str, str]:
        env = production_env(
            database_url=self.database_url,
            redis_url=self.redis_url,
            secret_key="faults-only-secret-key-" + "x" * 32,
            fernet_key=FAULTS_FERNET_KEY,
            web_port=self.args.web_port,
            queue=self.queue,
        )
        env.update(
            # Shorter clocks so that a run settles in seconds rather than hours; the logic is the same.
            STUCK_EVENT_SECONDS="5",
            STUCK_DELIVERY_MARGIN_SECONDS="10",
            DELIVERY_RETRY_SCHEDULE="1,2,4,8,15,30",
        )
        return env

    def start(self, name: str, command: list[str], *, with_env: bool = True) -> subprocess.Popen:
        with open(self.log_dir / f"{name}.log", "ab") as log_file:
            process = subprocess.Popen(
                command,
                cwd=ROOT,
                env=self.env() if with_env else None,
                stdout=log_file,
                stderr=log_file,
                start_new_session=True,  # its whole group is stopped together
            )
        self.processes[name] = process
        return process

    def stop(self, name: str, sig=signal.SIGTERM, timeout: float = 15) -> None:
        process = self.processes.pop(name, None)
        if process is not None:
            stop_group(process, sig, timeout)

    def start_web(self) -> None:
        command = [PYTHON, "-m", "gunicorn", "config.wsgi", "--config", "config/gunicorn.conf.py"]
        command += ["--bind", f"{HOST}:{self.args.web_port}", "--worker-class", "gthread", "--workers", "2"]
        command += ["--threads", "8", "--graceful-timeout", "5", "--log-level", "warning"]
        wait_for_port(self.args.web_port, process=self.start("web", command))

    def start_worker(self, name: str = "worker") -> None:
        command = [PYTHON, "-m", "celery", "-A", "config", "worker", "-P", "prefork", "-c", "2", "-l", "WARNING"]
        command += ["-Q", self.queue, "-n", f"faults-{self.run_id}-{time.monotonic_ns()}@%h"]
        self.start(name, command)

    def stop_worker_warmly(self, name: str) -> dict:
        """SIGTERM to a worker's main process only: it finishes what it holds, then exits."""
        worker = self.processes.pop(name)
        os.kill(worker.pid, signal.SIGTERM)
        signalled = time.monotonic()
        note: dict = {}
        try:
            worker.wait(timeout=60)
            note["exit"] = worker.returncode
            note["exit_seconds"] = round(time.monotonic() - signalled, 1)
        except subprocess.TimeoutExpired:
            note["exit"] = "still running after 60 s: killed"
        with contextlib.suppress(ProcessLookupError):
            os.killpg(worker.pid, signal.SIGKILL)
        return note

    def process_tree(self, root: int) -> list[int]:
        """A process and all its descendants (a pool's children, gunicorn's workers and writer)."""
        tree, parents = [], [root]
        while parents:
            parent = parents.pop()
            tree.append(parent)
            parents += [pid for pid, _ in self.children(parent)]
        return tree

    def group_members(self, group: int) -> list[int]:
        """The live (not zombie) processes of a process group."""
        members = []
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                with open(f"/proc/{entry.name}/stat") as f:
                    stat = f.read()
            except OSError:
                continue
            state, _, pgrp = stat[stat.rindex(")") + 2 :].split()[:3]
            if int(pgrp) == group and state != "Z":
                members.append(int(entry.name))
        return members

    def restart_like_the_platform(self, names: list[str]) -> dict:
        """SIGTERM at one instant to every process of these (each its own group), as a dyno restart
        sends it; wait until each group has no live process, SIGKILL what is left after the grace.
        The caller starts them again. Notes how long each main process and its group took to end."""
        processes = {name: self.processes.pop(name) for name in names}
        trees = {name: self.process_tree(process.pid) for name, process in processes.items()}
        # A descendant that left its group gets the signal by its pid; the others once, by the group.
        outside = {name: set(trees[name]) - set(self.group_members(p.pid)) for name, p in processes.items()}
        signalled = time.monotonic()
        for name, process in processes.items():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            for pid in outside[name]:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)
        note: dict = {f"{name}_processes": len(tree) for name, tree in trees.items()}
        left = dict(processes)
        try:
            while left and time.monotonic() - signalled < PLATFORM_GRACE_SECONDS:
                for name, process in list(left.items()):
                    if process.poll() is not None and f"{name}_exit_seconds" not in note:
                        note[f"{name}_exit"] = process.returncode
                        note[f"{name}_exit_seconds"] = round(time.monotonic() - signalled, 1)
                    if process.poll() is not None and not self.group_members(process.pid):
                        note[f"{name}_all_gone_seconds"] = round(time.monotonic() - signalled, 1)
                        left.pop(name)
                time.sleep(0.05)
        finally:  # the platform's SIGKILL after its grace (or this harness's, when interrupted)
            for name, process in left.items():
                note[f"{name}_killed_after_grace"] = sorted(self.group_members(process.pid))
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(timeout=10)
                note.setdefault(f"{name}_exit", process.returncode)
        return note

    def sends_in_flight(self) -> None:
        """Have the receiver answer after half the destination's timeout: a second's worth of sends is
        then always under way, so that a fault of the database finds dispatchers holding claims."""
        receiver_get(self.args.receiver_port, f"/delay/{DESTINATION_TIMEOUT / 2}")
        time.sleep(DESTINATION_TIMEOUT)

    def backends_of(self, name: str) -> list[int]:
        """The PostgreSQL backends serving one of our process groups' connections (by client port)."""
        group = self.processes[name].pid
        pids = [group] + [pid for pid, _ in self.children(group)]
        sockets = set()
        for pid in pids:
            with contextlib.suppress(OSError):
                for fd in os.listdir(f"/proc/{pid}/fd"):
                    with contextlib.suppress(OSError):
                        target = os.readlink(f"/proc/{pid}/fd/{fd}")
                        if target.startswith("socket:["):
                            sockets.add(target[len("socket:[") : -1])
        ports = set()
        for table in ("/proc/net/tcp", "/proc/net/tcp6"):
            with contextlib.suppress(OSError), open(table) as f:
                for line in list(f)[1:]:
                    fields = line.split()
                    local, remote, inode = fields[1], fields[2], fields[9]
                    if inode in sockets and int(remote.rsplit(":", 1)[1], 16) == self.args.pg_port:
                        ports.add(int(local.rsplit(":", 1)[1], 16))
        with self.db() as conn:
            rows = conn.execute(
                "SELECT pid FROM pg_stat_activity WHERE client_port = ANY(%s)", [sorted(ports)]
            ).fetchall()
        return [pid for (pid,) in rows]

    def start_beat(self) -> None:
        schedule = self.log_dir / "beat-schedule"
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
                str(schedule),
            ],
        )

    def start_receiver(self) -> None:
        process = self.start(
            "receiver", [PYTHON, str(Path(__file__).resolve()), "_receiver", str(self.args.receiver_port)]
        )
        wait_for_port(self.args.receiver_port, process=process)

    def children(self, parent: int) -> list[tuple[int, str]]:
        """(pid, command line) of a process's direct children."""
        found = []
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                with open(f"/proc/{entry.name}/stat") as f:
                    stat = f.read()
                with open(f"/proc/{entry.name}/cmdline", "rb") as f:
                    cmdline = f.read().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if int(stat[stat.rindex(")") + 2 :].split()[1]) == parent:
                found.append((int(entry.name), cmdline))
        return found

    def close(self) -> None:
        for name in [n for n in self.processes if n != "redis"]:
            self.stop(name, signal.SIGKILL if name == "worker" else signal.SIGTERM)
        self.redis_stop()
        self.pg_stop()
        if self.own_pg_data:
            shutil.rmtree(self.pg_data, ignore_errors=True)

    # database and tenant

    def manage(self, *command: str) -> str:
        return manage(self.env(), *command)

    def db(self):
        import psycopg

        return psycopg.connect(self.database_url, autocommit=True, connect_timeout=5)

    def prepare(self) -> None:
        import psycopg

        admin = f"postgres://postgres@{HOST}:{self.args.pg_port}/postgres"
        with psycopg.connect(admin, autocommit=True, connect_timeout=5) as conn:
            if conn.execute("SELECT 1 FROM pg_database WHERE datname = 'hookline_faults'").fetchone() is None:
                conn.execute("CREATE DATABASE hookline_faults")
        log("migrating the private database")
        self.manage("migrate", "--noinput")
        self.manage("install_periodic_tasks")
        with self.db() as conn:
            conn.execute("UPDATE webhooks_destination SET is_active = false")  # an earlier run's
            exists = conn.execute("SELECT 1 FROM organizations_organization WHERE slug = 'faults'").fetchone()
        if exists is None:
            self.manage("create_organization", "--name", "Faults", "--slug", "faults", "--owner-email", "f@example.com")
        self.secret = f"whsec_faults_{self.run_id}"
        source = json_line(
            self.manage(
                "create_source", "--org", "faults", "--provider", "stripe", "--name", f"faults {self.run_id}",
                "--secret", self.secret, "--json",
            )
        )  # fmt: skip
        self.token, self.source_id = source["token"], source["id"]
        destination = json_line(
            self.manage(
                "create_destination", "--org", "faults", "--name", f"receiver {self.run_id}",
                "--url", f"http://{HOST}:{self.args.receiver_port}/hook", "--source", str(self.source_id),
                "--timeout", str(DESTINATION_TIMEOUT), "--json",
            )
        )  # fmt: skip
        self.destination_id = destination["id"]
        with self.db() as conn:
            # A destination edited within STUCK_DELIVERY_MARGIN_SECONDS of a claim may have had a longer
            # timeout then: its lost claims would wait STUCK_DELIVERY_SECONDS (150 s) instead of 12 s.
            conn.execute(
                "UPDATE webhooks_destination SET updated_at = now() - interval '1 hour' WHERE id = %s",
                [self.destination_id],
            )

    # the provider

    def signed(self, event_id: str) -> tuple[bytes, str]:
        import stripe

        text = FIXTURE.read_text()
        original = json.dumps(json.loads(text)["id"])
        before, _, after = text.partition(original)
        body = f'{before}"{event_id}"{after}'
        timestamp = int(time.time())  # signed when sent, as a provider signs each retry anew
        signature = stripe.WebhookSignature._compute_signature(f"{timestamp}.{body}", self.secret)
        return body.encode(), f"t={timestamp},v1={signature}"

    def post(self, event_id: str) -> tuple[int, str | None]:
        """One attempt; 0 when no answer came (refused, reset, timed out): the provider retries later."""
        body, signature = self.signed(event_id)
        conn = getattr(self.local, "conn", None)
        if conn is None:
            conn = self.local.conn = http.client.HTTPConnection(HOST, self.args.web_port, timeout=15)
        try:
            conn.request(
                "POST",
                f"/in/{self.token}/",
                body=body,
                headers={"Content-Type": "application/json", "Stripe-Signature": signature},
            )
            response = conn.getresponse()
            payload = response.read()
            if response.getheader("Connection", "").lower() == "close":
                conn.close()
                self.local.conn = None
            hookline_id = json.loads(payload).get("id") if 200 <= response.status < 300 else None
            return response.status, hookline_id
        except (OSError, http.client.HTTPException, ValueError):
            conn.close()
            self.local.conn = None
            return 0, None

    def drive(self, ledger: dict, event_ids: list[str], rate: float | None) -> None:
        """Post each event once (paced at ``rate``/s) and note every answer in ``ledger``."""
        jobs: queue.Queue = queue.Queue()
        for index, event_id in enumerate(event_ids):
            jobs.put((index, event_id))
        lock = threading.Lock()
        start = time.time()

        def client():
            while True:
                try:
                    index, event_id = jobs.get_nowait()
                except queue.Empty:
                    return
                if rate:
                    wait = start + index / rate - time.time()
                    if wait > 0:
                        time.sleep(wait)
                status, hookline_id = self.post(event_id)
                with lock:
                    entry = ledger.setdefault(event_id, {"answers": [], "ids": set()})
                    entry["answers"].append(status)
                    if hookline_id:
                        entry["ids"].add(hookline_id)

        threads = [threading.Thread(target=client, daemon=True) for _ in range(self.args.clients)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    # faults

    def inject(self, fault: str) -> dict:
        note: dict = {}
        if fault == "worker_kill":
            worker = self.processes["worker"]
            note["killed"] = [pid for pid, _ in self.children(worker.pid)] + [worker.pid]
            os.killpg(worker.pid, signal.SIGKILL)  # main process and pool children, mid-batch
            worker.wait()
            self.processes.pop("worker")
            time.sleep(2)
            self.start_worker()  # as a supervisor would
        elif fault == "worker_term":
            note.update(self.stop_worker_warmly("worker"))
            self.start_worker()
        elif fault == "platform_restart":
            self.sends_in_flight()  # the pool processes are mid-send when the SIGTERM comes
            try:
                note.update(self.restart_like_the_platform(["worker", "web"]))
            finally:
                receiver_get(self.args.receiver_port, "/delay/0")
            self.start_web()
            self.start_worker()
        elif fault == "pg_crash":
            self.pg_stop("immediate")  # no checkpoint, no goodbye to the clients: recovery at start
            time.sleep(5)
            self.pg_start()
            note["down_seconds"] = 5
        elif fault == "writer_kill":
            writers = [pid for pid, cmd in self.children(self.processes["web"].pid) if "run_ingest_writer" in cmd]
            note["killed"] = writers
            for pid in writers:
                os.kill(pid, signal.SIGKILL)
        elif fault == "web_worker_kill":
            workers = [pid for pid, cmd in self.children(self.processes["web"].pid) if "run_ingest_writer" not in cmd]
            note["killed"] = workers[:1]
            for pid in workers[:1]:
                os.kill(pid, signal.SIGKILL)
        elif fault.startswith("pg_stop_"):
            seconds = int(fault.rsplit("_", 1)[1])
            self.pg_stop()
            time.sleep(seconds)
            self.pg_start()
            note["down_seconds"] = seconds
        elif fault.startswith("pg_freeze_"):
            seconds = int(fault.rsplit("_", 1)[1])
            self.sends_in_flight()
            frozen = self.pg_processes()  # the postmaster first: it then forks no new backend
            self.pg_signal(frozen, signal.SIGSTOP)
            frozen += [pid for pid in self.pg_processes() if pid not in frozen]  # forked meanwhile
            self.pg_signal(frozen, signal.SIGSTOP)
            try:
                time.sleep(seconds)
            finally:
                self.pg_signal(reversed(frozen), signal.SIGCONT)
                receiver_get(self.args.receiver_port, "/delay/0")
            note["frozen_seconds"] = seconds
            note["frozen_processes"] = len(frozen)
        elif fault.startswith("pg_cut_worker_"):
            seconds = int(fault.rsplit("_", 1)[1])
            self.start_worker("worker2")  # another host's worker, which goes on sweeping
            time.sleep(4)
            self.sends_in_flight()
            cut = self.backends_of("worker")
            self.pg_signal(cut, signal.SIGSTOP)
            try:
                time.sleep(seconds)
            finally:
                self.pg_signal(cut, signal.SIGCONT)
                receiver_get(self.args.receiver_port, "/delay/0")
            note["cut_seconds"] = seconds
            note["cut_backends"] = len(cut)
            # The faults after this one find one worker again.
            note["second_worker_exit"] = self.stop_worker_warmly("worker2").get("exit")
        elif fault == "redis_stop_10":
            self.redis_stop()
            time.sleep(10)
            self.redis_start()
            note["down_seconds"] = 10
        elif fault in ("receiver_500", "receiver_slow"):
            mode = fault.split("_", 1)[1]
            receiver_get(self.args.receiver_port, f"/mode/{mode}")
            time.sleep(12)
            receiver_get(self.args.receiver_port, "/mode/ok")
            note["seconds"] = 12
        return note

    def run_fault(self, fault: str, turn: int) -> dict:
        args = self.args
        count = int(args.rate * args.load_seconds)
        # The turn too: a fault named twice in --faults gets events of its own each time.
        event_ids = [f"evt_{turn}_{fault}_{self.run_id}_{n:06d}" for n in range(count)]
        ledger: dict = {}
        answered_before = self.receiver_answers()
        log(f"{fault}: posting {count} webhooks at {args.rate}/s; the fault starts in {args.load_seconds / 4:.0f} s")
        load = threading.Thread(target=self.drive, args=(ledger, event_ids, args.rate))
        load.start()
        time.sleep(args.load_seconds / 4)
        note = self.inject(fault)
        log(f"{fault}: injected {note}")
        load.join()
        # The provider's retries: whatever was not acknowledged is posted again until it is.
        retry_deadline = time.monotonic() + 90
        while time.monotonic() < retry_deadline:
            unacked = [e for e in event_ids if not any(200 <= s < 300 for s in ledger[e]["answers"])]
            if not unacked:
                break
            time.sleep(2)
            self.drive(ledger, unacked, rate=None)
        acked = {e: ledger[e]["ids"] for e in event_ids if any(200 <= s < 300 for s in ledger[e]["answers"])}
        log(f"{fault}: {len(acked)}/{count} acknowledged; settling")
        settled = self.settle(event_ids, acked, args.settle_seconds)
        answered = {k: v - answered_before.get(k, 0) for k, v in self.receiver_answers().items()}
        return {"fault": fault, "injected": note, "settled": settled, "receiver_answers": answered} | self.compare(
            event_ids, ledger, acked
        )

    def receiver_answers(self) -> dict[str, int]:
        """How many requests the receiver answered each way so far (ok, 500, slow)."""
        totals: dict[str, int] = {}
        for counts in receiver_get(self.args.receiver_port, "/results")["seen"].values():
            for kind, n in counts.items():
                totals[kind] = totals.get(kind, 0) + n
        return totals

    def settle(self, event_ids: list[str], acked: dict, timeout: float) -> bool:
        deadline = min(time.monotonic() + timeout, self.deadline)
        wanted = {next(iter(ids)) for ids in acked.values() if ids}
        while time.monotonic() < deadline:
            try:
                seen = receiver_get(self.args.receiver_port, "/results")["seen"]
                with self.db() as conn:
                    busy = conn.execute(
                        "SELECT (SELECT count(*) FROM webhooks_webhookevent WHERE status = 'received')"
                        " + (SELECT count(*) FROM webhooks_delivery WHERE status IN ('pending', 'in_flight'))"
                    ).fetchone()[0]
            except Exception:  # the database is still coming back
                time.sleep(1)
                continue
            if busy == 0 and all(seen.get(i, {}).get("ok") for i in wanted):
                time.sleep(3)  # a late duplicate would still show up
                return True
            time.sleep(1)
        return False

    def compare(self, event_ids: list[str], ledger: dict, acked: dict) -> dict:
        seen = receiver_get(self.args.receiver_port, "/results")["seen"]
        with self.db() as conn:
            stored_rows = conn.execute(
                "SELECT provider_event_id, id::text FROM webhooks_webhookevent"
                " WHERE source_id = %s AND provider_event_id = ANY(%s)",
                [self.source_id, event_ids],
            ).fetchall()
            attempts = {
                event_id: {"claims": claims, "attempts_on_record": numbers}
                for event_id, claims, numbers in conn.execute(
                    "SELECT e.id::text, d.attempt_count, array_remove(array_agg(a.attempt_number ORDER BY"
                    " a.attempt_number), NULL) FROM webhooks_webhookevent e"
                    " JOIN webhooks_delivery d ON d.event_id = e.id"
                    " LEFT JOIN webhooks_deliveryattempt a ON a.delivery_id = d.id"
                    " WHERE e.source_id = %s AND e.provider_event_id = ANY(%s) GROUP BY e.id, d.id",
                    [self.source_id, event_ids],
                ).fetchall()
            }
            statuses = dict(
                conn.execute(
                    "SELECT d.status, count(*) FROM webhooks_delivery d JOIN webhooks_webhookevent e"
                    " ON e.id = d.event_id WHERE e.source_id = %s AND e.provider_event_id = ANY(%s) GROUP BY d.status",
                    [self.source_id, event_ids],
                ).fetchall()
            )
        stored: dict[str, list[str]] = {}
        for provider_id, hookline_id in stored_rows:
            stored.setdefault(provider_id, []).append(hookline_id)
        answers: dict[str, int] = {}
        for entry in ledger.values():
            for status in entry["answers"]:
                answers[str(status)] = answers.get(str(status), 0) + 1
        lost, duplicates, mismatched_ids = [], [], []
        delivered = 0
        for provider_id, ids in acked.items():
            rows = stored.get(provider_id, [])
            if len(ids) != 1 or set(rows) != ids:
                mismatched_ids.append({"event": provider_id, "acknowledged_as": sorted(ids), "stored_as": rows})
            hookline_id = next(iter(ids)) if ids else None
            arrivals = seen.get(hookline_id, {})
            if arrivals.get("ok"):
                delivered += 1
            else:
                lost.append(provider_id)
            if arrivals.get("ok", 0) > 1:
                duplicates.append({"webhook_id": hookline_id, "arrivals": arrivals, **attempts.get(hookline_id, {})})
        return {
            "posted": len(event_ids),
            "acknowledged": len(acked),
            "stored": sum(1 for rows in stored.values() if rows),
            "stored_twice": sum(1 for rows in stored.values() if len(rows) > 1),
            "delivered": delivered,
            "duplicates": len(duplicates),
            "lost": len(lost),
            "ingest_answers": answers,
            "answers_500": answers.get("500", 0),
            "delivery_statuses": statuses,
            "duplicate_details": duplicates[:20],
            "lost_ids": lost[:20],
            "id_mismatches": mismatched_ids[:20],
        }


def main(argv=None) -> int:
    args = parse_args(argv)
    harness = Harness(args)
    results = []

    def interrupted(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupted)
    try:
        log(f"private PostgreSQL on {args.pg_port} ({harness.pg_data}), Redis on {args.redis_port}")
        harness.pg_start()
        harness.redis_start()
        harness.prepare()
        harness.start_receiver()
        harness.start_web()
        harness.start_worker()
        harness.start_beat()
        time.sleep(3)
        for turn, fault in enumerate(args.faults):
            if time.monotonic() > harness.deadline:
                log(f"--max-seconds reached: {fault} and later faults not run")
                break
            results.append(harness.run_fault(fault, turn))
            summary = {k: v for k, v in results[-1].items() if not k.endswith(("_details", "_ids", "mismatches"))}
            log(json.dumps(summary))
    except KeyboardInterrupt:
        log("interrupted")
    finally:
        harness.close()
    ok = all(
        r["settled"] and r["lost"] == 0 and r["stored_twice"] == 0 and r["answers_500"] == 0 and not r["id_mismatches"]
        and (r["duplicates"] == 0 or r["fault"] == "worker_kill")  # at-least-once after a crash mid-send
        for r in results
    )  # fmt: skip
    print(json.dumps({"ok": ok, "log_dir": str(harness.log_dir), "faults": results}, indent=None if args.json else 2))
    return 0 if ok and len(results) == len(args.faults) else 1


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "_receiver":
        run_receiver(int(sys.argv[2]))
    else:
        sys.exit(main())
