"""Ingest tokens are secrets: no log line holds one whole, only its last four characters."""

import logging
import shutil
import tempfile
from pathlib import Path

import pytest

from config.log_masking import MaskIngestTokens, mask_ingest_tokens

from .factories import STRIPE_SECRET, make_source
from .processes import free_port, post_stripe_over_http, wait_for_port
from .test_ingest_writer_process import _start_gunicorn

TOKEN = "AbCdEfGh1234_-xyzTOKENtail"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (f"POST /in/{TOKEN}/ HTTP/1.1", "POST /in/…tail/ HTTP/1.1"),
        (f"http://hookline.example/in/{TOKEN}?x=1", "http://hookline.example/in/…tail?x=1"),
        ("GET /o/acme/events/ HTTP/1.1", "GET /o/acme/events/ HTTP/1.1"),
        ("/in/short/", "/in/short/"),  # not a token: shorter than any we make
    ],
)
def test_tokens_in_text_keep_only_their_last_four_characters(text, expected):
    assert mask_ingest_tokens(text) == expected


def test_the_filter_masks_messages_and_arguments_before_formatting():
    record = logging.LogRecord(
        "django.request", logging.WARNING, __file__, 1, "%s: %s", ("Unauthorized", f"/in/{TOKEN}/"), None
    )
    assert MaskIngestTokens().filter(record) is True
    assert record.getMessage() == "Unauthorized: /in/…tail/"
    record = logging.LogRecord("x", logging.INFO, __file__, 1, f"posted to /in/{TOKEN}/", None, None)
    MaskIngestTokens().filter(record)
    assert record.getMessage() == "posted to /in/…tail/"


@pytest.mark.django_db(transaction=True)
def test_gunicorn_logs_never_hold_a_whole_ingest_token(organization, tmp_path):
    source = make_source(organization)
    port = free_port()
    private_tmp = Path(tempfile.mkdtemp(prefix="hlm-"))
    log_path = tmp_path / "gunicorn.log"
    with log_path.open("w") as log:
        server = _start_gunicorn(port, private_tmp, log, "--access-logfile", "-", LOG_LEVEL="INFO")
        try:
            wait_for_port(port)
            assert post_stripe_over_http(port, source.ingest_token, "evt_logged", STRIPE_SECRET) == 200
            assert post_stripe_over_http(port, source.ingest_token, "evt_forged", "whsec_wrong") == 401
        finally:
            server.terminate()
            server.wait(30)
            shutil.rmtree(private_tmp, ignore_errors=True)
    logged = log_path.read_text()
    masked = f"/in/…{source.ingest_token[-4:]}/"
    assert source.ingest_token not in logged
    assert logged.count(f"POST {masked}") == 2, logged  # both access-log lines, masked
    assert f"Unauthorized: {masked}" in logged  # Django's warning for the 401
