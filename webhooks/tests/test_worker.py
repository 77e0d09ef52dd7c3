"""A real Celery worker against Redis: ingest over HTTP-like client, processing and delivery by the worker."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from django.conf import settings
from django.db import connection
from standardwebhooks.webhooks import Webhook

from webhooks.models import Delivery

from .factories import STRIPE_SECRET, make_destination, make_source
from .signing import post_stripe

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def shared_celery_worker(django_db_setup):
    """A worker process on the test database, consuming the test queue; stopped after the module.

    One for the module's tests: none of them stops or breaks it, each waits until the work it
    asked for is done, and each test's own rows (flushed after it) and cache (cleared before it)
    are all the state they share. Started per test, it cost each a worker start and stop."""
    db = connection.settings_dict
    env = {
        **os.environ,
        "DATABASE_URL": f"postgres://{db['USER']}@{db['HOST'] or 'localhost'}:{db['PORT'] or 5432}/{db['NAME']}",
    }
    # One log per xdist process: two of these modules may run at once, each on its own queue.
    log_path = Path(settings.BASE_DIR) / "var" / f"test-worker-{os.environ.get('PYTEST_XDIST_WORKER', 'main')}.log"
    log_path.parent.mkdir(exist_ok=True)
    log = log_path.open("w")
    worker = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "config",
            "worker",
            "--pool",
            "solo",
            "--loglevel",
            "INFO",
            "-Q",
            settings.CELERY_TASK_DEFAULT_QUEUE,
            "--without-heartbeat",
            "--without-gossip",
            "--without-mingle",
        ],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    yield worker
    # A warm shutdown, as Ctrl-C asks for: the lingering dispatcher winds up and the worker ends.
    # Not SIGTERM: with --pool solo the main process runs the tasks itself, and from its first one
    # config/celery.py's pool-process SIGTERM handler stands in Celery's and waits up to 10 s
    # (_MAIN_PROCESS_NOTICE_SECONDS) for the warm shutdown that only Celery's would note: each
    # test's stop took 10 s. (The platform's SIGTERM has its own tests: config/tests/test_platform_stop.py.)
    worker.send_signal(signal.SIGINT)
    try:
        worker.wait(timeout=20)
    except subprocess.TimeoutExpired:
        worker.kill()
    log.close()


@pytest.fixture
def celery_worker_process(transactional_db, shared_celery_worker):
    """The module's worker, for a test on the (transactional) test database; running when it starts."""
    assert shared_celery_worker.poll() is None, "the worker exited during an earlier test"
    return shared_celery_worker


@pytest.mark.worker
def test_webhook_goes_end_to_end_through_a_real_worker(client, organization, httpserver, celery_worker_process):
    source = make_source(organization)
    destination, secret = make_destination(organization, httpserver.url_for("/hook"), sources=[source])
    httpserver.expect_request("/hook").respond_with_data("ok")

    bodies = [f'{{"id":"evt_worker_{n}","object":"event","type":"invoice.paid"}}' for n in range(5)]
    for body in bodies:
        response = post_stripe(client, source, body, STRIPE_SECRET)
        assert response.status_code == 200

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if Delivery.objects.filter(status=Delivery.Status.SUCCEEDED).count() == len(bodies):
            break
        assert celery_worker_process.poll() is None, "the worker exited"
        time.sleep(0.2)
    else:
        pytest.fail(f"not delivered in time: {list(Delivery.objects.values_list('status', flat=True))}")

    received = sorted(request.get_data().decode() for request, _ in httpserver.log)
    assert received == sorted(bodies)
    for request, _ in httpserver.log:
        Webhook(secret).verify(request.get_data(), dict(request.headers))


