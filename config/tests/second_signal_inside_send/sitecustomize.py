"""Loaded by Python at start-up in a worker a test runs with this directory on PYTHONPATH.

It sends the worker's main process a cold shutdown's SIGQUIT at the one moment a loaded CI machine
once sent it by chance: while the warm shutdown's handler holds worker_shutting_down's receiver lock
(Celery's Signal._live_receivers calls _clear_dead_receivers under it). Python runs the SIGQUIT's
handler at its next instruction, still under that lock. The line written here tells the test that
the moment came, so that a Celery whose send no longer looks like this fails the test rather than
passing it without proving anything.
"""

import os
import signal
import sys

from celery.signals import worker_shutting_down
from celery.utils import log

_clear_dead_receivers = worker_shutting_down._clear_dead_receivers
_sent = []


def _send_sigquit_from_inside_the_warm_shutdown_send():
    if log._in_sighandler and not _sent:  # the warm shutdown's handler (connect() runs at import)
        _sent.append(True)
        os.write(sys.__stdout__.fileno(), b"\ntest: SIGQUIT sent under worker_shutting_down's lock\n")
        os.kill(os.getpid(), signal.SIGQUIT)
    return _clear_dead_receivers()


worker_shutting_down._clear_dead_receivers = _send_sigquit_from_inside_the_warm_shutdown_send
