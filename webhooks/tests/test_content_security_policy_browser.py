"""The Content-Security-Policy in a real browser (Playwright + Debian's Chromium): the dashboard,
the sign-in pages and the admin work under it, and Chromium reports no violation of it.

Violations are collected from the ``securitypolicyviolation`` event (set up before any page
script runs) and from the console, across every page a context opens."""

import logging
import re
import time
from dataclasses import dataclass, field

import pytest
from django.conf import settings as django_settings
from django.contrib.auth import get_user_model
from django.core import mail
from django.test import Client, RequestFactory
from django.utils.module_loading import import_string
from playwright.sync_api import expect

from config.content_security_policy import ContentSecurityPolicyMiddleware
from config.urls import handler500
from webhooks.models import WebhookEvent

from .dashboard_helpers import build_world, ingest_stripe, work_driven_by_the_test
from .test_dashboard_browser import sign_in as dashboard_sign_in

pytestmark = pytest.mark.django_db(transaction=True)

PASSWORD = "correct horse battery"
REPORT_VIOLATIONS = """
document.addEventListener("securitypolicyviolation", (event) => {
  window.reportCspViolation(
    [event.violatedDirective, event.blockedURI, event.sample, event.sourceFile, event.lineNumber, location.href].join(" | ")
  );
}, true);
"""


@pytest.fixture(autouse=True)
def work_is_driven_by_the_test(monkeypatch):
    work_driven_by_the_test(monkeypatch)


@dataclass
class Watch:
    violations: list[str] = field(default_factory=list)
    pages_without_policy: list[str] = field(default_factory=list)
    pages_seen: int = 0


def watch(page) -> Watch:
    """Collect CSP violations and document responses without the header, for the page's context."""
    seen = Watch()
    context = page.context
    context.expose_binding("reportCspViolation", lambda source, text: seen.violations.append(text))
    context.add_init_script(REPORT_VIOLATIONS)

    def on_console(message):
        if "Content Security Policy" in message.text:
            seen.violations.append(f"console: {message.text}")

    def on_response(response):
        if response.request.resource_type == "document" and "text/html" in response.headers.get("content-type", ""):
            seen.pages_seen += 1
            if "default-src 'self'" not in response.headers.get("content-security-policy", ""):
                seen.pages_without_policy.append(response.url)

    page.on("console", on_console)
    page.on("response", on_response)
    return seen


def flush(page) -> None:
    # A violation's event is dispatched as a task of its own: one more task and a round trip
    # after it, and its report has arrived.
    page.evaluate("new Promise((resolve) => setTimeout(resolve, 0))")


def assert_clean(seen: Watch, pages_at_least: int) -> None:
    assert seen.violations == []
    assert seen.pages_without_policy == []
    assert seen.pages_seen >= pages_at_least


def test_the_watch_sees_a_violation(browser, live_server, organization, owner):
    # What the other tests rely on: a refused inline style is reported.
    page = dashboard_sign_in(browser, live_server, owner, own_context=True)
    seen = watch(page)
    page.goto(f"{live_server.url}/o/acme/")
    page.evaluate("document.body.insertAdjacentHTML('beforeend', '<p id=styled style=\"color: red\">x</p>')")
    flush(page)
    assert any("style-src" in violation for violation in seen.violations), seen.violations
    assert page.evaluate("getComputedStyle(document.getElementById('styled')).color") != "rgb(255, 0, 0)"


