"""`make run`: web, worker, beat and a demo receiver on the embedded defaults, plus one demo webhook.

Ctrl-C stops everything. Nothing here is needed in production, where the
Procfile runs each process on its own.
"""

import contextlib
import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
PORT = os.environ.get("PORT", "8000")
RECEIVER_PORT = os.environ.get("DEMO_RECEIVER_PORT", "8001")
BASE_URL = f"http://127.0.0.1:{PORT}"
RECEIVER_URL = f"http://127.0.0.1:{RECEIVER_PORT}/hooks"
EMBEDDED_BASE_URL = "http://127.0.0.1:8000"  # config/settings.py's default PUBLIC_BASE_URL
# The settings' own VAR_DIR (config/settings.py), read without loading Django.
VAR_DIR = Path(os.environ.get("HOOKLINE_VAR_DIR") or ROOT / "var")

PROCESSES = {
    "web": [
        PYTHON,
        "-m",
        "gunicorn",
        "config.wsgi",
        "--config",
        str(ROOT / "config" / "gunicorn.conf.py"),
        "--bind",
        f"127.0.0.1:{PORT}",
        "--workers",
        "2",
        "--access-logfile",
        "-",
    ],
    # WARNING: at INFO the sweep every 5 s writes lines that push the sign-in email out of view.
    "worker": [PYTHON, "-m", "celery", "-A", "config", "worker", "--loglevel", "WARNING", "--concurrency", "2"],
    "beat": [
        PYTHON,
        "-m",
        "celery",
        "-A",
        "config",
        "beat",
        "--loglevel",
        "WARNING",
        "-S",
        "config.beat:DatabaseScheduler",
    ],
    "receiver": [PYTHON, str(ROOT / "scripts" / "demo_receiver.py"), RECEIVER_PORT],
}


def manage(*args: str, check: bool = True) -> str:
    return subprocess.run([PYTHON, "manage.py", *args], cwd=ROOT, check=check, capture_output=True, text=True).stdout


def refuse_to_start_twice() -> object:
    """Hold var/'s run lock for as long as this process lives, or exit saying why it cannot start.

    Two `make run` on one var/ would share its SQLite database and broker with two workers and two
    beats; and where the second's web could not bind its port, it used to take the first's server
    for its own and report it as started.
    """
    VAR_DIR.mkdir(mode=0o700, parents=True, exist_ok=True)  # its owner's only, as the settings make it
    lock = open(VAR_DIR / "make-run.lock", "w")  # held open, and so locked, until this process exits
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise SystemExit(f"!! another `make run` is already running on {VAR_DIR}: stop it (Ctrl-C) first") from None
    for variable, port in (("PORT", PORT), ("DEMO_RECEIVER_PORT", RECEIVER_PORT)):
        with socket.socket() as probe:
            # As gunicorn and the receiver bind: the last run's connections left in TIME_WAIT are no obstacle.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(("127.0.0.1", int(port)))
            except OSError as error:
                raise SystemExit(
                    f"!! port {port} is not free ({error.strerror}): stop what listens there, "
                    f"or choose another one, e.g. {variable}={int(port) + 10} make run"
                ) from None
    return lock


def refuse_if_running() -> None:
    """Exit saying so while a `make run` holds var/'s run lock: `make clean` would delete its database under it."""
    lock_path = VAR_DIR / "make-run.lock"
    if not lock_path.exists():
        return
    with open(lock_path) as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise SystemExit(f"!! `make run` is running on {VAR_DIR}: stop it (Ctrl-C) first") from None


# What ends `make run`: Ctrl-C, a `kill`, the terminal closed.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def start(processes: dict[str, list[str]]) -> dict[str, subprocess.Popen]:
    # Unbuffered: a child's lines (beat's banner) show at once also when this output goes to a pipe
    # or a file, not when its buffer fills.
    environment = {**os.environ, "PYTHONUNBUFFERED": "1"}
    # Each child in its own process group: the terminal's Ctrl-C reaches this script alone, and stop()
    # sends each child one SIGTERM. In the terminal's group, a child got the SIGINT and then stop()'s
    # SIGTERM, and the worker began its warm shutdown twice ("worker: Warm shutdown" printed twice).
    children: dict[str, subprocess.Popen] = {}
    try:
        for name, command in processes.items():
            children[name] = subprocess.Popen(
                command, cwd=ROOT, env=environment, stdin=subprocess.DEVNULL, process_group=0
            )
    except BaseException:  # Ctrl-C among the starts: none of those started is left running
        stop(children)
        raise
    return children


