"""PostgreSQL restarted while webhooks arrive: ingest answers 503 while it is down (providers retry),
never 200 for an event that was not committed, and everything acknowledged is delivered."""

import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg
import pytest

from .processes import ROOT, CountingReceiver, PostgresServer, RedisServer, Stack, wait_until

pytestmark = pytest.mark.worker

SECRET = "whsec_pg_fault_test"


def manage(env, *args) -> dict:
    output = subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=env, check=True, capture_output=True, text=True
    ).stdout
    return json.loads(output) if "--json" in args else {}


@pytest.fixture
def private_stack():
    # Not pytest's tmp_path: the postgres user must be able to reach the directory.
    base = Path(tempfile.mkdtemp(prefix="hookline-pg-"))
    base.chmod(0o755)
    postgres = PostgresServer(base)
    redis = RedisServer()
    receiver = CountingReceiver()
    postgres.init()
    redis.start()
    stack = Stack(f"redis://127.0.0.1:{redis.port}/0", DATABASE_URL=postgres.url, DELIVERY_THREADS="4")
    try:
        yield postgres, stack, receiver
    finally:
        stack.stop_all()
        receiver.close()
        redis.stop()
        postgres.stop()
        shutil.rmtree(base, ignore_errors=True)


def test_postgres_restart_while_webhooks_arrive(private_stack):
    postgres, stack, receiver = private_stack
    env = stack.env
    manage(env, "migrate", "--noinput")
    manage(env, "create_organization", "--name", "Acme", "--slug", "acme", "--owner-email", "o@acme.example", "--json")
    source = manage(
        env, "create_source", "--org", "acme", "--provider", "stripe", "--name", "s", "--secret", SECRET, "--json"
    )
    manage(
        env,
        "create_destination",
        "--org",
        "acme",
        "--name",
        "d",
        "--url",
        receiver.url,
        "--source",
        str(source["id"]),
        "--json",
    )
    for name in ("web", "worker", "beat"):
        stack.start(name)

    acknowledged, refused = [], []
    for n in range(90):
        if n == 30:
            postgres.stop()
        if n == 60:
            postgres.start()
        event_id = f"evt_pg_{n}"
        started = time.monotonic()
        status = stack.post_stripe(source["token"], event_id, SECRET)
        assert status in (200, 503), f"webhook {n} answered {status}"
        if status == 503:
            assert time.monotonic() - started < 5  # fails fast; the provider will retry
            refused.append(event_id)
        else:
            acknowledged.append(event_id)
    assert refused, "the outage should have refused some webhooks"

    # Like a provider, send what was refused again.
    for event_id in refused:
        assert wait_until(
            lambda event_id=event_id: stack.post_stripe(source["token"], event_id, SECRET) == 200, timeout=30
        )

    with psycopg.connect(postgres.url.replace("postgres://", "postgresql://")) as conn:
        stored = dict(conn.execute("SELECT provider_event_id, id::text FROM webhooks_webhookevent").fetchall())
    assert set(acknowledged) <= set(stored)  # every 200 was committed
    assert set(stored) == set(acknowledged) | set(refused)

    assert wait_until(lambda: all(receiver.snapshot()[i] >= 1 for i in stored.values()), timeout=180)
    counts = receiver.snapshot()
    assert max(counts.values()) <= 2
