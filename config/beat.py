"""Beat's scheduler: django-celery-beat's, started only once the database takes a connection.

django-celery-beat reads its tables as the scheduler is made, before beat's first tick: a database
that refused the connection then (a small plan's cap reached, "too many connections for role"; a
database restarting) ended beat with a CRITICAL traceback. The platform restarts a crashed process
with growing delays (Heroku: up to 20 minutes after repeated crashes), and for that long nothing
scheduled the sweeps that pick up lost work and due retries. Here beat waits instead, saying why, and
starts as soon as a connection is free.
"""

import logging
import time

from django.db import InterfaceError, OperationalError, connection
from django_celery_beat.schedulers import DatabaseScheduler as DjangoDatabaseScheduler

logger = logging.getLogger(__name__)

# How often beat asks again while the database refuses it, and how often it says so in the log.
RETRY_SECONDS = 2.0
LOG_EVERY_SECONDS = 30.0


def wait_for_the_database() -> None:
    """Return once this thread's database connection is open, trying every RETRY_SECONDS."""
    refused_since = last_logged = None
    while True:
        try:
            connection.ensure_connection()
        except (OperationalError, InterfaceError) as exc:
            now = time.monotonic()
            refused_since = refused_since or now
            if last_logged is None or now - last_logged >= LOG_EVERY_SECONDS:
                last_logged = now
                reason = " ".join(str(exc).split())[:500] or exc.__class__.__name__
                logger.warning(
                    "beat waits for the database before it starts (trying again every %g s): %s", RETRY_SECONDS, reason
                )
            time.sleep(RETRY_SECONDS)
            continue
        if refused_since is not None:
            logger.warning(
                "beat: the database took a connection after %.0f s; starting", time.monotonic() - refused_since
            )
        return


class DatabaseScheduler(DjangoDatabaseScheduler):
    def __init__(self, *args, **kwargs):
        wait_for_the_database()
        super().__init__(*args, **kwargs)

    def _ensure_connected(self):
        """Celery's, with each failed try marked for the processing health. Beat connects to the
        broker before it reserves its first task, and retries there while the broker refuses: no
        task's last_run_at moved, so a beat started with the broker down (or a wrong
        CELERY_BROKER_URL) read as sending fine until HEALTH_BEAT_STALE_SECONDS had passed."""
        from webhooks.services.platform_health import note_beat_tried

        def failed_try(exc, interval):
            logger.error("beat: cannot reach the broker: %s; trying again in %s s", exc, interval)
            note_beat_tried()

        return self.connection.ensure_connection(failed_try, self.app.conf.broker_connection_max_retries)
