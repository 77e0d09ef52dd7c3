"""Requests sent with Transfer-Encoding: chunked, presented to the WSGI application as gunicorn
presents them (Django's test client always sends a Content-Length)."""

from __future__ import annotations

import io
import json

from django.core.signals import request_finished, request_started
from django.db import close_old_connections


def wsgi_request_chunked(method: str, path: str, body: bytes, headers: dict, stream=None) -> tuple[str, dict]:
    """A request (POST, PATCH…) through the WSGI application as gunicorn presents a chunked request: no
    CONTENT_LENGTH, Transfer-Encoding set, and wsgi.input already de-chunked."""
    from config.wsgi import application  # on first use, as a process would load it

    environ = {
        "REQUEST_METHOD": method,
        "PATH_INFO": path,
        "QUERY_STRING": "",
        "SERVER_NAME": "testserver",
        "SERVER_PORT": "80",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "HTTP_HOST": "testserver",
        "REMOTE_ADDR": "203.0.113.9",
        "HTTP_TRANSFER_ENCODING": "chunked",
        "CONTENT_TYPE": "application/json",
        "wsgi.input": stream or io.BytesIO(body),
        "wsgi.url_scheme": "http",
        "wsgi.errors": io.StringIO(),
        "wsgi.multithread": True,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
        **{"HTTP_" + name.upper().replace("-", "_"): value for name, value in headers.items()},
    }
    status = []
    # As Django's test Client does: closing "old" connections would end the test's transaction.
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    try:
        chunks = application(environ, lambda s, h, exc_info=None: status.append(s))
        payload = b"".join(chunks)
        chunks.close()
    finally:
        request_started.connect(close_old_connections)
        request_finished.connect(close_old_connections)
    return status[0], json.loads(payload)
