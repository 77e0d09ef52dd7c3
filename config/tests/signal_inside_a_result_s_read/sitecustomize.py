"""Loaded by Python at start-up in a worker a test runs with this directory on PYTHONPATH.

It sends the worker's main process a cold shutdown's SIGQUIT while its event loop is inside the
generator that reads a pool process's result (Celery's asynpool.ResultHandler._recv_message):
the loop leaves a result that came in two parts to that generator, registered as the pipe's reader,
and resumes it when the rest comes. Python runs the SIGQUIT's handler there, with the generator
running. The cold handler stops the pool, whose join finishes partly read results by resuming the
registered generator (ResultHandler._finish_partial_read): the one running. Here the pool process writes
its first result in two parts, the second once the main process registered the generator, and the
main process sends the SIGQUIT just after the generator read that second part. The line written here
tells the test that the moment came.
"""

import atexit
import inspect
import os
import shutil
import signal
import struct
import sys
import tempfile
import time

import billiard.pool
import billiard.queues
from celery.concurrency import asynpool
from kombu.asynchronous.hub import Hub

_main_pid = os.getpid()  # sitecustomize runs before the worker forks its pool processes
_rest_may_come = os.path.join(tempfile.mkdtemp(prefix="hookline-partial-result-"), "generator-registered")
_armed_fd = []
_sent = []


@atexit.register
def _remove_the_markers():
    if os.getpid() == _main_pid:
        shutil.rmtree(os.path.dirname(_rest_may_come), ignore_errors=True)


# Pool process: its first result (READY) is written in two parts.
_put = billiard.queues._SimpleQueue.put


def _put_the_first_result_in_two_parts(self, obj):
    if os.getpid() == _main_pid or not (isinstance(obj, tuple) and obj and obj[0] == billiard.pool.READY):
        return _put(self, obj)
    try:  # the first result of all the pool processes only
        os.close(os.open(_rest_may_come + ".split", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return _put(self, obj)
    payload = bytes(billiard.queues.ForkingPickler.dumps(obj))
    message = struct.pack("!i", len(payload)) + payload
    fd = self._writer.fileno()
    half = 4 + len(payload) // 2
    os.write(fd, message[:half])
    deadline = time.monotonic() + 30  # should Celery no longer read so, the test fails on the missing line
    while not os.path.exists(_rest_may_come) and time.monotonic() < deadline:
        time.sleep(0.01)  # until the main process has left the rest to a registered reader
    os.write(fd, message[half:])


billiard.queues._SimpleQueue.put = _put_the_first_result_in_two_parts

# Main process: note the generator left as the pipe's reader; SIGQUIT once it read the rest.
_add_reader = Hub.add_reader


def _add_reader_noting_a_partly_read_result(self, fds, callback, *args):
    if os.getpid() == _main_pid and inspect.isgenerator(callback) and not _armed_fd:
        _armed_fd.append(fds)
        open(_rest_may_come, "w").close()
    return _add_reader(self, fds, callback, *args)


Hub.add_reader = _add_reader_noting_a_partly_read_result

_defaults = list(asynpool.ResultHandler._recv_message.__defaults__)
_read = _defaults[0]


def _read_then_sigquit_on_the_rest(fd, buf, size, *args, **kwargs):
    n = _read(fd, buf, size, *args, **kwargs)
    if _armed_fd and fd == _armed_fd[0] and not _sent and n:
        _sent.append(True)
        os.write(sys.__stdout__.fileno(), b"\ntest: SIGQUIT sent inside the result's reader\n")
        os.kill(os.getpid(), signal.SIGQUIT)
    return n


_defaults[0] = _read_then_sigquit_on_the_rest
asynpool.ResultHandler._recv_message.__defaults__ = tuple(_defaults)
