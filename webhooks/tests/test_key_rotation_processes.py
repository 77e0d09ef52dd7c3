"""A FIELD_ENCRYPTION_KEYS rotation done as README says, on real processes (gunicorn with its writer
process, a Celery worker, beat) restarted one at a time while Stripe-signed webhooks keep arriving
and are delivered to a receiver that verifies them with `standardwebhooks`."""

import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from cryptography.fernet import Fernet
from django.utils import timezone
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from webhooks.fields import _fernet_for
from webhooks.models import Delivery, DeliveryAttempt, Destination, Source, WebhookEvent
from webhooks.services.delivery import UNSENT_RETRY_SECONDS
from webhooks.services.destinations import destination_rotate_secret
from webhooks.services.sources import source_rotate_secret

from .factories import STRIPE_SECRET, make_destination, make_source
from .processes import PATIENCE_SECONDS, ROOT, RedisServer, Stack, post_stripe_over_http, wait_until

pytestmark = [pytest.mark.worker, pytest.mark.django_db(transaction=True)]


class VerifyingReceiver:
    """A destination that verifies each request with any of the secrets it knows, as a receiver
    switching over during a rotation does, and records which webhook-ids verified."""

    def __init__(self, secrets: list[str], failing: int = 0):
        self.secrets = secrets
        self.verified: set[str] = set()
        self.refused: list[str] = []
        # Per request: the webhook-id, the secrets (by position) that verify it, the signatures it carries.
        self.requests: list[tuple[str, set[int], int]] = []
        self.failing = failing  # answer 500 to this many first requests (after verifying them)
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                headers = {name.lower(): value for name, value in self.headers.items()}
                verifying = set()
                for position, secret in enumerate(list(receiver.secrets)):
                    try:
                        Webhook(secret).verify(body, headers)
                        verifying.add(position)
                    except WebhookVerificationError:
                        continue
                ok = bool(verifying)
                with receiver.lock:
                    receiver.requests.append(
                        (headers["webhook-id"], verifying, len(headers["webhook-signature"].split()))
                    )
                    failing, receiver.failing = receiver.failing > 0, max(receiver.failing - 1, 0)
                    if ok and not failing:
                        receiver.verified.add(headers["webhook-id"])
                    elif not ok:
                        receiver.refused.append(headers["webhook-id"])
                self.send_response(500 if ok and failing else 200 if ok else 401)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class SteadyTraffic:
    """Stripe-signed webhooks posted one after another until stopped; each answer recorded."""

    def __init__(self, stack: Stack, token: str):
        self.answers: dict[str, int | str] = {}
        self._stop = threading.Event()

        def post():
            n = 0
            while not self._stop.is_set():
                event_id = f"evt_rot_{n}"
                try:
                    self.answers[event_id] = post_stripe_over_http(stack.web_port, token, event_id, STRIPE_SECRET, 30)
                except (urllib.error.URLError, ConnectionError, TimeoutError):
                    self.answers[event_id] = "down"  # the web process is being restarted: not acknowledged
                n += 1
                time.sleep(0.05)

        self._thread = threading.Thread(target=post, daemon=True)
        self._thread.start()

    def acknowledged(self) -> int:
        return sum(1 for status in list(self.answers.values()) if status == 200)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(60)


def rolling_restart(stack: Stack, keys: str, traffic: SteadyTraffic, receiver: VerifyingReceiver, between=None) -> None:
    """Deploy ``keys`` to one process after the other, as a platform's rolling deploy does, then
    wait for the fleet so deployed to serve: a few webhooks acknowledged by its web process and
    delivered by its worker. (Not 2 s of sleep after each restart: on an idle machine that was
    about as long as a process's start, on a loaded one it saw no traffic either.)"""
    stack.env["FIELD_ENCRYPTION_KEYS"] = keys
    for name in ("web", "worker", "beat"):
        stack.kill(name, signal.SIGTERM)
        stack.start(name)
        if between:
            between(name)
    acknowledged, verified = traffic.acknowledged(), len(receiver.verified)
    assert wait_until(lambda: traffic.acknowledged() >= acknowledged + 3, timeout=PATIENCE_SECONDS)
    assert wait_until(lambda: len(receiver.verified) >= verified + 3, timeout=PATIENCE_SECONDS)


def attempts_not_made() -> int:
    return DeliveryAttempt.objects.filter(error__startswith="the attempt could not be made").count()


