"""Loaded by Python at start-up in a worker a test runs with this directory on PYTHONPATH.

It sends the worker's main process a cold shutdown's SIGQUIT while the warm shutdown stops the pool:
Celery's prefork TaskPool.on_stop has closed the billiard pool and asks for the event loop (its
get_event_loop), on its way to start a timer thread and join the pool. Python runs the SIGQUIT's
handler there, nested in the warm shutdown's stop. The cold handler stops the pool itself, to the end,
and sets the pool aside (TaskPool._pool = None); the warm stop then went on to join a pool that was no
longer there. Only a signal from the close to the join does that (the timer thread's start, which
waits for the thread to run, is the widest part): one that comes inside the join finds the pool's
object still held by the frame it interrupted (checked with a SIGQUIT sent at billiard's join: no
error). The line written here tells the test that the moment came.
"""

import os
import signal
import sys
import threading

from celery.concurrency import prefork
from celery.utils import log

_main_pid = os.getpid()  # sitecustomize runs before the worker forks its pool processes
_get_event_loop = prefork.get_event_loop
_sent = []


def _sigquit_when_the_warm_shutdown_stops_the_pool():
    if (
        not _sent
        and os.getpid() == _main_pid
        and threading.current_thread() is threading.main_thread()
        and not log._in_sighandler  # the warm shutdown's stop, not a cold handler's
        and sys._getframe(1).f_code.co_name == "on_stop"
    ):
        _sent.append(True)
        os.write(sys.__stdout__.fileno(), b"\ntest: SIGQUIT sent inside the warm shutdown's pool stop\n")
        os.kill(os.getpid(), signal.SIGQUIT)
    return _get_event_loop()


prefork.get_event_loop = _sigquit_when_the_warm_shutdown_stops_the_pool
