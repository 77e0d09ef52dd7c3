"""PostgreSQL restarted while webhooks arrive: ingest answers 503 while it is down (providers retry),
never 200 for an event that was not committed, and everything acknowledged is delivered."""

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg
import pytest

from .django_shell import DjangoShell, QuickPostgresServer, copy_the_migrated_test_database
from .processes import PATIENCE_SECONDS, ROOT, CountingReceiver, PostgresServer, RedisServer, Stack, wait_until

# django_db although the tests use only their private cluster: pytest-django creates the test database
# only when a collected test asks for it, and the cluster's tables are copied from it (cluster below).
# Run on their own, without it, the copy would be read from DATABASE_URL's own (development) database.
pytestmark = [pytest.mark.worker, pytest.mark.django_db]

SECRET = "whsec_pg_fault_test"


class Cluster:
    """The module's private PostgreSQL cluster, Hookline's migrated tables once into a template: each
    test gets a database of its own, a copy of it, in a second rather than a migrate's several. The
    tests stop and start the whole cluster (that is a restart); between tests nothing runs on it."""

    TEMPLATE = "hookline"

    def __init__(self, postgres: PostgresServer):
        self.postgres = postgres
        self.created = 0

    def url(self, database: str) -> str:
        return self.postgres.url.rsplit("/", 1)[0] + f"/{database}"

    def new_database(self) -> str:
        """The URL of a database of its own, its tables migrated and empty."""
        self.created += 1
        name = f"hookline_{self.created}"
        with self._connect() as conn:
            conn.execute(f"CREATE DATABASE {name} TEMPLATE {self.TEMPLATE}")
        return self.url(name)

    def _connect(self) -> psycopg.Connection:
        url = self.url("postgres").replace("postgres://", "postgresql://")
        try:
            return psycopg.connect(url, autocommit=True)
        except psycopg.OperationalError:
            # A test before this one failed while the cluster was stopped: not this one's failure too.
            self.postgres.start()
            return psycopg.connect(url, autocommit=True)


@pytest.fixture(scope="module")
def cluster(django_db_setup, django_db_blocker):
    # Not pytest's tmp_path: the postgres user must be able to reach the directory.
    base = Path(tempfile.mkdtemp(prefix="hookline-pg-"))
    base.chmod(0o755)
    postgres = QuickPostgresServer(base)
    try:
        postgres.init()
        # What these tests prove is not the migrations' business (test_migration*.py): the tables
        # the test database's migrate made are copied rather than migrated again here.
        with django_db_blocker.unblock():
            copy_the_migrated_test_database(postgres.url)
        yield Cluster(postgres)
    finally:
        postgres.stop()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def private_stack(cluster):
    redis = RedisServer()
    receiver = CountingReceiver()
    redis.start()
    stack = Stack(f"redis://127.0.0.1:{redis.port}/0", DATABASE_URL=cluster.new_database(), DELIVERY_THREADS="4")
    try:
        yield cluster.postgres, stack, receiver
    finally:
        stack.stop_all()
        receiver.close()
        redis.stop()


# The organization, its Stripe source and a destination, made by the commands an operator runs, in one
# process (each manage.py started loads Django anew: seconds on a loaded machine).
_SET_UP_TENANT = """
import io, json
from django.core.management import call_command

def run(*args):
    out = io.StringIO()
    call_command(*args, "--json", stdout=out)
    return json.loads(out.getvalue())

run("create_organization", "--name", "Acme", "--slug", "acme", "--owner-email", "o@acme.example")
source = run("create_source", "--org", "acme", "--provider", "stripe", "--name", "s", "--secret", {secret!r})
run("create_destination", "--org", "acme", "--name", "d", "--url", {url!r}, "--source", str(source["id"]))
print(json.dumps(source))
"""


