"""The Content-Security-Policy's report endpoint: browsers' reports become one safe log line each."""

import json
import logging

import pytest
from django.test import Client

from config import csp_reports

LOGGER = "config.csp_reports"
EVENT_PAGE = "https://hooks.example.com/o/acme-secret-project/events/0190a0b2-6d4e-7a1b-9c3d-4e5f6a7b8c9d/?q=customer%40example.com"


def report_uri_body(**fields) -> bytes:
    report = {
        "document-uri": EVENT_PAGE,
        "referrer": "",
        "violated-directive": "style-src-attr",
        "effective-directive": "style-src-attr",
        "original-policy": "default-src 'self'",
        "disposition": "enforce",
        "blocked-uri": "inline",
        "line-number": 12,
        "source-file": "https://hooks.example.com/static/js/dashboard.js?v=3#x",
        "status-code": 200,
        "script-sample": "color: red; /* customer@example.com */",
    }
    report.update(fields)
    return json.dumps({"csp-report": report}).encode()


def post(body: bytes, content_type="application/csp-report", client=None):
    return (client or Client()).post("/csp-reports", data=body, content_type=content_type)


def logged(caplog) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.name == LOGGER]


@pytest.fixture(autouse=True)
def fresh_log_budget(monkeypatch):
    monkeypatch.setattr(csp_reports, "log_budget", csp_reports._LogBudget())


@pytest.fixture
def held_clock(monkeypatch):
    now = [1000.0]
    monkeypatch.setattr(csp_reports, "clock", lambda: now[0])
    return now


def test_a_report_uri_report_is_logged_by_page_pattern_without_paths_queries_or_samples(db, caplog):
    caplog.set_level(logging.WARNING, logger=LOGGER)
    # Browsers post without a CSRF token: the endpoint must not ask for one.
    response = post(report_uri_body(), client=Client(enforce_csrf_checks=True))

    assert response.status_code == 204
    assert logged(caplog) == [
        "Content-Security-Policy violation reported: style-src-attr blocked inline on page "
        "/o/<slug:org_slug>/events/<uuid:event_id>/ at https://hooks.example.com/static/js/dashboard.js:12"
    ]
    text = caplog.text
    for private in ("acme-secret-project", "0190a0b2", "customer", "v=3", "color: red"):
        assert private not in text


def test_a_sign_in_link_s_token_is_never_logged(db, caplog):
    caplog.set_level(logging.WARNING, logger=LOGGER)
    token = "MQ-cbx0a1-4b8f2e6d0c9a7e5f3b1d"
    body = report_uri_body(**{"document-uri": f"http://localhost:8000/accounts/sign-in/link/{token}/"})

    assert post(body).status_code == 204
    assert "on page /accounts/sign-in/link/<str:token>/" in logged(caplog)[0]
    assert token not in caplog.text


def test_reporting_api_reports_are_read_too(db, caplog):
    caplog.set_level(logging.WARNING, logger=LOGGER)
    body = [
        {
            "type": "csp-violation",
            "age": 3,
            "url": EVENT_PAGE,
            "user_agent": "Mozilla/5.0",
            "body": {
                "documentURL": EVENT_PAGE,
                "effectiveDirective": "script-src-elem",
                "blockedURL": "https://cdn.evil.example:8443/x.js?u=1",
                "disposition": "report",
                "sourceFile": "",
                "lineNumber": 0,
            },
        },
        {"type": "deprecation", "body": {"id": "x"}},
    ]

    response = post(json.dumps(body).encode(), content_type="application/reports+json")

    assert response.status_code == 204
    assert logged(caplog) == [
        "Content-Security-Policy violation reported: script-src-elem blocked https://cdn.evil.example:8443/x.js "
        "on page /o/<slug:org_slug>/events/<uuid:event_id>/ (report only)"
    ]


def test_a_page_outside_hookline_and_odd_field_types_are_named_unknown(db, caplog):
    caplog.set_level(logging.WARNING, logger=LOGGER)
    body = report_uri_body(
        **{
            "document-uri": "https://elsewhere.example/no/such/page",
            "effective-directive": ["img-src"],
            "violated-directive": None,
            "blocked-uri": {"nested": True},
            "line-number": "12",
            "source-file": 7,
        }
    )

    assert post(body).status_code == 204
    assert logged(caplog) == ["Content-Security-Policy violation reported: unknown blocked unknown on page unknown"]


