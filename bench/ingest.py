"""Ingest throughput benchmark: signed Stripe webhooks against gunicorn, with /livez as the baseline.

Starts gunicorn with the production settings (server mode: PostgreSQL and Redis),
creates an organization and a Stripe source in its own database, pre-signs unique
Stripe events with the official ``stripe`` package, then drives for a fixed time:

  warm-up   both endpoints, a few seconds, not counted
  baseline  GET /livez (no work: the same app, middleware and server)
  ingest    POST /in/<token>/ (verified, committed, enqueued-or-flagged)
  baseline  GET /livez again (``--no-second-baseline`` skips it)

and prints req/s, p50/p99 latency, non-2xx count, the ratio ingest/baseline and a
check that every acknowledged (2xx) webhook is a committed row.

The load generator is ``wrk`` when installed (a Lua script cycles through the
pre-signed requests), else a Python fallback (processes with one connection per
request). Only 127.0.0.1 is contacted; gunicorn is stopped on exit, Ctrl-C included.

    .venv/bin/python bench/ingest.py [--duration 15] [--workers 4] [--concurrency 32] [--json]
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import math
import multiprocessing
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
from array import array
from pathlib import Path

import stripe
from stack import HOST, PYTHON, ROOT, json_line, log, production_env, stop_group
from stack import manage as run_manage

GUNICORN = str(Path(PYTHON).with_name("gunicorn"))
FIXTURE = ROOT / "webhooks" / "tests" / "fixtures" / "stripe" / "invoice.paid.json"
# A fixed key for the benchmark's own database; never a production key.
BENCH_FERNET_KEY = "q3Yb0mFQ6sWm5b1j8mY0k2fS1xk3bVf3m8y9bq0zQ1Y="
STRIPE_TOLERANCE = 300  # seconds; Stripe's default and the source's default


# --- configuration -------------------------------------------------------------------------------


def parse_args(argv=None) -> argparse.Namespace:
    env = os.environ.get
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=float(env("BENCH_DURATION", "15")), help="seconds per phase")
    parser.add_argument("--warmup", type=float, default=float(env("BENCH_WARMUP", "3")), help="warm-up seconds")
    parser.add_argument(
        "--concurrency", type=int, default=int(env("BENCH_CONCURRENCY", "0")), help="open connections (0: auto)"
    )
    # Defaults are the Procfile's web process: 2 gthread workers x 8 threads.
    parser.add_argument("--workers", type=int, default=int(env("BENCH_WORKERS", "2")), help="gunicorn workers")
    parser.add_argument(
        "--worker-class",
        default=env("BENCH_WORKER_CLASS", "gthread"),
        choices=["sync", "gthread", "gevent"],
        help="gunicorn worker class (the same for both endpoints; gevent only for comparison, see docs/benchmarks.md)",
    )
    parser.add_argument(
        "--threads", type=int, default=int(env("BENCH_THREADS", "8")), help="threads per gthread worker"
    )
    parser.add_argument("--port", type=int, default=int(env("BENCH_PORT", "8765")))
    parser.add_argument(
        "--database-url",
        default=env("BENCH_DATABASE_URL", "postgres://postgres@localhost:5432/hookline_bench"),
        help="the benchmark's own database (created when missing; its events are truncated)",
    )
    parser.add_argument("--redis-url", default=env("BENCH_REDIS_URL", "redis://localhost:6379/14"))
    parser.add_argument(
        "--loadgen", choices=["auto", "wrk", "python"], default=env("BENCH_LOADGEN", "auto"), help="load generator"
    )
    parser.add_argument("--wrk-threads", type=int, default=int(env("BENCH_WRK_THREADS", "2")))
    parser.add_argument(
        "--max-rate",
        type=int,
        default=int(env("BENCH_MAX_RATE", "6000")),
        help="requests/s to pre-sign for (unique ids; past it ids repeat and are reported)",
    )
    parser.add_argument("--no-second-baseline", action="store_true", help="skip the second /livez phase")
    parser.add_argument("--keep-data", action="store_true", help="do not truncate the bench database's events")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    args = parser.parse_args(argv)
    if args.duration <= 0 or args.warmup < 0:
        parser.error("--duration must be > 0 and --warmup >= 0")
    if args.duration + args.warmup > STRIPE_TOLERANCE - 30:
        parser.error(f"phases are signed once, so --duration + --warmup must stay under {STRIPE_TOLERANCE - 30} s")
    if args.worker_class == "gevent":
        try:
            import gevent  # noqa: F401
        except ImportError:
            parser.error("--worker-class gevent needs gevent, which Hookline does not install: pip install gevent")
    if args.loadgen == "auto":
        args.loadgen = "wrk" if shutil.which("wrk") else "python"
    if args.loadgen == "wrk" and not shutil.which("wrk"):
        parser.error("wrk is not installed (apt-get install wrk), use --loadgen python")
    if args.concurrency <= 0:
        # wrk keeps many sockets cheaply; Python processes compete with the server for the 2 cores.
        args.concurrency = 16 if args.loadgen == "wrk" else 2 * args.workers
    return args


def server_env(args) -> dict[str, str]:
    return production_env(
        database_url=args.database_url,
        redis_url=args.redis_url,
        secret_key="bench-only-secret-key-" + "x" * 32,
        fernet_key=BENCH_FERNET_KEY,
        web_port=args.port,
        queue="hookline-bench",
    )


# --- database, redis, tenant -----------------------------------------------------------------------


def ensure_database(database_url: str) -> None:
    import psycopg
    from psycopg import sql

    parts = urllib.parse.urlsplit(database_url)
    name = parts.path.lstrip("/")
    admin_url = urllib.parse.urlunsplit(parts._replace(path="/postgres"))
    with psycopg.connect(admin_url, autocommit=True, connect_timeout=5) as conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone() is None:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


def flush_redis(redis_url: str) -> None:
    import redis

    client = redis.Redis.from_url(redis_url, socket_timeout=5)
    try:
        client.flushdb()
    finally:
        client.close()


def manage(args, *command: str) -> str:
    return run_manage(server_env(args), *command, timeout=180)


def prepare_tenant(args, run_id: str) -> tuple[str, str]:
    """Migrate, empty the event table, create an organization and a Stripe source; returns (token, secret)."""
    import psycopg

    manage(args, "migrate", "--noinput")
    with psycopg.connect(args.database_url, autocommit=True, connect_timeout=5) as conn:
        if not args.keep_data:
            conn.execute("TRUNCATE webhooks_webhookevent CASCADE")
        exists = conn.execute("SELECT 1 FROM organizations_organization WHERE slug = 'bench'").fetchone()
    if exists is None:
        manage(args, "create_organization", "--name", "Bench", "--slug", "bench", "--owner-email", "bench@example.com")
    secret = f"whsec_bench_{run_id}"
    out = manage(
        args,
        "create_source",
        "--org",
        "bench",
        "--provider",
        "stripe",
        "--name",
        f"bench {run_id}",
        "--secret",
        secret,
        "--json",
    )
    return json_line(out)["token"], secret


def count_events(database_url: str, id_prefix: str) -> dict[str, int]:
    import psycopg

    with psycopg.connect(database_url, autocommit=True, connect_timeout=5) as conn:
        row = conn.execute(
            "SELECT count(*), count(DISTINCT provider_event_id), coalesce(sum(duplicate_count), 0),"
            " count(*) FILTER (WHERE status = 'rejected')"
            " FROM webhooks_webhookevent WHERE provider_event_id LIKE %s",
            [id_prefix + "%"],
        ).fetchone()
    return {"rows": row[0], "distinct_ids": row[1], "duplicates": int(row[2]), "rejected": row[3]}


# --- signed requests -----------------------------------------------------------------------------------


def body_template() -> tuple[str, str]:
    """The fixture's text split around its event id: body = prefix + id + suffix (about 1.6 KB)."""
    text = FIXTURE.read_text()
    original_id = json.loads(text)["id"]
    prefix, sep, suffix = text.partition(json.dumps(original_id))
    assert sep, "the fixture's id must appear as a JSON string"
    return prefix + '"', '"' + suffix


