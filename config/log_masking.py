"""Ingest URLs carry their source's secret token: logs show only its last four characters.

The token is what makes an ingest URL unguessable, so it is treated like a secret: Django's
request warnings ("Unauthorized: /in/<token>/" on every 401) and gunicorn's access log would
otherwise write it out for anyone who reads the logs.
"""

from __future__ import annotations

import logging
import re

from gunicorn.glogging import Logger

_INGEST_TOKEN = re.compile(r"(/in/)([A-Za-z0-9_-]{8,})")


def mask_ingest_tokens(text: str) -> str:
    if "/in/" not in text:  # the common case, without the regular expression
        return text
    return _INGEST_TOKEN.sub(lambda match: f"{match.group(1)}…{match.group(2)[-4:]}", text)


def _masked(value):
    return mask_ingest_tokens(value) if isinstance(value, str) else value


class MaskIngestTokens(logging.Filter):
    """A handler filter: every record's message and arguments, before they are formatted."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = _masked(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(_masked(arg) for arg in record.args)
        elif isinstance(record.args, dict):
            record.args = {key: _masked(value) for key, value in record.args.items()}
        return True


class IngestTokenMaskingLogger(Logger):
    """gunicorn's logger: the access log's request line, path and referrer masked, and the error
    log's messages ("Error handling request /in/…") too."""

    _MASKED_ATOMS = ("r", "U", "f", "{referer}i", "{raw_uri}e", "{path_info}e", "{request_uri}e")

    def setup(self, cfg):
        super().setup(cfg)
        if not any(isinstance(existing, MaskIngestTokens) for existing in self.error_log.filters):
            self.error_log.addFilter(MaskIngestTokens())  # setup runs again on every HUP

    def atoms(self, resp, req, environ, request_time):
        atoms = super().atoms(resp, req, environ, request_time)
        for key in self._MASKED_ATOMS:
            if key in atoms:
                atoms[key] = _masked(atoms[key])
        return atoms
