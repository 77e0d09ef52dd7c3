"""A tiny local HTTP server standing in for a tenant's endpoint in `make run`.

It answers 200 to every POST and prints the Standard Webhooks headers it got,
so you can watch events arrive. It listens on 127.0.0.1 only.
"""

import json
import os
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


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
            f"signature={'yes' if self.headers.get('webhook-signature') else 'no'} ({len(body)} bytes)",
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