def sign_requests(secret: str, id_prefix: str, count: int) -> tuple[str, str, list[tuple[str, str]]]:
    """``count`` unique (event id, Stripe-Signature) pairs, signed by the stripe package itself."""
    prefix, suffix = body_template()
    timestamp = int(time.time())
    signed = []
    for n in range(count):
        event_id = f"{id_prefix}{n:08d}"
        payload = prefix + event_id + suffix
        signature = stripe.WebhookSignature._compute_signature(f"{timestamp}.{payload}", secret)
        signed.append((event_id, f"t={timestamp},v1={signature}"))
    return prefix, suffix, signed


# --- gunicorn ----------------------------------------------------------------------------------------


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        # As gunicorn does: sockets of the previous run left in TIME_WAIT must not count.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def start_gunicorn(args, log_path: Path) -> subprocess.Popen:
    command = [
        GUNICORN,
        "config.wsgi",
        "--config",
        str(ROOT / "config" / "gunicorn.conf.py"),
        "--bind",
        f"{HOST}:{args.port}",
        "--workers",
        str(args.workers),
        "--worker-class",
        args.worker_class,
        "--backlog",
        "2048",
        "--graceful-timeout",
        "5",
        "--error-logfile",
        str(log_path),
        "--log-level",
        "warning",
    ]
    if args.worker_class == "gthread":
        command += ["--threads", str(args.threads)]
    with open(log_path, "ab") as log_file:
        # A session of its own: the whole group (arbiter and workers) is stopped together.
        return subprocess.Popen(
            command, cwd=ROOT, env=server_env(args), stdout=log_file, stderr=log_file, start_new_session=True
        )


