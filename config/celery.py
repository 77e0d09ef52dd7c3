import contextlib
import inspect
import multiprocessing
import os
import signal
import threading
import time

from celery import Celery
from celery.signals import (
    after_setup_logger,
    after_setup_task_logger,
    after_task_publish,
    beat_init,
    task_prerun,
    worker_init,
    worker_process_init,
    worker_shutting_down,
)

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

app = Celery("hookline")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@after_setup_logger.connect
@after_setup_task_logger.connect
def filter_worker_logs(logger, **kwargs):
    """Celery replaces the root logger's handlers (Django's masking one among them) and gives
    task loggers their own, so the worker and beat mask URL tokens on those handlers too, and
    leave out the lines of sweeps that found nothing to do."""
    from config.log_filters import QuietIdleSweeps
    from config.log_masking import MaskUrlTokens

    for handler in logger.handlers:
        for wanted in (MaskUrlTokens, QuietIdleSweeps):
            if not any(isinstance(existing, wanted) for existing in handler.filters):
                handler.addFilter(wanted())


# Beat's scheduler (django-celery-beat) writes a task's last_run_at before the send, and keeps it
# when the send fails: with the broker down the health check read "beat last sent a task: 2 s ago".
# after_task_publish fires only once the broker took the message; in beat's process (beat_init, also
# sent by a worker's embedded beat, -B, in its own process) it marks that send for the health check.
_in_beat = False


@beat_init.connect
def _note_the_beat_process(**kwargs) -> None:
    global _in_beat
    _in_beat = True


@after_task_publish.connect
def _mark_beats_send_that_reached_the_broker(**kwargs) -> None:
    if _in_beat:
        from webhooks.services.platform_health import note_beat_sent

        note_beat_sent()


@worker_init.connect
def _let_a_second_shutdown_signal_send_worker_shutting_down(**kwargs) -> None:
    """Celery's shutdown handlers (run in the main thread, nested inside whatever it was doing) send
    worker_shutting_down, whose receiver list is read under a plain threading.Lock. A cold shutdown's
    signal (SIGQUIT) arriving while the warm one's handler held that lock ran the cold handler inside
    it: the pool was stopped and "Cold shutdown" logged, then its own send waited for the lock its
    interrupted caller held, for ever (futex wait; the stack's outer frames the event loop's poll,
    which the warm handler had interrupted): the hang test_platform_stop met twice in CI, when a loaded
    machine paused the main process in those few instructions as the test sent SIGQUIT. A re-entrant
    lock lets the nested send go through; the list it guards changes only when a receiver is garbage
    collected, and the only receivers (ours) are module functions."""
    worker_shutting_down.lock = threading.RLock()


@worker_init.connect
def _let_a_cold_shutdown_s_signal_acknowledge_through_the_event_loop(**kwargs) -> None:
    """The event loop's hub guards its ready callbacks with a plain threading.Lock, which the main
    thread takes at every turn of the loop (and at each call_soon). A cold shutdown's signal arriving
    there ran the cold handler under it: the handler stops the pool, whose join reads the results
    still in the pipes, and a task that had succeeded has its message acknowledged (task_acks_late)
    through the hub's call_soon, which then waited for that lock for ever. A re-entrant lock lets that
    call go through; what the lock guards is a set of callbacks and a wake-up flag, and a nested call
    only adds to that set (the loop, or the hub's close, runs what is added). Hubs made from here on
    in this process: the worker's own is made after worker_init, before its loop starts."""
    from kombu.asynchronous.hub import Hub

    make_hub = Hub.__init__
    if getattr(make_hub, "_hookline_wrapped", False):
        return

    def make_hub_with_a_reentrant_ready_lock(self, *args, **kwargs):
        make_hub(self, *args, **kwargs)
        self._ready_lock = threading.RLock()

    make_hub_with_a_reentrant_ready_lock._hookline_wrapped = True
    Hub.__init__ = make_hub_with_a_reentrant_ready_lock


