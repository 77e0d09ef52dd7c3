"""Makes the request being served known to the audit log.

Every entry written while a request is served then carries the client's IP address and user
agent, without each service having to pass the request along.
"""

from __future__ import annotations

from contextvars import ContextVar

_current_request: ContextVar = ContextVar("hookline_audit_request", default=None)


def current_request():
    """The HttpRequest this thread or task is serving, or None (workers, commands)."""
    return _current_request.get()


class AuditRequestMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        token = _current_request.set(request)
        try:
            return self.get_response(request)
        finally:
            _current_request.reset(token)