def stop_gunicorn(process: subprocess.Popen | None) -> None:
    if process is not None and process.poll() is None:
        stop_group(process)


def wait_until_up(port: int, process: subprocess.Popen, log_path: Path, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"gunicorn exited with {process.returncode}:\n{log_path.read_text()[-3000:]}")
        with contextlib.suppress(OSError, http.client.HTTPException):
            conn = http.client.HTTPConnection(HOST, port, timeout=2)
            conn.request("GET", "/livez")
            if conn.getresponse().status == 200:
                conn.close()
                return
            conn.close()
        time.sleep(0.2)
    raise RuntimeError(f"gunicorn did not answer /livez within {timeout} s:\n{log_path.read_text()[-3000:]}")


# --- wrk load generator ------------------------------------------------------------------------------------

WRK_SCRIPT = r"""
-- Generated by bench/ingest.py. Each wrk thread takes every n-th pre-signed request.
local mode, path, data_file, result_file = %(mode)s, %(path)s, %(data)s, %(result)s
local nthreads = %(threads)d
local prefix = %(prefix)s
local suffix = %(suffix)s
local threads = {}
local counter = 0

function setup(thread)
  thread:set("tid", counter)
  counter = counter + 1
  table.insert(threads, thread)
end

function init(args)
  ids, sigs, n, i = {}, {}, 0, 0
  non2xx, wrapped = 0, 0
  if mode == "ingest" then
    local line_no = 0
    for line in io.lines(data_file) do
      if line_no %% nthreads == tid then
        local id, sig = line:match("^(%%S+) (%%S+)$")
        n = n + 1
        ids[n], sigs[n] = id, sig
      end
      line_no = line_no + 1
    end
  end
end

function request()
  if mode ~= "ingest" then
    return wrk.format("GET", path)
  end
  i = i + 1
  if i > n then i = 1; wrapped = wrapped + 1 end
  return wrk.format("POST", path, {["Content-Type"] = "application/json", ["Stripe-Signature"] = sigs[i]},
    prefix .. ids[i] .. suffix)
end

function response(status, headers, body)
  if status < 200 or status > 299 then non2xx = non2xx + 1 end
end

function done(summary, latency, requests)
  local bad, wraps = 0, 0
  for _, thread in ipairs(threads) do
    bad = bad + thread:get("non2xx")
    wraps = wraps + thread:get("wrapped")
  end
  local f = io.open(result_file, "w")
  f:write(string.format(
    '{"requests": %%d, "duration_us": %%d, "non2xx": %%d, "wrapped": %%d, "p50_us": %%d, "p99_us": %%d, ' ..
    '"max_us": %%d, "mean_us": %%f, "connect_errors": %%d, "read_errors": %%d, "write_errors": %%d, ' ..
    '"timeouts": %%d}',
    summary.requests, summary.duration, bad, wraps, latency:percentile(50), latency:percentile(99),
    latency.max, latency.mean, summary.errors.connect, summary.errors.read, summary.errors.write,
    summary.errors.timeout))
  f:close()
end
"""


def _lua_string(text: str) -> str:
    level = 1
    while f"]{'=' * level}]" in text:
        level += 1
    return f"[{'=' * level}[{text}]{'=' * level}]"


