"""`make run`: web, worker, beat and a demo receiver on the embedded defaults, plus one demo webhook.

Ctrl-C stops everything. Nothing here is needed in production, where the
Procfile runs each process on its own.
"""

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
PORT = os.environ.get("PORT", "8000")
RECEIVER_PORT = os.environ.get("DEMO_RECEIVER_PORT", "8001")
BASE_URL = f"http://127.0.0.1:{PORT}"

os.environ.setdefault("PUBLIC_BASE_URL", BASE_URL)
os.environ.setdefault("ALLOW_PRIVATE_DESTINATIONS", "true")
os.environ.setdefault("SWEEP_INTERVAL_SECONDS", "5")
os.environ.setdefault("DEMO_RECEIVER_URL", f"http://127.0.0.1:{RECEIVER_PORT}/hooks")

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
    "beat": [PYTHON, "-m", "celery", "-A", "config", "beat", "--loglevel", "WARNING", "-S", "django"],
    "receiver": [PYTHON, str(ROOT / "scripts" / "demo_receiver.py"), RECEIVER_PORT],
}


def manage(*args: str, check: bool = True) -> str:
    return subprocess.run([PYTHON, "manage.py", *args], cwd=ROOT, check=check, capture_output=True, text=True).stdout


def wait_until_ready(timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
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
    print(f"==> demo Stripe webhook received: event {event_id}")
    if seed["destination_id"] is None:
        print("==> the demo receiver's destination was deleted in the dashboard: nothing to deliver it to")
        return
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        events = json.loads(manage("list_events", "--org", seed["organization"], "--limit", "20", "--json"))["events"]
        event = next((e for e in events if e["id"] == event_id), None)
        deliveries = event["deliveries"] if event else []
        if deliveries and all(d["status"] == "succeeded" for d in deliveries):
            print(f"==> delivered to {', '.join(d['destination'] for d in deliveries)}: received → delivered")
            return
        time.sleep(1)
    print("!! the demo webhook was not delivered within 60 s; look at the worker's output above")


def main() -> None:
    manage("install_periodic_tasks")  # the beat schedule, visible in the admin before beat starts
    seed = json.loads(manage("seed_demo", "--json"))
    children = {name: subprocess.Popen(command, cwd=ROOT) for name, command in PROCESSES.items()}

    def stop(*_):
        for child in children.values():
            if child.poll() is None:
                child.terminate()
        for child in children.values():
            try:
                child.wait(timeout=10)
            except subprocess.TimeoutExpired:
                child.kill()
        sys.exit(0)

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    wait_until_ready()
    show_demo_webhook(seed)
    print(
        f"\nHookline is running on {BASE_URL}\n"
        f"  ingest URL of the demo Stripe source: {seed['ingest_url'] or '(deleted)'}\n"
        f"  dashboard: {BASE_URL}/accounts/sign-in/ as owner@demo.example "
        "(the sign-in link and code are printed here, by the console mail backend)\n"
        f"  admin: {BASE_URL}/admin/ (create a login with: .venv/bin/python manage.py createsuperuser)\n"
        f"  events: .venv/bin/python manage.py list_events --org {seed['organization']}\n"
        f"  operator commands in another shell see this server with: "
        f"export PUBLIC_BASE_URL={BASE_URL} ALLOW_PRIVATE_DESTINATIONS=true\n"
        f"  send another: .venv/bin/python manage.py send_test_webhook --source {seed['source_id']} --fresh-id\n"
        "Press Ctrl-C to stop.\n",
        flush=True,
    )
    while True:
        for name, child in children.items():
            if child.poll() is not None:
                print(f"!! {name} exited with code {child.returncode}; stopping")
                stop()
        time.sleep(1)


if __name__ == "__main__":
    main()
