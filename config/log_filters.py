"""Filters for the console handler beyond token masking (config/log_masking.py)."""

from __future__ import annotations

import logging


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
