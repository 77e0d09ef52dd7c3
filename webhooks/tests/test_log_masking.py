"""Ingest tokens are secrets: no log line holds one whole, only its last four characters."""

import logging
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from config.log_masking import MaskUrlTokens, mask_url_tokens

from .factories import STRIPE_SECRET, make_source
from .processes import free_port, post_stripe_over_http, wait_for_port
from .test_ingest_writer_process import _start_gunicorn

TOKEN = "AbCdEfGh1234_-xyzTOKENtail"
API_KEY = "hl_0123abcdef_" + "s3cr3t-_" * 4 + "abcdefKtai"  # 42 characters after the prefix: shape is enough


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (f"POST /in/{TOKEN}/ HTTP/1.1", "POST /in/…tail/ HTTP/1.1"),
        (f"http://hookline.example/in/{TOKEN}?x=1", "http://hookline.example/in/…tail?x=1"),
        ("GET /o/acme/events/ HTTP/1.1", "GET /o/acme/events/ HTTP/1.1"),
        ("/in/short/", "/in/short/"),  # not a token: shorter than any we make
        (f"GET /o/acme/team/join/{TOKEN}/ HTTP/1.1", "GET /o/acme/team/join/…tail/ HTTP/1.1"),
        (f"GET /accounts/sign-in/link/{TOKEN}/?next=/o/", "GET /accounts/sign-in/link/…tail/?next=/o/"),
        (f"GET /o/acme/secret/{TOKEN}/", "GET /o/acme/secret/…tail/"),
        ("GET /admin/webhooks/source/ HTTP/1.1", "GET /admin/webhooks/source/ HTTP/1.1"),
        (f"GET /api/v1/events?api_key={API_KEY} HTTP/1.1", "GET /api/v1/events?api_key=hl_0123abcdef_…Ktai HTTP/1.1"),
        (f"Bearer {API_KEY}", "Bearer hl_0123abcdef_…Ktai"),
        ("GET /api/v1/events?event_type=hl_x HTTP/1.1", "GET /api/v1/events?event_type=hl_x HTTP/1.1"),
        # Paths as they came over the wire, which Django and gunicorn log unnormalized: a 404 (the
        # token still works on its own URL) or a percent-escaped character (which routes to the source).
        (f"POST /in//{TOKEN}/ HTTP/1.1", "POST /in//…tail/ HTTP/1.1"),
        (f"Not Found: /in/x/../{TOKEN}/", "Not Found: /in/x/../…tail/"),
        (f"POST /in/{TOKEN[:5]}%{ord(TOKEN[5]):02X}{TOKEN[6:]}/ HTTP/1.1", "POST /in/…tail/ HTTP/1.1"),
        (f"POST /in/%{ord(TOKEN[0]):02x}{TOKEN[1:]}%2F HTTP/1.1", "POST /in/…l%2F HTTP/1.1"),
        (f'"POST /in/{TOKEN}/extra HTTP/1.1" 404', '"POST /in/…tail/extra HTTP/1.1" 404'),
        # A prefix spelled otherwise: percent-escaped (gunicorn unescapes the path, so it routes to the
        # source, 200, while the access log shows the request line as sent) or in capitals (a 404).
        (f"POST /%69n/{TOKEN}/ HTTP/1.1", "POST /%69n/…tail/ HTTP/1.1"),
        (f"POST /in%2F{TOKEN}/ HTTP/1.1", "POST /in%2F…tail/ HTTP/1.1"),
        (f"POST /%2Fin/{TOKEN}/ HTTP/1.1", "POST /%2Fin/…tail/ HTTP/1.1"),
        (f"Not Found: /IN/{TOKEN}/", "Not Found: /IN/…tail/"),
        (f"GET /o/acme/team/%6Aoin/{TOKEN}/ HTTP/1.1", "GET /o/acme/team/%6Aoin/…tail/ HTTP/1.1"),
    ],
)
def test_tokens_in_text_keep_only_their_last_four_characters(text, expected):
    assert mask_url_tokens(text) == expected


def test_the_filter_masks_messages_and_arguments_before_formatting():
    record = logging.LogRecord(
        "django.request", logging.WARNING, __file__, 1, "%s: %s", ("Unauthorized", f"/in/{TOKEN}/"), None
    )
    assert MaskUrlTokens().filter(record) is True
    assert record.getMessage() == "Unauthorized: /in/…tail/"
    record = logging.LogRecord("x", logging.INFO, __file__, 1, f"posted to /in/{TOKEN}/", None, None)
    MaskUrlTokens().filter(record)
    assert record.getMessage() == "posted to /in/…tail/"


