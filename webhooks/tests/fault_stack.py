"""The fault tests' stack (processes.Stack), stopped faster: every process is told at once.

processes.Stack.stop_all stops web, worker and beat one after the other, each waited for in turn
(web's graceful stop alone takes a couple of seconds); here they wind down together. Starting
them together is the callers' part: start_together() starts the worker and beat, whose start is
not waited for, before web, whose is, so that the three boot at the same time."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time

from .processes import Stack


class FaultStack(Stack):
    def start_together(self, *names: str) -> None:
        """Start ``names``, web (whose start is waited for, until it listens) last."""
        for name in sorted(names, key=lambda name: name == "web"):
            self.start(name)

    def stop_all(self) -> None:
        self._stopping.set()
        self._supervisor.join(5)
        with self._lock:
            stopping = dict(self.processes)
            self.processes.clear()
        for name, process in stopping.items():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL if name == "worker" else signal.SIGTERM)
        for process in stopping.values():
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                # As a platform does when SIGTERM is not enough (a process stuck reconnecting).
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(15)


class SteppingClock:
    """A module's ``time`` that runs with the real one, plus whatever step() adds to monotonic().

    For a lingering task whose linger the test has seen do its work: each step brings its end
    nearer, rather than the test waiting the rest of the linger out in real time."""

    def __init__(self):
        self.ahead = 0.0

    def step(self, seconds: float) -> None:
        self.ahead += seconds

    def monotonic(self) -> float:
        return time.monotonic() + self.ahead

    def __getattr__(self, name):
        return getattr(time, name)
