"""Violation reports of the Content-Security-Policy, sent by browsers to ``report-uri``.

A report means a page of Hookline tried to load or run something the policy forbids: either a
template or package change that broke a page under the policy (an inline script, a style from
another origin), or markup injected into a page. Operators learn of both from one log line per
report, in the web process's log.

What is logged is chosen so that a report can neither leak nor forge much: the page is named by
its URL pattern (``o/<slug:org_slug>/events/<uuid:event_id>/``), never by its path or query, which
may hold an organization's name or a sign-in token; what was blocked is a keyword (``inline``,
``eval``) or an origin; the script sample a browser may send is not logged at all. Anyone can
post to the endpoint, so its lines say "reported", and each web process logs at most
``LOG_LINES_PER_MINUTE`` of them; the rest are counted and the count is said with the next line
logged.
"""

import json
import logging
import threading
import time
from dataclasses import dataclass
from urllib.parse import SplitResult, urlsplit

from django.urls import Resolver404, resolve

logger = logging.getLogger(__name__)

MAX_REPORT_BYTES = 64 * 1024
LOG_LINES_PER_MINUTE = 30
# The CSP level 2 form (report-uri) and the Reporting API's form (report-to); browsers send JSON.
REPORT_CONTENT_TYPES = ("application/csp-report", "application/reports+json", "application/json")
# blocked-uri values that are keywords rather than addresses.
BLOCKED_KEYWORDS = {"inline", "eval", "wasm-eval", "self", "data", "blob", "trusted-types-policy", "trusted-types-sink"}
_FIELD_LIMIT = 200

clock = time.monotonic


class MalformedReport(ValueError):
    """The body is not a CSP violation report; the message says why, for the 400."""


@dataclass(frozen=True)
class Violation:
    page: str
    directive: str
    blocked: str
    source_file: str
    line: int | None
    disposition: str

    def as_log_text(self) -> str:
        where = f" at {self.source_file}:{self.line}" if self.source_file and self.line else ""
        mode = " (report only)" if self.disposition == "report" else ""
        return f"{self.directive} blocked {self.blocked} on page {self.page}{where}{mode}"


def read_reports(body: bytes) -> list[Violation]:
    """The violations in a report body of either form; MalformedReport when it holds none."""
    try:
        document = json.loads(body)
    except (UnicodeDecodeError, ValueError) as exc:
        raise MalformedReport("The body is not JSON.") from exc
    except RecursionError as exc:  # a body of "[[[[…" within the size limit
        raise MalformedReport("The body nests too deeply to be a report.") from exc
    if isinstance(document, dict) and isinstance(document.get("csp-report"), dict):
        return [_from_report_uri(document["csp-report"])]
    if isinstance(document, list):
        violations = [
            _from_report_to(entry["body"])
            for entry in document
            if isinstance(entry, dict) and entry.get("type") == "csp-violation" and isinstance(entry.get("body"), dict)
        ]
        if violations:
            return violations
    raise MalformedReport('Expected {"csp-report": {...}} or a list of reports of type "csp-violation".')


def _from_report_uri(report: dict) -> Violation:
    return Violation(
        page=_page(report.get("document-uri")),
        directive=_text(report.get("effective-directive") or report.get("violated-directive")) or "unknown",
        blocked=_blocked(report.get("blocked-uri")),
        source_file=_address(report.get("source-file")),
        line=_line(report.get("line-number")),
        disposition=_text(report.get("disposition")),
    )


def _from_report_to(body: dict) -> Violation:
    return Violation(
        page=_page(body.get("documentURL")),
        directive=_text(body.get("effectiveDirective")) or "unknown",
        blocked=_blocked(body.get("blockedURL")),
        source_file=_address(body.get("sourceFile")),
        line=_line(body.get("lineNumber")),
        disposition=_text(body.get("disposition")),
    )


def _text(value) -> str:
    if not isinstance(value, str):
        return ""
    return "".join(char if char.isprintable() else "?" for char in value[:_FIELD_LIMIT])


def _line(value) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def _page(document_uri) -> str:
    """The URL pattern of the page, or what kind of page it was when no pattern matches."""
    path = _split(_text(document_uri)).path
    if not path:
        return "unknown"
    try:
        match = resolve(path)
    except Resolver404:
        return "unknown"
    return "/" + match.route if match.route else match.view_name or "unknown"


def _blocked(blocked_uri) -> str:
    text = _text(blocked_uri)
    if text in BLOCKED_KEYWORDS:
        return text
    return _address(text) or "unknown"


def _address(value) -> str:
    """An address cut to its origin and path: no query, no fragment, no user info."""
    parts = _split(_text(value))
    try:
        port = f":{parts.port}" if parts.port else ""
    except ValueError:  # not a number, or past 65535: no address a browser loaded
        return ""
    if not parts.scheme or not parts.hostname:
        return ""
    return f"{parts.scheme}://{parts.hostname}{port}{parts.path}"


def _split(text: str) -> SplitResult:
    """The parts of ``text`` as an address; none when it cannot be one (urlsplit refuses an
    unclosed IPv6 bracket with ValueError): anyone can post a report."""
    try:
        return urlsplit(text)
    except ValueError:
        return urlsplit("")


class _LogBudget:
    """At most LOG_LINES_PER_MINUTE lines a minute in this process; counts what it holds back."""

    def __init__(self):
        self._lock = threading.Lock()
        self._window_started = None
        self._logged = 0
        self.held_back = 0

    def take(self) -> tuple[bool, int]:
        """(may log now, reports held back since the last line logged)."""
        with self._lock:
            now = clock()
            if self._window_started is None or now - self._window_started >= 60:
                self._window_started, self._logged = now, 0
            if self._logged >= LOG_LINES_PER_MINUTE:
                self.held_back += 1
                return False, 0
            self._logged += 1
            held_back, self.held_back = self.held_back, 0
            return True, held_back


log_budget = _LogBudget()


def record_reports(body: bytes) -> int:
    """Log the body's violations within this process's budget; the number of violations read."""
    violations = read_reports(body)
    for violation in violations:
        may_log, held_back = log_budget.take()
        if not may_log:
            continue
        suffix = f" ({held_back} more reports since the last line were not logged)" if held_back else ""
        logger.warning("Content-Security-Policy violation reported: %s%s", violation.as_log_text(), suffix)
    return len(violations)
