"""The embedded mode's Celery broker: kombu's filesystem transport, each message written whole.

kombu (5.x) creates a message's file in the queue folder under its final name and only then locks
and fills it, while a reader takes files by name without any lock. A worker polling in between
took the still empty file, failed to parse it and stopped ("Unrecoverable error: JSONDecodeError"),
and `make run` stopped with it, a few minutes into a session. Here a message is written under a
name no reader takes and renamed into place, which is atomic: a reader finds it whole or not at all.
A process killed between the two leaves that part behind; channels opening remove the stale ones.
"""

import contextlib
import os
import time
import uuid
from time import monotonic

from kombu.exceptions import ChannelError
from kombu.transport import filesystem
from kombu.utils.encoding import str_to_bytes

# Readers take "<n>_<uuid>.<queue>.msg" files only (kombu's Channel._get): this suffix hides a
# message still being written.
WRITING_SUFFIX = ".writing"

# A part older than this is no write in progress (one takes milliseconds: a task's arguments, a few
# KB) but what a process killed before its rename left, which nothing else would ever remove.
STALE_WRITING_SECONDS = 10 * 60
# How often one process looks for them, at most: a channel is opened for each connection, and a
# listing of the queue folder each time would be wasted on a folder that rarely holds any.
SWEEP_INTERVAL_SECONDS = 10 * 60
_last_swept: dict[str, float] = {}


def remove_stale_writing_files(folder: str, *, now: float | None = None) -> int:
    """Remove the ".writing" parts in ``folder`` last written STALE_WRITING_SECONDS ago or more; how many."""
    now = time.time() if now is None else now
    try:
        names = os.listdir(folder)
    except OSError:
        return 0  # no folder yet: nothing left in it
    removed = 0
    for name in names:
        if not name.endswith(WRITING_SUFFIX):
            continue
        path = os.path.join(folder, name)
        try:
            if now - os.stat(path).st_mtime < STALE_WRITING_SECONDS:
                continue  # may be a write in progress
            os.remove(path)
        except OSError:
            continue  # removed meanwhile by another process's sweep
        removed += 1
    return removed


class Channel(filesystem.Channel):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # On a process's first channel (a worker's start, a web process's first task sent), then at
        # most every SWEEP_INTERVAL_SECONDS.
        folder = os.path.abspath(self.data_folder_out)
        last = _last_swept.get(folder)
        if last is None or monotonic() - last >= SWEEP_INTERVAL_SECONDS:
            _last_swept[folder] = monotonic()
            remove_stale_writing_files(folder)

    def _put(self, queue, payload, **kwargs):
        """Put ``payload`` onto ``queue``, as kombu does, but visible to readers only once complete."""
        # kombu's own name: readers order messages by it.
        filename = os.path.join(self.data_folder_out, f"{round(monotonic() * 1000)}_{uuid.uuid4()}.{queue}.msg")
        writing = filename + WRITING_SUFFIX
        try:
            # Buffered, unlike kombu's: an unbuffered write that the disk cuts short (full, a size
            # limit) returns how much it wrote and raises nothing, and the truncated message was then
            # renamed into place, where a worker fails to parse it and stops. Buffered, it raises.
            with open(writing, "wb") as file:
                file.write(str_to_bytes(filesystem.dumps(payload)))
            os.replace(writing, filename)
        except OSError as exc:
            # A write cut short (disk full, a file size limit) left a part no reader takes: removed,
            # or each failed send would leave one in the queue folder for good.
            with contextlib.suppress(OSError):
                os.remove(writing)
            raise ChannelError(f"Cannot add file {filename!r} to directory") from exc


class Transport(filesystem.Transport):
    Channel = Channel