@worker_init.connect
def _let_a_cold_shutdown_s_signal_come_while_a_result_is_read(**kwargs) -> None:
    """A pool process's result that reaches the pipe in parts is read by a generator, which the event
    loop leaves as the pipe's reader and resumes when more comes. A cold shutdown's signal arriving
    while it ran ran the cold handler inside it: the pool's join, which finishes such partly read
    results by resuming that reader, resumed the running generator ("ValueError: generator already
    executing"), so the cold shutdown broke off ("Unrecoverable error", its pool join and
    worker_shutting_down skipped). A reader that is running can only be the frame the handler
    interrupted, which finishes its result once the handler returns: the join leaves that pipe to it,
    as it leaves one whose process is gone."""
    try:
        from celery.concurrency.asynpool import ResultHandler
    except ImportError:
        return
    finish = getattr(ResultHandler, "_finish_partial_read", None)
    if finish is None or getattr(finish, "_hookline_wrapped", False):
        return

    def finish_unless_the_reader_is_the_interrupted_frame(self, fd, proc):
        registered = self._hub.readers.get(fd) if self._hub is not None else None
        reader = registered[0] if registered else None
        if inspect.isgenerator(reader) and inspect.getgeneratorstate(reader) == inspect.GEN_RUNNING:
            return True  # as for a gone process: the join drops this pipe
        return finish(self, fd, proc)

    finish_unless_the_reader_is_the_interrupted_frame._hookline_wrapped = True
    ResultHandler._finish_partial_read = finish_unless_the_reader_is_the_interrupted_frame


@worker_init.connect
def _let_a_cold_shutdown_s_signal_come_while_a_result_is_recorded(**kwargs) -> None:
    """Billiard records a pool job's outcome (ApplyResult._set) by setting a threading.Event, whose
    Condition holds a plain threading.Lock meanwhile. A cold shutdown's signal arriving there ran the
    cold handler under it: the job's request was still active (its callbacks run after), so its task
    was cancelled, its pool process ended, and the pool's join recorded the job as terminated, setting
    the same Event: it waited for that lock for ever. The interrupted frame records the job's actual
    outcome (its result, acknowledged as usual) once the handler returns, so a second recording of
    the same job, nested in the first, is left out rather than made to wait for it."""
    try:
        from billiard.pool import ApplyResult
    except ImportError:
        return
    record = ApplyResult._set
    if getattr(record, "_hookline_wrapped", False):
        return

    def record_unless_already_under_way(self, *args, **kwargs):
        # Only in the same thread: a recording nested in its own (billiard's threaded pool, which the
        # worker's event loop does not use, serializes other threads' on the job's mutex as before).
        if getattr(self, "_hookline_recording_thread", None) == threading.get_ident():
            return None
        self._hookline_recording_thread = threading.get_ident()
        try:
            return record(self, *args, **kwargs)
        finally:
            self._hookline_recording_thread = None

    record_unless_already_under_way._hookline_wrapped = True
    ApplyResult._set = record_unless_already_under_way


def _left_to_the_frame_under_way(method, mark: str):
    """``method``, except that a call nested in one under way on the same object in the same thread
    (a signal handler's, run in the middle of it) returns None at once: the interrupted call does the
    whole of it once the handler returns. ``mark`` is the object's attribute naming the thread under
    way; the wrapper says it is one (_hookline_left_to_the_frame_under_way), not _hookline_wrapped,
    which another wrapper of the same method looks for."""

    def unless_already_under_way(self, *args, **kwargs):
        if getattr(self, mark, None) == threading.get_ident():
            return None
        setattr(self, mark, threading.get_ident())
        try:
            return method(self, *args, **kwargs)
        finally:
            setattr(self, mark, None)

    unless_already_under_way._hookline_left_to_the_frame_under_way = True
    return unless_already_under_way


@worker_init.connect
def _let_a_cold_shutdown_s_signal_come_while_the_warm_shutdown_stops_the_pool(**kwargs) -> None:
    """The warm shutdown stops the prefork pool (TaskPool.on_stop: close the billiard pool, start a
    timer thread, join it, then set it aside as None). A cold shutdown's signal arriving there ran the
    cold handler inside it, and the handler stops the pool too: its stop ran to the end (the join, the
    tasks it had just cancelled ended) and set the pool aside, and the warm stop then joined None
    ("Error on stopping Pool: AttributeError: 'NoneType' object has no attribute 'join'", logged, the
    rest of the stop going on). Nothing else went wrong (measured: exit status 0, the cancelled task's
    message back in the queue, no process left), but an error logged at such a stop says something
    broke. The interrupted stop does the same join once the handler returns: the nested one is left
    out, and the cold shutdown goes on meanwhile (its "Cold shutdown", worker_shutting_down)."""
    try:
        from celery.concurrency.prefork import TaskPool
    except ImportError:
        return
    stop = getattr(TaskPool, "on_stop", None)
    if stop is None or getattr(stop, "_hookline_left_to_the_frame_under_way", False):
        return
    TaskPool.on_stop = _left_to_the_frame_under_way(stop, "_hookline_stopping_thread")