# How long a child has to stop after its SIGTERM before it is killed.
STOP_WAIT_SECONDS = 10


def stop(children: dict[str, subprocess.Popen]) -> None:
    for child in children.values():
        if child.poll() is None:
            child.terminate()
    for child in children.values():
        try:
            child.wait(timeout=STOP_WAIT_SECONDS)
        except subprocess.TimeoutExpired:
            # Its whole process group (start() made it its leader): killed alone, the processes it
            # started (gunicorn's workers, the worker's pool) would be left running, and no Ctrl-C
            # from the terminal reaches their group.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.pid, signal.SIGKILL)
            child.wait()


def exited(children: dict[str, subprocess.Popen]) -> str | None:
    """A line naming the first child that has exited, if any has."""
    for name, child in children.items():
        if child.poll() is not None:
            return f"!! {name} exited with code {child.returncode}; stopping"
    return None


def wait_until_ready(children: dict[str, subprocess.Popen], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        # A web that could not start must not leave us asking for 60 s (nor another server answering).
        if message := exited(children):
            raise SystemExit(message)
        try:
            with urllib.request.urlopen(f"{BASE_URL}/readyz", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"Hookline did not become ready on {BASE_URL} within {timeout:.0f} s")


def show_demo_webhook(seed: dict) -> None:
    if seed["source_id"] is None:
        print("==> the demo Stripe source was deleted in the dashboard: no demo webhook is sent")
        return
    # Not checked: a refused send exits 1 but still prints its answer, shown below.
    sent = json.loads(
        manage("send_test_webhook", "--source", str(seed["source_id"]), "--fresh-id", "--json", check=False)
    )
    if sent["status"] != 200:
        print(f"!! the demo webhook was not accepted: {sent}")
        return
    event_id = json.loads(sent["body"])["id"]
    print(f"==> demo Stripe webhook received: event {event_id}", flush=True)
    if seed["destination_id"] is None:
        print("==> the demo receiver's destination was deleted in the dashboard: nothing to deliver it to")
        return
    event_page = f"{BASE_URL}/o/{seed['organization']}/events/{event_id}/"
    # Only the demo destination's delivery is followed: one the user added that fails (or is slow)
    # must not hold up the rest of this start, nor be reported as the demo webhook not delivered.
    delivery = None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        listed = json.loads(manage("list_events", "--org", seed["organization"], "--search", event_id, "--json"))
        deliveries = [d for event in listed["events"] if event["id"] == event_id for d in event["deliveries"]]
        delivery = next((d for d in deliveries if d["destination_id"] == seed["destination_id"]), None)
        if delivery and delivery["status"] == "succeeded":
            print(f"==> delivered to {delivery['destination']}: received → delivered; see {event_page}")
            return
        # Failed once: dead, or pending its first retry, which is a schedule's wait away.
        if delivery and delivery["status"] in ("pending", "dead") and delivery["attempts"]:
            print(
                f"!! the demo webhook's delivery to {delivery['destination']} ({seed['destination_url']}) failed: "
                f"{delivery['last_error']}; see {event_page}"
            )
            if seed["destination_url"] != RECEIVER_URL:
                # Seeded once, and what the user changed stays: after a first run on another receiver port
                # it still points there.
                first_port = urllib.parse.urlsplit(seed["destination_url"]).port
                way_out = f"run with DEMO_RECEIVER_PORT={first_port}, or " if first_port else ""
                print(
                    f"   the demo destination is not this run's receiver ({RECEIVER_URL}): it was set up by the first "
                    f"`make run`; {way_out}change its URL in the dashboard"
                )
            return
        time.sleep(0.5)
    print(f"!! the demo webhook was not delivered within 60 s; look at the worker's output above, and {event_page}")


def operator_command(command: str) -> str:
    """A command line that reaches this server from another shell (the settings' default is port 8000)."""
    if BASE_URL == EMBEDDED_BASE_URL:
        return command
    return f"PUBLIC_BASE_URL={BASE_URL} {command}"


# The demo destination's secret, kept for the demo receiver: seed_demo gives it only in the run that
# creates the destination (a secret is never shown once set), and later starts need it too.
DEMO_RECEIVER_SECRET_FILE = VAR_DIR / "demo_receiver_secret"


def demo_receiver_secret(seed: dict) -> str:
    """The secret the demo receiver checks signatures with: the one seed_demo just made, kept in var/
    (readable by its owner only) for later starts, or the one kept by the start that made it; "" when
    there is none (the destination deleted, or var/ emptied while the database stayed)."""
    if not seed.get("destination_id"):
        DEMO_RECEIVER_SECRET_FILE.unlink(missing_ok=True)  # deleted: the next seed makes a new one
        return ""
    if secret := seed.get("destination_secret"):
        VAR_DIR.mkdir(mode=0o700, parents=True, exist_ok=True)
        # Created with its mode (O_EXCL on a fresh name, then renamed): never readable by others, not
        # even between the write and a chmod; a file left by an older run is replaced, not reused.
        partial = DEMO_RECEIVER_SECRET_FILE.with_name(f".{DEMO_RECEIVER_SECRET_FILE.name}.{os.getpid()}")
        partial.unlink(missing_ok=True)
        with os.fdopen(os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as kept:
            kept.write(secret)
        os.replace(partial, DEMO_RECEIVER_SECRET_FILE)
        return secret
    try:
        return DEMO_RECEIVER_SECRET_FILE.read_text().strip()
    except FileNotFoundError:
        return ""


def main() -> None:
    run_lock = refuse_to_start_twice()  # noqa: F841 - held until exit
    os.environ.setdefault("PUBLIC_BASE_URL", BASE_URL)
    os.environ.setdefault("ALLOW_PRIVATE_DESTINATIONS", "true")
    os.environ.setdefault("SWEEP_INTERVAL_SECONDS", "5")
    os.environ.setdefault("DEMO_RECEIVER_URL", RECEIVER_URL)
    manage("install_periodic_tasks")  # the beat schedule, visible in the admin before beat starts
    seed = json.loads(manage("seed_demo", "--json"))
    # The demo receiver checks each delivery's signature as the user's own endpoint must. Set before
    # the children start, in the environment rather than on a command line that `ps` shows.
    if secret := demo_receiver_secret(seed):
        os.environ["DEMO_RECEIVER_SECRET"] = secret
    elif seed.get("destination_id"):
        # A var/ from a `make run` older than the kept secret, or the file deleted: the receiver can
        # only say "not checked" on every delivery, which does not say how to have it checked again.
        print(
            f"!! the demo receiver has no secret to verify signatures with ({DEMO_RECEIVER_SECRET_FILE} is "
            "missing: the secret is given once, by the run that creates the demo destination). `make clean` "
            "starts over with a new demo that has one; or rotate the demo destination's secret in the "
            "dashboard and write the new one to that file.",
            flush=True,
        )

    def interrupted(*_):
        raise SystemExit(0)

    # Before the children start: in their own process groups, they get none of these themselves.
    for number in STOP_SIGNALS:
        signal.signal(number, interrupted)
    children: dict[str, subprocess.Popen] = {}
    # Whatever ends this (Ctrl-C, a child's exit, web not ready, an error), every child is stopped:
    # none is left running, holding a port and the database, after `make run` has returned.
    try:
        children = start(PROCESSES)
        wait_until_ready(children)
        show_demo_webhook(seed)
        print_where_to_look(seed)
        while not (message := exited(children)):
            time.sleep(1)
        raise SystemExit(message)
    finally:
        for number in STOP_SIGNALS:  # a second Ctrl-C must not cut the stop short
            signal.signal(number, signal.SIG_IGN)
        stop(children)


def print_where_to_look(seed: dict) -> None:
    list_events = f".venv/bin/python manage.py list_events --org {seed['organization']}"
    send_another = f".venv/bin/python manage.py send_test_webhook --source {seed['source_id']} --fresh-id"
    print(
        f"\nHookline is running on {BASE_URL}\n"
        f"  ingest URL of the demo Stripe source: {seed['ingest_url'] or '(deleted)'}\n"
        f"  dashboard: {BASE_URL}/accounts/sign-in/ as owner@demo.example "
        "(the sign-in link and code are printed here, by the console mail backend)\n"
        f"  admin: {BASE_URL}/admin/ (create a login with: .venv/bin/python manage.py createsuperuser)\n"
        f"  events: {operator_command(list_events)}\n"
        f"  operator commands in another shell see this server with: "
        f"export PUBLIC_BASE_URL={BASE_URL} ALLOW_PRIVATE_DESTINATIONS=true\n"
        f"  send another: {operator_command(send_another)}\n"
        "Press Ctrl-C to stop.\n",
        flush=True,
    )


if __name__ == "__main__":
    if sys.argv[1:] == ["--refuse-if-running"]:  # `make clean`
        refuse_if_running()
    elif sys.argv[1:] == ["--check-can-start"]:
        # `make run`, before its migrate: a second `make run` migrated the first one's database under
        # it (a `git pull` away, with new migrations) before it was refused. main() checks again.
        refuse_to_start_twice().close()
    else:
        main()
