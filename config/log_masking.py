"""Secret tokens in URLs, and REST API keys anywhere, show only their last four characters in logs.

Ingest URLs carry their source's token, which is what makes them unguessable; sign-in links,
invitation links and the show-once secret pages carry single-use tokens that a GET does not
use up (mail scanners open links). Django's request warnings ("Unauthorized: /in/<token>/" on
every 401), gunicorn's access log and Celery's logs would otherwise write them out for
anyone who reads the logs, who could then use them first.
"""

from __future__ import annotations

import logging
import re

from gunicorn.glogging import Logger

_URL_TOKEN_PREFIXES = ("/in/", "/team/join/", "/sign-in/link/", "/secret/")
# The path after one of those prefixes, up to its query, fragment or the end of the URL in a log line.
# Each token-like run in it is masked, not only one right after the prefix: gunicorn and Django log
# the path as it came, so "/in//<token>/", "/in/x/../<token>/" (404s whose token still works on its
# own URL) or a token with a percent-escaped character ("/in/abc%64ef…/", which routes to the
# source: 200) held the whole token.
# The prefix may come spelled otherwise too: a character of it percent-escaped ("/%69n/<token>/",
# "/in%2F<token>/": gunicorn unescapes the path, which then routes to the source, 200, while its access
# log shows the request line as sent) or in capitals ("/IN/<token>/", a 404 whose token still works).


def _spelled_any_way(prefix: str) -> str:
    return "".join(f"(?:{re.escape(char)}|%{ord(char):02x})" for char in prefix)


_URL_TOKEN = re.compile(
    "(" + "|".join(_spelled_any_way(prefix) for prefix in _URL_TOKEN_PREFIXES) + r")([^\s\"'?#<>]+)", re.IGNORECASE
)
_TOKEN_RUN = re.compile(r"(?:[A-Za-z0-9_-]|%[0-9A-Fa-f]{2}){8,}")
# A REST API key wherever it shows up: a script that puts it in the query string, or sends it the
# way Stripe's API takes its keys (`curl -u hl_…:`), whose Basic user name gunicorn logs as %(u)s.
_API_KEY = re.compile(r"(hl_[0-9a-f]{10}_)([A-Za-z0-9_-]{8,})")


def mask_url_tokens(text: str) -> str:
    if "hl_" in text:
        text = _API_KEY.sub(lambda match: f"{match.group(1)}…{match.group(2)[-4:]}", text)
    if "%" not in text and not any(prefix in text.lower() for prefix in _URL_TOKEN_PREFIXES):
        return text  # the common case, without the regex
    return _URL_TOKEN.sub(lambda match: match.group(1) + _TOKEN_RUN.sub(_last_four, match.group(2)), text)


def _last_four(match: re.Match) -> str:
    return f"…{match.group(0)[-4:]}"


def _masked(value):
    return mask_url_tokens(value) if isinstance(value, str) else value


class MaskUrlTokens(logging.Filter):
    """A handler filter: every record's message and arguments, before they are formatted."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = _masked(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(_masked(arg) for arg in record.args)
        elif isinstance(record.args, dict):
            record.args = {key: _masked(value) for key, value in record.args.items()}
        return True


class UrlTokenMaskingLogger(Logger):
    """gunicorn's logger: every atom of the access log masked (the request line, path, query,
    referrer, Basic auth user name, and any header or environment value a format may name), and
    the error log's messages ("Error handling request /in/…") too."""

    def setup(self, cfg):
        super().setup(cfg)
        if not any(isinstance(existing, MaskUrlTokens) for existing in self.error_log.filters):
            self.error_log.addFilter(MaskUrlTokens())  # setup runs again on every HUP

    def atoms(self, resp, req, environ, request_time):
        return {key: _masked(value) for key, value in super().atoms(resp, req, environ, request_time).items()}
