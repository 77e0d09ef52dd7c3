"""Signed-in browser pages for the dashboard's browser tests, one reused from test to test.

A new browser context and page cost Chromium a new renderer process: ~0.7 s a test on a loaded
2-core machine, against ~0.05 s to hand the previous test's page on. The page handed on is reset:
its document left for about:blank (the old page's timers and polls stop), its storage and cookies
cleared, the new user's session cookie set and the window resized. What cannot be undone in a
context - an installed clock, init scripts, exposed bindings, routes, listeners, permissions, a
history to go back through - is for a page asked with ``own_context=True``, which is never handed
on; such a page (and any page a test closed or opened others beside) is closed at the next call.
"""

from __future__ import annotations

import contextlib

from django.conf import settings as django_settings
from django.test import Client
from playwright.sync_api import Error as PlaywrightError

# The pages handed out since the last call: (page, may be handed on).
_handed_out: list[tuple[object, bool]] = []


def _session_cookie(live_server, user) -> list[dict]:
    client = Client()
    client.force_login(user)
    value = client.cookies[django_settings.SESSION_COOKIE_NAME].value
    return [{"name": django_settings.SESSION_COOKIE_NAME, "value": value, "url": live_server.url}]


def _reusable(page, browser) -> bool:
    try:
        context = page.context
        if page.is_closed() or context.browser is not browser or context.pages != [page]:
            return False
        # A clock installed against the rules above (Playwright's injected fake timers).
        return not page.evaluate("typeof globalThis.__pwClock !== 'undefined'")
    except PlaywrightError:  # the context or the browser has gone
        return False


def _reset(page, live_server) -> None:
    if page.url.startswith(live_server.url):
        page.evaluate("() => { sessionStorage.clear(); localStorage.clear(); }")
    page.goto("about:blank")
    page.context.clear_cookies()


def _take_previous(browser, live_server):
    spare = None
    while _handed_out:
        page, may_hand_on = _handed_out.pop()
        if spare is None and may_hand_on and _reusable(page, browser):
            try:
                _reset(page, live_server)
            except PlaywrightError:  # e.g. its document was being replaced: a new context instead
                pass
            else:
                spare = page
                continue
        with contextlib.suppress(PlaywrightError):  # closed already, by its test
            page.context.close()
    return spare


def signed_in_page(browser, live_server, user, width=1280, height=900, *, own_context=False):
    """A page of ``browser`` signed in as ``user`` on ``live_server`` (a session cookie made by
    Django's test client), its window ``width`` x ``height``, on about:blank."""
    page = _take_previous(browser, live_server)
    if own_context and page is not None:
        _handed_out.append((page, True))  # kept for the next test
        page = None
    if page is None:
        context = browser.new_context(viewport={"width": width, "height": height})
        page = context.new_page()
        page.set_default_timeout(10_000)
    else:
        page.set_viewport_size({"width": width, "height": height})
    page.context.add_cookies(_session_cookie(live_server, user))
    _handed_out.append((page, not own_context))
    return page
