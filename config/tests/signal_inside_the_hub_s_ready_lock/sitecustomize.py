"""Loaded by Python at start-up in a worker a test runs with this directory on PYTHONPATH.

It sends the worker's main process a cold shutdown's SIGQUIT while the event loop holds the hub's
lock on its ready callbacks (kombu's Hub._ready_lock, a plain threading.Lock, taken at every turn of
the loop and by each call_soon), at a moment a busy worker meets all the time: a pool process has
finished a task and its result waits in the pipe, not yet read. Python runs the SIGQUIT's handler
there, under that lock. The cold handler stops the pool, whose join reads that result; the task
succeeded, so its message is acknowledged (task_acks_late) through the hub's call_soon, which takes
the same lock. The line written here tells the test that the moment came, so that a Celery or kombu
that no longer looks like this fails the test rather than passing it without proving anything.
"""

import os
import select
import signal
import sys
import threading

from celery.signals import worker_init
from celery.worker.request import Request
from kombu.asynchronous import get_event_loop

_worker = []
_sent = []
_on_accepted = Request.on_accepted


@worker_init.connect
def _keep_the_worker(sender, **kwargs):
    _worker.append(sender)


class _SigquitOnceAFinishedTaskSResultWaits:
    """The hub's own lock, which sends the SIGQUIT once, just after the main thread took it."""

    def __init__(self, lock, result_fd):
        self._lock = lock
        self._result_fd = result_fd

    def __enter__(self):
        self._lock.__enter__()
        if threading.current_thread() is threading.main_thread() and not _sent:
            # The pool process writes its result once its task ends: the main thread's turn comes
            # with it there, as when the loop was busy with something else meanwhile.
            select.select([self._result_fd], [], [], 120)
            _sent.append(True)
            os.write(sys.__stdout__.fileno(), b"\ntest: SIGQUIT sent under the hub's ready lock\n")
            os.kill(os.getpid(), signal.SIGQUIT)
        return self

    def __exit__(self, *exc_info):
        return self._lock.__exit__(*exc_info)


def _arm_once_the_first_task_is_accepted(self, pid, *args, **kwargs):
    result = _on_accepted(self, pid, *args, **kwargs)
    hub = get_event_loop()
    if (
        _worker
        and hub is not None
        and not _sent
        and not isinstance(hub._ready_lock, _SigquitOnceAFinishedTaskSResultWaits)
    ):
        process = next(p for p in _worker[0].pool._pool._pool if p.pid == pid)
        hub._ready_lock = _SigquitOnceAFinishedTaskSResultWaits(hub._ready_lock, process.outq._reader.fileno())
    return result


Request.on_accepted = _arm_once_the_first_task_is_accepted