def run_wrk(args, workdir: Path, mode: str, path: str, duration: float, signed=None, template=None) -> dict:
    phase = f"{mode}-{time.monotonic_ns()}"
    data_path, result_path, script_path = (workdir / f"{phase}.{ext}" for ext in ("txt", "json", "lua"))
    if signed is not None:
        data_path.write_text("".join(f"{event_id} {sig}\n" for event_id, sig in signed))
    threads = max(1, min(args.wrk_threads, args.concurrency))
    prefix, suffix = template or ("", "")
    script = WRK_SCRIPT % {
        "mode": _lua_string(mode),
        "path": _lua_string(path),
        "data": _lua_string(str(data_path)),
        "result": _lua_string(str(result_path)),
        "prefix": _lua_string(prefix),
        "suffix": _lua_string(suffix),
        "threads": threads,
    }
    script_path.write_text(script)
    seconds = max(1, math.ceil(duration))
    command = [
        "wrk",
        "--threads",
        str(threads),
        "--connections",
        str(args.concurrency),
        "--duration",
        f"{seconds}s",
        "--timeout",
        "10s",
        "--script",
        str(script_path),
        f"http://{HOST}:{args.port}{path}",
    ]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 60, check=False)
    if completed.returncode != 0 or not result_path.exists():
        raise RuntimeError(f"wrk failed ({completed.returncode}):\n{completed.stdout}\n{completed.stderr}")
    raw = json.loads(result_path.read_text())
    elapsed = raw["duration_us"] / 1e6
    errors = raw["connect_errors"] + raw["read_errors"] + raw["write_errors"] + raw["timeouts"]
    return {
        "requests": raw["requests"],
        "seconds": round(elapsed, 3),
        "rps": raw["requests"] / elapsed if elapsed else 0.0,
        "p50_ms": raw["p50_us"] / 1000,
        "p99_ms": raw["p99_us"] / 1000,
        "max_ms": raw["max_us"] / 1000,
        "non2xx": raw["non2xx"],
        "ok": raw["requests"] - raw["non2xx"],
        "socket_errors": errors,
        "wrapped": raw["wrapped"],
    }


# --- Python load generator -------------------------------------------------------------------------


def _python_client(port, path, requests, start_at, stop_at, queue) -> None:
    """One sequential client: a new connection per request (like gunicorn's sync workers want)."""
    latencies, non2xx, errors, wrapped, i = array("d"), 0, 0, 0, 0
    last_end = start_at
    while time.time() < start_at:
        time.sleep(0.001)
    while True:
        began = time.perf_counter()
        if time.time() >= stop_at:
            break
        try:
            conn = http.client.HTTPConnection(HOST, port, timeout=10)
            if requests:
                if i >= len(requests):
                    i, wrapped = 0, wrapped + 1
                body, headers = requests[i]
                i += 1
                conn.request("POST", path, body=body, headers=headers)
            else:
                conn.request("GET", path, headers={"Connection": "close"})
            response = conn.getresponse()
            response.read()
            conn.close()
            latencies.append(time.perf_counter() - began)
            if not 200 <= response.status <= 299:
                non2xx += 1
        except (OSError, http.client.HTTPException):
            errors += 1
        last_end = time.time()
    queue.put((latencies.tobytes(), non2xx, errors, wrapped, last_end))


def run_python(args, mode: str, path: str, duration: float, signed=None, template=None) -> dict:
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    clients = args.concurrency
    slices: list[list] = [[] for _ in range(clients)]
    if signed is not None:
        prefix, suffix = template
        for n, (event_id, sig) in enumerate(signed):
            body = (prefix + event_id + suffix).encode()
            headers = {"Content-Type": "application/json", "Stripe-Signature": sig, "Connection": "close"}
            slices[n % clients].append((body, headers))
    start_at = time.time() + 0.5
    stop_at = start_at + duration
    processes = [
        context.Process(target=_python_client, args=(args.port, path, slices[k], start_at, stop_at, queue), daemon=True)
        for k in range(clients)
    ]
    for process in processes:
        process.start()
    latencies, non2xx, errors, wrapped, last_end = array("d"), 0, 0, 0, start_at
    try:
        for _ in processes:
            data, bad, errs, wraps, ended = queue.get(timeout=duration + 60)
            chunk = array("d")
            chunk.frombytes(data)
            latencies.extend(chunk)
            non2xx, errors, wrapped, last_end = non2xx + bad, errors + errs, wrapped + wraps, max(last_end, ended)
    finally:
        for process in processes:
            process.join(timeout=5)
            if process.is_alive():
                process.kill()
    ordered = sorted(latencies)
    elapsed = max(last_end - start_at, 1e-9)

    def percentile(p: float) -> float:
        if not ordered:
            return 0.0
        return ordered[min(len(ordered) - 1, max(0, math.ceil(p / 100 * len(ordered)) - 1))] * 1000

    return {
        "requests": len(ordered),
        "seconds": round(elapsed, 3),
        "rps": len(ordered) / elapsed,
        "p50_ms": percentile(50),
        "p99_ms": percentile(99),
        "max_ms": ordered[-1] * 1000 if ordered else 0.0,
        "non2xx": non2xx,
        "ok": len(ordered) - non2xx,
        "socket_errors": errors,
        "wrapped": wrapped,
    }


