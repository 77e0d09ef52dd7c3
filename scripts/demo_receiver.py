"""A tiny local HTTP server standing in for a tenant's endpoint in `make run`.

It answers 200 to every POST and prints what it got, with whether Hookline's Standard
Webhooks signature verifies under the demo destination's secret (DEMO_RECEIVER_SECRET,
which `make run` hands it: seed_demo gives it once, when it creates the destination, and
`make run` keeps it in var/demo_receiver_secret for later starts), so you can watch events arrive and see what your own
endpoint has to check. It listens on 127.0.0.1 only.
"""

import base64
import binascii
import hashlib
import hmac
import json
import os
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

SECRET = os.environ.get("DEMO_RECEIVER_SECRET", "")


def signature_check(headers, body: bytes, secret: str = SECRET) -> str:
    """A few words on the request's webhook-signature, checked as a receiver must check it.

    Written out here rather than imported from Hookline: this stands in for the tenant's code,
    which has only the secret and the Standard Webhooks spec (or its `standardwebhooks` library).
    The timestamp's age is not checked: a real endpoint also refuses old ones (the library's
    default is 5 minutes).
    """
    signatures = (headers.get("webhook-signature") or "").split()
    if not signatures:
        return "no signature"
    if not secret:
        return "signature not checked (no secret given)"
    try:
        key = base64.b64decode(secret.removeprefix("whsec_"), validate=True)
    except binascii.Error:
        return "signature not checked (the secret given is not a whsec_ secret)"
    signed = f"{headers.get('webhook-id')}.{headers.get('webhook-timestamp')}.".encode() + body
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    # During a rotation's overlap each attempt carries one signature per secret: any may match.
    if any(hmac.compare_digest(given.encode(), expected.encode()) for given in _v1_signatures(signatures)):
        return "signature verified"
    return (
        "signature DOES NOT MATCH the demo destination's secret as `make run` created it (rotated since? this "
        "receiver only knows that one, kept in var/demo_receiver_secret)"
    )


def _v1_signatures(signatures: list[str]) -> list[str]:
    return [value for version, _, value in (s.partition(",") for s in signatures) if version == "v1"]


class Receiver(BaseHTTPRequestHandler):
    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        try:
            event_type = json.loads(body).get("type", "?")
        except (ValueError, AttributeError):
            event_type = "?"
        print(
            f"[receiver] got {event_type} webhook-id={self.headers.get('webhook-id')} "
            f"{signature_check(self.headers, body)} ({len(body)} bytes)",
            flush=True,
        )
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(b'{"received": true}')

    def log_message(self, *args):
        pass


if __name__ == "__main__":
    port = int(sys.argv[1]) if len(sys.argv) > 1 else int(os.environ.get("DEMO_RECEIVER_PORT", "8001"))
    # Ctrl-C in `make run` reaches every process of it, at any moment: stop as the others do, without a traceback.
    try:
        server = ThreadingHTTPServer(("127.0.0.1", port), Receiver)
        print(f"[receiver] listening on http://127.0.0.1:{port}/hooks", flush=True)  # once it truly is
        server.serve_forever()
    except KeyboardInterrupt:
        pass