def test_postgres_restart_while_webhooks_arrive(private_stack):
    postgres, stack, receiver = private_stack
    # The tenant is made while the stack loads Django (the database is migrated already), and web,
    # whose start is waited for (until it listens), is started last.
    tenant = subprocess.Popen(
        [sys.executable, "manage.py", "shell", "-c", _SET_UP_TENANT.format(secret=SECRET, url=receiver.url)],
        cwd=ROOT,
        env=stack.env,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        stack.start_together("web", "worker", "beat")
        output, _ = tenant.communicate(timeout=PATIENCE_SECONDS)
    finally:
        if tenant.poll() is None:
            tenant.kill()
            tenant.wait()
    assert tenant.returncode == 0
    source = json.loads(output.strip().splitlines()[-1])  # (the shell prints a notice of its own first)

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

    with psycopg.connect(stack.env["DATABASE_URL"].replace("postgres://", "postgresql://")) as conn:
        stored = dict(conn.execute("SELECT provider_event_id, id::text FROM webhooks_webhookevent").fetchall())
    assert set(acknowledged) <= set(stored)  # every 200 was committed
    assert set(stored) == set(acknowledged) | set(refused)

    assert wait_until(lambda: all(receiver.snapshot()[i] >= 1 for i in stored.values()), timeout=180)
    counts = receiver.snapshot()
    assert max(counts.values()) <= 2


# Run in a manage.py shell on the private cluster: Django's test connection is to another server.
_HELD_CLAIM = """
from datetime import timedelta
from django.db.models.functions import Now
from organizations.models import Organization
from webhooks.models import Delivery, Destination, WebhookEvent
from webhooks.tests.factories import make_destination, make_source
organization = Organization.objects.create(name="Acme", slug="acme")
source = make_source(organization)
destination, _ = make_destination(organization, "http://127.0.0.1:9/hook", sources=[source])
Destination.objects.filter(pk=destination.pk).update(updated_at=Now() - timedelta(hours=2))
event = WebhookEvent.objects.create(
    organization=organization, source=source, provider_event_id="evt_held", body=b"{}", status="processed"
)
# Claimed an hour ago, then the database went down: the dispatcher holds its result.
Delivery.objects.create(
    organization=organization, event=event, destination=destination, status="in_flight",
    attempt_count=1, claimed_at=Now() - timedelta(hours=1),
)
"""
_SWEEP_IMPORTS = """
from webhooks.models import Delivery
from webhooks.services.delivery import release_lost_claims
"""
_SWEEP = (
    _SWEEP_IMPORTS
    + """
print(release_lost_claims(), Delivery.objects.get().status)
"""
)


def test_the_sweeper_gives_a_dispatcher_holding_results_time_to_record_them_after_a_database_restart(cluster):
    # A dispatcher that sent while PostgreSQL was down records its results once it is back,
    # within a second or two. Judged from the claim (an hour old), the sweeper's first run
    # after the restart would release the delivery first, and it would be sent a second time.
    # One shell, up across the restart as a worker's sweeper is, makes the claim and sweeps twice.
    with DjangoShell({**os.environ, "DATABASE_URL": cluster.new_database()}, _SWEEP_IMPORTS) as shell:
        shell.run(_HELD_CLAIM)
        cluster.postgres.stop("fast")
        cluster.postgres.start()
        started = time.monotonic()
        # The claim is judged lost this long after the restart. Ten minutes for the first look,
        # which is "just after the restart" however long a loaded machine takes to get to it.
        assert shell.run(_sweep_judging_lost_after(600)) == "0 in_flight"  # just back: the dispatcher records first
        time.sleep(max(0.0, 2.0 - (time.monotonic() - started)))  # up for more than 1 s
        # No dispatcher recorded it since the restart: it died, and the delivery goes again.
        assert shell.run(_sweep_judging_lost_after(1)) == "1 pending"


def _sweep_judging_lost_after(seconds: int) -> str:
    """A sweep with STUCK_DELIVERY_SECONDS and STUCK_DELIVERY_MARGIN_SECONDS at ``seconds``."""
    return (
        "from django.conf import settings\n"
        f"settings.STUCK_DELIVERY_SECONDS = settings.STUCK_DELIVERY_MARGIN_SECONDS = {seconds}\n" + _SWEEP
    )


# A delivery due now to a receiver that answers after 3 s (its timeout is 5 s).
_DUE_DELIVERY = """
from datetime import timedelta
from django.db.models.functions import Now
from organizations.models import Organization
from webhooks.models import Delivery, Destination, WebhookEvent
from webhooks.tests.factories import make_destination, make_source
organization = Organization.objects.create(name="Acme", slug="acme")
source = make_source(organization)
destination, _ = make_destination(organization, "{url}", sources=[source], timeout_seconds=5)
Destination.objects.filter(pk=destination.pk).update(updated_at=Now() - timedelta(hours=1))
event = WebhookEvent.objects.create(
    organization=organization, source=source, provider_event_id="evt_cut", body=b"{{}}", status="processed"
)
Delivery.objects.create(organization=organization, event=event, destination=destination)
"""
# The dispatcher's mark lasts MARK_TTL_SECONDS unless its thread refreshes it: shorter here than in
# production (20 s), so that the test outlasts it in seconds; refreshed as often, relative to it (a
# refresh a second late on a loaded machine is still 3 s within it).
MARK_TTL_SECONDS = 4
_DISPATCH = f"""
from webhooks.services import claim_owners
claim_owners.MARK_TTL_SECONDS = {MARK_TTL_SECONDS}
claim_owners.MARK_REFRESH_SECONDS = {MARK_TTL_SECONDS / 4}
from webhooks.services.delivery import dispatch_due_deliveries
print(dispatch_due_deliveries(max_seconds=1, threads=2))
"""


def test_a_dispatcher_cut_off_from_the_database_keeps_its_claim_however_long_it_lasts(cluster):
    # What a partition between a worker and PostgreSQL, or a failover the worker has not noticed yet,
    # looks like to it: its queries hang, while other workers' sweepers go on. Neither changes
    # pg_postmaster_start_time(); judged by its age, the claim would be released after 3 s here and
    # the delivery sent a second time once the dispatcher got through and recorded its send.
    receiver = CountingReceiver(delay=3)
    dispatcher = None
    cut: list[int] = []
    sweeper = None
    try:
        env = {
            **os.environ,
            "DATABASE_URL": cluster.new_database(),
            "STUCK_DELIVERY_SECONDS": "3",
            "STUCK_DELIVERY_MARGIN_SECONDS": "2",
        }
        # Another worker's sweeper: it loads Django meanwhile, and sweeps when told to.
        sweeper = DjangoShell(env, _SWEEP_IMPORTS)
        # One process makes the delivery, then dispatches it (each manage.py loads Django anew).
        dispatcher = subprocess.Popen(
            [sys.executable, "manage.py", "shell", "-c", _DUE_DELIVERY.format(url=receiver.url) + _DISPATCH],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        url = env["DATABASE_URL"].replace("postgres://", "postgresql://")
        with psycopg.connect(url, autocommit=True) as conn:
            in_flight = "SELECT 1 FROM webhooks_delivery WHERE status = 'in_flight'"
            assert wait_until(lambda: conn.execute(in_flight).fetchone() is not None, timeout=PATIENCE_SECONDS)
            # Being sent: the dispatcher's connection is all it has to the database. Cut it off.
            cut = [
                pid
                for (pid,) in conn.execute(
                    "SELECT pid FROM pg_stat_activity WHERE backend_type = 'client backend'"
                    " AND pid <> pg_backend_pid() AND datname = current_database()"
                ).fetchall()
            ]
            assert cut
            for pid in cut:
                os.kill(pid, signal.SIGSTOP)
            # Longer than the claim's age limit, and than the dispatcher's mark lasts unrefreshed.
            time.sleep(MARK_TTL_SECONDS + 1.5)
            assert sweeper.run(_SWEEP) == "0 in_flight"  # its dispatcher is alive
            for pid in cut:
                os.kill(pid, signal.SIGCONT)
            cut = []
            assert dispatcher.wait(timeout=30) == 0
            status, claimed_by = conn.execute("SELECT status, claimed_by FROM webhooks_delivery").fetchone()
        assert (status, claimed_by) == ("succeeded", None)
        assert list(receiver.snapshot().values()) == [1]
        # The run is over and its mark gone: nothing of its is kept any more.
        assert sweeper.run(_SWEEP) == "0 succeeded"
    finally:
        if sweeper is not None:
            sweeper.close()
        for pid in cut:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        if dispatcher is not None and dispatcher.poll() is None:
            dispatcher.kill()
        receiver.close()