# --- the run ----------------------------------------------------------------------------------------


def drive(args, workdir, mode, path, duration, signed=None, template=None) -> dict:
    before = cpu_seconds_by_role()
    if args.loadgen == "wrk":
        result = run_wrk(args, workdir, mode, path, duration, signed, template)
    else:
        result = run_python(args, mode, path, duration, signed, template)
    after = cpu_seconds_by_role()
    requests = max(1, result.get("ok", 0) + result.get("non2xx", 0))
    # CPU milliseconds per request, by process kind: where the two cores went in this phase.
    result["cpu_ms_per_request"] = {
        role: round((after.get(role, 0.0) - before.get(role, 0.0)) * 1000 / requests, 3)
        for role in sorted(set(before) | set(after))
    }
    return result


_CPU_ROLES = {"gunicorn": "gunicorn", "postgres": "postgres", "redis-server": "redis", "wrk": "loadgen"}


def cpu_seconds_by_role() -> dict[str, float]:
    """User+system CPU seconds of every live process, summed by what it is (from /proc)."""
    ticks = os.sysconf("SC_CLK_TCK")
    totals: dict[str, float] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()
        role = _CPU_ROLES.get(name)
        if role is None and any(b"gunicorn" in part for part in cmdline[:2]):
            role = "gunicorn"
        elif role is None and b"run_ingest_writer" in cmdline[2:3]:
            role = "writer"
        elif role is None and any(b"bench/ingest.py" in part for part in cmdline[:2]):
            role = "loadgen"
        if role is None:
            continue
        totals[role] = totals.get(role, 0.0) + (int(fields[11]) + int(fields[12])) / ticks
    return totals


def machine() -> dict:
    info = {"cpus": os.cpu_count(), "python": sys.version.split()[0]}
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    return info


def run(args) -> dict:
    run_id = secrets.token_hex(4)
    if not port_is_free(args.port):
        raise RuntimeError(f"port {args.port} on {HOST} is in use; pass --port")
    log(f"preparing database {args.database_url} and redis {args.redis_url}")
    ensure_database(args.database_url)
    flush_redis(args.redis_url)
    token, secret = prepare_tenant(args, run_id)
    ingest_path = f"/in/{token}/"
    template = body_template()
    per_phase = int(args.max_rate * (args.duration + 1))

    server = None
    with tempfile.TemporaryDirectory(prefix="hookline-bench-") as tmp:
        workdir = Path(tmp)
        log_path = workdir / "gunicorn.log"
        try:
            server = start_gunicorn(args, log_path)
            wait_until_up(args.port, server, log_path)
            log(
                f"gunicorn up: {args.workers} {args.worker_class} workers; load: {args.loadgen}, "
                f"{args.concurrency} connections",
            )
            if args.warmup:
                half = max(1.0, args.warmup / 2)
                drive(args, workdir, "livez", "/livez", half)
                _, _, warm = sign_requests(secret, f"evt_bench_{run_id}_w_", int(args.max_rate * (half + 1)))
                drive(args, workdir, "ingest", ingest_path, half, warm, template)

            phases = []
            log(f"baseline /livez for {args.duration:g} s")
            phases.append(("livez", drive(args, workdir, "livez", "/livez", args.duration)))

            id_prefix = f"evt_bench_{run_id}_i_"
            _, _, signed = sign_requests(secret, id_prefix, per_phase)
            log(f"ingest {ingest_path} for {args.duration:g} s ({len(signed)} pre-signed unique events)")
            ingest = drive(args, workdir, "ingest", ingest_path, args.duration, signed, template)
            phases.append(("ingest", ingest))

            time.sleep(1.0)  # requests still in flight when the load generator stopped finish and commit
            committed = count_events(args.database_url, id_prefix)

            if not args.no_second_baseline:
                log(f"baseline /livez again for {args.duration:g} s")
                phases.append(("livez", drive(args, workdir, "livez", "/livez", args.duration)))
        finally:
            stop_gunicorn(server)
        server_log = log_path.read_text()[-2000:] if log_path.exists() else ""

    baselines = [result["rps"] for name, result in phases if name == "livez"]
    baseline_rps = sum(baselines) / len(baselines)
    acknowledged = ingest["ok"]
    # The load generator stops with up to `concurrency` requests in flight; the server may still commit them.
    in_flight_allowance = 0 if args.loadgen == "python" else args.concurrency
    check_ok = (
        acknowledged <= committed["rows"] <= acknowledged + in_flight_allowance
        and committed["rows"] == committed["distinct_ids"]
        and committed["duplicates"] == 0
        and committed["rejected"] == 0
        and ingest["wrapped"] == 0
    )
    return {
        "run_id": run_id,
        "machine": machine(),
        "settings": {
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "workers": args.workers,
            "worker_class": args.worker_class,
            "threads": args.threads if args.worker_class == "gthread" else 1,
            "concurrency": args.concurrency,
            "loadgen": args.loadgen,
            "wrk_threads": min(args.wrk_threads, args.concurrency) if args.loadgen == "wrk" else None,
            "body_bytes": len((template[0] + id_prefix + "00000000" + template[1]).encode()),
            "database_url": args.database_url,
            "redis_url": args.redis_url,
        },
        "phases": [{"endpoint": name, **_rounded(result)} for name, result in phases],
        "baseline_rps": round(baseline_rps, 1),
        "ingest_rps": round(ingest["rps"], 1),
        "ratio": round(ingest["rps"] / baseline_rps, 3) if baseline_rps else None,
        "committed": {**committed, "acknowledged_2xx": acknowledged, "in_flight_allowance": in_flight_allowance},
        "committed_check": "ok" if check_ok else "FAILED",
        "server_log_tail": server_log if (not check_ok or any(r["non2xx"] for _, r in phases)) else "",
    }


