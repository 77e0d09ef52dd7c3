"""Loaded by Python at start-up in a worker a test runs with this directory on PYTHONPATH.

It sends the worker's main process a cold shutdown's SIGQUIT while billiard records a pool job's
result and holds the lock inside the job's threading.Event (ApplyResult._set calls its _event.set(),
whose Condition holds a plain threading.Lock while it sets the flag): Python runs the SIGQUIT's handler
there, at its next instruction, with the job neither ready nor done. The cold handler cancels the
job's task (its request is still active: the result's callbacks have not run yet), whose pool process
then ends, and stops the pool, whose join records that job as terminated (ApplyResult._set again),
setting the same Event. The line written here tells the test that the moment came.
"""

import os
import signal
import sys
import threading

import billiard.pool

_main_pid = os.getpid()  # sitecustomize runs before the worker forks its pool processes
_sent = []


class _SigquitOnceTheEventIsLocked:
    """The Event's own Condition, which sends the SIGQUIT once, just after the main thread took it."""

    def __init__(self, condition):
        self._condition = condition

    def __enter__(self):
        entered = self._condition.__enter__()
        if os.getpid() == _main_pid and threading.current_thread() is threading.main_thread() and not _sent:
            _sent.append(True)
            os.write(sys.__stdout__.fileno(), b"\ntest: SIGQUIT sent under the pool job's event lock\n")
            os.kill(os.getpid(), signal.SIGQUIT)
        return entered

    def __exit__(self, *exc_info):
        return self._condition.__exit__(*exc_info)

    def __getattr__(self, name):
        return getattr(self._condition, name)


_set = billiard.pool.ApplyResult._set


def _set_with_a_signalling_event(self, *args, **kwargs):
    if not _sent and not isinstance(self._event._cond, _SigquitOnceTheEventIsLocked):
        self._event._cond = _SigquitOnceTheEventIsLocked(self._event._cond)
    return _set(self, *args, **kwargs)


billiard.pool.ApplyResult._set = _set_with_a_signalling_event