@pytest.mark.worker
def test_an_organization_is_deleted_by_a_real_worker(client, organization, other_organization, celery_worker_process):
    from organizations.models import AuditLog, Organization
    from webhooks.models import WebhookEvent
    from webhooks.services.organization_deletion import DELETED_ACTION, organization_request_deletion

    source = make_source(organization)
    kept = make_source(other_organization)
    for n in range(3):
        body = f'{{"id":"evt_doomed_{n}","object":"event","type":"invoice.paid"}}'
        assert post_stripe(client, source, body, STRIPE_SECRET).status_code == 200
    assert (
        post_stripe(client, kept, '{"id":"evt_kept","object":"event","type":"invoice.paid"}', STRIPE_SECRET).status_code
        == 200
    )

    organization_request_deletion(organization=organization)  # committed: its task is published
    assert (
        post_stripe(
            client, source, '{"id":"evt_late","object":"event","type":"invoice.paid"}', STRIPE_SECRET
        ).status_code
        == 404
    )
    deadline = time.monotonic() + 60
    while Organization.objects.filter(pk=organization.pk).exists():
        assert time.monotonic() < deadline, "not deleted in time"
        assert celery_worker_process.poll() is None, "the worker exited"
        time.sleep(0.2)
    assert not WebhookEvent.objects.filter(source_id=source.pk).exists()
    assert WebhookEvent.objects.filter(source=kept).count() == 1
    assert AuditLog.objects.get(action=DELETED_ACTION).changes["deleted"]["events (and rejected requests)"] == 3


@pytest.mark.worker
def test_a_source_is_deleted_by_a_real_worker(client, organization, celery_worker_process):
    from organizations.models import AuditLog
    from webhooks.models import Source, WebhookEvent
    from webhooks.services.source_deletion import DELETED_ACTION, source_request_deletion

    source = make_source(organization, name="doomed")
    kept = make_source(organization, name="kept")
    for n, target in enumerate((source, source, kept)):
        body = f'{{"id":"evt_source_{n}","object":"event","type":"invoice.paid"}}'
        assert post_stripe(client, target, body, STRIPE_SECRET).status_code == 200

    source_request_deletion(source=source)  # committed: its task is published
    late = '{"id":"evt_late","object":"event","type":"invoice.paid"}'
    assert post_stripe(client, source, late, STRIPE_SECRET).status_code == 404
    deadline = time.monotonic() + 60
    while Source.objects.filter(pk=source.pk).exists():
        assert time.monotonic() < deadline, "not deleted in time"
        assert celery_worker_process.poll() is None, "the worker exited"
        time.sleep(0.2)
    assert not WebhookEvent.objects.filter(source_id=source.pk).exists()
    assert WebhookEvent.objects.filter(source=kept).count() == 1
    assert AuditLog.objects.get(action=DELETED_ACTION).changes["deleted"]["events (and rejected requests)"] == 2


@pytest.mark.worker
def test_a_destination_is_deleted_by_a_real_worker(client, organization, celery_worker_process):
    from organizations.models import AuditLog
    from webhooks.models import Destination, WebhookEvent
    from webhooks.services.destination_deletion import DELETED_ACTION, destination_request_deletion

    source = make_source(organization)
    doomed, _ = make_destination(organization, "http://127.0.0.1:9/doomed", sources=[source])
    kept, _ = make_destination(organization, "http://127.0.0.1:9/kept", sources=[source])
    for n in range(2):
        body = f'{{"id":"evt_destination_{n}","object":"event","type":"invoice.paid"}}'
        assert post_stripe(client, source, body, STRIPE_SECRET).status_code == 200
    deadline = time.monotonic() + 60
    while Delivery.objects.count() < 4:  # fanned out by the worker to both destinations
        assert time.monotonic() < deadline, "not fanned out in time"
        time.sleep(0.2)

    destination_request_deletion(destination=doomed)  # committed: its task is published
    while Destination.objects.filter(pk=doomed.pk).exists():
        assert time.monotonic() < deadline, "not deleted in time"
        assert celery_worker_process.poll() is None, "the worker exited"
        time.sleep(0.2)
    assert not Delivery.objects.filter(destination_id=doomed.pk).exists()
    assert Delivery.objects.filter(destination=kept).count() == 2 and WebhookEvent.objects.count() == 2
    assert AuditLog.objects.get(action=DELETED_ACTION).changes["deleted"]["deliveries"] == 2
