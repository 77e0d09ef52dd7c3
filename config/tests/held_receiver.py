"""Helpers for the whole-stack process tests (platform stop, key rotation): a receiver that holds its
answers until the test lets them go, and a stack's processes started side by side."""

from __future__ import annotations

import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from webhooks.tests.processes import PATIENCE_SECONDS, Stack


class HeldReceiver:
    """A destination that counts each webhook-id it receives and answers 200 only once ``release()``
    was called: a send stays under way for exactly as long as the test needs it to (until a signal was
    sent, say), where a fixed delay was either too short on a loaded machine or wasted on an idle one.
    ``held()`` is how many requests are waiting for their answer."""

    def __init__(self):
        self.counts: Counter[str] = Counter()
        self.lock = threading.Lock()
        self._released = threading.Event()
        self._held = 0
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with receiver.lock:
                    receiver._held += 1
                # Never answered at all if the test never releases it (the sender gives up first).
                released = receiver._released.wait(PATIENCE_SECONDS * 5)
                with receiver.lock:
                    receiver._held -= 1
                    receiver.counts[self.headers["webhook-id"]] += 1
                if not released:
                    return
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def held(self) -> int:
        with self.lock:
            return self._held

    def release(self) -> None:
        """Answer the requests held, and every later one at once."""
        self._released.set()

    def snapshot(self) -> Counter[str]:
        with self.lock:
            return Counter(self.counts)

    def close(self) -> None:
        self.release()  # what is still held ends (its sender is gone by now)
        self.server.shutdown()
        self.server.server_close()


def start_side_by_side(stack: Stack, *names: str) -> None:
    """Start ``names`` as ``stack.start`` does, the web process last: a worker's or beat's start is not
    waited for, the web process's is (until it listens), so the others load Django meanwhile rather
    than after it."""
    for name in sorted(names, key=lambda name: name == "web"):
        stack.start(name)
