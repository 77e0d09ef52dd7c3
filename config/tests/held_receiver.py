"""A receiver for the whole-stack process tests (platform stop, key rotation) that holds its answers
until the test lets them go."""

from __future__ import annotations

import threading

from webhooks.tests.processes import PATIENCE_SECONDS, CountingReceiver


class HeldReceiver(CountingReceiver):
    """A destination that counts each webhook-id it receives and answers 200 only once ``release()``
    was called: a send stays under way for exactly as long as the test needs it to (until a signal was
    sent, say), where a fixed delay was either too short on a loaded machine or wasted on an idle one.
    ``held()`` is how many requests are waiting for their answer."""

    def __init__(self):
        self._released = threading.Event()
        self._held = 0
        super().__init__()

    def wait_before_answering(self) -> bool:
        with self.lock:
            self._held += 1
        # Never answered at all if the test never releases it (the sender gives up first).
        released = self._released.wait(PATIENCE_SECONDS * 5)
        with self.lock:
            self._held -= 1
        return released

    def held(self) -> int:
        with self.lock:
            return self._held

    def release(self) -> None:
        """Answer the requests held, and every later one at once."""
        self._released.set()

    def close(self) -> None:
        self.release()  # what is still held ends (its sender is gone by now)
        super().close()