@worker_init.connect
def _let_a_second_cold_shutdown_signal_come_while_the_first_cancels(**kwargs) -> None:
    """A cold shutdown's handler cancels the running tasks (Consumer.cancel_active_requests), going
    through the worker's set of active requests to pick them. A second SIGQUIT (a second Ctrl-C, a
    supervisor repeating its signal) arriving there ran the second handler inside it, which cancels
    them too: each cancelled request left that set under the first one's iteration ("RuntimeError: Set
    changed size during iteration"), which broke the first handler off (its pool stop skipped) and out
    through the event loop: "Unrecoverable error", logged CRITICAL, and the worker exited with status 1,
    which a platform counts as a crash (measured; the cancelled task's message was back in the queue,
    no process left). The interrupted cancel picks and cancels the same requests once the handler
    returns: the nested one is left out (a second signal during the soft shutdown's wait, before the
    first cancel, still cancels at once). Installed before _note_a_cold_shutdown_before_its_cancel
    wraps the method: a nested call still notes the cold shutdown (already noted) before it is left out."""
    try:
        from celery.worker.consumer.consumer import Consumer
    except ImportError:
        return
    cancel = getattr(Consumer, "cancel_active_requests", None)
    if cancel is None or getattr(cancel, "_hookline_left_to_the_frame_under_way", False):
        return
    Consumer.cancel_active_requests = _left_to_the_frame_under_way(cancel, "_hookline_cancelling_thread")


# Heroku sends SIGTERM to every process of a dyno at once. A pool process killed by it dropped the
# sends under way, which the sweeper then sent again (a receiver got them twice). A pool process
# (busy or idle) now leaves that SIGTERM to the main process when the main process got it too
# (a warm shutdown, which has the running tasks wind up, record what they sent and end). Billiard
# also cancels running tasks with SIGTERM: on a cold shutdown (SIGQUIT, a second Ctrl-C, Celery's
# REMAP_SIGTERM) or a revoke with terminate; there billiard's own handler runs, as before, and a
# cold shutdown that follows a warm one still cancels. The flags are made before the pool forks
# (worker_init), so that the pool processes share them: plain shared bytes, polled, with no lock. A
# multiprocessing.Event's set() waits for every process that waited on it to wake, and a pool process
# that ended its warm shutdown while waiting never does: the main process then hung in its signal
# handler on a cold shutdown, never to exit.
_warm_shutdown = _cold_shutdown = None
_in_pool_process = False
# The worker's main process (worker_init). The solo pool runs tasks in it and sends it
# worker_process_init too: taken for a pool process, its own SIGTERM handler (Celery's warm
# shutdown) was replaced at its first task by ours, which then waited _MAIN_PROCESS_NOTICE_SECONDS
# for a warm shutdown that only Celery's handler notes, so `--pool solo` stopped 10 s late.
_main_process_pid = None
_billiard_sigterm = None
# A SIGTERM that reached the main process too is noted there within this long: generous, since a
# loaded machine may leave the main process without a turn to run its handler for a while. Only a
# SIGTERM sent to a pool process alone waits it out (a revoke with terminate, which Hookline never
# asks for; someone's kill; billiard's hard time limit, which sends SIGKILL a moment later anyway):
# the cold shutdown's cancel goes on at once, as the main process notes it just before it
# (_note_a_cold_shutdown_before_its_cancel).
_MAIN_PROCESS_NOTICE_SECONDS = 10.0
_POLL_SECONDS = 0.02


@worker_init.connect
def _prepare_pool_processes_for_the_platforms_sigterm(**kwargs) -> None:
    global _warm_shutdown, _cold_shutdown, _main_process_pid
    _main_process_pid = os.getpid()
    try:
        _warm_shutdown, _cold_shutdown = multiprocessing.RawValue("b", 0), multiprocessing.RawValue("b", 0)
    except OSError:  # no shared semaphore (some containers): pool processes keep billiard's handler
        _warm_shutdown = _cold_shutdown = None
        return
    _note_a_cold_shutdown_before_its_cancel()


def _note_a_cold_shutdown_before_its_cancel() -> None:
    """Note a cold shutdown as Celery starts cancelling the running tasks, not once it says so.

    Celery's cold shutdown (SIGQUIT, a second Ctrl-C) sends the pool processes their SIGTERM
    (Consumer.cancel_active_requests, called by its cold shutdown only), then stops the pool,
    waiting for the pool processes to end, and only then sends worker_shutting_down. A pool
    process waiting for that note (_MAIN_PROCESS_NOTICE_SECONDS) thus always waited it out (a cold
    shutdown took 10 s more), and after a warm shutdown it took the cancel for the platform's
    SIGTERM and kept sending until its sends ended. Hence the note here, just before the cancel.
    """
    from celery.worker.consumer.consumer import Consumer

    cancel = Consumer.cancel_active_requests
    if getattr(cancel, "_hookline_wrapped", False):
        return

    def note_then_cancel(self, *args, **kwargs):
        _note_the_kind_of_shutdown(how="Cold")
        return cancel(self, *args, **kwargs)

    note_then_cancel._hookline_wrapped = True
    Consumer.cancel_active_requests = note_then_cancel


