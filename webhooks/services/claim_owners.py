"""Who holds a delivery's claim, and whether it is alive: a mark in the cache, not in PostgreSQL.

A claim's age alone cannot tell a dead dispatcher from a live one that cannot reach the
database: a server frozen, partitioned off, or replaced by its standby (none of which changes
pg_postmaster_start_time()) keeps a live dispatcher from recording what it sent, and once the
claims are older than their timeout plus STUCK_DELIVERY_MARGIN_SECONDS the sweeper would hand
them back and they would be sent twice. So each dispatcher run names itself in the claims it
takes (Delivery.claimed_by) and keeps a short-lived key in the cache while it runs; the sweeper
releases a claim that looks lost only once that key is gone (release_lost_claims).

The key is refreshed by a thread of the run rather than by its loop: a loop waiting on a frozen
server is blocked inside a query (or its COMMIT) and could write nothing until the server
answers, by when the sweeper, blocked on the same server, may be the first to act. The thread
refreshes for as long as the run lasts; a run that hangs for good (which its own bounds make
unlikely: attempts have a watchdog, the cache and the broker socket timeouts) is covered by
LIVE_CLAIM_MAX_SECONDS, past which a claim is released whatever its mark says.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import threading
import time

from django.conf import settings
from django.core.cache import cache

logger = logging.getLogger(__name__)

MARK_KEY_PREFIX = "delivery:claimer:"
# A dispatcher killed outright (kill -9, a lost host) stops refreshing: its mark is gone this long
# after, well within the shortest time a claim is kept by its age (a 1 s timeout plus the margin).
MARK_TTL_SECONDS = 20
MARK_REFRESH_SECONDS = 5.0  # a cache write per run this often, however many deliveries it sends
# What a run that cannot record its results keeps short of live_claim_max_seconds() (a tenth of it, and
# at least this): see unrecorded_hold_seconds.
HOLD_MARGIN_SECONDS = 30.0


def live_claim_max_seconds() -> float:
    """How long after it was taken the sweeper keeps a claim whose run is alive (release_lost_claims)."""
    return float(max(settings.LIVE_CLAIM_MAX_SECONDS, settings.STUCK_DELIVERY_SECONDS))


def unrecorded_hold_seconds() -> float:
    """How long after taking a claim a run whose mark is kept may hold a result it cannot record.

    Short of live_claim_max_seconds() so that it gives the result up before the sweeper would
    release the claim. The two are measured by different clocks: the sweeper compares the
    database's clock now with claimed_at (the database's clock at the claim); the run counts on
    its own monotonic clock from just before it asked for the claim, so at least the time since
    claimed_at. The margin covers the database's clock being set forward meanwhile (a step of NTP,
    a failover to a standby whose clock is ahead), the two clocks' rates, and the run's own lag:
    a turn of its loop that waits on a database connection.
    """
    longest = live_claim_max_seconds()
    return max(0.0, longest - max(HOLD_MARGIN_SECONDS, longest / 10))


def _mark_key(owner_id: str) -> str:
    return MARK_KEY_PREFIX + owner_id


class ClaimOwner:
    """One dispatcher run's name for its claims, and the thread that keeps its mark alive.

    Used as a context manager around the run. The cache being down never stops the run: the
    sweeper, which cannot read marks then either, judges claims by their age as before.
    """

    def __init__(self):
        # Host and process for whoever reads the column; the token tells runs of one process apart.
        host = socket.gethostname()[:40]
        self.id = f"{host}:{os.getpid()}:{secrets.token_hex(6)}"
        self._stopped = threading.Event()
        self._warned = False
        self._marked_at: float | None = None  # when the last write that succeeded was sent
        self._lapsed = False  # a write failed, or came too late: the mark may have been missing
        self._thread = threading.Thread(target=self._keep_alive, name="claim-owner-mark", daemon=True)

    def __enter__(self) -> ClaimOwner:
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stopped.set()
        self._thread.join(timeout=2)
        # Its claims are all recorded, or given up on (their results were dropped): the sweeper may
        # release what is left as soon as its age says so, rather than MARK_TTL_SECONDS later.
        try:
            cache.delete(_mark_key(self.id))
        except Exception as exc:
            logger.warning("cache unavailable while removing a dispatcher's mark (it expires): %s", exc)

    def mark_kept(self) -> bool:
        """Whether this run's mark has been in the cache ever since the run began, as far as the
        run can tell: every write succeeded, each within MARK_TTL_SECONDS of the one before.

        Once it may have been missing, the sweeper (had it looked then) judged this run's claims
        by their age alone, and they may be released already: no longer worth holding results
        for past the grace of the age rule (dispatch_due_deliveries). For the rest of the run,
        whatever the cache does next. A mark removed by someone else (a flushed or failed-over
        cache) cannot be seen from here.
        """
        marked_at = self._marked_at
        return not self._lapsed and marked_at is not None and time.monotonic() - marked_at < MARK_TTL_SECONDS

    def _keep_alive(self) -> None:
        while True:
            sent_at = time.monotonic()  # the mark lasts MARK_TTL_SECONDS from a moment after this
            try:
                cache.set(_mark_key(self.id), 1, timeout=MARK_TTL_SECONDS)
            except Exception as exc:
                self._lapsed = True
                # Once per run: an outage would otherwise log every few seconds per dispatcher.
                log = logger.debug if self._warned else logger.warning
                log("cache unavailable: the dispatcher's claims are judged by their age meanwhile: %s", exc)
                self._warned = True
            else:
                if self._marked_at is not None and sent_at - self._marked_at >= MARK_TTL_SECONDS:
                    self._lapsed = True  # the thread was held up: the mark expired meanwhile
                self._marked_at = sent_at
            if self._stopped.wait(MARK_REFRESH_SECONDS):
                return


def owners_alive(owner_ids: set[str]) -> set[str] | None:
    """Those of ``owner_ids`` whose mark is in the cache; None when the cache cannot be read."""
    if not owner_ids:
        return set()
    try:
        found = cache.get_many([_mark_key(owner_id) for owner_id in owner_ids])
    except Exception as exc:
        logger.warning("cache unavailable: lost claims are judged by their age alone: %s", exc)
        return None
    return {key.removeprefix(MARK_KEY_PREFIX) for key in found}
