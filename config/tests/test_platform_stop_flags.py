"""The flags the worker's main process and its pool processes share about a shutdown (config.celery)."""

import multiprocessing
import os
import signal
import threading
import time

from config import celery as celery_config


def _pool_process(ready) -> None:
    # As a pool process that ran a task: billiard's handler, then ours over it.
    celery_config._note_a_pool_process()
    signal.signal(signal.SIGTERM, lambda signum, frame: os._exit(3))
    celery_config._leave_the_platforms_sigterm_to_the_main_process()
    ready.set()
    while not celery_config._warm_shutdown_noted():
        time.sleep(0.01)
    os.kill(os.getpid(), signal.SIGTERM)  # the platform's: left to the warm shutdown
    # The warm shutdown's end: the pool process exits while waiting for a cold one that never came.


def test_a_cold_shutdown_after_pool_processes_ended_their_warm_one_is_noted_without_hanging(monkeypatch):
    # A multiprocessing.Event's set() waits for every process that waited on it to wake; a pool
    # process that exited meanwhile never does, and the main process hung in its signal handler,
    # never to exit, on a cold shutdown (a second Ctrl-C, SIGQUIT) after the platform's SIGTERM.
    monkeypatch.setattr(celery_config, "_in_pool_process", False)
    monkeypatch.setattr(celery_config, "_billiard_sigterm", None)
    celery_config._prepare_pool_processes_for_the_platforms_sigterm()
    ready = multiprocessing.Event()
    child = multiprocessing.get_context("fork").Process(target=_pool_process, args=(ready,))
    child.start()
    assert ready.wait(30)
    celery_config._note_the_kind_of_shutdown(how="Warm")
    child.join(30)
    assert child.exitcode == 0  # it left the SIGTERM to the warm shutdown
    noting = threading.Thread(target=celery_config._note_the_kind_of_shutdown, kwargs={"how": "Cold"}, daemon=True)
    noting.start()
    noting.join(30)
    assert not noting.is_alive(), "the main process hung noting a cold shutdown"