@worker_shutting_down.connect
def _note_the_kind_of_shutdown(how=None, **kwargs) -> None:
    if _warm_shutdown is not None:
        (_cold_shutdown if how == "Cold" else _warm_shutdown).value = 1


@worker_process_init.connect
def _note_a_pool_process(**kwargs) -> None:
    global _in_pool_process
    if os.getpid() == _main_process_pid:
        return  # the solo pool: tasks run in the main process, whose SIGTERM stays Celery's
    _in_pool_process = True
    _take_over_sigterm_once_billiard_set_its_handler()


def _take_over_sigterm_once_billiard_set_its_handler() -> None:
    """Have a pool process leave the platform's SIGTERM to the warm shutdown from its start.

    An idle pool process that had never run a task died of that SIGTERM while the warm shutdown
    waited for a busy one, and the main process logged it as an error ("Process 'ForkPoolWorker-2'
    pid:… exited with 'signal 15 (SIGTERM)'"). worker_process_init runs inside billiard's set-up
    of the pool process, just before it sets its own SIGTERM handler (billiard.pool's
    reset_signals): ours goes over it right after. Should billiard stop calling it so, the first
    task's task_prerun still puts it there, as before.
    """
    try:
        import billiard.pool as billiard_pool
    except ImportError:
        return
    set_billiard_handlers = getattr(billiard_pool, "reset_signals", None)
    if set_billiard_handlers is None or getattr(set_billiard_handlers, "_hookline_wrapped", False):
        return

    def set_billiard_handlers_then_ours(*args, **kwargs):
        set_billiard_handlers(*args, **kwargs)
        _leave_the_platforms_sigterm_to_the_main_process()

    set_billiard_handlers_then_ours._hookline_wrapped = True
    # Only in this (forked) pool process: the main process's billiard is left as it is.
    billiard_pool.reset_signals = set_billiard_handlers_then_ours


def _sigterm_in_a_pool_process(signum, frame) -> None:
    if _shutdown_noted(_MAIN_PROCESS_NOTICE_SECONDS) == "Warm":
        # The platform's SIGTERM, to every process: the warm shutdown ends this one. Should a cold
        # one follow, it still cancels.
        threading.Thread(target=_cancel_on_a_cold_shutdown, daemon=True).start()
        return
    # A cold shutdown (noted just before Celery cancels the running tasks with SIGTERM), or a SIGTERM
    # for this process alone.
    _billiard_sigterm(signum, frame)


def _shutdown_noted(within: float) -> str | None:
    """The shutdown the main process noted ("Cold" before "Warm"), waiting up to ``within`` seconds for one."""
    deadline = time.monotonic() + within
    while True:
        if _cold_shutdown.value:
            return "Cold"
        if _warm_shutdown.value:
            return "Warm"
        if time.monotonic() >= deadline:
            return None
        time.sleep(_POLL_SECONDS)


def _noted(flag, within: float | None) -> bool:
    """Whether ``flag`` is set, or is set within ``within`` seconds (None: however long it takes)."""
    deadline = None if within is None else time.monotonic() + within
    while not flag.value:
        if deadline is not None and time.monotonic() >= deadline:
            return False
        time.sleep(_POLL_SECONDS)
    return True


def _warm_shutdown_noted() -> bool:
    return _warm_shutdown is not None and bool(_warm_shutdown.value)


def _cancel_on_a_cold_shutdown() -> None:
    _noted(_cold_shutdown, None)
    os.kill(os.getpid(), signal.SIGTERM)


@task_prerun.connect
def _leave_the_platforms_sigterm_to_the_main_process(**kwargs) -> None:
    """Installed once billiard set its own SIGTERM handler (it does after worker_process_init): by
    _take_over_sigterm_once_billiard_set_its_handler, else at the pool process's first task."""
    global _billiard_sigterm
    if not _in_pool_process or _warm_shutdown is None:
        return
    current = signal.getsignal(signal.SIGTERM)
    if current is _sigterm_in_a_pool_process or not callable(current):
        return  # ours already, or SIGTERM ignored (Celery's REMAP_SIGTERM)
    _billiard_sigterm = current
    with contextlib.suppress(ValueError):  # not the main thread: billiard's stays
        signal.signal(signal.SIGTERM, _sigterm_in_a_pool_process)
