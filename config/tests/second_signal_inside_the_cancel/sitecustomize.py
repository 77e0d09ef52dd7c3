"""Loaded by Python at start-up in a worker a test runs with this directory on PYTHONPATH.

It sends the worker's main process a second SIGQUIT while the first one's cold handler picks the
running tasks to cancel (Celery's Consumer.cancel_active_requests filters the worker's set of active
requests, asking of each late-acknowledged one whether it already succeeded): a second Ctrl-C, or a
platform's supervisor repeating its signal, a moment after the first. Python runs the second handler
there, nested in the first's filter. It cancels the running tasks itself, and each cancelled request
leaves that set (task_ready), under the first handler's iteration. The line written here tells the
test that the moment came.
"""

import os
import signal
import sys
import threading

from celery.utils import log
from celery.worker.consumer import consumer

_main_pid = os.getpid()  # sitecustomize runs before the worker forks its pool processes
_sent = []


class _SigquitOnTheFirstQuestion:
    """The set of succeeded task ids, which sends the SIGQUIT once, when a cold handler first asks it."""

    def __init__(self, succeeded):
        self._succeeded = succeeded

    def __contains__(self, task_id):
        if (
            not _sent
            and log._in_sighandler
            and os.getpid() == _main_pid
            and threading.current_thread() is threading.main_thread()
        ):
            _sent.append(True)
            os.write(sys.__stdout__.fileno(), b"\ntest: second SIGQUIT sent inside the first's cancel\n")
            os.kill(os.getpid(), signal.SIGQUIT)
        return task_id in self._succeeded

    def __getattr__(self, name):
        return getattr(self._succeeded, name)


consumer.successful_requests = _SigquitOnTheFirstQuestion(consumer.successful_requests)
