"""`make run`'s supervisor (scripts/run_local.py): it starts only where it can, and leaves nothing running.

The script is loaded as a module with `manage` replaced, so that no Django command runs; the
processes it starts are small real ones.
"""

import base64
import fcntl
import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from webhooks.tests.ports import free_port

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "run_local.py"
SEED = {
    "organization": "demo",
    "created": False,
    "source_id": None,
    "ingest_url": None,
    "destination_id": None,
    "destination_url": None,
}


@pytest.fixture
def run_local(monkeypatch, tmp_path):
    """The script as a module on free ports and its own var/, its `manage` calls recorded instead of run."""
    for name in ("PUBLIC_BASE_URL", "ALLOW_PRIVATE_DESTINATIONS", "SWEEP_INTERVAL_SECONDS", "DEMO_RECEIVER_URL"):
        monkeypatch.setenv(name, "unchanged")  # main() sets its defaults; these are restored after the test
    monkeypatch.setenv("PORT", str(free_port()))
    monkeypatch.setenv("DEMO_RECEIVER_PORT", str(free_port()))
    monkeypatch.setenv("HOOKLINE_VAR_DIR", str(tmp_path / "var"))
    spec = importlib.util.spec_from_file_location("run_local_under_test", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.manage_calls = []

    def manage(*args, check=True):
        module.manage_calls.append(args)
        return json.dumps(SEED) if args[0] == "seed_demo" else ""

    monkeypatch.setattr(module, "manage", manage)
    # Should main() start its processes where it must not, nothing real (gunicorn, Celery) is left running.
    monkeypatch.setattr(module, "PROCESSES", {"web": [sys.executable, "-c", "pass"]})
    # main() installs its own SIGINT/SIGTERM handlers, and ignores both while it stops its children.
    handlers = {number: signal.getsignal(number) for number in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    yield module
    for number, handler in handlers.items():
        signal.signal(number, handler)


def test_a_port_in_use_is_said_before_anything_is_seeded_or_started(run_local):
    # The web used to fail to bind while the script took whatever answered on the port for Hookline.
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", int(run_local.PORT)))
        taken.listen()
        with pytest.raises(SystemExit) as stopped:
            run_local.main()
    assert f"port {run_local.PORT} is not free" in str(stopped.value.code)
    assert "PORT=" in str(stopped.value.code)
    assert run_local.manage_calls == []


def test_a_port_whose_last_connections_are_still_in_time_wait_is_free(run_local):
    # The web just stopped by Ctrl-C closed its connections first: a run started right after must start.
    port = int(run_local.PORT)
    with socket.socket() as server:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gunicorn's and the receiver's
        server.bind(("127.0.0.1", port))
        server.listen()
        with socket.create_connection(("127.0.0.1", port)):
            connection, _ = server.accept()
            connection.close()  # the server's end closes first, so it is the one left in TIME_WAIT
    run_local.refuse_to_start_twice().close()


def test_a_second_make_run_on_the_same_var_directory_is_refused(run_local):
    first = run_local.refuse_to_start_twice()
    try:
        with pytest.raises(SystemExit) as stopped:
            run_local.main()
    finally:
        first.close()
    assert "another `make run` is already running" in str(stopped.value.code)
    assert run_local.manage_calls == []


def test_make_run_makes_var_its_owners_only(run_local):
    # `make run` makes var/ (its lock, before Django does) for the SQLite database, whose secrets are
    # encrypted with a key derived from the public default SECRET_KEY: readable by every local user,
    # it gave them away, and the 0600 of var/demo_receiver_secret protected nothing.
    assert not run_local.VAR_DIR.exists()
    run_local.refuse_to_start_twice().close()
    assert run_local.VAR_DIR.stat().st_mode & 0o777 == 0o700


def test_a_child_that_exits_while_web_starts_stops_make_run_and_every_other_child(run_local, monkeypatch):
    # It used to wait for the web for 60 s and then return, leaving the worker, beat and receiver running.
    started = {}

    def start(processes):
        started.update({name: subprocess.Popen(command) for name, command in processes.items()})
        return started

    monkeypatch.setattr(run_local, "start", start)
    monkeypatch.setattr(
        run_local,
        "PROCESSES",
        {
            "web": [sys.executable, "-c", "raise SystemExit(3)"],
            "worker": [sys.executable, "-c", "import time; time.sleep(600)"],
        },
    )
    try:
        with pytest.raises(SystemExit) as stopped:
            run_local.main()
        assert stopped.value.code == "!! web exited with code 3; stopping"
        assert started["worker"].poll() is not None
    finally:
        for child in started.values():
            if child.poll() is None:
                child.kill()
                child.wait()


def test_the_commands_printed_for_another_shell_reach_the_server_on_its_port(run_local, capsys):
    # The settings' default PUBLIC_BASE_URL is port 8000: without it, they posted there.
    run_local.print_where_to_look({**SEED, "source_id": 1, "ingest_url": "http://127.0.0.1/in/x/"})
    printed = capsys.readouterr().out
    base = f"PUBLIC_BASE_URL=http://127.0.0.1:{run_local.PORT}"
    assert f"send another: {base} .venv/bin/python manage.py send_test_webhook --source 1 --fresh-id" in printed
    assert f"events: {base} .venv/bin/python manage.py list_events --org demo" in printed


class FakeClock:
    """`time` for the script: sleeping moves the clock on at once, so a 60 s wait takes none."""

    def __init__(self):
        self.now = 0.0

    def monotonic(self):
        return self.now

    def sleep(self, seconds):
        self.now += seconds


def demo_webhook_run(run_local, monkeypatch, deliveries):
    """show_demo_webhook() for an event sent at once and listed with these deliveries; what it printed."""
    event_id = "01a24eec-26da-7510-a76d-94b246545d12"
    listed = {"events": [{"id": event_id, "deliveries": deliveries}]}

    def manage(*args, check=True):
        if args[0] == "send_test_webhook":
            return json.dumps({"status": 200, "body": json.dumps({"id": event_id, "duplicate": False})})
        assert args[0] == "list_events"
        return json.dumps(listed)

    monkeypatch.setattr(run_local, "manage", manage)
    monkeypatch.setattr(run_local, "time", FakeClock())
    seed = {**SEED, "source_id": 1, "destination_id": 1, "destination_url": "http://127.0.0.1:8001/hooks"}
    run_local.show_demo_webhook(seed)
    return event_id


def delivery(destination_id, name, status, attempts=1, last_error=None):
    return {
        "destination_id": destination_id,
        "destination": name,
        "status": status,
        "attempts": attempts,
        "last_error": last_error,
    }


def test_the_demo_webhook_is_shown_delivered_whatever_a_destination_the_user_added_does(run_local, monkeypatch, capsys):
    # A destination added in the dashboard that failed used to hold the start up for 60 s, and then
    # "!! the demo webhook was not delivered" was printed although the demo receiver had it.
    event_id = demo_webhook_run(
        run_local,
        monkeypatch,
        [
            delivery(2, "My endpoint", "dead", last_error="connection failed"),
            delivery(1, "Demo receiver", "succeeded"),
        ],
    )
    printed = capsys.readouterr().out
    assert (
        f"==> delivered to Demo receiver: received → delivered; see {run_local.BASE_URL}/o/demo/events/{event_id}/"
        in printed
    )
    assert "!!" not in printed
    assert run_local.time.now < 5


def test_a_failed_demo_delivery_is_said_with_its_error_without_waiting_for_its_retry(run_local, monkeypatch, capsys):
    # Such as a demo destination left on the receiver port of an earlier run: its retry is minutes away.
    demo_webhook_run(
        run_local,
        monkeypatch,
        [delivery(1, "Demo receiver", "pending", last_error="connection failed: 127.0.0.1:8001: refused")],
    )
    printed = capsys.readouterr().out
    assert (
        "!! the demo webhook's delivery to Demo receiver (http://127.0.0.1:8001/hooks) failed: "
        "connection failed: 127.0.0.1:8001: refused" in printed
    )
    assert run_local.time.now < 5
    # The fixture's receiver port is not 8001: the reason, and the way out, are said too.
    assert (
        f"the demo destination is not this run's receiver (http://127.0.0.1:{run_local.RECEIVER_PORT}/hooks)" in printed
    )
    assert "DEMO_RECEIVER_PORT=8001" in printed


def test_ctrl_c_stops_the_demo_receiver_without_a_traceback():
    # Ctrl-C reaches every process of `make run`: the receiver printed a KeyboardInterrupt traceback.
    receiver = subprocess.Popen(
        [sys.executable, str(SCRIPT.parent / "demo_receiver.py"), str(free_port())],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # As a terminal's Ctrl-C finds it, even when these tests run where SIGINT is ignored (nohup, &).
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        assert receiver.stdout.readline().startswith("[receiver] listening on")
        receiver.send_signal(signal.SIGINT)
        _, stderr = receiver.communicate(timeout=10)
    finally:
        if receiver.poll() is None:
            receiver.kill()
            receiver.wait()
    assert receiver.returncode == 0
    assert "Traceback" not in stderr


def test_make_run_hands_the_demo_destinations_secret_to_the_receiver(run_local, monkeypatch):
    # The receiver printed "signature=yes" for any webhook-signature header, checked or not.
    monkeypatch.delenv("DEMO_RECEIVER_SECRET", raising=False)
    monkeypatch.setattr(
        run_local,
        "manage",
        lambda *args, check=True: json.dumps({**SEED, "destination_id": 1, "destination_secret": "whsec_c2VjcmV0"}),
    )
    environment_at_start = {}

    def start(processes):
        environment_at_start.update(os.environ)
        raise SystemExit("stopped before starting anything")

    monkeypatch.setattr(run_local, "start", start)
    with pytest.raises(SystemExit):
        run_local.main()
    assert environment_at_start["DEMO_RECEIVER_SECRET"] == "whsec_c2VjcmV0"


def receiver_secret_at_start(run_local, monkeypatch, seed: dict) -> str | None:
    """DEMO_RECEIVER_SECRET as main() hands it to the processes it starts, after seed_demo answered ``seed``."""
    monkeypatch.delenv("DEMO_RECEIVER_SECRET", raising=False)
    monkeypatch.setattr(run_local, "manage", lambda *args, check=True: json.dumps(seed))
    environment_at_start = {}

    def start(processes):
        environment_at_start.update(os.environ)
        raise SystemExit("stopped before starting anything")

    monkeypatch.setattr(run_local, "start", start)
    with pytest.raises(SystemExit):
        run_local.main()
    return environment_at_start.get("DEMO_RECEIVER_SECRET")


def test_make_run_keeps_the_secret_seed_demo_gives_once_for_its_later_starts(run_local, monkeypatch):
    # seed_demo printed the secret on every run; it now gives it only when it creates the destination.
    kept = run_local.DEMO_RECEIVER_SECRET_FILE
    created = {**SEED, "created": True, "destination_id": 7, "destination_secret": "whsec_Zmlyc3Q="}
    assert receiver_secret_at_start(run_local, monkeypatch, created) == "whsec_Zmlyc3Q="  # a fresh machine
    assert kept.stat().st_mode & 0o777 == 0o600
    assert [path.name for path in kept.parent.iterdir() if path.name.startswith(".")] == []  # nothing left over

    assert receiver_secret_at_start(run_local, monkeypatch, {**SEED, "destination_id": 7}) == "whsec_Zmlyc3Q="

    # Created again (the database reset, var/ kept): the new secret replaces the kept one.
    recreated = {**created, "destination_secret": "whsec_c2Vjb25k"}
    assert receiver_secret_at_start(run_local, monkeypatch, recreated) == "whsec_c2Vjb25k"
    assert kept.read_text() == "whsec_c2Vjb25k" and kept.stat().st_mode & 0o777 == 0o600

    # The tenant deleted the demo destination: nothing to check with, nothing kept.
    assert receiver_secret_at_start(run_local, monkeypatch, SEED) is None
    assert not kept.exists()


def test_make_run_says_how_to_have_signatures_checked_when_no_secret_was_kept(run_local, monkeypatch, capsys):
    # A var/ from before the secret was kept (seed_demo printed it on every run then), or the file
    # deleted: the receiver printed "signature not checked (no secret given)" on every delivery, and
    # nothing said why or what to do.
    assert receiver_secret_at_start(run_local, monkeypatch, {**SEED, "destination_id": 7}) is None
    said = capsys.readouterr().out
    assert "the demo receiver has no secret to verify signatures with" in said
    assert str(run_local.DEMO_RECEIVER_SECRET_FILE) in said and "`make clean`" in said

    # Kept, or no demo destination at all: nothing to say.
    created = {**SEED, "created": True, "destination_id": 7, "destination_secret": "whsec_Zmlyc3Q="}
    assert receiver_secret_at_start(run_local, monkeypatch, created) == "whsec_Zmlyc3Q="
    assert receiver_secret_at_start(run_local, monkeypatch, {**SEED, "destination_id": 7}) == "whsec_Zmlyc3Q="
    assert receiver_secret_at_start(run_local, monkeypatch, SEED) is None
    assert "no secret" not in capsys.readouterr().out


def post_to_demo_receiver(secret: str, signing_secret: str) -> str:
    """What the demo receiver, given ``secret``, prints for a delivery Hookline signed with ``signing_secret``."""
    from webhooks.services.delivery import sign_standard_webhook

    port = free_port()
    receiver = subprocess.Popen(
        [sys.executable, str(SCRIPT.parent / "demo_receiver.py"), str(port)],
        env={**os.environ, "DEMO_RECEIVER_SECRET": secret},
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert receiver.stdout.readline().startswith("[receiver] listening on")
        body, message_id, timestamp = b'{"type": "invoice.paid"}', "01a25092-29f8-7737-a183-d9d2bca4b30f", 1796648086
        signature = sign_standard_webhook(secret=signing_secret, message_id=message_id, timestamp=timestamp, body=body)
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/hooks",
            data=body,
            headers={"webhook-id": message_id, "webhook-timestamp": str(timestamp), "webhook-signature": signature},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 200
        return receiver.stdout.readline()
    finally:
        receiver.kill()
        receiver.wait()


def test_the_demo_receiver_says_whether_hooklines_signature_verifies():
    secret, other = "whsec_" + base64.b64encode(b"s" * 24).decode(), "whsec_" + base64.b64encode(b"o" * 24).decode()
    assert "signature verified" in post_to_demo_receiver(secret, signing_secret=secret)
    mismatch = post_to_demo_receiver(secret, signing_secret=other)
    assert "signature DOES NOT MATCH" in mismatch and "verified" not in mismatch


def test_a_second_make_run_is_refused_before_it_migrates_the_running_ones_database(tmp_path):
    # It ran `manage.py migrate` on the running server's SQLite database first, and was refused only
    # after: with new migrations pulled meanwhile, the running server found its schema changed under it.
    checkout = tmp_path / "checkout"
    (checkout / "scripts").mkdir(parents=True)
    shutil.copy(SCRIPT.parents[1] / "Makefile", checkout / "Makefile")
    shutil.copy(SCRIPT, checkout / "scripts" / "run_local.py")
    (checkout / "manage.py").write_text("open('migrated', 'w').close()\nraise SystemExit(1)\n")  # notes it ran
    (checkout / "var").mkdir()
    environment = {key: value for key, value in os.environ.items() if key != "HOOKLINE_VAR_DIR"}
    environment.update(PORT=str(free_port()), DEMO_RECEIVER_PORT=str(free_port()))

    def make_run():
        # The install step is taken as done (-o): only what `make run` does after it is under test.
        return subprocess.run(
            ["make", "-s", "-o", ".venv/.installed-run", "run", f"PY={sys.executable}"],
            cwd=checkout,
            env=environment,
            capture_output=True,
            text=True,
        )

    with open(checkout / "var" / "make-run.lock", "w") as running:  # as a running `make run` holds it
        fcntl.flock(running, fcntl.LOCK_EX | fcntl.LOCK_NB)
        refused = make_run()
    assert refused.returncode != 0 and "another `make run` is already running" in refused.stderr
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", int(environment["PORT"])))
        taken.listen()
        port_taken = make_run()
    assert port_taken.returncode != 0 and f"port {environment['PORT']} is not free" in port_taken.stderr
    assert not (checkout / "migrated").exists()
    assert make_run().returncode != 0 and (checkout / "migrated").exists()  # free: on to the migrate


def test_make_clean_starts_over_but_not_under_a_running_make_run(tmp_path):
    # `make clean` is the README's reset; it used to delete the SQLite database of a running `make run`.
    checkout = tmp_path / "checkout"
    (checkout / "scripts").mkdir(parents=True)
    shutil.copy(SCRIPT.parents[1] / "Makefile", checkout / "Makefile")
    shutil.copy(SCRIPT, checkout / "scripts" / "run_local.py")
    database = checkout / "var" / "hookline.sqlite3"
    database.parent.mkdir()
    database.write_text("kept")
    environment = {key: value for key, value in os.environ.items() if key != "HOOKLINE_VAR_DIR"}

    def make_clean():
        return subprocess.run(
            ["make", "-s", "clean", f"PYTHON={sys.executable}"],
            cwd=checkout,
            env=environment,
            capture_output=True,
            text=True,
        )

    with open(checkout / "var" / "make-run.lock", "w") as running:  # as a running `make run` holds it
        fcntl.flock(running, fcntl.LOCK_EX | fcntl.LOCK_NB)
        refused = make_clean()
    assert refused.returncode != 0
    assert "`make run` is running on" in refused.stderr and "stop it (Ctrl-C) first" in refused.stderr
    assert database.read_text() == "kept"

    assert make_clean().returncode == 0
    assert not (checkout / "var").exists()


def test_the_childrens_lines_show_at_once_when_the_output_is_a_file(run_local, capfd, monkeypatch):
    # `make run > log` or `| tee`: beat's banner stayed in its output buffer, shown only once it filled.
    monkeypatch.delenv("PYTHONUNBUFFERED", raising=False)  # as a shell has it, unless someone set it
    child = run_local.start({"beat": [sys.executable, "-c", "import time; print('beat banner'); time.sleep(60)"]})
    try:
        deadline = time.monotonic() + 15
        output = ""
        while "beat banner" not in output and time.monotonic() < deadline:
            time.sleep(0.1)
            output += capfd.readouterr().out  # pytest's capture: a file, not a terminal
        assert "beat banner" in output
    finally:
        run_local.stop(child)


# A child that notes each signal it gets, and ends 1.5 s after the first (time for a second to come).
SIGNAL_NOTING_CHILD = """
import signal, sys, time
log = sys.argv[1]
def note(number, frame):
    with open(log, "a") as file:
        file.write(signal.Signals(number).name + "\\n")
for number in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
    signal.signal(number, note)
open(log + ".ready", "w").close()
while True:
    time.sleep(0.05)
    with open(log) as file:
        if file.read():
            break
time.sleep(1.5)
"""

# `make run` as the terminal runs it, its manage commands and readiness wait left out.
RUN_LOCAL_DRIVER = """
import importlib.util, json, sys
spec = importlib.util.spec_from_file_location("run_local", sys.argv[1])
run_local = importlib.util.module_from_spec(spec)
spec.loader.exec_module(run_local)
run_local.manage = lambda *args, check=True: json.dumps(json.loads(sys.argv[2]))
run_local.wait_until_ready = lambda children: None
run_local.show_demo_webhook = lambda seed: None
run_local.PROCESSES = {"worker": [sys.executable, "-c", sys.argv[3], sys.argv[4]]}
run_local.main()
"""


@pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGHUP], ids=["ctrl-c", "terminal-closed"])
def test_stopping_make_run_sends_each_child_one_signal(tmp_path, stop_signal):
    # Ctrl-C reached the children from the terminal (SIGINT to its whole process group), then make
    # run's stop sent them SIGTERM: the worker began its warm shutdown twice. A closed terminal's
    # SIGHUP ended make run at once, leaving its children to theirs.
    log = tmp_path / "signals"
    log.write_text("")
    environment = {
        **os.environ,
        "PORT": str(free_port()),
        "DEMO_RECEIVER_PORT": str(free_port()),
        "HOOKLINE_VAR_DIR": str(tmp_path / "var"),
    }
    # In a process group of its own, as a terminal's foreground job is: the signal goes to the whole group.
    run = subprocess.Popen(
        [sys.executable, "-c", RUN_LOCAL_DRIVER, str(SCRIPT), json.dumps(SEED), SIGNAL_NOTING_CHILD, str(log)],
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        process_group=0,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # as a terminal's job starts
    )
    try:
        for line in run.stdout:
            if "Press Ctrl-C to stop." in line:
                break
        deadline = time.monotonic() + 30
        while not Path(f"{log}.ready").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        os.killpg(run.pid, stop_signal)
        output, _ = run.communicate(timeout=30)
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
            run.wait()
    assert run.returncode == 0, output
    assert log.read_text().split() == ["SIGTERM"]


# A child that ignores SIGTERM (a worker's warm shutdown waiting on a long send) and has a child of
# its own (a pool process) that ignores it too; the grandchild's pid goes to argv[1].
STUCK_CHILD_WITH_ITS_OWN = """
import signal, subprocess, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
grandchild = subprocess.Popen(
    [sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(120)"]
)
with open(sys.argv[1], "w") as file:
    file.write(str(grandchild.pid))
time.sleep(120)
"""


def _gone(pid: int) -> bool:
    """Ended: no such process, or one ended and not yet reaped by whoever adopted it."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except (FileNotFoundError, ProcessLookupError):
        return True


def test_a_child_that_does_not_stop_is_killed_with_the_processes_it_started(run_local, monkeypatch, tmp_path):
    # Each child leads a process group of its own, which the terminal's Ctrl-C no longer reaches:
    # killing the child alone, once it had not stopped in time, left its own processes (gunicorn's
    # workers, the worker's pool) running, holding the database and the port.
    monkeypatch.setattr(run_local, "STOP_WAIT_SECONDS", 0.5)
    pid_file = tmp_path / "grandchild"
    children = run_local.start({"worker": [sys.executable, "-c", STUCK_CHILD_WITH_ITS_OWN, str(pid_file)]})
    try:
        deadline = time.monotonic() + 30
        while not (pid_file.exists() and pid_file.read_text()) and time.monotonic() < deadline:
            time.sleep(0.05)
        grandchild = int(pid_file.read_text())
        run_local.stop(children)
        assert children["worker"].returncode == -signal.SIGKILL
        deadline = time.monotonic() + 10
        while not _gone(grandchild) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _gone(grandchild), "the child's own process was left running"
    finally:
        for child in children.values():
            if child.poll() is None:
                os.killpg(child.pid, signal.SIGKILL)
                child.wait()
        if pid_file.exists() and pid_file.read_text() and not _gone(int(pid_file.read_text())):
            os.kill(int(pid_file.read_text()), signal.SIGKILL)