def deliveries_put_back_unsent() -> set:
    return set(Delivery.objects.filter(last_error__startswith="not sent: ").values_list("pk", flat=True))


def make_put_back_deliveries_due_now() -> int:
    """What a minute's wait would do: the deliveries put back unsent, each pending again and due
    within UNSENT_RETRY_SECONDS (their attempt not counted), made due now rather than waited for."""
    put_back = Delivery.objects.filter(last_error__startswith="not sent: ")
    latest = timezone.now() + timedelta(seconds=UNSENT_RETRY_SECONDS)
    for status, next_attempt_at, attempts in put_back.values_list("status", "next_attempt_at", "attempt_count"):
        assert status == Delivery.Status.PENDING and next_attempt_at is not None and next_attempt_at <= latest
        assert attempts == 0
    return put_back.filter(status=Delivery.Status.PENDING).update(next_attempt_at=timezone.now())


def use_keys(settings, keys: list[str]) -> None:
    settings.FIELD_ENCRYPTION_KEYS = keys
    _fernet_for.cache_clear()


@pytest.fixture
def redis_server():
    server = RedisServer()
    server.start()
    yield server
    server.stop()


def test_a_rolling_key_rotation_loses_and_refuses_nothing(organization, redis_server, settings):
    old_key, new_key = settings.FIELD_ENCRYPTION_KEYS[0], Fernet.generate_key().decode()
    source = make_source(organization)
    receiver = VerifyingReceiver([])
    destination, first_secret = make_destination(organization, receiver.url, sources=[source])
    receiver.secrets.append(first_secret)
    stack = Stack(
        f"redis://127.0.0.1:{redis_server.port}/0",
        FIELD_ENCRYPTION_KEYS=old_key,
        DELIVERY_THREADS="2",
        DELIVERY_RETRY_SCHEDULE="2,2,2,2,2,2,2,2",
    )
    traffic = None
    try:
        stack.start_together("web", "worker", "beat")
        traffic = SteadyTraffic(stack, source.ingest_token)
        assert wait_until(lambda: len(receiver.verified) >= 3, timeout=120)

        # 1. NEW,OLD to every process, one at a time. Once the web process has it, a tenant rotates
        # the destination's secret there: written under NEW while the worker still knows OLD alone.
        use_keys(settings, [new_key, old_key])

        put_back: set = set()

        def tenant_rotates_after_web(name):
            if name == "web":
                _, new_secret = destination_rotate_secret(destination=Destination.objects.get(pk=destination.pk))
                receiver.secrets.append(new_secret)
                # The worker, with OLD alone, cannot read it: its deliveries to that destination are
                # put back unsent (their attempts not counted), not sent unsigned, lost or dead-lettered.
                assert wait_until(lambda: put_back.update(deliveries_put_back_unsent()) or put_back, timeout=60)
            if name == "worker":
                # The worker now has NEW too; those put back would be claimed again in a minute.
                put_back.update(deliveries_put_back_unsent())
                assert make_put_back_deliveries_due_now() >= 1

        rolling_restart(stack, f"{new_key},{old_key}", traffic, receiver, between=tenant_rotates_after_web)

        # 2. The command, while webhooks flow.
        rotated = subprocess.run(
            [sys.executable, "manage.py", "rotate_encryption_keys"],
            cwd=ROOT,
            env={**stack.env, "LOG_LEVEL": "WARNING"},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert rotated.returncode == 0, rotated.stderr
        assert "webhooks.Source: 1 row re-encrypted, 1 of them from an older key" in rotated.stdout
        assert "Next step: deploy FIELD_ENCRYPTION_KEYS with the new key alone" in rotated.stdout

        # 3. NEW alone, one process at a time.
        rolling_restart(stack, new_key, traffic, receiver)
        use_keys(settings, [new_key])
        assert wait_until(lambda: traffic.acknowledged() >= 20, timeout=PATIENCE_SECONDS)
        traffic.stop()

        acknowledged = {event_id for event_id, status in traffic.answers.items() if status == 200}
        others = {event_id: status for event_id, status in traffic.answers.items() if status not in (200, "down")}
        assert not others, f"answered other than 200 (or down while restarting): {others}"
        assert len(acknowledged) >= 20
        stored = dict(WebhookEvent.objects.values_list("provider_event_id", "id"))
        assert acknowledged <= set(stored)
        event_ids = {str(pk) for pk in stored.values()}  # the webhook-id a destination receives
        assert wait_until(lambda: event_ids <= receiver.verified, timeout=180), (
            f"not delivered: {len(event_ids - receiver.verified)}; "
            f"errors: {set(DeliveryAttempt.objects.exclude(error='').values_list('error', flat=True))}"
        )
        assert not receiver.refused
        assert wait_until(lambda: not Delivery.objects.exclude(status=Delivery.Status.SUCCEEDED).exists(), timeout=60)
        # What the worker with the old list alone could not sign was sent once it could, and was
        # never an attempt.
        assert put_back and attempts_not_made() == 0
        # Every secret is readable with NEW alone.
        assert Source.objects.get(pk=source.pk).secret == STRIPE_SECRET
        assert Destination.objects.get(pk=destination.pk).secret == receiver.secrets[-1]
    finally:
        if traffic:
            traffic.stop()
        stack.stop_all()
        receiver.close()
        use_keys(settings, [os.environ["FIELD_ENCRYPTION_KEYS"]])


def test_secret_rotations_with_their_windows_on_real_processes(organization, redis_server):
    # A source's provider secret rotated with a window while the provider still signs with the old
    # one, then switches; a destination's signing secret rotated while attempts made before it are
    # still to be retried: the retries carry both signatures, so a receiver with either verifies.
    source = make_source(organization)
    receiver = VerifyingReceiver([], failing=3)
    destination, old_signing = make_destination(organization, receiver.url, sources=[source])
    receiver.secrets.append(old_signing)
    stack = Stack(
        f"redis://127.0.0.1:{redis_server.port}/0",
        DELIVERY_THREADS="2",
        # Retried only once the test made them due (after the rotation), not at a time of their own.
        DELIVERY_RETRY_SCHEDULE="3600,3600,3600,3600,3600,3600",
        # The web process's copy of a source lasts 0.25 s, not 5: the provider's switch to the new
        # secret comes sooner, and the old secret is then checked against the rotated source.
        INGEST_SOURCE_CACHE_SECONDS="0.25",
    )
    try:
        stack.start_together("web", "worker", "beat")
        for n in range(3):
            assert post_stripe_over_http(stack.web_port, source.ingest_token, f"evt_before_{n}", STRIPE_SECRET) == 200
        assert wait_until(lambda: len(receiver.requests) >= 3, timeout=120)  # each answered 500: to be retried
        # ... once each failure is recorded (made due now below, it must not be recorded after that).
        first_tries = Delivery.objects.filter(status=Delivery.Status.PENDING, attempt_count=1)
        assert wait_until(lambda: first_tries.count() == 3, timeout=120)

        _, new_signing = destination_rotate_secret(
            destination=Destination.objects.get(pk=destination.pk), overlap_seconds=3600
        )
        receiver.secrets.append(new_signing)
        new_source_secret = "whsec_rotated_source_secret_abcdef"
        source_rotate_secret(source=Source.objects.get(pk=source.pk), new_secret=new_source_secret)

        # The provider goes on with the old secret for a while, then signs with the new one; the
        # web process's copy of the source is at most INGEST_SOURCE_CACHE_SECONDS old by then, so the
        # old secret's second webhook is verified by the rotated source's overlap, not by that copy.
        answers = [post_stripe_over_http(stack.web_port, source.ingest_token, "evt_old_secret", STRIPE_SECRET)]
        time.sleep(float(stack.env["INGEST_SOURCE_CACHE_SECONDS"]) + 0.25)
        answers.append(post_stripe_over_http(stack.web_port, source.ingest_token, "evt_old_secret_2", STRIPE_SECRET))
        answers.append(post_stripe_over_http(stack.web_port, source.ingest_token, "evt_new_secret", new_source_secret))
        assert answers == [200, 200, 200]
        # What the retry schedule's wait would do, now that both secrets were rotated: the first
        # attempts' retries are due.
        assert first_tries.update(next_attempt_at=timezone.now()) == 3

        event_ids = {str(pk) for pk in WebhookEvent.objects.values_list("id", flat=True)}
        assert len(event_ids) == 6
        assert wait_until(lambda: event_ids <= receiver.verified, timeout=120)
        assert not receiver.refused
        first_attempts = receiver.requests[:3]
        assert all(verifying == {0} and signatures == 1 for _, verifying, signatures in first_attempts)
        # Every request after the rotation (the retries too) verifies with either secret.
        after = receiver.requests[3:]
        assert after and all(verifying == {0, 1} and signatures == 2 for _, verifying, signatures in after), after
    finally:
        stack.stop_all()
        receiver.close()