def test_django_s_own_log_handlers_are_replaced_by_the_masking_one():
    # Django's defaults would print "Not Found: /in/<token>/" with DEBUG before the masked copy.
    from django.conf import settings

    assert logging.getLogger("django").handlers == []
    assert settings.LOGGING["loggers"]["django.server"]["handlers"] == ["console"]
    assert (
        settings.LOGGING["handlers"]["console"]["filters"][0] == "mask_url_tokens"
    )  # first: every later filter sees masked text


def test_gunicorn_s_error_log_is_masked_once_however_often_it_is_set_up():
    from gunicorn.config import Config

    from config.log_masking import UrlTokenMaskingLogger

    logger = UrlTokenMaskingLogger(Config())
    logger.setup(Config())  # a HUP
    assert sum(isinstance(f, MaskUrlTokens) for f in logger.error_log.filters) == 1
    record = logging.LogRecord(
        "gunicorn.error", logging.ERROR, __file__, 1, "Error handling request %s", (f"/in/{TOKEN}/",), None
    )
    assert all(f.filter(record) for f in logger.error_log.filters)
    assert record.getMessage() == "Error handling request /in/…tail/"


def test_gunicorn_s_access_log_never_holds_a_whole_api_key():
    """In the query string, or as the user name of Basic auth (``curl -u hl_…:`` as for Stripe's API)."""
    import base64
    import datetime
    from types import SimpleNamespace

    from gunicorn.config import Config

    from config.log_masking import UrlTokenMaskingLogger

    basic = "Basic " + base64.b64encode(f"{API_KEY}:".encode()).decode()
    environ = {
        "REQUEST_METHOD": "GET",
        "RAW_URI": f"/api/v1/events?key={API_KEY}",
        "PATH_INFO": "/api/v1/events",
        "QUERY_STRING": f"key={API_KEY}",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "HTTP_AUTHORIZATION": basic,
    }
    request = SimpleNamespace(headers=[("AUTHORIZATION", f"Bearer {API_KEY}")])
    response = SimpleNamespace(status="401 Unauthorized", sent=10, headers=[])
    atoms = UrlTokenMaskingLogger(Config()).atoms(response, request, environ, datetime.timedelta(seconds=1))
    assert not [name for name, value in atoms.items() if API_KEY in str(value)]
    assert atoms["u"] == "hl_0123abcdef_…Ktai"


@pytest.mark.django_db(transaction=True)
def test_gunicorn_logs_never_hold_a_whole_ingest_token(organization, tmp_path):
    source = make_source(organization)
    port = free_port()
    private_tmp = Path(tempfile.mkdtemp(prefix="hlm-"))
    log_path = tmp_path / "gunicorn.log"
    with log_path.open("w") as log:
        # DEBUG: Django's own console handler is active then; it must not print the token either.
        server = _start_gunicorn(port, private_tmp, log, "--access-logfile", "-", LOG_LEVEL="INFO", DEBUG="true")
        try:
            wait_for_port(port, process=server)
            assert post_stripe_over_http(port, source.ingest_token, "evt_logged", STRIPE_SECRET) == 200
            assert post_stripe_over_http(port, source.ingest_token, "evt_forged", "whsec_wrong") == 401
            unknown_token = "Unknown0token0Of0Nobody0AtAll0xyz"
            assert post_stripe_over_http(port, unknown_token, "evt_lost", STRIPE_SECRET) == 404
            # gunicorn unescapes the path: this reaches the source, and its request line is logged as sent.
            assert (
                post_stripe_over_http(port, source.ingest_token, "evt_escaped", STRIPE_SECRET, prefix="/%69n/") == 200
            )
        finally:
            server.terminate()
            server.wait(30)
            shutil.rmtree(private_tmp, ignore_errors=True)
    logged = log_path.read_text()
    masked = f"/in/…{source.ingest_token[-4:]}/"
    assert source.ingest_token not in logged
    assert logged.count(f"POST {masked}") == 2, logged  # both access-log lines, masked
    assert f"POST /%69n/…{source.ingest_token[-4:]}/" in logged
    assert f"Unauthorized: {masked}" in logged  # Django's warning for the 401
    assert unknown_token not in logged and "Not Found: /in/…0xyz/" in logged


