"""The Content-Security-Policy header: defence in depth against injected markup.

Django 5.2 has none built in. SECURE_CSP (config/settings.py) has the shape of Django 6.0's
setting of that name, so moving to 6.0's own middleware changes only MIDDLEWARE.
"""

import base64
import hashlib
import re
from collections.abc import Callable

from django.conf import settings
from django.http import HttpRequest, HttpResponse

HEADER = "Content-Security-Policy"
# JSON (the ingest endpoint, the REST API), files and probes: nothing to load, nothing to frame.
NOT_A_PAGE = "default-src 'none'; frame-ancestors 'none'"
_STYLE_BLOCK = re.compile(rb"<style>(.*?)</style>", re.S)


def policy_header(policy: dict[str, list[str]]) -> str:
    """The header's value for a {directive: [sources]} dict."""
    return "; ".join(" ".join([directive, *sources]) for directive, sources in policy.items())


def allow_own_style_blocks(response: HttpResponse) -> HttpResponse:
    """SECURE_CSP plus the hashes of the response's own <style> blocks, for a page that must stand
    alone (the 500 page: no static files, no database). The middleware keeps a header set here."""
    hashes = [
        f"'sha256-{base64.b64encode(hashlib.sha256(block).digest()).decode()}'"
        for block in _STYLE_BLOCK.findall(response.content)
    ]
    policy = dict(settings.SECURE_CSP)
    policy["style-src"] = [*policy.get("style-src", policy.get("default-src", [])), *hashes]
    response[HEADER] = policy_header(policy)
    return response


class ContentSecurityPolicyMiddleware:
    """SECURE_CSP on HTML pages, NOT_A_PAGE on everything else; a header a view set is kept.

    With DEBUG on, Django's own error pages (tracebacks, the technical 404) are left without one: they
    are styled and scripted inline.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]):
        self.get_response = get_response
        self.page_policy = policy_header(settings.SECURE_CSP)
        self.debug = settings.DEBUG

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        if HEADER in response:
            return response
        if response.get("Content-Type", "").startswith("text/html"):
            if self.debug and response.status_code >= 400:
                return response
            response[HEADER] = self.page_policy
        else:
            response[HEADER] = NOT_A_PAGE
        return response