def _rounded(result: dict) -> dict:
    return {key: round(value, 2) if isinstance(value, float) else value for key, value in result.items()}


def print_table(report: dict) -> None:
    s = report["settings"]
    print(
        f"gunicorn: {s['workers']} {s['worker_class']} workers"
        + (f" x {s['threads']} threads" if s["worker_class"] == "gthread" else "")
        + f"; load: {s['loadgen']}, {s['concurrency']} connections, {s['duration_s']:g} s per phase;"
        f" body {s['body_bytes']} B; {report['machine'].get('cpus')} CPUs"
    )
    header = f"{'endpoint':<10} {'requests':>9} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'non-2xx':>8} {'sock err':>8}"
    print(header)
    print("-" * len(header))
    for phase in report["phases"]:
        print(
            f"{phase['endpoint']:<10} {phase['requests']:>9} {phase['rps']:>9.1f} {phase['p50_ms']:>8.2f}"
            f" {phase['p99_ms']:>8.2f} {phase['non2xx']:>8} {phase['socket_errors']:>8}"
        )
    print("-" * len(header))
    for phase in report["phases"]:
        cpu = phase.get("cpu_ms_per_request") or {}
        print(f"{phase['endpoint']:<10} CPU ms/request: " + ", ".join(f"{k} {v:.3f}" for k, v in cpu.items()))
    print(
        f"ratio ingest/baseline: {report['ratio']}  (baseline {report['baseline_rps']} req/s = mean of /livez phases)"
    )
    c = report["committed"]
    print(
        f"committed events: {c['rows']} rows, {c['distinct_ids']} distinct ids, {c['duplicates']} duplicates;"
        f" 2xx acknowledged: {c['acknowledged_2xx']} (in-flight allowance {c['in_flight_allowance']})"
        f" -> {report['committed_check']}"
    )
    if report["server_log_tail"]:
        print("gunicorn log tail:\n" + report["server_log_tail"])


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def main(argv=None) -> int:
    args = parse_args(argv)
    # Ctrl-C and SIGTERM unwind through run()'s finally, which stops gunicorn's process group.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        report = run(args)
    except KeyboardInterrupt:
        print("interrupted; gunicorn stopped", file=sys.stderr)
        return 130
    if args.json:
        print(json.dumps(report))
    else:
        print_table(report)
    return 0 if report["committed_check"] == "ok" else 1


if __name__ == "__main__":
    sys.exit(main())