def test_control_characters_cannot_forge_log_lines(db, caplog):
    caplog.set_level(logging.WARNING, logger=LOGGER)
    body = report_uri_body(**{"effective-directive": "img-src\nERROR forged line\r"})

    assert post(body).status_code == 204
    (line,) = logged(caplog)
    assert "\n" not in line and "\r" not in line
    assert "img-src?ERROR forged line?" in line


@pytest.mark.parametrize(
    ("body", "content_type", "status", "error"),
    [
        (b"not json", "application/csp-report", 400, "malformed_report"),
        (b"\xff\xfe", "application/csp-report", 400, "malformed_report"),
        (b'{"report": {}}', "application/csp-report", 400, "malformed_report"),
        (b'[{"type": "deprecation", "body": {}}]', "application/reports+json", 400, "malformed_report"),
        (b"[1, 2]", "application/reports+json", 400, "malformed_report"),
        (b'{"csp-report": {}}', "text/plain", 415, "unsupported_media_type"),
        (b'{"csp-report": {"x": "' + b"a" * (64 * 1024) + b'"}}', "application/csp-report", 413, "report_too_large"),
    ],
)
def test_what_is_not_a_report_gets_a_reason_and_logs_nothing(db, caplog, body, content_type, status, error):
    caplog.set_level(logging.WARNING, logger=LOGGER)
    response = post(body, content_type=content_type)

    assert response.status_code == status
    assert response.json()["error"] == error
    assert response.json()["detail"]
    assert logged(caplog) == []


def test_only_post_is_allowed(db):
    assert Client().get("/csp-reports").status_code == 405


def test_each_process_logs_at_most_its_budget_a_minute_and_says_what_it_held_back(db, caplog, held_clock):
    caplog.set_level(logging.WARNING, logger=LOGGER)
    for _ in range(csp_reports.LOG_LINES_PER_MINUTE + 5):
        assert post(report_uri_body()).status_code == 204
    assert len(logged(caplog)) == csp_reports.LOG_LINES_PER_MINUTE

    held_clock[0] += 59.9
    post(report_uri_body())
    assert len(logged(caplog)) == csp_reports.LOG_LINES_PER_MINUTE

    held_clock[0] += 0.1
    post(report_uri_body())
    lines = logged(caplog)
    assert len(lines) == csp_reports.LOG_LINES_PER_MINUTE + 1
    assert lines[-1].endswith("(6 more reports since the last line were not logged)")
    post(report_uri_body())
    assert "not logged" not in logged(caplog)[-1]


@pytest.mark.parametrize(
    "body, status, line",
    [
        # Addresses urlsplit refuses: an unclosed IPv6 bracket, a port that is no port.
        (report_uri_body(**{"blocked-uri": "http://[::1/x"}), 204, "blocked unknown on page"),
        (report_uri_body(**{"source-file": "https://cdn.example:99999/x.js"}), 204, "blocked inline on page"),
        (report_uri_body(**{"source-file": "https://cdn.example:port/x.js"}), 204, "blocked inline on page"),
        (report_uri_body(**{"document-uri": "https://[hooks.example/o/acme/"}), 204, "on page unknown"),
        # JSON nested deeper than the parser's recursion, well within the size limit.
        (b"[" * 60000, 400, None),
        (b'{"csp-report": ' * 3000 + b"1" + b"}" * 3000, 400, None),
    ],
)
def test_odd_reports_are_answered_with_a_reason_never_a_server_error(db, caplog, body, status, line):
    caplog.set_level(logging.WARNING, logger=LOGGER)
    response = Client(raise_request_exception=False).post(
        "/csp-reports", data=body, content_type="application/csp-report"
    )

    assert response.status_code == status
    if status == 400:
        assert response.json()["error"] == "malformed_report"
    else:
        [logged_line] = logged(caplog)
        assert line in logged_line
        assert "99999" not in logged_line and ":port" not in logged_line
