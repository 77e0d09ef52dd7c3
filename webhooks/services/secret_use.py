"""Which of a source's secrets verifies its requests during a rotation's overlap.

The tenant ends an overlap safely only once the provider signs with the new secret;
ingest therefore notes when each secret last verified a request, and the source pages
say it. The note costs ingest nothing outside an overlap, and within one at most an
UPDATE per source, secret and SECRET_MATCH_RECORD_SECONDS, made after the answer left.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.core.cache import cache
from django.db import transaction
from django.db.models import Q

from webhooks.fields import unreadable_secrets
from webhooks.models import Source

from .secrets import previous_secret_valid_until, secret_hint

logger = logging.getLogger(__name__)

# How stale a recorded time may be: the pages round to minutes, so once a minute is enough.
SECRET_MATCH_RECORD_SECONDS = 60
# Cleared by a rotation (services.sources): they were about the secrets it replaced.
SECRET_MATCH_FIELDS = ("secret_last_matched_at", "previous_secret_last_matched_at")

# (source id, source version, which secret) -> monotonic time until which this process
# records no match of it again: most requests of an overlap then skip even the cache.
_recorded_until: dict[tuple[int, float, bool], float] = {}
_RECORDED_MAX_ENTRIES = 10_000


def record_secret_match(*, source_id: int, source_version: datetime, previous: bool, matched_at: datetime) -> None:
    """Note that the source's current secret (or, with ``previous``, its previous one) verified a request.

    ``source_version`` is the updated_at of the copy of the source that verified it. Each web
    process uses its copy for a few seconds (ingest.source_for_token), and a copy from before a
    rotation would credit the new secret with the old one's matches: the UPDATE applies only to
    that version of the row. At most once per SECRET_MATCH_RECORD_SECONDS per source and secret:
    this process remembers its own records, the cache stops the other processes, and the UPDATE's
    condition holds even when the cache is down (then each process records at most that often).
    Never raises and never waits for a row lock: a lost record only leaves the page a little older.
    """
    version = source_version.timestamp()
    key = (source_id, version, previous)
    now = time.monotonic()
    if _recorded_until.get(key, 0.0) > now:
        return
    if len(_recorded_until) >= _RECORDED_MAX_ENTRIES:
        _recorded_until.clear()
    _recorded_until[key] = now + SECRET_MATCH_RECORD_SECONDS
    which = "previous" if previous else "current"
    try:
        if not cache.add(f"secret-match:{source_id}:{version}:{which}", 1, timeout=SECRET_MATCH_RECORD_SECONDS):
            return
    except Exception as exc:  # fail open: the UPDATE's own condition keeps it rare
        logger.warning("cache unavailable while throttling secret-match records; recording anyway: %s", exc)
    field = SECRET_MATCH_FIELDS[1] if previous else SECRET_MATCH_FIELDS[0]
    stale = Q(**{f"{field}__isnull": True}) | Q(
        **{f"{field}__lt": matched_at - timedelta(seconds=SECRET_MATCH_RECORD_SECONDS)}
    )
    try:
        with transaction.atomic():
            # SKIP LOCKED: a rotation or an admin's save holding the row wins; this record is dropped.
            # order_by(): the model's ordering would join (and lock) the organization row too.
            unlocked = (
                Source.objects.filter(stale, pk=source_id, updated_at=source_version)
                .order_by()
                .select_for_update(no_key=True, skip_locked=True)
                .values("pk")
            )
            # update() leaves updated_at alone: the row's version, which these records must not change.
            Source.objects.filter(pk__in=unlocked).update(**{field: matched_at})
    except Exception as exc:
        logger.warning("could not record which secret of source %s verified a request: %s", source_id, exc)


def forget_recorded_secret_matches() -> None:
    """Drop this process's memory of its records (tests; the cache and the rows keep theirs)."""
    _recorded_until.clear()


@dataclass(frozen=True)
class SecretUse:
    """When each secret of a source in a rotation's overlap last verified a request (None: not since it began).

    Said by templates/dashboard/_secret_use.html, on the dashboard's and the admin's source pages."""

    previous_hint: str
    previous_valid_until: datetime
    previous_last_matched_at: datetime | None
    current_last_matched_at: datetime | None


def secret_use_during_overlap(source: Source) -> SecretUse | None:
    """The source's SecretUse while its previous secret still verifies; None outside an overlap."""
    valid_until = previous_secret_valid_until(source)
    if valid_until is None:
        return None
    # One this process cannot decrypt has no hint to show.
    hint = "" if "previous_secret" in unreadable_secrets(source) else secret_hint(source.previous_secret)
    return SecretUse(
        previous_hint=hint if len(hint) > 1 else "",  # a bare "…" (a short secret) tells nothing
        previous_valid_until=valid_until,
        previous_last_matched_at=source.previous_secret_last_matched_at,
        current_last_matched_at=source.secret_last_matched_at,
    )
