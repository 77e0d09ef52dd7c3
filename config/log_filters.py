"""Filters for the console handler beyond token masking (config/log_masking.py)."""

from __future__ import annotations

import logging
import re


class ForbiddenWithoutTraceback(logging.Filter):
    """Django logs every 403 ("Forbidden (Permission denied): …") with the PermissionDenied's
    traceback: a member opening a page their role does not allow is ordinary and its line is
    enough, while a page of stack per click buries what matters in the log."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name == "django.request" and getattr(record, "status_code", None) == 403:
            record.exc_info = None
            record.exc_text = None
        return True


class RefusedHostWithoutTraceback(logging.Filter):
    """A request naming a host not in ALLOWED_HOSTS (scanners probing by IP address, mostly) is
    refused with a 400 and logged by Django as an ERROR with a traceback: one WARNING line says
    all there is to say, and a page of stack per probe would bury real errors."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name == "django.security.DisallowedHost":
            record.exc_info = None
            record.exc_text = None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


class IngestRefusalsAtInfo(logging.Filter):
    """Django logs every 4xx as a WARNING ("Unauthorized: /in/…"): on the ingest URLs these are a
    sender's or a tenant's trouble (a forged or misconfigured signature, a body too large, a
    malformed one), which the tenant sees on the source's page, and the ingest service logs each
    with its reason and source (webhooks.services.ingest). Warnings are kept for what the operator
    should act on; an attack or a tenant's wrong secret would otherwise fill them."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name == "django.request" and record.levelno == logging.WARNING:
            status_code = getattr(record, "status_code", None)
            path = getattr(getattr(record, "request", None), "path", "")
            if status_code is not None and status_code < 500 and path.startswith("/in/"):
                record.levelno, record.levelname = logging.INFO, "INFO"
                # The logger let it through as a WARNING; as an INFO it goes only where INFO is
                # wanted (LOG_LEVEL=WARNING must not still print every forged request).
                return logging.getLogger(record.name).isEnabledFor(logging.INFO)
        return True


SWEEP_TASK = "webhooks.tasks.sweep"


class QuietIdleSweeps(logging.Filter):
    """The sweeper runs every few seconds, and Celery logs three INFO lines per run (beat sends it,
    the worker receives it, it succeeds): some 50,000 lines a day of nothing, which log plans bill
    and operators must read past. A sweep that found work keeps its "succeeded" line, with what it
    did; an idle one leaves no line. Warnings and errors always pass."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno != logging.INFO:
            return True
        if record.name == "celery.beat":  # "Scheduler: Sending due task %s (%s)"
            return not (isinstance(record.args, tuple) and SWEEP_TASK in record.args)
        data = getattr(record, "data", None)
        if not isinstance(data, dict) or data.get("name") != SWEEP_TASK:
            return True
        if record.name == "celery.worker.strategy":  # received
            return False
        if record.name == "celery.app.trace" and "return_value" in data:  # succeeded
            counts = re.findall(r":\s*(\d+)", str(data["return_value"]))
            return any(count != "0" for count in counts)
        return True
