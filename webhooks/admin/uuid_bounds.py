"""Bounds on UUIDv7 ids for a moment: the first 48 bits of a UUIDv7 are its Unix time in milliseconds."""

from datetime import datetime
from uuid import UUID


def uuid7_floor(moment: datetime) -> UUID:
    """The smallest UUIDv7 minted at or after ``moment``."""
    milliseconds = int(moment.timestamp() * 1000)
    return UUID(int=milliseconds << 80)
