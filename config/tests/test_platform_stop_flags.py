"""The flags the worker's main process and its pool processes share about a shutdown (config.celery)."""

import multiprocessing
import os
import signal
import threading
import time

import pytest

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


# --- a pool process's SIGTERM, as its main process notes the shutdown late ---------------------------


class MainProcessNotingLate:
    """``time`` for config.celery: each poll of the pool process moves the clock on, and the main process
    notes a ``how`` shutdown once ``after`` seconds passed (a main process that a loaded machine left
    without a turn to run its signal handler; Celery's cold shutdown, which says so only once it has
    sent the pool processes its SIGTERM)."""

    def __init__(self, how: str, after: float):
        self.now, self.how, self.after = 0.0, how, after

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds
        if self.now >= self.after:
            celery_config._note_the_kind_of_shutdown(how=self.how)


@pytest.fixture
def pool_process(monkeypatch):
    """A pool process's handler, with fresh flags; returns the list of the times billiard's ran."""
    for flag in ("_warm_shutdown", "_cold_shutdown"):
        monkeypatch.setattr(celery_config, flag, multiprocessing.RawValue("b", 0))
    monkeypatch.setattr(celery_config, "_cancel_on_a_cold_shutdown", lambda: None)  # no thread left waiting
    billiard_ran_at = []
    monkeypatch.setattr(
        celery_config, "_billiard_sigterm", lambda signum, frame: billiard_ran_at.append(celery_config.time.now)
    )
    return billiard_ran_at


def test_a_main_process_slow_to_note_the_platform_s_sigterm_still_gets_it_left_to_its_warm_shutdown(
    monkeypatch, pool_process
):
    # Under a load average of 10 the idle pool process of test_platform_stop.py gave up after a
    # second, and died of the SIGTERM while the warm shutdown went on (a busy one would drop its sends).
    monkeypatch.setattr(celery_config, "time", MainProcessNotingLate("Warm", after=3.0))
    celery_config._sigterm_in_a_pool_process(signal.SIGTERM, None)
    assert pool_process == []  # left to the warm shutdown


def test_a_cold_shutdown_cancels_as_soon_as_the_main_process_notes_it_not_at_the_end_of_the_wait(
    monkeypatch, pool_process
):
    monkeypatch.setattr(celery_config, "time", MainProcessNotingLate("Cold", after=0.5))
    celery_config._sigterm_in_a_pool_process(signal.SIGTERM, None)
    assert pool_process == [pytest.approx(0.5, abs=celery_config._POLL_SECONDS)]


def test_a_sigterm_for_the_pool_process_alone_is_billiard_s_after_the_wait(monkeypatch, pool_process):
    monkeypatch.setattr(celery_config, "time", MainProcessNotingLate("Warm", after=float("inf")))
    celery_config._sigterm_in_a_pool_process(signal.SIGTERM, None)
    assert pool_process == [pytest.approx(celery_config._MAIN_PROCESS_NOTICE_SECONDS, abs=0.1)]


class _RunningTask:
    """A request in Celery's active_requests: its cancel is the SIGTERM sent to its pool process,
    which records what that pool process then finds in the shared flags."""

    class task:
        acks_late = False

    def __init__(self):
        self.flags_at_cancel = None

    def cancel(self, pool, emit_retry=True):
        self.flags_at_cancel = (celery_config._cold_shutdown.value, celery_config._warm_shutdown.value)


@pytest.mark.parametrize("after_a_warm_one", [False, True])
def test_a_cold_shutdown_is_noted_before_its_sigterm_reaches_the_pool_processes(monkeypatch, after_a_warm_one):
    # Celery's cold shutdown cancels the running tasks, then stops the pool, waiting for its
    # processes, and says it is a cold one (worker_shutting_down) only after that. A pool process
    # thus waited out _MAIN_PROCESS_NOTICE_SECONDS (10 s) before it cancelled, and after a warm
    # shutdown it took the cancel for the platform's SIGTERM and went on sending.
    from celery.worker import state
    from celery.worker.consumer.consumer import Consumer

    monkeypatch.setattr(Consumer, "cancel_active_requests", Consumer.cancel_active_requests)
    for flag in ("_warm_shutdown", "_cold_shutdown"):
        monkeypatch.setattr(celery_config, flag, None)
    celery_config._prepare_pool_processes_for_the_platforms_sigterm()
    if after_a_warm_one:
        celery_config._note_the_kind_of_shutdown(how="Warm")
    running = _RunningTask()
    monkeypatch.setattr(state, "active_requests", {running})
    monkeypatch.setattr("celery.worker.consumer.consumer.active_requests", {running})
    consumer = Consumer.__new__(Consumer)
    consumer.pool = None
    consumer.cancel_active_requests()
    assert running.flags_at_cancel == (1, int(after_a_warm_one))
    assert celery_config._shutdown_noted(0) == "Cold"


def test_the_solo_pool_s_main_process_keeps_celery_s_own_sigterm_handler(monkeypatch):
    # `--pool solo` runs tasks in the worker's main process and sends it worker_process_init too.
    # Taken for a pool process, its SIGTERM handler (Celery's warm shutdown) was replaced at its first
    # task by the pool processes' one, which waited 10 s for a warm shutdown only Celery's notes.
    monkeypatch.setattr(celery_config, "_in_pool_process", False)
    monkeypatch.setattr(celery_config, "_billiard_sigterm", None)
    monkeypatch.setattr(celery_config, "_main_process_pid", None)
    previous = signal.getsignal(signal.SIGTERM)

    def celerys_warm_shutdown(signum, frame):
        pass

    try:
        signal.signal(signal.SIGTERM, celerys_warm_shutdown)
        celery_config._prepare_pool_processes_for_the_platforms_sigterm()  # worker_init
        celery_config._note_a_pool_process()  # the solo pool's worker_process_init
        celery_config._leave_the_platforms_sigterm_to_the_main_process()  # its first task's task_prerun
        assert signal.getsignal(signal.SIGTERM) is celerys_warm_shutdown
        assert celery_config._in_pool_process is False
    finally:
        signal.signal(signal.SIGTERM, previous)