def test_celery_worker_and_task_logs_are_masked_too():
    # Celery replaces the root logger's handlers when a worker or beat starts; what it installs
    # must mask as Django's handler does. Run in a fresh interpreter, as a worker would be.
    script = (
        "import django, logging; django.setup()\n"
        "from config.celery import app\n"
        "from celery.utils.log import get_task_logger\n"
        "app.log.setup(loglevel='INFO', redirect_stdouts=False)\n"
        f"logging.getLogger('webhooks.services.ingest').warning('refused /in/{TOKEN}/')\n"
        f"get_task_logger('webhooks.tasks').warning('task saw /in/{TOKEN}/')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, env=dict(os.environ)
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "refused /in/…tail/" in output
    assert "task saw /in/…tail/" in output
    assert TOKEN not in output


def test_a_403_is_logged_in_one_line_without_its_traceback(settings):
    from config.log_filters import ForbiddenWithoutTraceback

    assert "forbidden_without_traceback" in settings.LOGGING["handlers"]["console"]["filters"]
    try:
        raise PermissionError("role")
    except PermissionError:
        exc_info = sys.exc_info()

    def record(name, status_code):
        made = logging.LogRecord(name, logging.WARNING, __file__, 1, "Forbidden: %s", ("/o/acme/",), exc_info)
        made.status_code = status_code
        return made

    forbidden, failed = record("django.request", 403), record("django.request", 500)
    assert ForbiddenWithoutTraceback().filter(forbidden) and ForbiddenWithoutTraceback().filter(failed)
    handler = logging.StreamHandler()
    assert "Traceback" not in handler.format(forbidden) and "Forbidden: /o/acme/" in handler.format(forbidden)
    assert "Traceback" in handler.format(failed)  # a server error keeps its traceback


def test_a_refused_host_is_one_warning_line_without_its_traceback(client, settings, caplog):
    from config.log_filters import RefusedHostWithoutTraceback

    assert "refused_host_without_traceback" in settings.LOGGING["handlers"]["console"]["filters"]
    with caplog.at_level(logging.WARNING, logger="django.security"):
        assert client.get("/", HTTP_HOST="203.0.113.9").status_code == 400
    # The console handler's filters ran on the very record Django logged (as an ERROR with its
    # exception): what reaches the log is one warning line.
    (record,) = [r for r in caplog.records if r.name == "django.security.DisallowedHost"]
    line = logging.StreamHandler().format(record)
    assert record.levelname == "WARNING" and "Traceback" not in line and "203.0.113.9" in line

    try:
        raise ValueError("host")
    except ValueError:
        exc_info = sys.exc_info()
    raw = logging.LogRecord("django.security.DisallowedHost", logging.ERROR, __file__, 1, "Invalid", (), exc_info)
    other = logging.LogRecord("django.security.SuspiciousSession", logging.ERROR, __file__, 1, "x", (), exc_info)
    assert RefusedHostWithoutTraceback().filter(raw) and RefusedHostWithoutTraceback().filter(other)
    assert (raw.levelname, raw.exc_info) == ("WARNING", None)
    assert (other.levelname, other.exc_info) == ("ERROR", exc_info)  # other security events keep theirs


def test_idle_sweeps_leave_no_lines_in_the_worker_and_beat_logs():
    # Celery's own calls, on the handlers a worker or beat installs (fresh interpreter).
    script = (
        "import django, logging; django.setup()\n"
        "from config.celery import app\n"
        "from celery.app import trace\n"
        "app.log.setup(loglevel='INFO', redirect_stdouts=False)\n"
        "beat = logging.getLogger('celery.beat')\n"
        "strategy = logging.getLogger('celery.worker.strategy')\n"
        "def run(task, task_id, value):\n"
        "    beat.info('Scheduler: Sending due task %s (%s)', task.split('.')[-1], task)\n"
        "    context = {'id': task_id, 'name': task, 'args': '()', 'kwargs': '{}'}\n"
        "    strategy.info(trace.LOG_RECEIVED, context, extra={'data': context})\n"
        "    done = {**context, 'return_value': value, 'runtime': 0.01}\n"
        "    trace.info(trace.LOG_SUCCESS, done)\n"
        "run('webhooks.tasks.sweep', 'idle-1', repr({'events': 0, 'released': 0, 'due': 0}))\n"
        "run('webhooks.tasks.sweep', 'busy-2', repr({'events': 1, 'released': 3, 'due': 0}))\n"
        "run('webhooks.tasks.purge_expired_events', 'purge-3', '0')\n"
        "logging.getLogger('celery.app.trace').warning('sweep idle-1 was slow')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, env=dict(os.environ)
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "idle-1] received" not in output and "idle-1] succeeded" not in output
    assert "Sending due task sweep" not in output
    assert "busy-2] succeeded" in output and "'released': 3" in output  # a sweep that did something says so
    assert "Sending due task purge_expired_events" in output and "purge-3] succeeded" in output
    assert "sweep idle-1 was slow" in output