def test_the_dashboard_and_its_htmx_parts_work_under_the_policy(
    browser, live_server, settings, client, organization, owner
):
    settings.PUBLIC_BASE_URL = live_server.url
    world = build_world(client, organization)
    page = dashboard_sign_in(browser, live_server, owner, own_context=True)
    page.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=live_server.url)
    seen = watch(page)
    page.clock.install()

    page.goto(f"{live_server.url}/o/acme/")
    page.wait_for_selector("figure.chart svg")
    # htmx is told not to add its indicator <style>; no page has one.
    page.goto(f"{live_server.url}/o/acme/events/")
    # (page.evaluate, never wait_for_function with a string: that one evals in the page, which the policy refuses)
    assert page.evaluate("[htmx.config.includeIndicatorStyles, htmx.config.allowEval]") == [False, False]
    assert page.evaluate("document.querySelectorAll('style').length") == 0

    # The live list: a new event arrives without a reload.
    page.wait_for_selector("#event-poller")
    ingest_stripe(client, world.source, "evt_arrives_live", "customer.created")
    with page.expect_response(lambda response: "/events/live/" in response.url):
        page.clock.run_for(5_000)
    page.wait_for_selector("#event-live >> text=customer.created")
    # The filters: a change reloads the results in place and the address follows.
    with page.expect_response(lambda response: "status=" in response.url):
        page.select_option("#id_status", "failed")
    page.wait_for_url(re.compile(r"status=failed"))

    # The event, the source with its copy button (a static script), the test sender (htmx).
    page.goto(f"{live_server.url}/o/acme/events/{world.event.pk}/")
    page.wait_for_selector("h1")
    page.goto(f"{live_server.url}/o/acme/sources/{world.source.pk}/")
    page.get_by_role("button", name="Copy").first.click()
    page.get_by_role("button", name="Copied").wait_for()
    assert page.evaluate("navigator.clipboard.readText()") == page.input_value("#ingest-url")
    page.goto(f"{live_server.url}/o/acme/sources/{world.source.pk}/test/")
    page.get_by_role("button", name="Send test event").click()
    page.wait_for_selector("#test-result >> text=HTTP 200")
    assert WebhookEvent.objects.filter(source=world.source).count() == 3
    with page.expect_response(lambda response: "/progress/" in response.url):
        page.clock.run_for(2_000)

    for path in ("sources/", "sources/new/", "destinations/", f"destinations/{world.destination.pk}/", "audit/"):
        page.goto(f"{live_server.url}/o/acme/{path}")
        page.wait_for_selector("main h1")
    page.goto(f"{live_server.url}/o/acme/api-keys/")
    page.wait_for_selector("main h1")
    page.goto(f"{live_server.url}/o/acme/team/")
    page.wait_for_selector("main h1")
    page.goto(f"{live_server.url}/o/acme/no-such-page/")  # the 404 page
    page.wait_for_selector("main h1")
    flush(page)
    assert_clean(seen, pages_at_least=12)


def test_signing_in_works_under_the_policy(page, live_server, settings, organization, owner):
    settings.PUBLIC_BASE_URL = live_server.url
    seen = watch(page)
    page.goto(f"{live_server.url}/o/acme/team/")
    page.get_by_label("Email address").fill(owner.email)
    page.get_by_role("button", name="Email me a sign-in link").click()
    page.get_by_role("heading", name="Check your email").wait_for()
    code = re.search(r"^(\d{6})$", mail.outbox[0].body, re.MULTILINE).group(1)
    page.get_by_label("Or type the code here").fill(code)
    page.get_by_role("button", name="Sign in").click()
    page.get_by_role("heading", name="Team").wait_for()
    page.goto(f"{live_server.url}/accounts/sign-out/")
    page.get_by_role("button", name="Sign out").first.click()
    page.wait_for_url(re.compile(r"/accounts/sign-in/"))
    flush(page)
    assert_clean(seen, pages_at_least=4)


def test_the_admin_works_under_the_policy(page, live_server, client, organization):
    world = build_world(client, organization)
    get_user_model().objects.create_superuser("root@hookline.example", PASSWORD)
    seen = watch(page)
    page.goto(f"{live_server.url}/admin/")
    page.fill("#id_username", "root@hookline.example")
    page.fill("#id_password", PASSWORD)
    page.click("input[type=submit]")
    page.wait_for_selector("#platform-overview")
    # The theme toggle and the sidebar are Django's scripts.
    page.click("button.theme-toggle")
    assert page.evaluate("document.documentElement.dataset.theme") in ("dark", "light")

    # The event list: "select all" ticks every row (actions.js); the date filter's form is styled.
    page.goto(f"{live_server.url}/admin/webhooks/webhookevent/")
    page.check("#action-toggle")
    assert page.is_checked(f"input[name=_selected_action][value='{world.event.pk}']")
    assert page.evaluate("getComputedStyle(document.querySelector('.hookline-date-range')).paddingLeft") != "0px"
    page.goto(f"{live_server.url}/admin/webhooks/webhookevent/{world.event.pk}/change/")
    assert page.evaluate("getComputedStyle(document.querySelector('.hookline-inline-form')).display") == "inline"

    # A new organization: the slug is filled from the name as it is typed (prepopulate.js).
    page.goto(f"{live_server.url}/admin/organizations/organization/add/")
    page.locator("#id_name").press_sequentially("Initech Labs")  # (prepopulate.js listens to keyup)
    expect(page.locator("#id_slug")).to_have_value("initech-labs")
    # A member row added in place (inlines.js), its user field searching as one types (select2).
    page.get_by_role("button", name="Add another Membership").click()
    page.locator(".select2-selection").first.click()
    page.fill(".select2-search__field", "owner@acme")
    page.wait_for_selector(".select2-results__option >> text=owner@acme.example")

    # django-celery-beat's periodic task form, its script moved to a static file.
    from django.core.management import call_command
    from django_celery_beat.models import CrontabSchedule, PeriodicTask

    call_command("install_periodic_tasks")
    crontab = CrontabSchedule.objects.create(minute="0", hour="4")
    task = PeriodicTask.objects.order_by("pk").first()
    page.goto(f"{live_server.url}/admin/django_celery_beat/periodictask/{task.pk}/change/")
    assert page.evaluate("getComputedStyle(document.querySelector('.field-crontab_translation')).display") == "none"
    page.select_option("#id_crontab", str(crontab.pk))
    page.wait_for_selector(".field-crontab .help >> text=Translation: At 04:00 AM")
    flush(page)
    assert_clean(seen, pages_at_least=7)


def test_the_500_page_is_styled_under_its_own_policy(page, live_server):
    # The handler's answer as the middleware passes it on.
    response = ContentSecurityPolicyMiddleware(import_string(handler500))(RequestFactory().get("/o/acme/"))
    seen = watch(page)
    url = f"{live_server.url}/a-failing-page/"
    page.route(
        url,
        lambda route: route.fulfill(
            status=500, body=response.content, headers={key: value for key, value in response.items()}
        ),
    )
    page.goto(url)
    assert page.evaluate("getComputedStyle(document.body).backgroundColor") == "rgb(246, 247, 249)"
    flush(page)
    assert_clean(seen, pages_at_least=1)


def test_the_admin_s_date_pickers_selectors_and_popups_work_under_the_policy(page, live_server, organization, owner):
    # Django's own widgets, each a static script: the calendar and clock of a date and time field, the
    # two-box selector of many-to-many fields, and the "+" popup whose answer fills in the opener's field.
    from django.core.management import call_command
    from django_celery_beat.models import CrontabSchedule, PeriodicTask

    superuser = get_user_model().objects.create_superuser("root@hookline.example", PASSWORD)
    call_command("install_periodic_tasks")
    # Signed in with a session cookie: the sign-in form under the policy is test_the_admin_works_under_the_policy's.
    client = Client()
    client.force_login(superuser)
    cookie = client.cookies[django_settings.SESSION_COOKIE_NAME].value
    page.context.add_cookies([{"name": django_settings.SESSION_COOKIE_NAME, "value": cookie, "url": live_server.url}])
    seen = watch(page)
    page.goto(f"{live_server.url}/admin/")
    page.wait_for_selector("#platform-overview")

    page.goto(f"{live_server.url}/admin/accounts/user/{owner.pk}/change/")
    page.fill("#id_last_login_0", "")
    page.click("#calendarlink0")
    page.locator("#calendarbox0").get_by_role("link", name="Today").click()
    expect(page.locator("#id_last_login_0")).not_to_have_value("")
    page.fill("#id_last_login_1", "")
    page.click("#clocklink0")
    page.locator("#clockbox0").get_by_role("link", name="Noon").click()
    expect(page.locator("#id_last_login_1")).to_have_value("12:00:00")
    page.select_option("#id_user_permissions_from", index=0)
    page.click("#id_user_permissions_add")
    expect(page.locator("#id_user_permissions_to option")).to_have_count(1)

    task = PeriodicTask.objects.order_by("pk").first()
    page.goto(f"{live_server.url}/admin/django_celery_beat/periodictask/{task.pk}/change/")
    with page.expect_popup() as opened:
        page.click("#add_id_crontab")
    popup = opened.value
    popup.fill("#id_minute", "5")
    popup.fill("#id_hour", "3")
    with popup.expect_event("close"):
        popup.click("input[name=_save]")
    created = CrontabSchedule.objects.get(minute="5", hour="3")
    expect(page.locator("#id_crontab")).to_have_value(str(created.pk))
    flush(page)
    assert_clean(seen, pages_at_least=3)  # the overview, the user, the periodic task


def test_chromium_s_report_of_a_violation_reaches_the_log(browser, live_server, organization, owner, caplog):
    # The policy's report-uri, end to end: a blocked inline style on an event page is posted by the
    # browser itself and logged under the page's URL pattern, not its address.
    caplog.set_level(logging.WARNING, logger="config.csp_reports")
    page = dashboard_sign_in(browser, live_server, owner)
    page.goto(f"{live_server.url}/o/acme/events/")
    page.evaluate("document.body.insertAdjacentHTML('beforeend', '<p style=\"color: red\">x</p>')")

    expected = "style-src-attr blocked inline on page /o/<slug:org_slug>/events/"
    deadline = time.monotonic() + 30
    while not any(expected in record.getMessage() for record in caplog.records) and time.monotonic() < deadline:
        page.wait_for_timeout(100)

    assert [record.getMessage() for record in caplog.records if record.name == "config.csp_reports"] == [
        f"Content-Security-Policy violation reported: {expected}"
    ]
